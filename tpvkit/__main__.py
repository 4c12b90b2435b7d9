"""`python -m tpvkit` is the same as the `tpvkit` command."""

from tpvkit.cli import app

if __name__ == "__main__":
    app()
