"""Readers of the info pickles of other codebases, and the restricted unpickler they go through.

Two layouts are understood and turned into tpvkit sample dicts (the schema of
tpvkit.data.infos): mmdet3d v2 ("metainfo" + "data_list") and the mmdet3d v1 layout used by
TPVFormer and BEVFormer ("infos" + "metadata"). A pickle can run arbitrary code when loaded, so
these files are read with SafeUnpickler, which builds only numpy arrays, numpy scalars and plain
containers and refuses anything else before it runs.
"""

from __future__ import annotations

import _compat_pickle
import json
import pickle
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from tpvkit.constants import CAMERA_ORDER, LIDAR_CHANNEL
from tpvkit.data import geometry
from tpvkit.errors import TpvkitError

# (module, name) pairs a legitimate infos pickle needs: numpy array/scalar reconstruction
# (under numpy 1 and numpy 2 module names, protocols 2 to 5) and plain containers. Nothing
# here can reach the file system, a shell or an import.
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        (numpy_core, name)
        for numpy_core in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    ]
    + [(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    + [("_codecs", "encode")]  # protocol 2 stores array bytes as latin-1 text
    + [("collections", "OrderedDict"), ("collections", "defaultdict")]
    + [
        ("builtins", name)
        for name in (
            "dict",
            "list",
            "tuple",
            "set",
            "frozenset",
            "int",
            "float",
            "complex",
            "str",
            "bytes",
            "bytearray",
            "bool",
        )
    ]
)


class SafeUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only allow-listed globals (numpy data, containers)."""

    def __init__(self, file: Any, source: str | Path = "<pickle>") -> None:
        super().__init__(file)
        self.source = str(source)

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles use Python 2 names (__builtin__.set); map them as pickle does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) not in _ALLOWED_GLOBALS:
            raise TpvkitError(
                f"refusing to load {self.source}: it wants to run {module}.{name}, which an "
                "info file never needs (only numpy arrays and plain containers are allowed)"
            )
        if module.startswith("numpy._core") and not _has_module(module):
            module = module.replace("numpy._core", "numpy.core", 1)  # numpy 2 pickle, numpy 1
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise TpvkitError(f"refusing to load {self.source}: it uses persistent ids ({pid!r})")


def _has_module(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def safe_load_pickle(path: str | Path) -> Any:
    """Load a pickle through SafeUnpickler; unreadable or unsafe files raise TpvkitError."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return SafeUnpickler(fh, path).load()
    except FileNotFoundError:
        raise TpvkitError(f"info file {path} does not exist") from None
    except TpvkitError:
        raise
    except Exception as err:  # corrupt pickles raise many types (EOFError, UnpicklingError...)
        raise TpvkitError(f"{path} is not a readable pickle: {type(err).__name__}: {err}") from err


# ---------------------------------------------------------------------------------------------
# Paths


def dataroot_relative(path: str, folder: str | None = None) -> str:
    """A path as a legacy pkl stores it -> the path relative to the dataroot where possible.

    "./data/nuscenes/samples/CAM_FRONT/x.jpg" and "/abs/nuscenes/samples/CAM_FRONT/x.jpg" give
    "samples/CAM_FRONT/x.jpg"; a bare file name (mmdet3d v2) is placed in `folder`. Other
    absolute paths are returned unchanged (Path(dataroot) / absolute == absolute).
    """
    parts = PurePath(str(path).replace("\\", "/")).parts
    for anchor in ("samples", "sweeps", "lidarseg"):
        if anchor in parts:
            # the last occurrence: a dataroot may itself live under a folder named "samples"
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[i:])
    if len(parts) == 1 and folder is not None:
        return f"{folder}/{parts[0]}"
    return str(path)


def _dataroot_prefix(path: str) -> str | None:
    """The part of a stored path before its samples/ folder ("./data/nuscenes"), if any."""
    parts = PurePath(str(path)).parts
    if "samples" not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index("samples")
    return str(PurePath(*parts[:i])) if i else "."


def guess_dataroot(paths: list[str], info_file: Path) -> Path | None:
    """Where the stored paths point when no dataroot is given: their prefix, tried against the
    working directory and then the info file's folder (existing folders only)."""
    for path in paths[:1]:
        prefix = _dataroot_prefix(path)
        if prefix is None:
            continue
        for base in (Path.cwd(), info_file.parent):
            candidate = (base / prefix).resolve()
            if (candidate / "samples").is_dir():
                return candidate
    return None


class TableLookup:
    """Token lookups in a dataroot's tables for legacy infos that lack them (loaded lazily)."""

    def __init__(self, dataroot: Path | None, version: str | None) -> None:
        self.table_dir = dataroot / version if dataroot and version else None
        self._by_filename: dict[str, str] | None = None
        self._lidarseg: dict[str, str] | None = None
        self._scenes: dict[str, tuple[str, str]] | None = None

    def _table(self, name: str) -> list[dict[str, Any]] | None:
        if self.table_dir is None or not (self.table_dir / f"{name}.json").is_file():
            return None
        with open(self.table_dir / f"{name}.json", encoding="utf-8") as fh:
            return json.load(fh)

    def lidar_token(self, lidar_path: str) -> str | None:
        """sample_data token of a key-frame LiDAR file (by its dataroot-relative name)."""
        if self._by_filename is None:
            records = self._table("sample_data") or []
            prefix = f"samples/{LIDAR_CHANNEL}/"
            self._by_filename = {
                r["filename"]: r["token"] for r in records if r["filename"].startswith(prefix)
            }
        return self._by_filename.get(lidar_path)

    def lidarseg_path(self, lidar_token: str) -> str | None:
        if self._lidarseg is None:
            records = self._table("lidarseg") or []
            self._lidarseg = {r["sample_data_token"]: r["filename"] for r in records}
        return self._lidarseg.get(lidar_token)

    def scene(self, sample_token: str) -> tuple[str | None, str | None]:
        """(scene token, scene name) of a sample."""
        if self._scenes is None:
            samples = self._table("sample") or []
            names = {s["token"]: s["name"] for s in (self._table("scene") or [])}
            self._scenes = {
                s["token"]: (s["scene_token"], names.get(s["scene_token"], "")) for s in samples
            }
        return self._scenes.get(sample_token, (None, None))


# ---------------------------------------------------------------------------------------------
# Layouts


def detect_layout(obj: Any) -> str | None:
    """'mmdet3d-v2', 'tpvformer' or None for an unpickled object."""
    if isinstance(obj, Mapping):
        if "data_list" in obj and "metainfo" in obj:
            return "mmdet3d-v2"
        if "infos" in obj and isinstance(obj["infos"], list):
            return "tpvformer"
    return None


def _as_float_list(value: Any) -> list:
    return np.asarray(value, dtype=np.float64).tolist()


def _camera_entry(
    token: str | None,
    img_path: str,
    intrinsic: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    timestamp: int | None,
    width: int | None,
    height: int | None,
) -> dict[str, Any]:
    return {
        "sample_data_token": token,
        "img_path": img_path,
        "width": width,
        "height": height,
        "timestamp": timestamp,
        "cam_intrinsic": _as_float_list(intrinsic),
        "sensor2lidar_rotation": _as_float_list(rotation),
        "sensor2lidar_translation": _as_float_list(translation),
        "lidar2img": geometry.lidar2img_from_sensor2lidar(
            rotation, translation, intrinsic
        ).tolist(),
    }


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _lidar_fields(
    lookup: TableLookup,
    token: str,
    lidar_path: str,
    lidar_token: str | None,
    lidarseg: str | None,
    version: str | None,
) -> dict[str, Any]:
    """Token, scene and label path of a sample, from the info or the dataroot's tables."""
    if lidar_token is None and lidarseg:
        name = PurePath(lidarseg).name
        if name.endswith("_lidarseg.bin"):
            lidar_token = name[: -len("_lidarseg.bin")]
    if lidar_token is None:
        lidar_token = lookup.lidar_token(lidar_path)
    if lidarseg:
        lidarseg_path = dataroot_relative(lidarseg, f"lidarseg/{version}" if version else None)
    elif lidar_token is not None and version != "v1.0-test":
        lidarseg_path = lookup.lidarseg_path(lidar_token)
    else:
        lidarseg_path = None
    if lidarseg_path is None and version in ("v1.0-mini", "v1.0-trainval"):
        # silently label-free training data would train on nothing; say what is missing
        raise TpvkitError(
            f"no lidarseg label file found for sample {token} (LiDAR {lidar_path}): the info "
            f"has no label path and the dataroot's {version}/lidarseg.json (and sample_data.json)"
            " do not name one; give the dataroot with nuScenes-lidarseg extracted"
        )
    scene_token, scene_name = lookup.scene(token)
    return {
        "lidar_token": lidar_token,
        "lidarseg_path": lidarseg_path,
        "scene_token": scene_token,
        "scene_name": scene_name,
    }


def read_tpvformer(
    obj: Mapping[str, Any], lookup: TableLookup, source: str
) -> tuple[list[dict[str, Any]], str | None]:
    """mmdet3d v1 / TPVFormer / BEVFormer infos -> (tpvkit samples, version)."""
    version = (obj.get("metadata") or {}).get("version")
    samples = []
    for i, info in enumerate(obj["infos"]):
        where = f"{source}: infos[{i}]"
        try:
            lidar_path = dataroot_relative(info["lidar_path"], f"samples/{LIDAR_CHANNEL}")
            cams = {}
            for cam in CAMERA_ORDER:
                c = info["cams"][cam]
                cams[cam] = _camera_entry(
                    c.get("sample_data_token"),
                    dataroot_relative(c["data_path"], f"samples/{cam}"),
                    np.asarray(c["cam_intrinsic"]),
                    np.asarray(c["sensor2lidar_rotation"]),
                    np.asarray(c["sensor2lidar_translation"]).reshape(3),
                    _opt_int(c.get("timestamp")),
                    _opt_int(c.get("width")),
                    _opt_int(c.get("height")),
                )
            sample = {
                "token": info["token"],
                "timestamp": _opt_int(info.get("timestamp")),
                "lidar_path": lidar_path,
                "lidar2ego_translation": _opt_list(info.get("lidar2ego_translation")),
                "lidar2ego_rotation": _opt_list(info.get("lidar2ego_rotation")),
                "ego2global_translation": _opt_list(info.get("ego2global_translation")),
                "ego2global_rotation": _opt_list(info.get("ego2global_rotation")),
                "cams": cams,
            }
            sample.update(
                _lidar_fields(
                    lookup,
                    info["token"],
                    lidar_path,
                    info.get("lidar_token"),
                    info.get("lidarseg"),
                    version,
                )
            )
        except (KeyError, TypeError, ValueError) as err:
            raise TpvkitError(f"{where} is not a TPVFormer-style info record ({err!r})") from err
        if info.get("scene_token") and sample["scene_token"] is None:
            sample["scene_token"] = info["scene_token"]
        samples.append(sample)
    return samples, version


def read_mmdet3d_v2(
    obj: Mapping[str, Any], lookup: TableLookup, source: str
) -> tuple[list[dict[str, Any]], str | None]:
    """mmdet3d v2 infos ("metainfo" + "data_list") -> (tpvkit samples, version)."""
    version = (obj.get("metainfo") or {}).get("version")
    samples = []
    for i, info in enumerate(obj["data_list"]):
        where = f"{source}: data_list[{i}]"
        try:
            lidar = info["lidar_points"]
            lidar_path = dataroot_relative(lidar["lidar_path"], f"samples/{LIDAR_CHANNEL}")
            cams = {}
            for cam in CAMERA_ORDER:
                c = info["images"][cam]
                K = np.asarray(c["cam2img"], dtype=np.float64)[:3, :3]
                if c.get("lidar2cam") is not None:
                    lidar2cam = np.asarray(c["lidar2cam"], dtype=np.float64)
                else:  # only lidar2img stored: undo the intrinsic
                    K4 = np.eye(4)
                    K4[:3, :3] = K
                    lidar2cam = np.linalg.solve(K4, np.asarray(c["lidar2img"], dtype=np.float64))
                R, t = geometry.sensor2lidar_from_lidar2cam(lidar2cam)
                ts = c.get("timestamp")
                cams[cam] = _camera_entry(
                    c.get("sample_data_token"),
                    dataroot_relative(c["img_path"], f"samples/{cam}"),
                    K,
                    R,
                    t,
                    None if ts is None else round(float(ts) * 1e6),  # v2 stores seconds
                    _opt_int(c.get("width")),
                    _opt_int(c.get("height")),
                )
            l2e_t, l2e_q = _pose_from_matrix(lidar.get("lidar2ego"))
            e2g_t, e2g_q = _pose_from_matrix(info.get("ego2global"))
            ts = info.get("timestamp")
            sample = {
                "token": info["token"],
                "timestamp": None if ts is None else round(float(ts) * 1e6),
                "lidar_path": lidar_path,
                "lidar2ego_translation": l2e_t,
                "lidar2ego_rotation": l2e_q,
                "ego2global_translation": e2g_t,
                "ego2global_rotation": e2g_q,
                "cams": cams,
            }
            sample.update(
                _lidar_fields(
                    lookup,
                    info["token"],
                    lidar_path,
                    lidar.get("sample_data_token"),
                    info.get("pts_semantic_mask_path"),
                    version,
                )
            )
        except (KeyError, TypeError, ValueError, np.linalg.LinAlgError) as err:
            raise TpvkitError(f"{where} is not an mmdet3d-v2 info record ({err!r})") from err
        samples.append(sample)
    return samples, version


def _opt_list(value: Any) -> list | None:
    return None if value is None else _as_float_list(value)


def _pose_from_matrix(matrix: Any) -> tuple[list | None, list | None]:
    if matrix is None:
        return None, None
    T = np.asarray(matrix, dtype=np.float64)
    return T[:3, 3].tolist(), geometry.matrix_to_quaternion(T[:3, :3]).tolist()
