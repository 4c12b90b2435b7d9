"""Typed configuration: dataclasses with real defaults, YAML files that state what differs, and
dotted command-line overrides.

The defaults are the public lidarseg Base model (TPV 200x200x16, C=128, ResNet-101-DCN) and its
training recipe. A YAML file in configs/ may name a `_base_` config (another shipped name or a
path) and then lists only the keys that differ. Unknown keys are errors that name the nearest
valid key.

The task (what the model predicts: label space, grid frame, the ground truth that scores it;
tpvkit.task.TASKS) is the top-level key `task`. A config or stored checkpoint config that does
not state it gets it from one rule, `infer_task_name`, applied once where the config is made
(load_config, from_dict, apply_overrides), and from then on states it; a bare `Config()` in
code leaves it "" and `task_of` applies the same rule.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.resources
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tpvkit.constants import IMG_MEAN_BGR, IMG_STD, NUM_CLASSES, POINT_CLOUD_RANGE
from tpvkit.errors import TpvkitError
from tpvkit.task import SUPERVISION_MASKS, TASKS, Grid, Task, get_task, voxel_grid_shape, voxel_size

# The YAML files live in the repository's top-level configs/ folder; a wheel or `pip install .`
# ships them as the package data folder tpvkit/configs/ (see setup.py). A source checkout on
# PYTHONPATH (or an editable install) has only the former.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(TpvkitError, ValueError):
    """A config file or override that cannot be applied; the message says what to change."""


@dataclass
class BackboneConfig:
    depth: int = 101  # 18 | 34 | 50 | 101
    style: str = "caffe"  # "caffe": stride on the 1x1 conv; "pytorch": stride on the 3x3 conv
    base_channels: int = 64  # width of the stem; < 64 gives the slim backbones of the tiny configs
    frozen_stages: int = 1  # -1: none; 0: stem; k: stem and stages 1..k
    norm_eval: bool = True  # BatchNorm frozen: running stats and affine parameters fixed
    dcn_stages: list[bool] = field(default_factory=lambda: [False, False, True, True])
    out_indices: list[int] = field(default_factory=lambda: [1, 2, 3])  # C3, C4, C5


@dataclass
class NeckConfig:
    num_outs: int = 4  # FPN levels; the last one is an extra stride-2 conv on the top output


@dataclass
class EncoderConfig:
    num_hcab: int = 3  # hybrid cross-attention blocks (CVHA + image cross-attention + FFN)
    num_hab: int = 2  # hybrid attention blocks (CVHA + FFN)
    num_heads: int = 8
    ffn_dim: int = 256
    dropout: float = 0.1
    num_points_in_pillar: list[int] = field(default_factory=lambda: [4, 32, 32])  # hw, zh, wz
    num_points_ica: list[int] = field(default_factory=lambda: [8, 64, 64])  # hw, zh, wz
    cvha_num_anchors: int = 16
    cvha_num_points: int = 32
    cvha_mode: str = "full"  # "full": cross-view hybrid attention; "hw_self": occupancy release
    # Heights of the ICA pillar points: "center": centres of equal sub-intervals of the axis;
    # "tpvformer": the public rule (0.5 m inside each end), for loading public checkpoints.
    pillar_sampling: str = "center"
    pos_dims: list[int] = field(default_factory=lambda: [48, 48, 32])  # h, w, z
    num_cams: int = 6
    num_levels: int = 4
    msda_backend: str = "auto"  # see tpvkit.ops.msda.available_backends()
    # Same result with less work: image cross-attention projects each query once and skips the
    # sub-queries whose samples all miss the images, cross-view attention builds its sampling
    # locations in fewer passes. False: the straightforward formulation, which the ONNX export
    # traces (TPVFormer.export_mode) and tests and benchmarks compare against.
    fast_path: bool = True


@dataclass
class HeadConfig:
    scale_h: int = 1  # plane upsampling factors before decoding
    scale_w: int = 1
    scale_z: int = 1
    voxel_chunk: int = 65536  # voxels decoded per chunk
    # "center": a point samples the planes at its continuous position (tpvkit's convention);
    # "tpvformer": sample at the integer voxel index with align_corners=False, as the public code.
    point_sampling: str = "center"
    # Residual 3x3 conv blocks per plane at the output resolution, before decoding (0: none,
    # the public head). See docs/learning.md for what they buy and cost.
    refine_layers: int = 0
    # Residual 3x3x3 conv blocks on the coarse volume (the three planes summed at the TPV
    # resolution, tpv_w x tpv_h x tpv_z), whose change is upsampled trilinearly to the output
    # grid and added to every voxel's feature (0: none, the public head; TPV mode only).
    volume_refine_layers: int = 0
    # Added to the voxel logits the model decides with (eval mode: inference, validation,
    # export; the training loss sees raw logits): one value per class, or empty for none.
    # Written by training when train.occ_sampled_prior_correction applies (docs/occupancy.md).
    voxel_logit_offset: list[float] = field(default_factory=list)


@dataclass
class DepthConfig:
    # Depth-aware lifting (tpvkit's; the public configs have none). bins > 0 adds a per-pixel
    # depth classifier on one FPN level (uniform bins over [min_depth, max_depth] metres of
    # camera depth), trained from the LiDAR points projected into the cameras
    # (train.depth_loss_weight). With weight_attention, the image cross-attention scales the
    # samples around each pillar point by the predicted likelihood of that point's depth at
    # its pixel, relative to the pixel's most likely depth (1 everywhere before training, so
    # a fresh model attends as the public one); without it the depth head is an auxiliary
    # loss only. docs/model.md.
    bins: int = 0
    min_depth: float = 1.0
    max_depth: float = 45.0
    level: int = 1  # FPN level (0: the finest) whose features predict depth
    weight_attention: bool = True


# The model's top-level parts (tpvkit.models.tpvformer.TPVFormer), as train.load_from_modules
# names them.
MODEL_PARTS: tuple[str, ...] = ("backbone", "neck", "encoder", "head", "depth_head")
# Overrides that take the LiDAR depth loss and its head off any config (the demo, benchmarks
# and tests that compare against the recipe without it).
NO_DEPTH_OVERRIDES: tuple[str, ...] = ("model.depth.bins=0", "train.depth_loss_weight=0")


@dataclass
class ModelConfig:
    mode: str = "tpv"  # "tpv": three planes; "bev": the top plane only (BEV baseline)
    dim: int = 128
    tpv_h: int = 200
    tpv_w: int = 200
    tpv_z: int = 16
    num_classes: int = NUM_CLASSES
    point_cloud_range: list[float] = field(default_factory=lambda: list(POINT_CLOUD_RANGE))
    checkpoint_activations: bool = False  # recompute each encoder layer / ResNet block in backward
    channels_last: bool = False  # backbone convolutions in channels-last memory format
    # The frame of point_cloud_range and the output grid, i.e. the frame lidar2img maps from:
    # "lidar" (LIDAR_TOP, the lidarseg models) or "ego" (ego frame of the key frame, Occ3D).
    grid_frame: str = "lidar"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)


@dataclass
class DataConfig:
    train_infos: str = "data/nuscenes_infos_train.json"
    val_infos: str = "data/nuscenes_infos_val.json"
    dataroot: str = ""  # "" = the dataroot recorded in the info file
    img_size: list[int] = field(default_factory=lambda: [900, 1600])  # resize target (H, W)
    size_divisor: int = 32
    img_mean: list[float] = field(default_factory=lambda: list(IMG_MEAN_BGR))
    img_std: list[float] = field(default_factory=lambda: list(IMG_STD))
    to_rgb: bool = False  # False: BGR channel order (caffe backbones)
    photometric_aug: bool = True
    # Colour changes of photometric_aug: a hue shift of up to this many degrees and a random
    # permutation of the colour channels (mmdet's defaults). Where colour carries the class
    # (the synthetic world's classes are colour families) 0 and false keep classes apart.
    photometric_hue_delta: float = 18.0
    photometric_channel_swap: bool = True
    grid_mask: bool = True
    grid_mask_prob: float = 0.7
    # Training only: mirror the grid frame in x and, independently, in y (each with p=0.5);
    # the targets, the points and every camera projection flip together, the images do not
    # (BEVDet's BEV-space flip). It breaks the link between a grid position and the classes
    # the training streets happen to have there. Needs a range symmetric in x and y.
    grid_flip: bool = False
    # "exact": voxel size = range / grid; "tpvformer": range / (grid - 1), the public code's rule
    voxel_convention: str = "exact"
    batch_size: int = 1
    num_workers: int = 2


@dataclass
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.01
    backbone_lr_mult: float = 0.1
    grad_clip: float = 35.0
    warmup_iters: int = 500
    warmup_start_lr: float = 1e-5
    min_lr: float = 1e-6


@dataclass
class TrainConfig:
    epochs: int = 24
    max_iters: int = 0  # > 0 caps the run (and sets the schedule length)
    max_minutes: float = 0.0  # > 0 stops after this wall-clock budget, with a checkpoint
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: str = "none"  # "none" | "bf16" | "fp16" (GPU only)
    lovasz_weight: float = 1.0
    ce_weight: float = 1.0
    # Which loss trains the model (tpvkit.models.losses.LOSSES): "lidarseg" (Lovasz on
    # points + CE on point-voted voxels), "occ3d" (CE + Lovasz on dense Occ3D voxel labels) or
    # "tpv_occupancy" (the public occupancy recipe: CE + Lovasz on point-voted voxels, free = 17
    # where no point falls).
    loss: str = "lidarseg"
    # Voxels the "occ3d" loss sees: "camera" (inside mask_camera only), "lidar" (inside
    # mask_lidar), "camera_lidar" (inside either) or "all" (docs/learning.md: when each is valid).
    occ_loss_mask: str = "camera"
    # Cross-entropy class weights from the training split's label frequencies inside the
    # supervised voxels: "none", "inv_log" (ENet, 1/ln(1.02+f)), "inv_sqrt", "inv_freq".
    class_weights: str = "none"
    # The training split's class frequencies (one per class, inside the supervised voxels);
    # empty: counted once when training starts, then stored here (config.yaml, checkpoints).
    class_frequencies: list[float] = field(default_factory=list)
    # Initialise the classifier bias to log(class frequency) at the start of a fresh run.
    init_bias_from_frequencies: bool = False
    lovasz_free: bool = True  # include free space in the Lovasz term ("occ3d")
    sem_scal_weight: float = 0.0  # MonoScene's semantic scene-class affinity loss ("occ3d")
    geo_scal_weight: float = 0.0  # MonoScene's geometric scene-class affinity loss ("occ3d")
    # > 0: the "occ3d" loss decodes only a sample of the supervised voxels: every occupied one
    # plus this many free ones per occupied voxel (at least occ_min_free_samples); 0: all.
    occ_free_per_occupied: float = 0.0
    occ_min_free_samples: int = 4096
    # With the sampled loss, free is seen occ_free_per_occupied times per occupied voxel
    # instead of its natural ratio r, so the model learns the odds of free x
    # occ_free_per_occupied / r. When training starts, write log(r / occ_free_per_occupied)
    # on the free class into model.head.voxel_logit_offset (unless that is set), so that
    # decisions use the data's prior again (logit adjustment).
    occ_sampled_prior_correction: bool = True
    # Weight of the depth classifier's cross-entropy against the LiDAR depth of each feature
    # cell (the nearest point projected into it); needs model.depth.bins > 0 and loss occ3d.
    depth_loss_weight: float = 0.0
    # Start a fresh run from another checkpoint's weights (not --resume: iteration 0, a new
    # optimiser and schedule), as the public TPVFormer recipe starts from an FCOS3D checkpoint:
    # a tpvkit checkpoint, a public TPVFormer checkpoint or a plain state dict. With
    # load_from_modules (parts of the model: backbone, neck, encoder, head, depth_head) those
    # parts are taken, each whole and with the model's shapes, and the rest keep their fresh
    # initialisation; empty: every tensor whose name and shape match. Logged either way.
    load_from: str = ""
    load_from_modules: list[str] = field(default_factory=list)
    log_interval: int = 10
    val_interval: int = 0  # iterations between validations; 0 = at the end of every epoch
    ckpt_interval: int = 0  # iterations between checkpoints; 0 = at the end of every epoch
    keep_checkpoints: int = 2


@dataclass
class EvalConfig:
    split: str = "val"
    batch_size: int = 1
    voxel_metrics: bool = True  # also score the voxel-lookup predictions


@dataclass
class Config:
    name: str = "tpv_lidarseg_base"
    # What the model predicts, a name of tpvkit.task.TASKS: "lidarseg", "tpv_occupancy",
    # "occ3d". "" (not stated): named by infer_task_name when the config is loaded.
    task: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------
# Loading, merging, overriding


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _nearest(key: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(key, choices, n=1, cutoff=0.0)
    return match[0] if match else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotated type `tp`, converting where it is lossless."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _merge(obj: Any, data: dict[str, Any], prefix: str) -> None:
    """Apply a nested dict onto the dataclass instance `obj` in place, checking every key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    types_ = _field_types(type(obj))
    for key, value in data.items():
        where = f"{prefix}{key}"
        if not isinstance(key, str) or key not in types_:
            key = str(key)
            near = _nearest(key, list(types_))
            hint = f" (did you mean '{prefix}{near}'?)" if near else ""
            raise ConfigError(f"unknown config key '{where}'{hint}")
        tp = types_[key]
        if dataclasses.is_dataclass(tp):
            _merge(getattr(obj, key), value, where + ".")
        else:
            setattr(obj, key, _coerce(value, tp, where))


def all_keys(cfg: object | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the config tree (or of one of its section dataclasses), for help
    texts and error messages."""
    cfg = Config() if cfg is None else cfg
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(all_keys(value, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _config_folders() -> list[Path]:
    """Where shipped configs are found: the installed package data, then a source checkout's."""
    folders = []
    packaged = importlib.resources.files("tpvkit") / "configs"
    # An installed wheel is a folder on disk; a zipped install would need extracting first.
    if isinstance(packaged, Path) and packaged.is_dir():
        folders.append(packaged)
    if CONFIG_DIR.is_dir():
        folders.append(CONFIG_DIR)
    return folders


def shipped_configs() -> dict[str, Path]:
    """Names of the configs shipped with tpvkit -> their YAML files."""
    found: dict[str, Path] = {}
    for folder in _config_folders():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def resolve_config_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    shipped = shipped_configs()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    if not shipped:
        raise ConfigError(
            f"no config named '{name_or_path}' and no shipped configs were found (the install "
            "lacks tpvkit/configs/*.yaml): reinstall tpvkit or give a YAML path"
        )
    near = _nearest(str(name_or_path), list(shipped))
    raise ConfigError(
        f"no config named '{name_or_path}': give a YAML path or one of {', '.join(shipped)}"
        + (f" (did you mean '{near}'?)" if near else "")
    )


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """The YAML mappings from the root `_base_` down to `path`, in merge order."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path} includes itself through _base_")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {path} is not a UTF-8 text (YAML) file: {err}") from err
    except RecursionError as err:
        raise ConfigError(f"config {path} nests too deeply to be a config") from err
    except OSError as err:
        raise ConfigError(f"config {path} cannot be read: {err.strerror or err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    base = data.pop("_base_", None)
    chain: list[dict[str, Any]] = []
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(
                f"config {path}: _base_ must name a shipped config or a YAML path, got {base!r}"
            )
        base_path = Path(base)
        if not base_path.is_absolute() and (path.parent / base_path).is_file():
            base_path = path.parent / base_path
        else:
            base_path = resolve_config_path(str(base))
        chain = _load_yaml_chain(base_path, (*seen, path))
    return [*chain, data]


def parse_override(text: str) -> tuple[str, Any]:
    """'model.encoder.num_hcab=2' -> ('model.encoder.num_hcab', 2); values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. train.max_iters=100)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"override '{text}': the value is not valid YAML: {first}") from err
    return key.strip(), value


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply dotted overrides to a copy of `cfg`."""
    cfg = copy.deepcopy(cfg)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for key, value in items:
        nested: dict[str, Any] = {}
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        _merge(cfg, nested, "")
    validate(cfg)
    return settle_task(cfg)


def from_dict(data: dict[str, Any]) -> Config:
    """The Config of a plain dict (e.g. a checkpoint's stored config); one that does not state
    its task (tpvkit 0.2) gets it from infer_task_name, here, once."""
    cfg = Config()
    _merge(cfg, data, "")
    validate(cfg)
    return settle_task(cfg)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_config(
    name_or_path: str | Path | None = None, overrides: list[str] | None = None
) -> Config:
    """Build a Config from defaults, a YAML file (or shipped name) and dotted overrides."""
    cfg = Config()
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        for data in _load_yaml_chain(path):
            _merge(cfg, data, "")
        if "name" not in _load_yaml_chain(path)[-1]:
            cfg.name = path.stem
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    return settle_task(cfg)


# ---------------------------------------------------------------------------------------------
# The task


def infer_task_name(cfg: Config) -> str:
    """The task of a config that does not state it (tpvkit 0.2 configs and checkpoints): the
    one rule, from what such a config holds.

    18 classes on an ego-frame grid: "occ3d"; 18 on a lidar-frame grid: "tpv_occupancy" (the
    released occupancy recipe, lidarseg classes + empty); 17 on a lidar-frame grid: "lidarseg".
    Anything else must state `task`.
    """
    m = cfg.model
    if m.num_classes == 18:
        return "occ3d" if m.grid_frame == "ego" else "tpv_occupancy"
    if m.num_classes == 17 and m.grid_frame == "lidar":
        return "lidarseg"
    raise ConfigError(
        f"task: a config with model.num_classes={m.num_classes} on a {m.grid_frame}-frame grid "
        f"must state its task (one of {', '.join(TASKS)})"
    )


def settle_task(cfg: Config) -> Config:
    """Write the inferred task into `cfg` (in place) when it states none; returns `cfg`."""
    if not cfg.task:
        cfg.task = infer_task_name(cfg)
    return cfg


def model_grid(cfg: Config) -> Grid:
    """The model's output grid: tpv size x head scales over model.point_cloud_range, in
    model.grid_frame, voxel size by data.voxel_convention."""
    m = cfg.model
    shape = voxel_grid_shape(
        m.tpv_w, m.tpv_h, m.tpv_z, m.head.scale_w, m.head.scale_h, m.head.scale_z
    )
    size = voxel_size(m.point_cloud_range, shape, cfg.data.voxel_convention)
    return Grid(
        frame=m.grid_frame,
        range=tuple(float(v) for v in m.point_cloud_range),
        shape=shape,
        voxel_size=(float(size[0]), float(size[1]), float(size[2])),
    )


def task_of(cfg: Config) -> Task:
    """The Task `cfg` states (tpvkit.task.TASKS), on the model's own grid."""
    return get_task(cfg.task or infer_task_name(cfg)).with_grid(model_grid(cfg))


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(choices)}")


def validate(cfg: Config) -> None:
    """Cross-field checks that a type annotation cannot express."""
    m = cfg.model
    _choice(m.mode, ("tpv", "bev"), "model.mode")
    _choice(m.backbone.style, ("caffe", "pytorch"), "model.backbone.style")
    _choice(m.encoder.cvha_mode, ("full", "hw_self"), "model.encoder.cvha_mode")
    _choice(m.head.point_sampling, ("center", "tpvformer"), "model.head.point_sampling")
    _choice(m.encoder.pillar_sampling, ("center", "tpvformer"), "model.encoder.pillar_sampling")
    _choice(cfg.data.voxel_convention, ("exact", "tpvformer"), "data.voxel_convention")
    _choice(cfg.train.amp, ("none", "bf16", "fp16"), "train.amp")
    _choice(cfg.train.device, ("auto", "cpu", "cuda"), "train.device")
    _choice(m.grid_frame, ("lidar", "ego"), "model.grid_frame")
    _choice(cfg.train.loss, ("lidarseg", "occ3d", "tpv_occupancy"), "train.loss")
    _choice(cfg.train.occ_loss_mask, SUPERVISION_MASKS, "train.occ_loss_mask")
    for part in cfg.train.load_from_modules:
        _choice(part, MODEL_PARTS, "train.load_from_modules")
    _choice(
        cfg.train.class_weights, ("none", "inv_log", "inv_sqrt", "inv_freq"), "train.class_weights"
    )
    if cfg.train.class_frequencies and len(cfg.train.class_frequencies) != m.num_classes:
        raise ConfigError(
            f"train.class_frequencies: give {m.num_classes} values (model.num_classes), "
            f"got {len(cfg.train.class_frequencies)}"
        )
    if m.head.voxel_logit_offset and len(m.head.voxel_logit_offset) != m.num_classes:
        raise ConfigError(
            f"model.head.voxel_logit_offset: give {m.num_classes} values (model.num_classes) "
            f"or none, got {len(m.head.voxel_logit_offset)}"
        )
    if m.head.refine_layers < 0:
        raise ConfigError(f"model.head.refine_layers: {m.head.refine_layers} must be 0 or more")
    if m.head.volume_refine_layers < 0 or (m.head.volume_refine_layers and m.mode != "tpv"):
        raise ConfigError(
            f"model.head.volume_refine_layers: {m.head.volume_refine_layers} must be 0 or more, "
            "and 0 in BEV mode (model.mode: bev has no volume to refine)"
        )
    d = m.depth
    if d.bins < 0 or (d.bins and not 0.0 < d.min_depth < d.max_depth):
        raise ConfigError(
            f"model.depth: bins {d.bins} must be 0 or more and 0 < min_depth ({d.min_depth}) "
            f"< max_depth ({d.max_depth})"
        )
    if d.bins and not 0 <= d.level < m.neck.num_outs:
        raise ConfigError(
            f"model.depth.level: {d.level} is not an FPN level (0 to {m.neck.num_outs - 1})"
        )
    if cfg.train.depth_loss_weight < 0 or (
        cfg.train.depth_loss_weight > 0 and (not d.bins or cfg.train.loss != "occ3d")
    ):
        raise ConfigError(
            f"train.depth_loss_weight: {cfg.train.depth_loss_weight} needs model.depth.bins > 0 "
            f"and train.loss occ3d (got bins {d.bins}, loss {cfg.train.loss}); set it to 0"
        )
    _check_task(cfg)
    if m.backbone.depth not in (18, 34, 50, 101):
        raise ConfigError(f"model.backbone.depth: {m.backbone.depth} is not one of 18, 34, 50, 101")
    if len(m.backbone.dcn_stages) != 4:
        raise ConfigError("model.backbone.dcn_stages: give one true/false per stage (4 values)")
    for key, value in (
        ("model.dim", m.dim),
        ("model.tpv_h", m.tpv_h),
        ("model.tpv_w", m.tpv_w),
        ("model.tpv_z", m.tpv_z),
        ("model.num_classes", m.num_classes),
        ("model.encoder.num_heads", m.encoder.num_heads),
        ("data.batch_size", cfg.data.batch_size),
        ("data.size_divisor", cfg.data.size_divisor),
        ("eval.batch_size", cfg.eval.batch_size),
    ):
        if value < 1:
            raise ConfigError(f"{key}: {value} must be a positive integer")
    if m.dim % m.encoder.num_heads:
        raise ConfigError(
            f"model.dim ({m.dim}) must be divisible by "
            f"model.encoder.num_heads ({m.encoder.num_heads})"
        )
    if m.mode == "tpv" and m.encoder.cvha_mode == "full" and sum(m.encoder.pos_dims) != m.dim:
        raise ConfigError(
            f"model.encoder.pos_dims {m.encoder.pos_dims} must add up to model.dim ({m.dim})"
        )
    if len(m.point_cloud_range) != 6:
        raise ConfigError("model.point_cloud_range: give 6 numbers (x/y/z min, then x/y/z max)")
    for name in ("num_points_in_pillar", "num_points_ica", "pos_dims"):
        if len(getattr(m.encoder, name)) != 3:
            raise ConfigError(f"model.encoder.{name}: give 3 values (hw, zh, wz)")
    if len(cfg.data.img_size) != 2 or min(cfg.data.img_size) < 1:
        raise ConfigError("data.img_size: give [height, width], two positive integers")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers: {cfg.data.num_workers} must be 0 or more")
    r = m.point_cloud_range
    if cfg.data.grid_flip and not (r[0] == -r[3] and r[1] == -r[4]):
        raise ConfigError(
            f"data.grid_flip: model.point_cloud_range {list(r)} is not symmetric in x and y "
            "about the grid frame's origin, so a mirrored grid would not be the same grid: "
            "set data.grid_flip false or use a symmetric range"
        )
    if m.encoder.num_levels != m.neck.num_outs:
        raise ConfigError(
            f"model.encoder.num_levels ({m.encoder.num_levels}) must equal "
            f"model.neck.num_outs ({m.neck.num_outs})"
        )


def _check_task(cfg: Config) -> None:
    """A stated task must exist and fit model.num_classes and model.grid_frame."""
    if not cfg.task:
        infer_task_name(cfg)  # an unstated task must be inferable (else: "state it")
        return
    _choice(cfg.task, tuple(TASKS), "task")
    task = TASKS[cfg.task]
    m = cfg.model
    if m.num_classes != task.label_space.num_classes:
        raise ConfigError(
            f"model.num_classes: {m.num_classes}, but task {task.name} predicts the "
            f"{task.label_space.num_classes} classes of {task.label_space.name}: set "
            f"model.num_classes={task.label_space.num_classes} or another task"
        )
    if m.grid_frame != task.grid_frame:
        raise ConfigError(
            f"model.grid_frame: '{m.grid_frame}', but task {task.name} works in the "
            f"{task.grid_frame} frame: set model.grid_frame={task.grid_frame} or another task"
        )
