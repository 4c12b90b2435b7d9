"""`tpvkit train CONFIG --work-dir W` and `tpvkit train --work-dir W --resume`."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import (
    EXIT_TERMINATED,
    config_file,
    load_cli_config,
    threads_option,
    use_threads,
    user_errors,
)


def train(
    config: str = typer.Argument(
        None,
        help="YAML file or shipped config name (e.g. tpv_tiny). Optional with --resume: the "
        "work dir's config is used (given, it must match it).",
    ),
    work_dir: Path = typer.Option(..., "--work-dir", help="Checkpoints, logs and TensorBoard."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the last checkpoint, with the work dir's config."
    ),
    set_: list[str] = typer.Option(None, "--set", help="Override: dotted.key=value (repeatable)."),
    threads: int = threads_option(),
) -> None:
    """Train a model (CPU, one GPU, or many through torchrun).

    Multi-GPU: torchrun --nproc_per_node N -m tpvkit train CONFIG --work-dir DIR

    Continue a stopped run: tpvkit train --work-dir DIR --resume (no CONFIG or --set needed;
    train.* changes such as --set train.max_iters=N are allowed).

    Exit codes: 0 done, 2 bad input, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM (with a
    checkpoint). The work dir gets checkpoints, train.log, metrics.jsonl and tb/
    (docs/training.md).
    """
    from tpvkit.engine.trainer import resume_command

    with user_errors(interrupted_hint=f"continue with: {resume_command(work_dir)}"):
        from tpvkit.errors import TpvkitError

        if resume:
            from tpvkit.engine.train import resume_config

            cfg = resume_config(work_dir, config, set_ or [])
        elif config is None:
            raise TpvkitError(
                "CONFIG is missing: give a YAML file or shipped config name (e.g. tpvkit train "
                f"tpv_tiny --work-dir {work_dir}), or add --resume to continue the run there"
            )
        else:
            from tpvkit.engine.train import CONFIG_FILE
            from tpvkit.utils.io import check_output_file

            # The run writes its resolved config there: never over the CONFIG it was given.
            check_output_file(
                work_dir / CONFIG_FILE, "--work-dir", inputs=[("CONFIG", config_file(config))]
            )
            cfg = load_cli_config(config, set_)
        from tpvkit.config import apply_overrides
        from tpvkit.engine.train import run_training

        cfg = apply_overrides(cfg, use_threads(threads, set_, cfg))

        outcome = run_training(cfg, work_dir, resume=resume)
        typer.echo(f"final checkpoint: {outcome.checkpoint}")
        if outcome.stop_reason and outcome.signal == "SIGTERM":
            typer.echo(f"stopped by SIGTERM; continue with: {resume_command(work_dir)}", err=True)
            raise typer.Exit(EXIT_TERMINATED)
