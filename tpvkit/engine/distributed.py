"""One process or many: torchrun environment, process group, DDP wrapping and data sharding.

`tpvkit train` runs as a single process (CPU or one GPU) or under torchrun, which sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; nothing here hard-codes an address or a
port. NCCL is used on GPUs, gloo on CPUs. Every rank runs the same code; only rank 0 writes files.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from tpvkit.data.inputs import SceneInputs
from tpvkit.errors import TpvkitError
from tpvkit.utils.rng import mix_seed

__all__ = ["mix_seed"]  # re-exported: samplers and tests use it from here


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when init_distributed created the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as err:
        raise TpvkitError(f"environment variable {name}={raw!r} is not an integer") from err


def select_device(preference: str, local_rank: int = 0) -> torch.device:
    """train.device ("auto" | "cpu" | "cuda") -> this process's device (cuda:LOCAL_RANK)."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise TpvkitError(
            "train.device is 'cuda' but no CUDA GPU is visible; use --set train.device=cpu"
        )
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise TpvkitError(
                f"LOCAL_RANK {local_rank} but only {count} GPU(s) are visible: start at most "
                f"{count} processes per node (torchrun --nproc_per_node {count})"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A collate_batch dict with its tensors and its SceneInputs moved to `device`
    (asynchronously on CUDA)."""
    non_blocking = device.type == "cuda"
    return {
        k: v.to(device, non_blocking=non_blocking)
        if isinstance(v, torch.Tensor | SceneInputs)
        else v
        for k, v in batch.items()
    }


def init_distributed(device_preference: str = "auto") -> DistContext:
    """Read the torchrun environment; join the process group when WORLD_SIZE > 1.

    Reuses a process group that already exists (e.g. created by a caller) and then leaves its
    clean-up to that caller.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = select_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before NCCL init, so each rank talks from its own GPU
    if world_size <= 1:
        return DistContext(device=device)
    if dist.is_initialized():
        return DistContext(rank, world_size, local_rank, device, owns_group=False)
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise TpvkitError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} is not set: start multi-process "
            "training with torchrun (e.g. torchrun --nproc_per_node 8 -m tpvkit train ...)"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {}
    if backend == "nccl" and "device_id" in inspect.signature(dist.init_process_group).parameters:
        kwargs["device_id"] = device  # binds the communicator to this rank's GPU eagerly
    dist.init_process_group(
        backend=backend, init_method="env://", rank=rank, world_size=world_size, **kwargs
    )
    return DistContext(rank, world_size, local_rank, device, owns_group=True)


def cleanup_distributed(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def _group_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def reduce_over_ranks(tensors: Sequence[torch.Tensor], op: str = "sum") -> None:
    """Reduce ("sum" | "max") every tensor over the ranks of the initialised process group, in
    place; a no-op in one process. The one cross-rank reduction of tpvkit (evaluation counts,
    confusion matrices, the logged losses, the stop vote): a tensor away from the backend's
    device (CPU counts under NCCL) travels there and back."""
    if not _group_active():
        return
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    for t in tensors:
        if t.device == device:
            dist.all_reduce(t, op=ops[op])
        else:
            moved = t.to(device)
            dist.all_reduce(moved, op=ops[op])
            t.copy_(moved.to(t.device))


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when `flag` is True on at least one (one tiny collective)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    reduce_over_ranks([t], "max")
    return bool(t.item() > 0)


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's `obj`, in rank order (pickled through the process group)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel around `model` when distributed, else the model itself.

    static_graph: the set of parameters used is the same every iteration, which lets DDP
    tolerate parameters that take no part in the loss (e.g. BEV mode, frozen branches) without
    the per-iteration graph search of find_unused_parameters, and works with activation
    checkpointing.
    """
    if not ctx.distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, static_graph=True)


class ShardedSampler(Sampler[int]):
    """This rank's share of a dataset, reshuffled per epoch from (seed, epoch), resumable.

    Like torch's DistributedSampler: one permutation per epoch (the same on every rank), padded
    by wrapping around to a multiple of world_size when `pad` (training: every rank runs the same
    number of steps), then rank r takes positions r, r + world_size, ... Without `pad` (evaluation)
    no sample is repeated and ranks may get one sample fewer. `set_epoch(epoch, start)` skips the
    first `start` indices of this rank's share: the batches a resumed run has already done.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        pad: bool = True,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.pad = pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def _full_share(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if self.pad:
            total = math.ceil(self.num_samples / self.world_size) * self.world_size
            order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank :: self.world_size]

    def per_rank(self) -> int:
        """Indices per rank and epoch (with padding), i.e. before any skip."""
        if self.pad:
            return math.ceil(self.num_samples / self.world_size)
        return len(range(self.rank, self.num_samples, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self._full_share()[self.start :])

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start)
