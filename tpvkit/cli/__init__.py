"""The `tpvkit` command line: a thin Typer layer over library functions.

Each command module parses and validates its options, then calls one library function that is
just as usable from Python. Heavy imports (torch, the devkit) happen inside the commands so that
`tpvkit --help` is instant and works without a GPU.
"""

from __future__ import annotations

import typer

from tpvkit.cli import demo, export, predict, prepare, train, view, visualize
from tpvkit.cli import deploy as deploy_cmd
from tpvkit.cli import eval as eval_cmd

app = typer.Typer(
    name="tpvkit",
    help="Train, evaluate and inspect camera-only 3D semantic occupancy models (TPVFormer).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(prepare.app, name="prepare")
app.command("train")(train.train)
app.command("eval")(eval_cmd.eval_)
app.command("predict")(predict.predict)
app.command("export")(export.export)
app.command("visualize")(visualize.visualize)
app.command("view")(view.view)
app.command("demo")(demo.demo)
app.command("deploy")(deploy_cmd.deploy)


def _print_version(value: bool) -> None:
    if value:
        from tpvkit import __version__

        typer.echo(f"tpvkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """tpvkit: TPVFormer in pure PyTorch. Run `tpvkit COMMAND --help` for a command's options."""
