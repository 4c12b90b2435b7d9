"""`tpvkit deploy CHECKPOINT --out model.onnx`: export to ONNX (and check it in ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import typer

from tpvkit.cli._common import (
    config_file,
    overwrite_option,
    threads_option,
    use_threads,
    user_errors,
)


def deploy(
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.pth) written by tpvkit train."),
    out: Path = typer.Option(..., "--out", help="Output .onnx file (written atomically)."),
    config: str = typer.Option(
        None, "--config", help="YAML file or shipped config (default: the checkpoint's own)."
    ),
    set_: list[str] = typer.Option(None, "--set", help="Override: dotted.key=value (repeatable)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (16 or newer: GridSample)."),
    fp16: bool = typer.Option(
        False, "--fp16", help="float16 weights and activations (I/O stays float32)."
    ),
    outputs: str = typer.Option(
        "points,voxels",
        "--outputs",
        help="Comma-separated: points (point logits), voxels (voxel logits), argmax (classes).",
    ),
    check: bool = typer.Option(
        False, "--check", help="Run the file once in ONNX Runtime against PyTorch."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the --check inputs."),
    threads: int = threads_option(),
    overwrite: bool = overwrite_option(),
) -> None:
    """Export the whole inference graph to ONNX: six camera images and their lidar2img in,
    point logits (any number of points), voxel logits or the class volume out."""
    with user_errors():
        from tpvkit.deploy import CHECK_MAX_ABS_ERR
        from tpvkit.deploy import deploy as run_deploy
        from tpvkit.errors import TpvkitError
        from tpvkit.utils.io import check_output_file

        check_output_file(
            out,
            "--out",
            overwrite=overwrite,
            inputs=[("the checkpoint", checkpoint), ("the config file", config_file(config))],
        )
        use_threads(threads, set_, None, loads_data=False)
        result = run_deploy(
            checkpoint,
            out,
            config=config,
            overrides=set_ or [],
            outputs=outputs,
            opset=opset,
            fp16=fp16,
            check=check,
            seed=seed,
        )
        typer.echo(
            f"wrote {result.path} ({result.num_bytes / 2**20:.1f} MiB, opset {result.opset}, "
            f"outputs {','.join(result.outputs)}{', fp16' if result.fp16 else ''}; "
            f"{len(set(result.operators))} standard operator types)"
        )
        if result.check is not None:
            for line in result.check.lines():
                typer.echo(f"check: {line}")
            if not fp16 and not result.check.passed(CHECK_MAX_ABS_ERR):
                raise TpvkitError(
                    f"--check: ONNX Runtime differs from PyTorch beyond {CHECK_MAX_ABS_ERR} or "
                    f"in a class; the file {result.path} is kept for inspection"
                )
