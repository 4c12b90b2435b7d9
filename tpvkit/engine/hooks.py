"""What the training loop does between steps besides stepping: checkpoints and validation.

The loop (tpvkit.engine.trainer) calls every hook after each optimiser step with a `StepInfo`;
a hook decides whether it is due and acts. Hooks run in order: the checkpoint is written before
the validation of the same step, so a crash during validation loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from torch.utils.data import DataLoader

from tpvkit.engine.distributed import ShardedSampler
from tpvkit.utils.rng import isolated_rng, mix_seed

if TYPE_CHECKING:
    from tpvkit.engine.runlog import RunLog
    from tpvkit.engine.trainer import Trainer


@dataclass(frozen=True)
class StepInfo:
    """Where the loop stands after a step (the same on every rank)."""

    iteration: int  # optimiser steps done
    epoch_done: bool  # this step ended an epoch
    finished: bool  # the schedule is complete
    stopping: bool  # the run stops early after this step (budget, signal, stop_after)


class Hook(Protocol):
    def after_step(self, trainer: Trainer, step: StepInfo, log: RunLog) -> None: ...


class CheckpointHook:
    """Saves every `interval` iterations (0: at the end of every epoch), at the end of the
    schedule and before an early stop; keeps the newest `keep` iter_*.pth (trainer.save)."""

    def __init__(self, interval: int) -> None:
        self.interval = interval

    def due(self, step: StepInfo) -> bool:
        periodic = step.iteration % self.interval == 0 if self.interval > 0 else step.epoch_done
        return periodic or step.finished or step.stopping

    def after_step(self, trainer: Trainer, step: StepInfo, log: RunLog) -> None:
        if self.due(step):
            log.info(f"saved {trainer.save()}")


class ValidationHook:
    """Runs evaluate_model on the validation set every `interval` iterations (0: at the end of
    every epoch; with an interval also at the end of the schedule) and logs its mIoU."""

    def __init__(self, interval: int) -> None:
        self.interval = interval

    def due(self, step: StepInfo) -> bool:
        if self.interval > 0:
            return step.iteration % self.interval == 0 or step.finished
        return step.epoch_done

    def after_step(self, trainer: Trainer, step: StepInfo, log: RunLog) -> None:
        if not self.due(step):
            return
        metrics = validate(trainer)
        if metrics is None:
            return
        values = {
            "miou": metrics["miou"],
            "miou_voxel": metrics.get("miou_voxel"),
            "num_samples": metrics["num_samples"],
        }
        extra = ""
        if metrics.get("task") == "occupancy":  # Occ3D mIoU (camera mask) is "miou"
            values.update({k: metrics.get(k) for k in ("miou_nomask", "rayiou")})
            extra = "".join(
                f" {k}={'n/a' if values[k] is None else f'{values[k]:.4f}'}"
                for k in ("miou_nomask", "rayiou")
            )
        miou = "n/a" if values["miou"] is None else f"{values['miou']:.4f}"
        log.info(
            f"validation at iteration {step.iteration}: miou={miou}{extra} "
            f"({values['num_samples']} samples)"
        )
        log.record("val", step.iteration, values)


def validate(trainer: Trainer) -> dict[str, Any] | None:
    """Metrics of the trainer's model on its validation set (None: it has none); collective."""
    val_set = trainer.parts.val_set
    if val_set is None:
        return None
    from tpvkit.config import task_of
    from tpvkit.engine.checkpoint import unwrap_model
    from tpvkit.engine.evaluate import evaluate_model, has_occ3d_labels

    cfg, ctx = trainer.cfg, trainer.ctx
    sampler = ShardedSampler(
        len(val_set),  # type: ignore[arg-type]
        rank=ctx.rank,
        world_size=ctx.world_size,
        shuffle=False,
        pad=False,  # evaluate_model sums over ranks: no sample may be counted twice
    )
    loader = DataLoader(
        val_set,
        batch_size=cfg.eval.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        collate_fn=trainer.parts.collate_fn,
        pin_memory=trainer.device.type == "cuda",
    )
    # A task scored on a dense volume (Occ3D) is scored so when the validation samples link
    # Occ3D labels (a hand-built dataset without an info set is taken to carry them).
    occupancy = task_of(cfg).scored_on == "dense"
    val_infos = getattr(val_set, "infos", None)
    occ_labels = occupancy and (
        val_infos is None or has_occ3d_labels(val_infos, cfg.data.val_infos)
    )
    # Its own random stream: validating (or not) leaves the training streams untouched.
    with isolated_rng(mix_seed(cfg.train.seed, 7, trainer.iteration)):
        return evaluate_model(
            unwrap_model(trainer.model),  # plain forward: no DDP hooks during evaluation
            loader,
            trainer.device,
            num_classes=cfg.model.num_classes,
            voxel_metrics=cfg.eval.voxel_metrics,
            progress=False,
            occupancy=occupancy,
            occupancy_labels=occ_labels,
        )
