"""What the training loop does between steps besides stepping: checkpoints and validation.

The loop (tpvkit.engine.trainer) calls every hook after each optimiser step with a `StepInfo`;
a hook decides whether it is due and acts. Hooks run in order: the checkpoint is written before
the validation of the same step, so a crash during validation loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from tpvkit.engine.distributed import DistContext, ShardedSampler
from tpvkit.utils.rng import isolated_rng, mix_seed

if TYPE_CHECKING:
    from tpvkit.config import Config
    from tpvkit.engine.runlog import RunLog


class LoopParts(Protocol):
    """What the hooks read of the loop's parts (tpvkit.engine.trainer.TrainParts)."""

    val_set: Any  # a Dataset, or None: no validation
    collate_fn: Any


class Loop(Protocol):
    """What the hooks see of the training loop (tpvkit.engine.trainer.Trainer implements it):
    a protocol, so that the hooks need not import the loop that calls them."""

    cfg: Config
    ctx: DistContext
    device: torch.device
    model: nn.Module
    iteration: int
    parts: LoopParts

    def save(self) -> Path: ...


@dataclass(frozen=True)
class StepInfo:
    """Where the loop stands after a step (the same on every rank)."""

    iteration: int  # optimiser steps done
    epoch_done: bool  # this step ended an epoch
    finished: bool  # the schedule is complete
    stopping: bool  # the run stops early after this step (budget, signal, stop_after)


class Hook(Protocol):
    def after_step(self, trainer: Loop, step: StepInfo, log: RunLog) -> None: ...


class CheckpointHook:
    """Saves every `interval` iterations (0: at the end of every epoch), at the end of the
    schedule and before an early stop; keeps the newest `keep` iter_*.pth (trainer.save)."""

    def __init__(self, interval: int) -> None:
        self.interval = interval

    def due(self, step: StepInfo) -> bool:
        periodic = step.iteration % self.interval == 0 if self.interval > 0 else step.epoch_done
        return periodic or step.finished or step.stopping

    def after_step(self, trainer: Loop, step: StepInfo, log: RunLog) -> None:
        if self.due(step):
            log.info(f"saved {trainer.save()}")


class ValidationHook:
    """Scores the model on the validation set with the evaluators of its task every `interval`
    iterations (0: at the end of every epoch; with an interval also at the end of the
    schedule) and logs what they name (tpvkit.engine.evaluators.validation_record)."""

    def __init__(self, interval: int) -> None:
        self.interval = interval

    def due(self, step: StepInfo) -> bool:
        if self.interval > 0:
            return step.iteration % self.interval == 0 or step.finished
        return step.epoch_done

    def after_step(self, trainer: Loop, step: StepInfo, log: RunLog) -> None:
        if not self.due(step):
            return
        val_set = trainer.parts.val_set
        if val_set is not None:  # it can take a while: say so before the bar stops moving
            size = len(val_set)
            log.info(f"validation at iteration {step.iteration}: {size} samples ...")
        validated = validate(trainer)
        if validated is None:
            return
        values, text = validated
        log.info(
            f"validation at iteration {step.iteration}: {text} ({values['num_samples']} samples)"
        )
        log.record("val", step.iteration, values)


def validate(trainer: Loop) -> tuple[dict[str, Any], str] | None:
    """(the recorded values, the log line's scores) of the trainer's model on its validation
    set, scored by the evaluators of its task (None: it has none); collective."""
    val_set = trainer.parts.val_set
    if val_set is None:
        return None
    from tpvkit.config import task_of
    from tpvkit.data.dataset import build_dataloader
    from tpvkit.engine.checkpoint import unwrap_model
    from tpvkit.engine.evaluate import dense_labels_linked
    from tpvkit.engine.evaluators import (
        EvalOptions,
        build_evaluators,
        run_evaluators,
        validation_record,
    )

    cfg, ctx = trainer.cfg, trainer.ctx
    sampler = ShardedSampler(
        len(val_set),
        rank=ctx.rank,
        world_size=ctx.world_size,
        shuffle=False,
        pad=False,  # the evaluators sum over ranks: no sample may be counted twice
    )
    loader = build_dataloader(
        val_set,
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.data.num_workers,
        pin_memory=trainer.device.type == "cuda",
        sampler=sampler,
        collate_fn=trainer.parts.collate_fn,
        persistent_workers=False,
    )
    task = task_of(cfg)
    # a hand-built dataset without an info set is taken to carry whatever labels it scores
    val_infos = getattr(val_set, "infos", None)
    dense = val_infos is None or dense_labels_linked(task, val_infos, cfg.data.val_infos)
    evaluators = build_evaluators(
        task, EvalOptions(voxel_metrics=cfg.eval.voxel_metrics, dense_labels=dense)
    )
    # Its own random stream: validating (or not) leaves the training streams untouched.
    with isolated_rng(mix_seed(cfg.train.seed, 7, trainer.iteration)):
        results = run_evaluators(
            unwrap_model(trainer.model),  # plain forward: no DDP hooks during evaluation
            loader,
            trainer.device,
            evaluators,
            progress=ctx.is_main,
            desc="validate",
        )
    return validation_record(evaluators, results)
