"""`tpvkit train`: the training loop, with exact resume, DDP, AMP and a wall-clock budget.

One function, `train(cfg, work_dir, resume)`, runs a whole job in one process or under torchrun.
What makes a resumed run continue exactly as if never stopped:
- the data order is a function of (seed, epoch) alone (ShardedSampler) and a resumed epoch skips
  the batches already done;
- each sample's random augmentation is seeded from (seed, epoch, index), so it does not depend on
  the worker count or on which worker/process loaded it, nor on where the run was resumed;
- model, optimiser, schedule, GradScaler and every rank's RNG states are in the checkpoint.

Work dir layout: latest.pth and iter_XXXXXX.pth (checkpoints), train.log (plain text),
metrics.jsonl (one JSON line per logged iteration / validation), tb/ (TensorBoard), config.yaml.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tpvkit.config import Config, to_dict
from tpvkit.engine.checkpoint import (
    LATEST_NAME,
    apply_model_weights,
    build_checkpoint,
    config_differences,
    find_resume_checkpoint,
    format_config_differences,
    iter_checkpoint_name,
    load_checkpoint_file,
    rotate_checkpoints,
    save_checkpoint,
    unwrap_model,
)
from tpvkit.engine.distributed import (
    DistContext,
    ShardedSampler,
    all_reduce,
    any_rank,
    barrier,
    cleanup_distributed,
    gather_objects,
    init_distributed,
    to_device,
    wrap_ddp,
)
from tpvkit.engine.optim import WarmupCosineSchedule, build_optimizer
from tpvkit.errors import TpvkitError
from tpvkit.utils.io import atomic_write_text, link_or_copy_atomic
from tpvkit.utils.rng import (
    capture_rng_state,
    isolated_rng,
    mix_seed,
    restore_rng_state,
    seed_everything,
)

LossFn = Callable[[nn.Module, Mapping[str, Any]], Mapping[str, torch.Tensor]]


class TrainingDivergedError(TpvkitError):
    """The loss or the gradients became NaN/inf; the run stopped without saving that state."""


@dataclass
class TrainParts:
    """What the loop trains: built from the config by `build_parts`, or by hand in tests.

    `compute_losses(model, batch)` runs the (possibly DDP-wrapped) model on a batch already on
    the device and returns scalar tensors: "loss" (the one minimised) and any other terms to log.
    """

    model: nn.Module
    train_set: Dataset
    collate_fn: Callable[[list[Any]], dict[str, Any]]
    compute_losses: LossFn
    val_set: Dataset | None = None


# ---------------------------------------------------------------------------------------------
# Determinism helpers


class EpochSeededDataset(Dataset):
    """Wraps a dataset so that sample `index` of epoch `epoch` draws its randomness from
    mix_seed(seed, epoch, index), whatever process or worker loads it and in whatever order."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with isolated_rng(mix_seed(self.seed, self.epoch, index)):
            return self.dataset[index]


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


def occupancy_losses(cfg: Config) -> LossFn:
    """The recipe's loss: Lovasz-softmax on point logits + cross-entropy on voxel logits."""
    from tpvkit.models.losses import occupancy_loss

    def compute(model: nn.Module, batch: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
        out = model(batch["img"], batch["lidar2img"], points=batch["points"], decode_voxels=True)
        # Losses in float32 even under autocast: Lovasz sorts errors, CE sums many terms.
        return occupancy_loss(
            out["point_logits"].float(),
            batch["point_labels"],
            out["voxel_logits"].float(),
            batch["voxel_labels"],
            lovasz_weight=cfg.train.lovasz_weight,
            ce_weight=cfg.train.ce_weight,
        )

    return compute


def _dataset(cfg: Config, path: Path, key: str, train: bool) -> Dataset:
    from tpvkit.data.dataset import LidarSegDataset

    try:
        return LidarSegDataset(path, cfg.data, cfg.model, train=train)
    except TpvkitError as err:  # e.g. an empty split: say which config key named the file
        raise TpvkitError(f"{err} ({key})") from err


def build_parts(cfg: Config) -> TrainParts:
    """Model (tpvkit.models.tpvformer), datasets (tpvkit.data.dataset) and loss from `cfg`."""
    from tpvkit.data.dataset import collate_batch
    from tpvkit.models.tpvformer import build_model

    train_path = check_info_file(cfg.data.train_infos, "data.train_infos")
    train_set = _dataset(cfg, train_path, "data.train_infos", train=True)
    val_set = None
    if cfg.data.val_infos and Path(cfg.data.val_infos).is_file():
        val_set = _dataset(cfg, Path(cfg.data.val_infos), "data.val_infos", train=False)
    model = build_model(cfg.model)
    return TrainParts(model, train_set, collate_batch, occupancy_losses(cfg), val_set)


# ---------------------------------------------------------------------------------------------
# Output: console + train.log + metrics.jsonl + TensorBoard (rank 0 only)


class RunLog:
    """Everything the run reports. Every method is a no-op on ranks other than 0."""

    def __init__(self, work_dir: Path, enabled: bool, start_iteration: int) -> None:
        self.enabled = enabled
        self.text = None
        self.jsonl = None
        self.tb = None
        if not enabled:
            return
        _truncate_jsonl(work_dir / "metrics.jsonl", start_iteration)
        self.text = open(work_dir / "train.log", "a", encoding="utf-8")  # noqa: SIM115
        self.jsonl = open(work_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a crashed run wrote after the checkpoint we resume from.
            self.tb = SummaryWriter(
                str(work_dir / "tb"), purge_step=start_iteration + 1 if start_iteration else None
            )
        except ImportError:  # tensorboard is a dependency, but a broken install must not stop us
            self.info("tensorboard is not importable: no TensorBoard scalars this run")

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        tqdm.write(message)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        assert self.text is not None
        self.text.write(f"{stamp} {message}\n")
        self.text.flush()

    def record(self, kind: str, iteration: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        assert self.jsonl is not None
        self.jsonl.write(json.dumps({"kind": kind, "iter": iteration, **values}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and name != "epoch":
                    self.tb.add_scalar(f"{kind}/{name}", value, iteration)

    def close(self) -> None:
        for handle in (self.text, self.jsonl, self.tb):
            if handle is not None:
                handle.close()


def _truncate_jsonl(path: Path, start_iteration: int) -> None:
    """Drop lines past `start_iteration`: a resumed run rewrites what followed its checkpoint."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["iter"] <= start_iteration:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


# ---------------------------------------------------------------------------------------------
# The loop


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


def _format_terms(terms: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in terms.items())


class Trainer:
    """State of one training job; `run()` executes it. Use `train()` rather than this class."""

    def __init__(
        self,
        cfg: Config,
        work_dir: Path,
        parts: TrainParts,
        ctx: DistContext,
        resume: bool,
        stop_after: int | None,
        started: float,
    ) -> None:
        self.cfg = cfg
        self.work_dir = work_dir
        self.parts = parts
        self.ctx = ctx
        self.device = ctx.device
        self.stop_after = stop_after
        self.started = started
        self.resume = resume

        tc = cfg.train
        self.warn_later: list[str] = []  # notes for the log, written once it is open
        self.amp = tc.amp
        if self.amp != "none" and self.device.type != "cuda":
            # Ignored rather than refused: GPU configs should still run (slowly) on a laptop.
            self.warn_later.append(
                f"train.amp={self.amp} needs a CUDA GPU; training in float32 on {self.device}"
            )
            self.amp = "none"
        self.batch_size = cfg.data.batch_size
        self.train_set = EpochSeededDataset(parts.train_set, tc.seed)
        self.sampler = ShardedSampler(
            len(parts.train_set),
            rank=ctx.rank,
            world_size=ctx.world_size,
            shuffle=True,
            seed=tc.seed,
        )
        self.iters_per_epoch = math.ceil(self.sampler.per_rank() / self.batch_size)
        self.total_iters = tc.max_iters if tc.max_iters > 0 else tc.epochs * self.iters_per_epoch

        self.model = parts.model.to(self.device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = WarmupCosineSchedule(self.optimizer, cfg.optim, self.total_iters)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

        self.iteration = 0  # optimiser steps done
        self.epoch = 0
        self.iter_in_epoch = 0  # steps done in self.epoch
        self.last_saved: tuple[int, Path] | None = None
        self.resumed_from: Path | None = None
        self.signalled = ""  # name of a stop signal received (SIGTERM)

    # -- checkpoints ---------------------------------------------------------------------------

    def _load_resume_state(self) -> None:
        path = find_resume_checkpoint(self.work_dir)
        if path is None:
            return
        ckpt = load_checkpoint_file(path)
        if not isinstance(ckpt, Mapping) or "optimizer" not in ckpt:
            raise TpvkitError(f"{path} is not a tpvkit training checkpoint; cannot --resume")
        apply_model_weights(self.model, ckpt, self.cfg, path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = int(ckpt["iteration"])
        self.epoch = int(ckpt["epoch"])
        self.iter_in_epoch = int(ckpt["iter_in_epoch"])
        extra = ckpt.get("extra", {})
        old_step = int(extra.get("samples_per_step", self.batch_size * self.ctx.world_size))
        new_step = self.batch_size * self.ctx.world_size
        if old_step != new_step:
            # Step i covers permutation positions [i * step, (i + 1) * step): convert samples.
            self.iter_in_epoch = self.iter_in_epoch * old_step // new_step
            self.warn_later.append(
                f"the global batch changed from {old_step} to {new_step} samples: the data order "
                "continues from the same sample but the run is no longer bit-identical"
            )
        if self.iter_in_epoch >= self.iters_per_epoch:
            self.epoch, self.iter_in_epoch = self.epoch + 1, 0
        rngs = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
        if len(rngs) != self.ctx.world_size:
            self.warn_later.append(
                f"the checkpoint was written by {len(rngs)} process(es), this run has "
                f"{self.ctx.world_size}: random streams restart from rank 0's state"
            )
        restore_rng_state(rngs[min(self.ctx.rank, len(rngs) - 1)], self.device)
        changed = config_differences(ckpt["config"], self.cfg, "train")
        changed += config_differences(ckpt["config"], self.cfg, "optim")
        if changed:
            self.warn_later.append(
                f"config changed since the checkpoint: {format_config_differences(changed)}"
            )
        self.resumed_from = path

    def save(self) -> Path:
        """Checkpoint the current step (collective: every rank must call it)."""
        rngs = gather_objects(capture_rng_state(self.device), self.ctx)
        path = self.work_dir / iter_checkpoint_name(self.iteration)
        if self.ctx.is_main:
            state = build_checkpoint(
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.scaler,
                cfg=self.cfg,
                epoch=self.epoch,
                iteration=self.iteration,
                iter_in_epoch=self.iter_in_epoch,
                rng=rngs,
                extra={
                    "world_size": self.ctx.world_size,
                    "samples_per_step": self.batch_size * self.ctx.world_size,
                    "total_iters": self.total_iters,
                    "wall_seconds": time.monotonic() - self.started,
                },
            )
            save_checkpoint(state, path)
            link_or_copy_atomic(path, self.work_dir / LATEST_NAME)
            rotate_checkpoints(self.work_dir, self.cfg.train.keep_checkpoints)
        barrier(self.ctx)
        self.last_saved = (self.iteration, path)
        return path

    # -- one step ------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _diverged(self, what: str, terms: Mapping[str, float]) -> TrainingDivergedError:
        last = (
            f"the last good checkpoint is {self.last_saved[1]} (iteration {self.last_saved[0]})"
            if self.last_saved
            else "no checkpoint was written yet"
        )
        return TrainingDivergedError(
            f"non-finite {what} at iteration {self.iteration} (epoch {self.epoch}): "
            f"{_format_terms(terms)}; training stopped without saving this state, {last}. "
            "Try a lower optim.lr, a smaller optim.grad_clip or train.amp=none"
        )

    def step(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[dict[str, float], float]:
        """Forward, backward, clip, update. Returns (loss terms averaged over ranks, grad norm)."""
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            losses = self.parts.compute_losses(model, batch)
        names = ["loss", *sorted(k for k in losses if k != "loss")]
        # One small all-reduce: the logged values are the global means, and every rank sees the
        # same NaN check result, so all stop together instead of hanging in the next collective.
        values = torch.stack([losses[k].detach().float().reshape(()) for k in names])
        values = all_reduce(values, self.ctx) / self.ctx.world_size
        terms = dict(zip(names, values.tolist(), strict=True))
        if not all(math.isfinite(v) for v in terms.values()):
            raise self._diverged("loss", terms)

        loss = losses["loss"]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the update itself on inf/NaN fp16 gradients
            self.scaler.update()
        else:
            if not math.isfinite(grad_norm):
                raise self._diverged("gradient norm", {**terms, "grad_norm": grad_norm})
            self.optimizer.step()
        return terms, grad_norm

    # -- validation ----------------------------------------------------------------------------

    def validate(self) -> dict[str, Any] | None:
        if self.parts.val_set is None:
            return None
        from tpvkit.engine.evaluate import evaluate_model

        sampler = ShardedSampler(
            len(self.parts.val_set),
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            shuffle=False,
            pad=False,  # evaluate_model sums over ranks: no sample may be counted twice
        )
        loader = DataLoader(
            self.parts.val_set,
            batch_size=self.cfg.eval.batch_size,
            sampler=sampler,
            num_workers=self.cfg.data.num_workers,
            collate_fn=self.parts.collate_fn,
            pin_memory=self.device.type == "cuda",
        )
        with isolated_rng(mix_seed(self.cfg.train.seed, 7, self.iteration)):
            metrics = evaluate_model(
                unwrap_model(self.model),  # plain forward: no DDP hooks during evaluation
                loader,
                self.device,
                num_classes=self.cfg.model.num_classes,
                voxel_metrics=self.cfg.eval.voxel_metrics,
                progress=False,
            )
        return metrics

    # -- the job -------------------------------------------------------------------------------

    def _loader(self) -> DataLoader:
        self.sampler.set_epoch(self.epoch, start=self.iter_in_epoch * self.batch_size)
        self.train_set.epoch = self.epoch  # read by the workers forked for this epoch
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.cfg.data.num_workers,
            collate_fn=self.parts.collate_fn,
            pin_memory=self.device.type == "cuda",
            # Worker base seeds come from this generator, not from the global RNG.
            generator=torch.Generator().manual_seed(mix_seed(self.cfg.train.seed, self.epoch)),
        )

    def _stop_reasons(self) -> list[str]:
        """Why this process wants to stop after the current step (empty: it does not)."""
        tc = self.cfg.train
        reasons = []
        if tc.max_minutes > 0 and time.monotonic() - self.started >= tc.max_minutes * 60:
            reasons.append(f"time budget of {tc.max_minutes:g} min reached")
        if self.signalled:
            reasons.append(f"received {self.signalled}")
        if self.stop_after is not None and self.iteration >= self.stop_after:
            reasons.append(f"stopped after {self.iteration} iterations as asked")
        return reasons

    @contextlib.contextmanager
    def _stop_on_sigterm(self) -> Iterator[None]:
        """SIGTERM (a cluster pre-empting the job; torchrun forwards it) ends the run after the
        current step, with a checkpoint, instead of killing it mid-way."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return

        def handler(signum: int, frame: Any) -> None:
            self.signalled = signal.Signals(signum).name

        previous = signal.signal(signal.SIGTERM, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def run(self) -> Path:
        tc = self.cfg.train
        if self.resume:
            self._load_resume_state()
        model = wrap_ddp(self.model, self.ctx)
        log = RunLog(self.work_dir, self.ctx.is_main, self.iteration)
        try:
            with self._stop_on_sigterm():
                return self._run(model, log, tc)
        finally:
            log.close()

    def _run(self, model: nn.Module, log: RunLog, tc: Any) -> Path:
        ctx = self.ctx
        if self.resume and self.resumed_from is None:
            log.info(f"--resume: no checkpoint in {self.work_dir}, starting from scratch")
        elif self.resumed_from is not None:
            log.info(f"resumed from {self.resumed_from} at iteration {self.iteration}")
        for message in self.warn_later:
            log.info(f"warning: {message}")
        n_params = sum(p.numel() for p in self.params)
        log.info(
            f"training {self.cfg.name} on {self.device} x{ctx.world_size}: "
            f"{len(self.parts.train_set)} samples, "
            f"global batch {self.batch_size * ctx.world_size}, "
            f"{self.iters_per_epoch} iterations/epoch, {self.total_iters} iterations, "
            f"{n_params / 1e6:.2f} M trainable parameters, work dir {self.work_dir}"
        )
        if self.parts.val_set is None:
            log.info(f"no validation: data.val_infos ({self.cfg.data.val_infos!r}) not found")

        from tqdm import tqdm

        bar = tqdm(
            total=self.total_iters,
            initial=self.iteration,
            disable=not ctx.is_main,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            mininterval=1.0,
        )
        stop_reason = ""
        try:
            while self.iteration < self.total_iters and not stop_reason:
                for batch in self._loader():
                    lr = self.scheduler.step(self.iteration)
                    terms, grad_norm = self.step(model, to_device(batch, self.device))
                    self.iteration += 1
                    self.iter_in_epoch += 1
                    epoch_done = self.iter_in_epoch >= self.iters_per_epoch
                    bar.update(1)
                    bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
                    if self.iteration % max(1, tc.log_interval) == 0 or self.iteration == 1:
                        self._log_step(log, terms, lr, grad_norm, bar)

                    if epoch_done:  # the checkpoint then names the next epoch's first batch
                        self.epoch, self.iter_in_epoch = self.epoch + 1, 0
                    finished = self.iteration >= self.total_iters
                    reasons = self._stop_reasons()
                    if any_rank(bool(reasons), ctx) and not finished:
                        stop_reason = "; ".join(reasons) or "another process stopped the job"
                    due_ckpt = (
                        self.iteration % tc.ckpt_interval == 0
                        if tc.ckpt_interval > 0
                        else epoch_done
                    )
                    if due_ckpt or finished or stop_reason:
                        path = self.save()
                        log.info(f"saved {path}")
                    due_val = (
                        self.iteration % tc.val_interval == 0 if tc.val_interval > 0 else epoch_done
                    )
                    if due_val or (finished and tc.val_interval > 0):
                        self._log_validation(log)
                    if finished or stop_reason or epoch_done:
                        break
        finally:
            bar.close()
        if self.last_saved is None:  # nothing was left to run
            done = self.work_dir / iter_checkpoint_name(self.iteration)
            if self.resumed_from is not None and done.is_file():
                log.info(f"the run had already finished its {self.total_iters} iterations")
                return done
            log.info(f"saved {self.save()}")  # a 0-iteration schedule: save the initial state
        assert self.last_saved is not None
        elapsed = time.monotonic() - self.started
        if stop_reason:
            log.info(f"{stop_reason}: stopped at iteration {self.iteration}/{self.total_iters}")
            log.info(f"continue with: tpvkit train ... --work-dir {self.work_dir} --resume")
        log.info(
            f"done: {self.iteration} iterations in {elapsed / 60:.1f} min; "
            f"checkpoint {self.last_saved[1]} (also {self.work_dir / LATEST_NAME})"
        )
        return self.last_saved[1]

    def _log_step(
        self, log: RunLog, terms: Mapping[str, float], lr: float, grad_norm: float, bar: Any
    ) -> None:
        rate = bar.format_dict.get("rate") or 0.0
        eta = (self.total_iters - self.iteration) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        memory = ""
        if self.device.type == "cuda":
            memory = f" mem={torch.cuda.max_memory_allocated(self.device) / 2**30:.1f}G"
        log.info(
            f"epoch {self.epoch} iter {self.iteration}/{self.total_iters} {_format_terms(terms)} "
            f"lr={lr:.3e} grad_norm={grad_norm:.3g} it/s={rate:.2f} eta={eta_text}{memory}"
        )
        log.record(
            "train",
            self.iteration,
            {"epoch": self.epoch, **terms, "lr": lr, "grad_norm": grad_norm},
        )

    def _log_validation(self, log: RunLog) -> None:
        metrics = self.validate()
        if metrics is None:
            return
        values = {
            "miou": metrics["miou"],
            "miou_voxel": metrics.get("miou_voxel"),
            "num_samples": metrics["num_samples"],
        }
        miou = "n/a" if values["miou"] is None else f"{values['miou']:.4f}"
        log.info(
            f"validation at iteration {self.iteration}: miou={miou} "
            f"({values['num_samples']} samples)"
        )
        log.record("val", self.iteration, values)


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
    started = time.monotonic()
    work_dir = Path(work_dir)
    ctx = init_distributed(cfg.train.device)
    try:
        _prepare_work_dir(work_dir, ctx)
        if not resume and find_resume_checkpoint(work_dir) is not None:
            raise TpvkitError(
                f"{work_dir} already holds checkpoints: pass --resume to continue that run, "
                "or choose a new --work-dir"
            )
        # Same seed on every rank while building, so every rank starts from identical weights
        # (DDP also broadcasts rank 0's), then a per-rank stream for dropout and the like.
        seed_everything(cfg.train.seed)
        built = parts(cfg) if callable(parts) else parts if parts is not None else build_parts(cfg)
        seed_everything(mix_seed(cfg.train.seed, 1_000_003, ctx.rank))
        if ctx.is_main:
            import yaml

            atomic_write_text(
                work_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False)
            )
        trainer = Trainer(cfg, work_dir, built, ctx, resume, stop_after, started)
        return trainer.run()
    finally:
        cleanup_distributed(ctx)
