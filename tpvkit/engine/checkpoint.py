"""Checkpoint files: atomic saves, safe (weights_only) loads, exact-resume state, weight loading.

A tpvkit checkpoint is a plain dict that `torch.load(path, weights_only=True)` can read: tensors,
dicts, lists, numbers and strings only. RNG states (tpvkit.utils.rng) are stored as tensors and
lists, the config as the plain dict of `tpvkit.config.to_dict` (its `task` always stated), the task
itself as `tpvkit.task.task_to_dict` under "task". Files are written through
`tpvkit.utils.io.atomic_path` so that a crash at any moment leaves the previous checkpoint intact.

`apply_model_weights` (through tpvkit.engine.inference.load_for_inference for eval and predict)
accepts a tpvkit checkpoint, a bare state dict, or a public TPVFormer checkpoint (mapped with
`public_to_tpvkit`), and refuses one that does not fit the config with a message naming what
differs. The checkpoint's contract is its stored task, its model.* (less RUNTIME_MODEL_KEYS) and
the INPUT_CONTRACT_KEYS of data.*.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import tpvkit
from tpvkit.config import Config, ConfigError, from_dict, infer_task_name, task_of, to_dict
from tpvkit.errors import TpvkitError
from tpvkit.models.checkpoint_keys import strip_module_prefix
from tpvkit.task import task_to_dict
from tpvkit.utils.io import atomic_path, copy_atomic
from tpvkit.utils.rng import capture_rng_state, restore_rng_state

__all__ = ["capture_rng_state", "copy_atomic", "restore_rng_state"]  # re-exported

CHECKPOINT_FORMAT = "tpvkit-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
LATEST_NAME = "latest.pth"
_ITER_PATTERN = re.compile(r"^iter_(\d+)\.pth$")

# Top-level prefixes of the public TPVFormer code's state dicts (current and pre-2023 names).
PUBLIC_PREFIXES = (
    "img_backbone.",
    "img_neck.",
    "tpv_head.",
    "tpv_aggregator.",
    "pts_bbox_head.",
    "fusion_head.",
)

# Model config keys that change neither the parameters nor what they mean: a checkpoint may be
# loaded under a different value (e.g. evaluate with another MSDA backend or chunk size).
RUNTIME_MODEL_KEYS = frozenset(
    {
        "model.checkpoint_activations",
        "model.channels_last",
        "model.encoder.fast_path",
        "model.encoder.dropout",
        "model.encoder.msda_backend",
        "model.head.voxel_chunk",
        "model.backbone.frozen_stages",
        "model.backbone.norm_eval",
    }
)

# What the weights expect of their input beyond model.*: the image pipeline (size, padding,
# normalisation, channel order) and the voxel convention of the labels and outputs. Every other
# data.* key (paths, batch size, workers, augmentation switches) is runtime and not compared.
INPUT_CONTRACT_KEYS = (
    "data.img_size",
    "data.size_divisor",
    "data.img_mean",
    "data.img_std",
    "data.to_rgb",
    "data.voxel_convention",
)

_MAX_LISTED = 5  # names listed in a mismatch message before "... and N more"


class CheckpointError(TpvkitError):
    """A checkpoint that is missing, unreadable or does not fit the model/config."""


# ---------------------------------------------------------------------------------------------
# File names and rotation


def iter_checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:06d}.pth"


def list_iter_checkpoints(work_dir: str | Path) -> list[tuple[int, Path]]:
    """(iteration, path) of every iter_*.pth in `work_dir`, oldest first."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    found = []
    for path in work_dir.iterdir():
        match = _ITER_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_resume_checkpoint(work_dir: str | Path) -> Path | None:
    """latest.pth if present, else the newest iter_*.pth, else None."""
    work_dir = Path(work_dir)
    latest = work_dir / LATEST_NAME
    if latest.is_file():
        return latest
    iters = list_iter_checkpoints(work_dir)
    return iters[-1][1] if iters else None


def resume_command(work_dir: str | Path) -> str:
    """The command that continues the run in `work_dir` (it reads the work dir's config)."""
    import shlex

    return f"tpvkit train --work-dir {shlex.quote(str(work_dir))} --resume"


def load_resume_checkpoint(work_dir: str | Path) -> tuple[Path, Any] | None:
    """(path, contents) of the checkpoint `--resume` continues from (None: there is none).

    A damaged one is refused with the newest intact iter_*.pth named and the command that
    resumes from it: the damaged files (and any newer damaged ones) are moved aside, not deleted.
    """
    path = find_resume_checkpoint(work_dir)
    if path is None:
        return None
    try:
        return path, load_checkpoint_file(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err}. {_intact_checkpoint_hint(Path(work_dir), path)}") from err


def _intact_checkpoint_hint(work_dir: Path, damaged: Path) -> str:
    import shlex

    aside = [damaged]
    for _, candidate in reversed(list_iter_checkpoints(work_dir)):
        if candidate == damaged:
            continue
        try:
            intact = isinstance(load_checkpoint_file(candidate), Mapping)
        except CheckpointError:
            intact = False
        if not intact:
            aside.append(candidate)
            continue
        moves = " && ".join(
            f"mv {shlex.quote(str(p))} {shlex.quote(str(p) + '.damaged')}" for p in aside
        )
        return (
            f"The newest intact checkpoint is {candidate}; resume from it with: {moves} && "
            f"{resume_command(work_dir)}"
        )
    return (
        f"No intact iter_*.pth is left in {work_dir}: restore the file from a copy, or start "
        "again in a new --work-dir"
    )


def rotate_checkpoints(work_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the `keep` newest iter_*.pth files (keep <= 0: keep all); return removed.

    latest.pth is a copy of the newest iter_*.pth (not a link), so it survives rotation.
    """
    if keep <= 0:
        return []
    removed = []
    for _, path in list_iter_checkpoints(work_dir)[:-keep]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------
# Saving and loading files


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """torch.save `state` to `path` atomically (temp file + rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
    return path


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True; one clear line for a missing, corrupt or unsafe file.

    The messages tell apart a file that is no PyTorch checkpoint at all (random bytes, another
    format), a PyTorch file cut short (an interrupted copy), and a genuine checkpoint that holds
    pickled Python objects, which only a trusted file should be given the unsafe load for.
    """
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.is_dir():
            found = find_resume_checkpoint(path)
            hint = f" (it is a directory; did you mean {found}?)" if found else " (a directory)"
        raise CheckpointError(f"checkpoint not found: {path}{hint}")
    kind = _torch_file_kind(path)
    if kind == "other":
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch checkpoint (corrupt or another format): give "
            "the .pth written by `tpvkit train` or a TPVFormer checkpoint"
        )
    if kind == "truncated":
        raise CheckpointError(
            f"checkpoint {path} is truncated/corrupt: its zip directory is missing (was it "
            "copied completely?)"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        text = str(err)
        first = text.splitlines()[0] if text else type(err).__name__
        if "Unsupported global" in text or "Unsupported class" in text:
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects that a safe load refuses "
                f"({_unsupported_global(text)}). Loading it with weights_only=False runs "
                "arbitrary code from the file: do that only for a file you trust, and re-save "
                "its state dict: torch.save(torch.load(p, weights_only=False)['state_dict'], "
                "'clean.pth')"
            ) from err
        if isinstance(err, EOFError) or "Ran out of input" in text or "truncated" in text.lower():
            raise CheckpointError(
                f"checkpoint {path} is truncated/corrupt ({first}) (was it copied completely?)"
            ) from err
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({first}): it is corrupt (was it copied "
            "completely?) or written by an incompatible PyTorch"
        ) from err


_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy (non-zip) format starts with a pickled magic number: protocol 2 opcode.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _torch_file_kind(path: Path) -> str:
    """ "zip" (torch >= 1.6), "legacy", "truncated" (a zip cut short) or "other" (not torch)."""
    import zipfile

    with open(path, "rb") as fh:
        head = fh.read(len(_LEGACY_MAGIC))
    if head.startswith(_ZIP_MAGIC):
        return "zip" if zipfile.is_zipfile(path) else "truncated"
    if head == _LEGACY_MAGIC:
        return "legacy"
    if len(head) < len(_LEGACY_MAGIC) and _LEGACY_MAGIC.startswith(head) and head:
        return "truncated"
    return "other"


def _unsupported_global(text: str) -> str:
    """The class torch's refusal names ("argparse.Namespace"), else its first line."""
    match = re.search(r"Unsupported (?:global|class):? (?:GLOBAL )?([\w.]+)", text)
    return f"unsupported class {match.group(1)}" if match else text.splitlines()[0]


def is_tpvkit_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT


def build_checkpoint(
    *,
    model: nn.Module,
    cfg: Config,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    epoch: int = 0,
    iteration: int = 0,
    iter_in_epoch: int = 0,
    rng: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dict written for one training step: everything `--resume` needs, weights_only-safe.

    With only `model` and `cfg` it is a weights-only checkpoint that eval and predict accept.

    `epoch`/`iter_in_epoch` name the next batch to run: (epoch, 0) after a finished epoch.
    `rng` is one capture_rng_state() dict, or a list of them (one per rank) under DDP.
    """
    task = task_of(cfg)
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "tpvkit_version": tpvkit.__version__,
        "torch_version": str(torch.__version__),
        "config": {**to_dict(cfg), "task": task.name},
        "task": task_to_dict(task),
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "iteration": int(iteration),
        "iter_in_epoch": int(iter_in_epoch),
        "rng": rng,
        "extra": dict(extra or {}),
    }


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


# ---------------------------------------------------------------------------------------------
# Config comparison


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def config_differences(
    stored: Mapping[str, Any], cfg: Config, section: str = "model"
) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint value, config value) for every `section` key that differs.

    Runtime-only model keys (RUNTIME_MODEL_KEYS) are not compared. A key the stored config lacks
    (a checkpoint from an older tpvkit) is compared against the default, which is what that
    version used.
    """
    current = _flatten(to_dict(cfg))
    defaults = _flatten(to_dict(Config()))
    saved = _flatten(stored)
    prefix = f"{section}."
    diffs = []
    for key, value in current.items():
        if not key.startswith(prefix) or key in RUNTIME_MODEL_KEYS:
            continue
        old = saved.get(key, defaults.get(key))
        if not _same(old, value):
            diffs.append((key, old, value))
    return diffs


def stored_task_name(stored: Mapping[str, Any]) -> str:
    """The task a stored config states, or (tpvkit 0.2: none stated) the one config.
    infer_task_name gives it; "" when the stored config does not load at all."""
    if stored.get("task"):
        return str(stored["task"])
    try:
        return infer_task_name(from_dict(dict(stored)))
    except ConfigError:
        return ""


def contract_differences(stored: Mapping[str, Any], cfg: Config) -> list[tuple[str, Any, Any]]:
    """config_differences over the checkpoint's input contract: the task, every model.* key
    that is not runtime (RUNTIME_MODEL_KEYS) and the INPUT_CONTRACT_KEYS of data.*."""
    diffs = config_differences(stored, cfg, "model")
    old_task, new_task = stored_task_name(stored), task_of(cfg).name
    if old_task and old_task != new_task:
        diffs.insert(0, ("task", old_task, new_task))
    current = _flatten(to_dict(cfg))
    defaults = _flatten(to_dict(Config()))
    saved = _flatten(stored)
    for key in INPUT_CONTRACT_KEYS:
        old = saved.get(key, defaults.get(key))
        if not _same(old, current[key]):
            diffs.append((key, old, current[key]))
    return diffs


def check_contract(stored: Mapping[str, Any], cfg: Config, path: str | Path) -> None:
    """Refuse `cfg` where it differs from the checkpoint's stored config on the input contract,
    naming every key, both values and the pasteable `--set` that matches the checkpoint."""
    diffs = contract_differences(stored, cfg)
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} was trained with a different model config or input contract: "
            f"{format_config_differences(diffs)}. Use the config it was trained with (leave "
            f"CONFIG out to use the one it stores), or add: {format_overrides(diffs)}"
        )


def format_config_differences(diffs: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{key} {old!r} (checkpoint) vs {new!r} (config)" for key, old, new in diffs)


def override_text(key: str, value: Any) -> str:
    """`key=value` as `--set` parses it back, without spaces so a shell passes it as printed
    (`data.img_size=[224,400]`); quoted only where the shell would split or expand it."""
    import json
    import shlex

    import yaml

    if isinstance(value, str):
        # A bare word reads back as the same string; anything else keeps its JSON quotes.
        plain = yaml.safe_load(value) == value if value else False
        text = value if plain else json.dumps(value)
    else:
        text = json.dumps(value, separators=(",", ":"))
    item = f"{key}={text}"
    # Brackets and commas survive an unquoted shell word (no file is named like the pattern).
    if shlex.quote(item.replace("[", "").replace("]", "")) != item.replace("[", "").replace(
        "]", ""
    ):
        return shlex.quote(item)
    return item


def format_overrides(diffs: list[tuple[str, Any, Any]]) -> str:
    """`--set k=v` for every difference, with the checkpoint's values (pasteable)."""
    return " ".join(f"--set {override_text(key, old)}" for key, old, _ in diffs)


def config_from_checkpoint(path: str | Path) -> Config:
    """The config stored in a tpvkit checkpoint (e.g. to evaluate it without its YAML file)."""
    from tpvkit.config import from_dict

    ckpt = load_checkpoint_file(path)
    if not is_tpvkit_checkpoint(ckpt):
        raise CheckpointError(f"{path} is not a tpvkit checkpoint: it stores no config")
    return from_dict(ckpt["config"])


# ---------------------------------------------------------------------------------------------
# Model weights for eval / predict


def _extract_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], Any]:
    """(state dict, stored config dict or None) of a tpvkit / public / bare checkpoint."""
    if is_tpvkit_checkpoint(obj):
        return dict(obj["model"]), obj.get("config")
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):  # the public code and common trainers nest it
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                return dict(inner), None
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj), None
    raise CheckpointError(
        f"{path} holds no model weights: expected a tpvkit checkpoint, a TPVFormer checkpoint "
        "with 'state_dict', or a plain state dict"
    )


def _state_in_tpvkit_names(
    obj: Any, path: Path, target: nn.Module, cfg: Config
) -> tuple[dict[str, torch.Tensor], str, Any]:
    """(state dict named as `target`'s parameters, "tpvkit" | "state_dict" | "public", stored
    config dict or None) of a checkpoint already read: DDP's "module." prefix stripped, a public
    TPVFormer layout mapped with `public_to_tpvkit` for `cfg.model`."""
    state, stored_cfg = _extract_state_dict(obj, path)
    state = strip_module_prefix(state)
    source = "tpvkit" if is_tpvkit_checkpoint(obj) else "state_dict"
    if _is_public_layout(state, set(target.state_dict())):
        from tpvkit.models.checkpoint_keys import public_to_tpvkit

        try:
            state = public_to_tpvkit(state, cfg.model)
        except TpvkitError as err:  # its message speaks of "the checkpoint": name the file
            raise CheckpointError(f"public TPVFormer checkpoint {path}: {err}") from err
        source = "public"
    return state, source, stored_cfg


def _is_public_layout(state: Mapping[str, torch.Tensor], model_keys: set[str]) -> bool:
    own = sum(k in model_keys for k in state)
    public = sum(k.startswith(PUBLIC_PREFIXES) for k in state)
    return public > own


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def state_dict_mismatches(
    model: nn.Module, state: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, 'name: ckpt shape vs model shape') between a model and a state."""
    own = unwrap_model(model).state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(_shape_mismatch(k, state, own) for k in own if _misshaped(k, state, own))
    return missing, unexpected, shapes


def _misshaped(
    key: str, state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> bool:
    return key in state and tuple(state[key].shape) != tuple(own[key].shape)


def _shape_mismatch(
    key: str, state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> str:
    return f"{key}: {tuple(state[key].shape)} (checkpoint) vs {tuple(own[key].shape)} (model)"


def load_model_weights(
    model: nn.Module, path: str | Path, cfg: Config, *, check_config: bool = True
) -> dict[str, Any]:
    """Load weights from `path` into `model` (built from `cfg.model`); refuse any mismatch.

    Accepts a tpvkit checkpoint (its stored model config must equal `cfg.model` apart from
    runtime-only keys), a bare tpvkit state dict, or a public TPVFormer checkpoint (detected by
    its key prefixes, mapped with `tpvkit.models.checkpoint_keys.public_to_tpvkit`). A "module."
    prefix from DDP saving is stripped. Every parameter must match by name and shape.

    Returns {"source": "tpvkit" | "state_dict" | "public", "iteration", "epoch",
    "tpvkit_version"} (the last three None when the file does not record them).
    """
    path = Path(path)
    return apply_model_weights(model, load_checkpoint_file(path), cfg, path, check_config)


def apply_model_weights(
    model: nn.Module, obj: Any, cfg: Config, path: str | Path, check_config: bool = True
) -> dict[str, Any]:
    """`load_model_weights` for a checkpoint already read with `load_checkpoint_file`."""
    path = Path(path)
    target = unwrap_model(model)
    state, source, stored_cfg = _state_in_tpvkit_names(obj, path, target, cfg)
    if check_config and stored_cfg is not None:
        check_contract(stored_cfg, cfg, path)
    missing, unexpected, shapes = state_dict_mismatches(target, state)
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch: {_listing(shapes)}")
        if missing:
            parts.append(f"missing in the checkpoint: {_listing(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_listing(unexpected)}")
        raise CheckpointError(
            f"checkpoint {path} does not fit the model built from config '{cfg.name}': "
            + "; ".join(parts)
            + ". Check that the config matches the checkpoint (model.dim, tpv_h/w/z, layers)"
        )
    target.load_state_dict(state, strict=True)
    meta = obj if is_tpvkit_checkpoint(obj) else {}
    return {
        "source": source,
        "iteration": meta.get("iteration"),
        "epoch": meta.get("epoch"),
        "tpvkit_version": meta.get("tpvkit_version"),
    }


# ---------------------------------------------------------------------------------------------
# Initial weights of a fresh run (train.load_from)


def check_load_from(path: str | Path) -> Path:
    """train.load_from's file, refused with the fix when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"train.load_from: {path} does not exist; give the checkpoint to start from, or "
            "leave train.load_from empty to start from scratch"
        )
    return path


def load_initial_weights(
    model: nn.Module, path: str | Path, cfg: Config, modules: list[str] | tuple[str, ...] = ()
) -> tuple[int, list[str]]:
    """Copy weights from the checkpoint at `path` into `model` before a fresh run trains it.

    `modules` names the model parts to take (tpvkit.config.MODEL_PARTS): each must be in the
    file whole, with the model's shapes, or the run is refused, naming the tensors. Without
    `modules` every tensor whose name and shape match is taken. The rest of the model keeps its
    fresh initialisation. The file is a tpvkit checkpoint (of any config), a public TPVFormer
    checkpoint (mapped with `public_to_tpvkit`) or a plain state dict. Returns (tensors taken,
    the model's tensors left as initialised).
    """
    path = check_load_from(path)
    target = unwrap_model(model)
    try:
        state, _, _ = _state_in_tpvkit_names(load_checkpoint_file(path), path, target, cfg)
    except CheckpointError as err:
        raise CheckpointError(f"train.load_from: {err}") from err
    prefixes = tuple(f"{m}." for m in modules)
    own = target.state_dict()
    wanted = [k for k in own if not prefixes or k.startswith(prefixes)]
    missing = [k for k in wanted if k not in state]
    shapes = [_shape_mismatch(k, state, own) for k in wanted if _misshaped(k, state, own)]
    fits = [k for k in wanted if k in state and not _misshaped(k, state, own)]
    if prefixes and (missing or shapes or not wanted):
        problems = [f"shape mismatch: {_listing(shapes)}"] if shapes else []
        if missing:
            problems.append(f"missing in the checkpoint: {_listing(missing)}")
        if not wanted:
            problems.append("the model has no such part")
        raise CheckpointError(
            f"train.load_from: {path} cannot give the model built from '{cfg.name}' its "
            f"{', '.join(modules)}: " + "; ".join(problems) + ". Name the parts that match "
            "in train.load_from_modules, or leave it empty to take what matches"
        )
    if not fits:
        raise CheckpointError(
            f"train.load_from: no tensor of {path} matches the model built from '{cfg.name}' by "
            "name and shape; is it a checkpoint of this kind of model?"
        )
    target.load_state_dict({k: state[k] for k in fits}, strict=False)
    taken = set(fits)
    return len(taken), [k for k in own if k not in taken]
