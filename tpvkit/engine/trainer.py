"""The training loop: one optimiser step (`Trainer.step`) and the loop over epochs that calls
the checkpoint and validation hooks (`Trainer.run`), with exact resume, DDP, AMP and stops on a
wall-clock budget or SIGTERM.

What makes a resumed run continue exactly as if never stopped:
- the data order is a function of (seed, epoch) alone (ShardedSampler) and a resumed epoch skips
  the batches already done;
- each sample's random augmentation is seeded from (seed, epoch, index), so it does not depend on
  the worker count or on which worker/process loaded it, nor on where the run was resumed;
- model, optimiser, schedule, GradScaler and every rank's RNG states are in the checkpoint.
"""

from __future__ import annotations

import contextlib
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

from tpvkit.config import Config
from tpvkit.data.dataset import build_dataloader
from tpvkit.engine.checkpoint import (
    LATEST_NAME,
    apply_model_weights,
    build_checkpoint,
    config_differences,
    format_config_differences,
    iter_checkpoint_name,
    load_initial_weights,
    load_resume_checkpoint,
    resume_command,
    rotate_checkpoints,
    save_checkpoint,
)
from tpvkit.engine.distributed import (
    DistContext,
    ShardedSampler,
    any_rank,
    barrier,
    gather_objects,
    reduce_over_ranks,
    to_device,
    wrap_ddp,
)
from tpvkit.engine.hooks import CheckpointHook, Hook, StepInfo, ValidationHook
from tpvkit.engine.optim import WarmupCosineSchedule, build_optimizer
from tpvkit.engine.runlog import RunLog, format_terms
from tpvkit.errors import TpvkitError
from tpvkit.models.losses import LossFn
from tpvkit.utils.io import copy_atomic
from tpvkit.utils.rng import capture_rng_state, isolated_rng, mix_seed, restore_rng_state


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


@dataclass(frozen=True)
class TrainOutcome:
    """How a run ended: its last checkpoint, and why it stopped early (empty: it finished)."""

    checkpoint: Path
    iteration: int
    total_iters: int
    stop_reason: str = ""  # "" when the schedule completed
    signal: str = ""  # name of the stop signal received (SIGTERM), if any


def default_hooks(cfg: Config) -> list[Hook]:
    """Checkpoint, then validation, at the intervals the config sets."""
    return [CheckpointHook(cfg.train.ckpt_interval), ValidationHook(cfg.train.val_interval)]


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


class Trainer:
    """State of one training job: `step()` is one optimiser step, `run()` the loop, which calls
    the hooks after every step. `tpvkit.engine.train.train()` wires it up."""

    def __init__(
        self,
        cfg: Config,
        work_dir: Path,
        parts: TrainParts,
        ctx: DistContext,
        resume: bool = False,
        stop_after: int | None = None,
        started: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.work_dir = work_dir
        self.parts = parts
        self.ctx = ctx
        self.device = ctx.device
        self.stop_after = stop_after
        self.started = time.monotonic() if started is None else started
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

    def load_resume_state(self) -> None:
        """Continue from the work dir's newest checkpoint (none there: start from scratch)."""
        found = load_resume_checkpoint(self.work_dir)
        if found is None:
            return
        path, ckpt = found
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
            copy_atomic(path, self.work_dir / LATEST_NAME)
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
            f"{format_terms(terms)}; training stopped without saving this state, {last}. "
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
        reduce_over_ranks([values])
        values = values / self.ctx.world_size
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

    # -- the job -------------------------------------------------------------------------------

    def _loader(self) -> DataLoader:
        self.sampler.set_epoch(self.epoch, start=self.iter_in_epoch * self.batch_size)
        self.train_set.epoch = self.epoch  # read by the workers forked for this epoch
        return build_dataloader(
            self.train_set,
            batch_size=self.batch_size,
            num_workers=self.cfg.data.num_workers,
            # Worker base seeds come from this seed's generator, not from the global RNG.
            seed=mix_seed(self.cfg.train.seed, self.epoch),
            pin_memory=self.device.type == "cuda",
            sampler=self.sampler,
            collate_fn=self.parts.collate_fn,
            persistent_workers=False,  # a new loader every epoch
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

    def run(self, hooks: list[Hook] | None = None) -> TrainOutcome:
        """Train to the end of the schedule (or an early stop); `hooks` default to
        `default_hooks(cfg)`. Call `load_resume_state()` first to continue a run."""
        hooks = default_hooks(self.cfg) if hooks is None else hooks
        model = wrap_ddp(self.model, self.ctx)
        log = RunLog(self.work_dir, self.ctx.is_main, self.iteration)
        try:
            with self._stop_on_sigterm():
                return self._run(model, log, hooks)
        finally:
            log.close()

    def _load_initial_weights(self, log: RunLog) -> None:
        """train.load_from: a fresh run starts from another checkpoint's weights (in place, so
        the optimiser and a DDP wrapper keep the same parameters; every rank reads the file)."""
        tc = self.cfg.train
        taken, kept = load_initial_weights(self.model, tc.load_from, self.cfg, tc.load_from_modules)
        parts = ", ".join(tc.load_from_modules) or "every tensor that matches"
        log.info(
            f"initial weights from {tc.load_from} ({parts}): {taken} tensors taken, {len(kept)} "
            "left as initialised"
            + (f" ({', '.join(sorted({k.split('.')[0] for k in kept}))})" if kept else "")
        )

    def _run(self, model: nn.Module, log: RunLog, hooks: list[Hook]) -> TrainOutcome:
        ctx, tc = self.ctx, self.cfg.train
        if self.resume and self.resumed_from is None:
            log.info(f"--resume: no checkpoint in {self.work_dir}, starting from scratch")
        elif self.resumed_from is not None:
            log.info(f"resumed from {self.resumed_from} at iteration {self.iteration}")
        if self.resumed_from is None and tc.load_from:
            self._load_initial_weights(log)
        for message in self.warn_later:
            log.info(f"warning: {message}")
        n_params = sum(p.numel() for p in self.params)
        log.info(
            f"training {self.cfg.name} on {self.device} x{ctx.world_size}: "
            f"{len(self.parts.train_set)} samples, "  # type: ignore[arg-type]
            f"global batch {self.batch_size * ctx.world_size}, "
            f"{self.iters_per_epoch} iterations/epoch, {self.total_iters} iterations, "
            f"{n_params / 1e6:.2f} M trainable parameters, {torch.get_num_threads()} torch "
            f"thread(s) + {self.cfg.data.num_workers} data-loading worker(s), "
            f"work dir {self.work_dir}"
        )
        val_infos = self.cfg.data.val_infos
        if self.parts.val_set is None and val_infos:
            log.info(f"no validation: data.val_infos {val_infos} does not exist")
        elif self.parts.val_set is None:
            log.info("no validation (data.val_infos is empty)")

        from tpvkit.utils.progress import Progress

        # A bar on a terminal; in a log file nothing (the log lines below report the progress).
        bar = Progress(
            self.total_iters,
            "train",
            "it",
            initial=self.iteration,
            enabled=ctx.is_main,
            log_every=None,
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
                    info = StepInfo(self.iteration, epoch_done, finished, bool(stop_reason))
                    for hook in hooks:
                        hook.after_step(self, info, log)
                    if finished or stop_reason or epoch_done:
                        break
        finally:
            bar.close()
        if self.last_saved is None:  # nothing was left to run
            done = self.work_dir / iter_checkpoint_name(self.iteration)
            if self.resumed_from is not None and done.is_file():
                log.info(f"the run had already finished its {self.total_iters} iterations")
                return self._outcome(done, "")
            log.info(f"saved {self.save()}")  # a 0-iteration schedule: save the initial state
        assert self.last_saved is not None
        elapsed = time.monotonic() - self.started
        if stop_reason:
            log.info(f"{stop_reason}: stopped at iteration {self.iteration}/{self.total_iters}")
            log.info(f"continue with: {resume_command(self.work_dir)}")
        log.info(
            f"done: {self.iteration} iterations in {elapsed / 60:.1f} min; "
            f"checkpoint {self.last_saved[1]} (also {self.work_dir / LATEST_NAME})"
        )
        return self._outcome(self.last_saved[1], stop_reason)

    def _outcome(self, checkpoint: Path, stop_reason: str) -> TrainOutcome:
        return TrainOutcome(
            checkpoint=checkpoint,
            iteration=self.iteration,
            total_iters=self.total_iters,
            stop_reason=stop_reason,
            signal=self.signalled,
        )

    def _log_step(
        self, log: RunLog, terms: Mapping[str, float], lr: float, grad_norm: float, bar: Any
    ) -> None:
        rate = bar.rate
        eta = (self.total_iters - self.iteration) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        memory = ""
        if self.device.type == "cuda":
            memory = f" mem={torch.cuda.max_memory_allocated(self.device) / 2**30:.1f}G"
        log.info(
            f"epoch {self.epoch} iter {self.iteration}/{self.total_iters} {format_terms(terms)} "
            f"lr={lr:.3e} grad_norm={grad_norm:.3g} it/s={rate:.2f} eta={eta_text}{memory}"
        )
        log.record(
            "train",
            self.iteration,
            {"epoch": self.epoch, **terms, "lr": lr, "grad_norm": grad_norm},
        )
