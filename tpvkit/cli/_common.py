"""What every command shares: turning library errors into a clear message and an exit code."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer

from tpvkit.errors import TpvkitError

EXIT_BAD_INPUT = 2


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a TpvkitError (or a missing file) as one clear line and exit non-zero."""
    try:
        yield
    except TpvkitError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except FileNotFoundError as err:
        typer.secho(f"error: file not found: {err.filename or err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)


def load_cli_config(config: str, overrides: list[str] | None):
    """CONFIG argument + --set overrides -> Config (errors name the key and the nearest one)."""
    from tpvkit.config import load_config

    return load_config(config, overrides or [])
