"""`tpvkit predict`: run a checkpoint over the samples of an info file and write one prediction
file (.npz, tpvkit.outputs.prediction_file) per sample, through the one inference path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tpvkit.config import Config
from tpvkit.engine.inference import (
    PredictionFileSink,
    inference_loader,
    load_for_inference,
    run_inference,
)
from tpvkit.errors import TpvkitError
from tpvkit.outputs.degenerate import single_class_warning, warn
from tpvkit.outputs.prediction_file import load_prediction
from tpvkit.utils.io import check_output_dir


def predict(
    cfg: Config | None,
    checkpoint: str | Path,
    infos: str | Path,
    out_dir: str | Path,
    tokens: Sequence[str] | None = None,
    save_confidence: bool = False,
    progress: bool = True,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> list[Path]:
    """Predict every sample of `infos` (or the chosen `tokens`) into <out_dir>/<token>.npz.

    `cfg` None takes the config stored in the checkpoint; a given one is checked against it
    (tpvkit.engine.inference.load_for_inference); `overrides` apply on top. The device follows
    `device` or cfg.train.device ("auto": a GPU when one is visible). Voxels are decoded in
    chunks of model.head.voxel_chunk; the class is the argmax over real classes. Returns the
    written paths, in sample order.
    """
    from tpvkit.data.infos import InfoSet, load_infos
    from tpvkit.outputs.predict import select_samples

    checkpoint, infos, out_dir = Path(checkpoint), Path(infos), Path(out_dir)
    check_output_dir(out_dir, "--out")  # before anything is loaded or built
    loaded = load_for_inference(checkpoint, cfg, overrides, device)
    info_set = load_infos(infos, dataroot=loaded.cfg.data.dataroot or None)
    chosen = select_samples(info_set, tokens, str(infos))
    if not chosen:
        raise TpvkitError(f"{infos} holds no samples: nothing to predict")
    subset = InfoSet(**{**info_set.__dict__, "samples": [info_set[i] for i in chosen]})
    loader = inference_loader(loaded.cfg, subset, loaded.device, batch_size=1)
    sink = PredictionFileSink(loaded.cfg, subset, out_dir, save_confidence=save_confidence)
    (result,) = run_inference(loaded.model, loader, loaded.device, [sink], progress, "predict")
    _warn_if_single_class(result["written"], out_dir)
    return result["written"]


def _warn_if_single_class(paths: Sequence[Path], out_dir: Path) -> None:
    """One warning when every voxel of every written file has the same class (free, say)."""
    counts: np.ndarray | None = None
    names: tuple[str, ...] = ()
    for path in paths:
        pred = load_prediction(path)
        hist = np.bincount(pred.voxels.ravel(), minlength=pred.num_classes)
        counts = hist if counts is None else counts + hist[: len(counts)]
        names = pred.class_names
    if counts is not None:
        where = f"{len(paths)} prediction file(s) in {out_dir}"
        warning = single_class_warning(counts, names, where)
        if warning is not None:
            warn(warning)
