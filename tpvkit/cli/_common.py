"""What every command shares: turning library errors into a clear message and an exit code, the
--overwrite option of the output policy (tpvkit.utils.io.check_output_file/_dir), and which
arguments name input files that an output may never replace."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from tpvkit.errors import TpvkitError

if TYPE_CHECKING:
    from tpvkit.config import Config

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM: a scheduler can tell a pre-empted run from a finished one
INTO_FOLDER = "Write into a non-empty --out folder, replacing files of the same name"


def overwrite_option(what: str = "Replace an existing --out file") -> Any:
    """The --overwrite flag every command with an output has (the output policy)."""
    return typer.Option(
        False,
        "--overwrite",
        help=f"{what} (refused without it; an input file is never replaced).",
    )


def threads_option() -> Any:
    """--threads of train, eval, predict and deploy (tpvkit.utils.threads)."""
    return typer.Option(
        None,
        "--threads",
        min=1,
        help="CPU threads in all: torch's intra-op threads plus the data-loading workers "
        "(default: $OMP_NUM_THREADS, else the CPUs available; docs/training.md).",
    )


def use_threads(
    threads: int | None, set_: list[str] | None, cfg: Config | None, loads_data: bool = True
) -> list[str]:
    """Set torch's intra-op threads for `threads` (None: the default) and return the override
    that gives the data loader the plan's workers (none without `loads_data`). The workers are
    capped by a data.num_workers in `set_`, else by `cfg`'s (the config default when the config
    is still unknown: it comes from the checkpoint)."""
    from tpvkit.config import DataConfig
    from tpvkit.utils.threads import apply_threads

    if not loads_data:
        apply_threads(threads, 0)
        return []
    cap = cfg.data.num_workers if cfg is not None else DataConfig().num_workers
    for item in set_ or []:
        key, _, value = item.partition("=")
        if key.strip() == "data.num_workers" and value.strip().isdigit():
            cap = int(value)
    plan = apply_threads(threads, cap)
    return [f"data.num_workers={plan.workers}"]


def config_file(config: str | None) -> Path | None:
    """CONFIG when it names a file (an input an output may not replace), else None."""
    if config and Path(config).is_file():
        return Path(config)
    return None


def error_message(err: BaseException) -> str:
    """The user's line of an error, also when a DataLoader worker raised it.

    torch re-raises a worker's exception in the main process as the same type, with the whole
    worker traceback ("Caught X in DataLoader worker process N. Original Traceback ...") as its
    message; the user needs only the original message, the traceback's last line.
    """
    message = str(err)
    if "Original Traceback" not in message:
        return message
    lines = message.rstrip().splitlines()
    cls = type(err)
    prefixes = (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: ")
    for line in reversed(lines):
        for prefix in prefixes:
            if line.startswith(prefix):
                return line[len(prefix) :]
    return lines[-1]


@contextlib.contextmanager
def user_errors(interrupted_hint: str = "") -> Iterator[None]:
    """Print a TpvkitError (or a missing file) as one clear line and exit non-zero.

    `interrupted_hint` is printed after Ctrl-C (e.g. how to continue).
    """
    try:
        yield
    except TpvkitError as err:
        typer.secho(f"error: {error_message(err)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except FileNotFoundError as err:
        typer.secho(f"error: file not found: {err.filename or err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        hint = f": {interrupted_hint}" if interrupted_hint else ""
        typer.secho(f"interrupted{hint}", fg=typer.colors.YELLOW, err=True)
        sys.exit(EXIT_INTERRUPTED)


def load_cli_config(config: str, overrides: list[str] | None) -> Config:
    """CONFIG argument + --set overrides -> Config (errors name the key and the nearest one)."""
    from tpvkit.config import load_config

    return load_config(config, overrides or [])


def config_and_checkpoint(
    first: str, second: str | None, config_option: str | None, overrides: list[str] | None
) -> tuple[Config | None, Path, list[str]]:
    """`[CONFIG] CHECKPOINT` (+ --config) -> (config or None, checkpoint, overrides).

    One positional argument is the checkpoint, and the config is the one it stores (None here:
    the overrides are applied on top of it when it is read); two are CONFIG then CHECKPOINT.
    A given CONFIG is loaded with the overrides; the checkpoint then checks it.
    """
    from tpvkit.errors import TpvkitError

    if second is None:
        checkpoint, config = Path(first), config_option
    else:
        if config_option is not None:
            raise TpvkitError(
                f"CONFIG given twice ('{first}' and --config {config_option}): give one"
            )
        config, checkpoint = first, Path(second)
    if config is None:
        if not checkpoint.is_file() and checkpoint.suffix not in (".pth", ".pt"):
            from tpvkit.config import resolve_config_path

            try:  # `tpvkit eval tpv_tiny --infos ...`: a config name without a checkpoint
                resolve_config_path(str(checkpoint))
            except TpvkitError:
                pass
            else:
                raise TpvkitError(
                    f"'{checkpoint}' is a config, not a checkpoint: give CHECKPOINT after it"
                )
        return None, checkpoint, list(overrides or [])
    return load_cli_config(config, overrides), checkpoint, []
