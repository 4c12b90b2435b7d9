"""`tpvkit train`: wiring the training job together.

`train(cfg, work_dir, resume)` builds the model, data and loss from the config (`build_parts`),
prepares the work dir and hands over to the loop (tpvkit.engine.trainer), whose checkpoint and
validation hooks live in tpvkit.engine.hooks and whose reporting lives in tpvkit.engine.runlog.
It runs a whole job in one process or under torchrun. `resume_config` gives `--resume` the config
of the run it continues.

Work dir layout: latest.pth and iter_XXXXXX.pth (checkpoints), train.log (plain text),
metrics.jsonl (one JSON line per logged iteration / validation), tb/ (TensorBoard), config.yaml
(the resolved config of the latest start).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from tpvkit.config import (
    Config,
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    task_of,
    to_dict,
)
from tpvkit.engine.checkpoint import (
    check_load_from,
    config_differences,
    find_resume_checkpoint,
    load_resume_checkpoint,
)
from tpvkit.engine.distributed import DistContext, barrier, cleanup_distributed, init_distributed
from tpvkit.engine.trainer import (
    EpochSeededDataset,
    Trainer,
    TrainingDivergedError,
    TrainOutcome,
    TrainParts,
    resume_command,
)
from tpvkit.errors import TpvkitError
from tpvkit.utils.io import atomic_write_text
from tpvkit.utils.rng import mix_seed, seed_everything

__all__ = [
    "EpochSeededDataset",
    "TrainOutcome",
    "TrainParts",
    "TrainingDivergedError",
    "build_parts",
    "check_info_file",
    "resume_command",
    "resume_config",
    "run_training",
    "train",
]

CONFIG_FILE = "config.yaml"
# Data keys a resumed run may change: where the files are, how they are loaded, and the batch
# (the trainer converts the position in the epoch and logs that the run is no longer exact).
RESUMABLE_DATA_KEYS = frozenset(
    {"data.dataroot", "data.val_infos", "data.num_workers", "data.batch_size"}
)


# ---------------------------------------------------------------------------------------------
# Building the real model, data and loss from the config


def check_info_file(path: str, key: str) -> Path:
    """An info file named by config key `key` must exist; say how to make one if not."""
    if not path:
        raise TpvkitError(f"{key} is empty: give the info file to train on (--set {key}=PATH)")
    p = Path(path)
    if not p.is_file():
        raise TpvkitError(
            f"info file not found: {p} ({key}). Create it with `tpvkit prepare synthetic --out "
            "DIR` (synthetic data) or `tpvkit prepare nuscenes --dataroot DIR --version "
            f"v1.0-trainval --out DIR`, then pass --set {key}=DIR/infos/<file>.json"
        )
    return p


def _dataset(cfg: Config, path: Path, key: str, train: bool) -> Dataset:
    from tpvkit.data.dataset import LidarSegDataset

    try:
        return LidarSegDataset(path, cfg.data, cfg.model, train=train)
    except TpvkitError as err:  # e.g. an empty split: say which config key named the file
        raise TpvkitError(f"{err} ({key})") from err


def resolve_class_frequencies(cfg: Config, train_set: Dataset) -> None:
    """Count train.class_frequencies once, from the training split's Occ3D labels inside the
    supervised voxels, when the loss needs them and the config does not state them yet; the
    config (config.yaml, every checkpoint) then carries them."""
    t = cfg.train
    needed = t.loss == "occ3d" and (
        t.class_weights != "none" or t.init_bias_from_frequencies or _corrects_prior(cfg)
    )
    if not needed or t.class_frequencies:
        return
    from tpvkit.data.occ3d import label_frequencies

    infos = getattr(train_set, "infos", None)
    if infos is None:
        raise TpvkitError("train.class_frequencies are empty and the training set has no infos")
    t.class_frequencies = label_frequencies(infos, t.occ_loss_mask, cfg.model.num_classes)


def _corrects_prior(cfg: Config) -> bool:
    t = cfg.train
    return (
        t.loss == "occ3d"
        and t.occ_free_per_occupied > 0
        and t.occ_sampled_prior_correction
        and not cfg.model.head.voxel_logit_offset
    )


def resolve_voxel_logit_offset(cfg: Config) -> None:
    """Write model.head.voxel_logit_offset from the training frequencies when the sampled
    loss's prior is to be corrected (train.occ_sampled_prior_correction) and the config does
    not state an offset yet; the config (config.yaml, every checkpoint) then carries it."""
    if not _corrects_prior(cfg):
        return
    from tpvkit.models.losses import sampled_prior_offset

    free = task_of(cfg).label_space.free_index
    if free is None:
        return
    cfg.model.head.voxel_logit_offset = sampled_prior_offset(
        cfg.train.class_frequencies, free, cfg.train.occ_free_per_occupied
    )


def init_classifier_bias(model: nn.Module, frequencies: list[float]) -> None:
    """Classifier bias = log(class frequency) (floored at 1e-6): the untrained model predicts
    the class priors instead of spending its first iterations learning them."""
    if not frequencies:
        raise TpvkitError(
            "train.init_bias_from_frequencies needs train.class_frequencies (counted from the "
            "training split when train.loss=occ3d)"
        )
    bias = model.head.classifier.bias
    with torch.no_grad():
        f = torch.tensor(frequencies, dtype=bias.dtype).clamp(min=1e-6)
        bias.copy_(f.log())


def build_parts(cfg: Config) -> TrainParts:
    """Model (tpvkit.models.tpvformer), datasets (tpvkit.data.dataset) and the loss that
    `train.loss` names (tpvkit.models.losses.build_loss) from `cfg`."""
    from tpvkit.data.dataset import collate_batch
    from tpvkit.models.losses import build_loss
    from tpvkit.models.tpvformer import build_model

    train_path = check_info_file(cfg.data.train_infos, "data.train_infos")
    train_set = _dataset(cfg, train_path, "data.train_infos", train=True)
    val_set = None
    if cfg.data.val_infos and Path(cfg.data.val_infos).is_file():
        val_set = _dataset(cfg, Path(cfg.data.val_infos), "data.val_infos", train=False)
    resolve_class_frequencies(cfg, train_set)
    resolve_voxel_logit_offset(cfg)
    loss = build_loss(cfg)  # before the datasets' first item: a wrong class count fails early
    model = build_model(cfg)
    if cfg.train.init_bias_from_frequencies:
        init_classifier_bias(model, cfg.train.class_frequencies)
    return TrainParts(model, train_set, collate_batch, loss, val_set)


# ---------------------------------------------------------------------------------------------
# The config of a resumed run


class StepClock:
    """Times a training run from outside: `parts(cfg)` is build_parts(cfg) with the loss
    wrapped so that each iteration's start is stamped (the loss runs once per iteration, so the
    gaps between stamps are the iteration times). The benchmarks in tools/ pass it to train."""

    def __init__(self) -> None:
        self.stamps: list[float] = []  # time.perf_counter() at each iteration's loss

    def parts(self, cfg: Config) -> TrainParts:
        parts = build_parts(cfg)
        inner = parts.compute_losses

        def timed(model: nn.Module, batch: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
            self.stamps.append(time.perf_counter())
            return inner(model, batch)

        parts.compute_losses = timed
        return parts

    def seconds_per_iteration(self, skip: int) -> float:
        """Median gap between iterations, the first `skip` (warm-up) left out; nan when the
        run had too few iterations to tell."""
        import statistics

        stamps = self.stamps[skip:]
        gaps = [stamps[i + 1] - stamps[i] for i in range(len(stamps) - 1)]
        return float(statistics.median(gaps)) if gaps else float("nan")


def stored_run_config(work_dir: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The config of the run in `work_dir` (its config.yaml, else its newest checkpoint's) and the
    file it came from; None when the work dir holds neither."""
    import yaml

    work_dir = Path(work_dir)
    path = work_dir / CONFIG_FILE
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise TpvkitError(
                f"{path} is not valid YAML ({str(err).splitlines()[0]}); restore it or give "
                "CONFIG explicitly"
            ) from err
        if not isinstance(data, dict):
            raise TpvkitError(f"{path} is not a config mapping; restore it or give CONFIG")
        return data, path
    found = load_resume_checkpoint(work_dir)
    if found is None:
        return None
    ckpt_path, ckpt = found
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("config"), Mapping):
        raise TpvkitError(f"{ckpt_path} stores no config; give CONFIG to resume it")
    return dict(ckpt["config"]), ckpt_path


def _pasteable(key: str, value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return f"--set {shlex.quote(f'{key}={text}')}"


def resume_config(
    work_dir: str | Path, config: str | Path | None, overrides: list[str] | None = None
) -> Config:
    """The config for `tpvkit train --work-dir W --resume [CONFIG] [--set ...]`.

    Without CONFIG it is W's stored config plus the overrides. Either way, a model or data
    setting that differs from W's run is refused, naming the keys; train.* and optim.* changes
    (a longer schedule, say) are allowed and the trainer logs them.
    """
    work_dir = Path(work_dir)
    stored = stored_run_config(work_dir)
    if stored is None:
        if config is None:
            raise TpvkitError(
                f"--resume: {work_dir} holds no {CONFIG_FILE} and no checkpoint to take the "
                "config from; give CONFIG (a YAML file or shipped name) or the --work-dir of an "
                "earlier run"
            )
        return load_config(config, overrides or [])
    data, source = stored
    if config is None:
        try:
            base = from_dict(data)
        except ConfigError as err:  # e.g. a hand-edited config.yaml
            raise TpvkitError(f"{source}: {err}; fix it or give CONFIG explicitly") from err
        cfg = apply_overrides(base, overrides or [])
    else:
        cfg = load_config(config, overrides or [])
    diffs = [
        d
        for section in ("model", "data")
        for d in config_differences(data, cfg, section)
        if d[0] not in RESUMABLE_DATA_KEYS  # runtime-only model keys are not compared at all
    ]
    if diffs:
        listing = "; ".join(f"{k} {old!r} (run) vs {new!r} (now)" for k, old, new in diffs)
        fix = " ".join(_pasteable(k, old) for k, old, _ in diffs)
        raise TpvkitError(
            f"--resume: the model/data config differs from the run in {work_dir} ({source.name}): "
            f"{listing}. Leave CONFIG and these --set out to continue with the run's config "
            f"(or add: {fix})"
        )
    return cfg


# ---------------------------------------------------------------------------------------------
# The job


def _prepare_work_dir(work_dir: Path, ctx: DistContext) -> None:
    if ctx.is_main:
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
            probe = work_dir / ".write_test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise TpvkitError(
                f"cannot write to the work dir {work_dir} ({err.strerror or err}); "
                "choose another --work-dir"
            ) from err
    barrier(ctx)


def run_training(
    cfg: Config,
    work_dir: str | Path,
    resume: bool = False,
    *,
    stop_after: int | None = None,
    parts: TrainParts | Callable[[Config], TrainParts] | None = None,
) -> TrainOutcome:
    """`train`, returning how the run ended (the CLI turns a SIGTERM stop into exit code 143)."""
    started = time.monotonic()
    work_dir = Path(work_dir)
    ctx = init_distributed(cfg.train.device)
    try:
        fresh = find_resume_checkpoint(work_dir) is None
        if cfg.train.load_from and fresh:  # before the work dir gets any file
            check_load_from(cfg.train.load_from)
        _prepare_work_dir(work_dir, ctx)
        if not resume and not fresh:
            raise TpvkitError(
                f"{work_dir} already holds checkpoints: pass --resume to continue that run, "
                "or choose a new --work-dir"
            )
        # Same seed on every rank while building, so every rank starts from identical weights
        # (DDP also broadcasts rank 0's), then a per-rank stream for dropout and the like.
        seed_everything(cfg.train.seed)
        built = parts(cfg) if callable(parts) else parts if parts is not None else build_parts(cfg)
        seed_everything(mix_seed(cfg.train.seed, 1_000_003, ctx.rank))
        trainer = Trainer(cfg, work_dir, built, ctx, resume, stop_after, started)
        if resume:
            trainer.load_resume_state()
        # Written once the checkpoint has accepted the config, so that a refused --resume leaves
        # the run's config.yaml (which the next --resume reads) as it was.
        if ctx.is_main:
            import yaml

            atomic_write_text(work_dir / CONFIG_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False))
        outcome = trainer.run()
        # Every rank finishes its collectives before any of them tears the group down: without
        # this, a rank that destroys the group first can abort another at exit ("terminate
        # called without an active exception", seen once in a two-rank CPU test). Only on the
        # way out of a finished run: after an error the other ranks may never arrive.
        barrier(ctx)
        return outcome
    finally:
        cleanup_distributed(ctx)


def train(
    cfg: Config,
    work_dir: str | Path,
    resume: bool = False,
    *,
    stop_after: int | None = None,
    parts: TrainParts | Callable[[Config], TrainParts] | None = None,
) -> Path:
    """Train `cfg` in `work_dir`; return the path of the final checkpoint.

    resume: continue from work_dir/latest.pth (or the newest iter_*.pth) exactly where it
    stopped; without a checkpoint there, start from scratch. Without resume a work dir that
    already holds checkpoints is refused (nothing is overwritten by accident).
    stop_after: stop (with a checkpoint) after this many iterations without shortening the
    schedule, as an interrupted run would.
    parts: the model/data/loss to train (a TrainParts or a function of the config); default
    `build_parts(cfg)`.
    """
    return run_training(cfg, work_dir, resume, stop_after=stop_after, parts=parts).checkpoint
