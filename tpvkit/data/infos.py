"""tpvkit info files: one JSON file per nuScenes split listing, per key frame, the files and the
calibration the Dataset needs; built with the devkit, written atomically, read back (together
with the legacy pickles of mmdet3d / TPVFormer) by load_infos.

The schema of a sample is documented field by field in docs/data.md.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import tpvkit
from tpvkit.constants import CAMERA_ORDER, LIDAR_CHANNEL, SPLITS_BY_VERSION
from tpvkit.data import geometry, legacy, validate
from tpvkit.errors import TpvkitError
from tpvkit.utils.io import atomic_path, atomic_write_text, check_output_dir

INFO_FORMAT = "tpvkit-infos"
INFO_FORMAT_VERSION = 1


def info_file_name(split: str) -> str:
    return f"tpvkit_infos_{split}.json"


@dataclass
class InfoSet:
    """The samples of one info file (tpvkit schema) and where their relative paths point."""

    samples: list[dict[str, Any]]
    dataroot: Path | None
    version: str | None
    split: str | None
    source_format: str  # "tpvkit" | "mmdet3d-v2" | "tpvformer"
    path: Path | None = None
    header: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.samples[index]

    def resolve(self, relative: str) -> Path:
        """A path of a sample (relative to the dataroot, or absolute) -> a usable path."""
        if self.dataroot is None:
            return Path(relative)
        return self.dataroot / relative


# ---------------------------------------------------------------------------------------------
# Building from a dataroot with the devkit


def _pose(record: dict[str, Any]) -> np.ndarray:
    return geometry.pose_matrix(record["translation"], record["rotation"])


def build_sample_info(nusc: Any, sample: dict[str, Any], scene: dict[str, Any]) -> dict[str, Any]:
    """One key frame -> its tpvkit info record (see docs/data.md)."""
    lidar_token = sample["data"][LIDAR_CHANNEL]
    lidar_sd = nusc.get("sample_data", lidar_token)
    lidar_cs = nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
    lidar_pose = nusc.get("ego_pose", lidar_sd["ego_pose_token"])
    lidar2ego = _pose(lidar_cs)
    ego2global_at_lidar = _pose(lidar_pose)

    lidarseg_path = None
    if validate.version_needs_lidarseg(nusc.version):
        lidarseg_path = nusc.get("lidarseg", lidar_token)["filename"]

    cams = {}
    for cam in CAMERA_ORDER:
        if cam not in sample["data"]:
            raise TpvkitError(f"sample {sample['token']} has no {cam} image in sample_data.json")
        sd = nusc.get("sample_data", sample["data"][cam])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        K = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
        if K.shape != (3, 3):
            raise TpvkitError(
                f"calibrated_sensor {cs['token']} ({cam}) has camera_intrinsic of shape "
                f"{K.shape}, expected 3x3"
            )
        R, t = geometry.sensor2lidar(_pose(cs), _pose(pose), ego2global_at_lidar, lidar2ego)
        cams[cam] = {
            "sample_data_token": sd["token"],
            "img_path": sd["filename"],
            "width": int(sd["width"]),
            "height": int(sd["height"]),
            "timestamp": int(sd["timestamp"]),
            "cam_intrinsic": K.tolist(),
            "sensor2lidar_rotation": R.tolist(),
            "sensor2lidar_translation": t.tolist(),
            "lidar2img": geometry.lidar2img_from_sensor2lidar(R, t, K).tolist(),
        }
    return {
        "token": sample["token"],
        "scene_token": scene["token"],
        "scene_name": scene["name"],
        "timestamp": int(sample["timestamp"]),
        "lidar_token": lidar_token,
        "lidar_path": lidar_sd["filename"],
        "lidarseg_path": lidarseg_path,
        "lidar2ego_translation": [float(v) for v in lidar_cs["translation"]],
        "lidar2ego_rotation": [float(v) for v in lidar_cs["rotation"]],
        "ego2global_translation": [float(v) for v in lidar_pose["translation"]],
        "ego2global_rotation": [float(v) for v in lidar_pose["rotation"]],
        "cams": cams,
    }


def _scene_samples(nusc: Any, scene: dict[str, Any]) -> list[dict[str, Any]]:
    """The key frames of a scene in time order, checked against scene.nbr_samples."""
    samples = []
    token = scene["first_sample_token"]
    while token:
        sample = nusc.get("sample", token)
        samples.append(sample)
        token = sample["next"]
        if len(samples) > 100000:  # a cycle in the prev/next chain
            raise TpvkitError(f"scene {scene['name']}: the sample next-chain loops")
    if len(samples) != int(scene["nbr_samples"]):
        raise TpvkitError(
            f"scene {scene['name']} ({scene['token']}): nbr_samples is {scene['nbr_samples']} "
            f"but the sample chain holds {len(samples)}; fix scene.json or sample.json"
        )
    return samples


def _load_devkit(dataroot: Path, version: str) -> Any:
    from nuscenes.nuscenes import NuScenes

    try:
        # The devkit prints even with verbose=False in places; keep the CLI output ours.
        with contextlib.redirect_stdout(io.StringIO()):
            return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except Exception as err:  # the devkit's own checks are bare asserts and KeyErrors
        raise TpvkitError(
            f"the nuScenes devkit cannot load {dataroot} ({version}): "
            f"{type(err).__name__}: {err} (a table refers to a record that is not there?)"
        ) from err


def _devkit_version() -> str:
    try:
        return importlib.metadata.version("nuscenes-devkit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_split_infos(nusc: Any, split: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(samples of the split's scenes present in the dataroot, names of its absent scenes)."""
    from nuscenes.utils.splits import create_splits_scenes

    wanted = create_splits_scenes()[split]
    wanted_set = set(wanted)
    scenes = [s for s in nusc.scene if s["name"] in wanted_set]
    present = {s["name"] for s in scenes}
    samples = [
        build_sample_info(nusc, sample, scene)
        for scene in scenes
        for sample in _scene_samples(nusc, scene)
    ]
    return samples, [name for name in wanted if name not in present]


def link_occ3d_labels(
    built: dict[str, list[dict[str, Any]]], gt_dir: str | Path, dataroot: Path
) -> None:
    """`--occ3d GTDIR`: check the Occ3D gts folder for every sample of every split (missing,
    wrong shape/dtype, values out of range name the file) and set each record's occ3d_path."""
    from tpvkit.data import occ3d

    for samples in built.values():
        occ3d.link_samples(samples, gt_dir, dataroot)
    total = sum(len(s) for s in built.values())
    print(f"linked Occ3D labels of {total} samples from {Path(gt_dir)}")


def prepare_nuscenes_infos(
    dataroot: str | Path,
    version: str,
    out_dir: str | Path,
    progress: bool = True,
    overwrite: bool = False,
    occ3d: str | Path | None = None,
) -> list[Path]:
    """Build and write `tpvkit_infos_<split>.json` for every split of `version`.

    An existing non-empty `out_dir` is refused unless `overwrite` (then the info files in it
    are replaced; other files there are kept). The dataroot is validated first and every split
    is built in memory before the first file is written, and the files appear together (each
    written to a temporary file, then all renamed), so on any error nothing is written. With
    `occ3d` (an Occ3D-nuScenes gts folder) every sample is linked to its dense labels (field
    occ3d_path). Returns the written paths.
    """
    from tpvkit.utils.progress import Progress

    dataroot = Path(dataroot).resolve()
    out_dir = Path(out_dir)
    check_output_dir(out_dir, "--out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise TpvkitError(
            f"--out {out_dir} exists and is not empty: choose a new folder or pass --overwrite "
            "to replace the info files in it"
        )
    validate.validate_dataroot_structure(dataroot, version)
    nusc = _load_devkit(dataroot, version)
    validate.check_sample_files(dataroot, nusc.sample_data, getattr(nusc, "lidarseg", []))

    from nuscenes.utils.splits import create_splits_scenes

    splits = SPLITS_BY_VERSION[version]
    all_split_scenes = {name for split in splits for name in create_splits_scenes()[split]}
    outside = [s["name"] for s in nusc.scene if s["name"] not in all_split_scenes]
    if outside:
        print(
            f"note: {len(outside)} scene(s) of {dataroot} belong to no {version} split and are "
            f"left out: {', '.join(outside[:5])}"
        )

    built: dict[str, list[dict[str, Any]]] = {}
    bar = Progress(len(nusc.sample), f"infos {version}", "sample", enabled=progress)
    with bar:
        for split in splits:
            samples, absent = build_split_infos(nusc, split)
            bar.update(len(samples))
            if absent:
                print(
                    f"note: split {split}: {len(absent)} of its scenes are not in the dataroot "
                    f"({', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''}); the devkit's "
                    "official evaluation of this split needs all of them"
                )
            built[split] = samples
    if occ3d is not None:
        link_occ3d_labels(built, occ3d, dataroot)

    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    written = []
    # Every file goes to a temporary file first; the renames happen once all are written.
    with contextlib.ExitStack() as stack:
        for split, samples in built.items():
            source = {
                "dataroot": str(dataroot),
                "version": version,
                "split": split,
                "devkit_version": _devkit_version(),
                "created": created,
            }
            path = out_dir / info_file_name(split)
            write_infos(stack.enter_context(atomic_path(path)), samples, source, atomic=False)
            written.append((path, len(samples), split))
    for path, count, split in written:
        print(f"wrote {path} ({count} samples, split {split})")
    return [path for path, _, _ in written]


def write_infos(
    path: str | Path, samples: list[dict[str, Any]], source: dict[str, Any], atomic: bool = True
) -> Path:
    """Write one tpvkit info file (atomically, unless the caller already writes to a temporary
    path): the header, then the samples."""
    document = {
        "format": INFO_FORMAT,
        "format_version": INFO_FORMAT_VERSION,
        "tpvkit_version": tpvkit.__version__,
        "source": source,
        "samples": samples,
    }
    path = Path(path)
    text = json.dumps(document, separators=(",", ":")) + "\n"
    if atomic:
        atomic_write_text(path, text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# The shape of a sample record: checked on load, so that a hand-edited or foreign file fails
# with the sample and key named instead of deep inside the data loader.


_NUMBER_TYPES = (int, float)  # JSON numbers; `type(...) in` also keeps bools out, cheaply


def _is_matrix(value: Any, shape: tuple[int, ...]) -> bool:
    """A (nested) list of finite numbers of this shape."""
    if type(value) is not list or len(value) != shape[0]:
        return False
    if len(shape) == 1:
        return all(type(x) in _NUMBER_TYPES for x in value) and all(map(math.isfinite, value))
    inner = shape[1:]
    return all(_is_matrix(row, inner) for row in value)


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _is_optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _is_size(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)


# key -> (check, what it must be); optional keys may be absent
_SAMPLE_KEYS = {
    "token": (_is_str, "a non-empty string", True),
    "lidar_path": (_is_str, "a non-empty string (a dataroot-relative path)", True),
    "lidarseg_path": (_is_optional_str, "a string or null", False),
    "lidar_token": (_is_optional_str, "a string or null", False),
    "lidar2ego_translation": (lambda v: _is_matrix(v, (3,)), "3 numbers", False),
    "lidar2ego_rotation": (lambda v: _is_matrix(v, (4,)), "4 numbers (a quaternion)", False),
}
_CAMERA_KEYS = {
    "img_path": (_is_str, "a non-empty string (a dataroot-relative path)", True),
    "cam_intrinsic": (lambda v: _is_matrix(v, (3, 3)), "a 3x3 list of numbers", True),
    "sensor2lidar_rotation": (lambda v: _is_matrix(v, (3, 3)), "a 3x3 list of numbers", True),
    "sensor2lidar_translation": (lambda v: _is_matrix(v, (3,)), "3 numbers", True),
    "lidar2img": (lambda v: _is_matrix(v, (4, 4)), "a 4x4 list of numbers", False),
    "width": (_is_size, "a positive integer", False),
    "height": (_is_size, "a positive integer", False),
}


def _check_keys(record: dict[str, Any], spec: dict[str, Any], where: str) -> None:
    for key, (check, what, required) in spec.items():
        if key not in record:
            if required:
                raise TpvkitError(f"{where} has no '{key}'")
            continue
        if not check(record[key]):
            raise TpvkitError(f"{where}: '{key}' must be {what}, got {_short(record[key])}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_sample_records(samples: list[Any], path: Path | str) -> None:
    """Every sample must have the keys and shapes the data loader reads (tpvkit schema)."""
    for i, sample in enumerate(samples):
        try:
            if not isinstance(sample, dict):
                raise TpvkitError(f"sample {i} is {type(sample).__name__}, not a mapping")
            token = sample.get("token")
            where = f"sample {i}" + (f" ({token})" if isinstance(token, str) and token else "")
            _check_keys(sample, _SAMPLE_KEYS, where)
            cams = sample.get("cams")
            if not isinstance(cams, dict):
                raise TpvkitError(f"{where}: 'cams' must map camera names to records")
            for cam in CAMERA_ORDER:
                if not isinstance(cams.get(cam), dict):
                    raise TpvkitError(f"{where}: 'cams' has no record for {cam}")
                _check_keys(cams[cam], _CAMERA_KEYS, f"{where}, cams.{cam},")
        except TpvkitError as err:
            raise TpvkitError(
                f"info file {path}: {err}; rebuild it with `tpvkit prepare nuscenes` (or "
                "`tpvkit prepare synthetic`)"
            ) from None


# ---------------------------------------------------------------------------------------------
# Reading


def load_infos(
    path: str | Path, dataroot: str | Path | None = None, check_files: bool = True
) -> InfoSet:
    """Read a tpvkit JSON info file or a legacy pickle (mmdet3d v2, TPVFormer/BEVFormer).

    `dataroot` overrides where relative paths point (default: the one recorded in a tpvkit
    file, or the prefix of a legacy file's paths). With `check_files`, every referenced file
    must exist (one folder listing per folder); missing ones are counted and named.
    """
    path = Path(path)
    if not path.is_file():
        raise TpvkitError(
            f"info file {path} does not exist: create it with `tpvkit prepare nuscenes` or "
            "`tpvkit prepare synthetic`"
        )
    root = Path(dataroot).resolve() if dataroot else None
    if path.suffix == ".json":
        info_set = _load_tpvkit_json(path, root)
    else:
        info_set = _load_legacy(path, root)
    if check_files and info_set.samples:
        check_info_files(info_set)
    return info_set


def _load_tpvkit_json(path: Path, dataroot: Path | None) -> InfoSet:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise TpvkitError(f"info file {path} is not valid JSON ({err})") from err
    if not isinstance(document, dict) or document.get("format") != INFO_FORMAT:
        raise TpvkitError(f'{path} is not a tpvkit info file (no "format": "{INFO_FORMAT}")')
    if document.get("format_version") != INFO_FORMAT_VERSION:
        raise TpvkitError(
            f"{path} has info format version {document.get('format_version')}, this tpvkit "
            f"reads version {INFO_FORMAT_VERSION}: rebuild it with `tpvkit prepare nuscenes`"
        )
    source = document.get("source") or {}
    if not isinstance(source, dict) or not all(
        _is_optional_str(source.get(k)) for k in ("dataroot", "version", "split")
    ):
        raise TpvkitError(
            f'{path}: "source" must be a mapping whose dataroot, version and split are strings; '
            "rebuild it with `tpvkit prepare nuscenes`"
        )
    samples = document.get("samples") or []
    if not isinstance(samples, list):
        raise TpvkitError(f'{path}: "samples" must be a list of sample records; rebuild it')
    check_sample_records(samples, path)
    version = source.get("version")
    if dataroot is None:
        dataroot = _recorded_dataroot(path, source.get("dataroot"), version)
    return InfoSet(
        samples=list(samples),
        dataroot=dataroot,
        version=version,
        split=source.get("split"),
        source_format="tpvkit",
        path=path,
        header={k: v for k, v in document.items() if k != "samples"},
    )


def _recorded_dataroot(path: Path, recorded: str | None, version: str | None) -> Path | None:
    """The recorded dataroot if it is there; otherwise the info file's grandparent when that
    holds the version's tables (a dataroot moved together with its infos/ folder)."""
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    sibling = path.resolve().parent.parent
    if version and (sibling / version).is_dir():
        return sibling
    return Path(recorded) if recorded else None


def _load_legacy(path: Path, dataroot: Path | None) -> InfoSet:
    obj = legacy.safe_load_pickle(path)
    layout = legacy.detect_layout(obj)
    try:
        return _read_legacy(path, obj, layout, dataroot)
    except TpvkitError:
        raise  # already names the file and the fix
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        # A foreign file with the right top-level keys but records of another shape: the
        # readers index into them freely, so their errors are turned into one message here.
        what = f"{type(err).__name__}: {err}"
        raise TpvkitError(
            f"{path} looks like a {layout} info file but its records do not have that layout "
            f"({what[:120]}); regenerate it with the tool that wrote it, or build a tpvkit info "
            "file with `tpvkit prepare nuscenes`"
        ) from err


def _read_legacy(path: Path, obj: Any, layout: str | None, dataroot: Path | None) -> InfoSet:
    if layout is None:
        raise TpvkitError(
            f"{path} is neither a tpvkit info file nor a known legacy layout (an mmdet3d v2 dict "
            "with 'metainfo' and 'data_list', or a TPVFormer dict with 'infos' and 'metadata')"
        )
    if layout == "mmdet3d-v2":
        version = (obj.get("metainfo") or {}).get("version")
        stored = [d.get("lidar_points", {}).get("lidar_path", "") for d in obj["data_list"][:1]]
    else:
        version = (obj.get("metadata") or {}).get("version")
        stored = [i.get("lidar_path", "") for i in obj["infos"][:1]]
    if dataroot is None:
        dataroot = legacy.guess_dataroot(stored, path)
    if dataroot is None and stored and not Path(stored[0]).is_absolute():
        raise TpvkitError(
            f"{path} stores paths like '{stored[0]}' relative to a dataroot that is not here: "
            "give the nuScenes dataroot (--set data.dataroot=DIR or load_infos(..., dataroot=))"
        )
    lookup = legacy.TableLookup(dataroot, version)
    reader = legacy.read_mmdet3d_v2 if layout == "mmdet3d-v2" else legacy.read_tpvformer
    samples, version = reader(obj, lookup, str(path))
    return InfoSet(
        samples=samples,
        dataroot=dataroot,
        version=version,
        split=None,
        source_format=layout,
        path=path,
    )


def sample_files(sample: dict[str, Any]) -> list[str]:
    """Every file a sample references (dataroot-relative or absolute)."""
    files = [sample["lidar_path"]]
    if sample.get("lidarseg_path"):
        files.append(sample["lidarseg_path"])
    if sample.get("occ3d_path"):
        files.append(sample["occ3d_path"])
    files.extend(sample["cams"][cam]["img_path"] for cam in CAMERA_ORDER)
    return files


def check_info_files(info_set: InfoSet) -> None:
    """Every file of every sample must exist; missing ones are counted and the first named."""
    root = info_set.dataroot if info_set.dataroot is not None else Path(".")
    needed = [f for s in info_set.samples for f in sample_files(s)]
    missing = validate.find_missing_files(root, needed)
    if missing:
        shown = ", ".join(missing[: validate.MAX_NAMED])
        raise TpvkitError(
            f"{len(missing)} of {len(needed)} files of {info_set.path} are missing (dataroot "
            f"{root}): {shown}{' ...' if len(missing) > validate.MAX_NAMED else ''}; give the "
            "right dataroot (data.dataroot) or rebuild the info file"
        )
