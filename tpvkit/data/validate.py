"""Checks of a nuScenes dataroot before anything is built from it.

Each problem is a TpvkitError whose message names the folder or file and the fix, so that
`tpvkit prepare nuscenes` fails early and clearly instead of deep inside the devkit (whose
checks are bare asserts) or halfway through writing info files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tpvkit.constants import CAMERA_ORDER, GENERAL_CLASS_NAMES, LIDAR_CHANNEL, SPLITS_BY_VERSION
from tpvkit.errors import TpvkitError

# The tables NuScenes(version, dataroot) loads unconditionally (nuscenes-devkit 1.2).
TABLE_NAMES: tuple[str, ...] = (
    "category",
    "attribute",
    "visibility",
    "instance",
    "sensor",
    "calibrated_sensor",
    "ego_pose",
    "log",
    "scene",
    "sample",
    "sample_data",
    "sample_annotation",
    "map",
)

# Channels whose key-frame files tpvkit reads.
USED_CHANNELS: tuple[str, ...] = (LIDAR_CHANNEL, *CAMERA_ORDER)

MAX_NAMED = 5  # how many missing files an error message names


def version_needs_lidarseg(version: str) -> bool:
    """mini and trainval carry labels (train/evaluate); test has none (predict only)."""
    return version != "v1.0-test"


def check_version_name(version: str) -> None:
    if version not in SPLITS_BY_VERSION:
        raise TpvkitError(
            f"unknown nuScenes version '{version}': use one of {', '.join(SPLITS_BY_VERSION)} "
            "(the name of the table folder inside the dataroot)"
        )


def read_table(path: Path) -> list[dict[str, Any]]:
    """One devkit JSON table; a broken file is a TpvkitError naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise TpvkitError(f"missing nuScenes table {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TpvkitError(
            f"nuScenes table {path} is not valid JSON ({err}); re-extract it"
        ) from err
    if not isinstance(data, list):
        raise TpvkitError(f"nuScenes table {path} must be a JSON list of records")
    return data


def _name_some(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMED])
    more = f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else ""
    return shown + more


def validate_dataroot_structure(dataroot: str | Path, version: str) -> None:
    """Folders, tables, lidarseg and map files: everything the devkit needs to load at all.

    Reads only the small tables (category, lidarseg, map); the per-sample file check is
    check_sample_files, which takes the sample_data records the caller already has.
    """
    check_version_name(version)
    root = Path(dataroot)
    if not root.is_dir():
        raise TpvkitError(f"dataroot {root} does not exist or is not a folder")
    table_dir = root / version
    if not table_dir.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        hint = f" (found: {', '.join(present)})" if present else ""
        raise TpvkitError(
            f"version folder {table_dir} is missing{hint}: extract the {version} metadata "
            "into the dataroot or pass the --version that is there"
        )
    missing = [f"{name}.json" for name in TABLE_NAMES if not (table_dir / f"{name}.json").is_file()]
    if missing:
        raise TpvkitError(
            f"{table_dir} lacks the table file(s) {', '.join(missing)}: the devkit needs all "
            f"{len(TABLE_NAMES)}; re-extract the {version} metadata"
        )

    lidarseg_json = table_dir / "lidarseg.json"
    label_dir = root / "lidarseg" / version
    if version_needs_lidarseg(version):
        if not lidarseg_json.is_file() or not label_dir.is_dir():
            what = lidarseg_json if not lidarseg_json.is_file() else label_dir
            raise TpvkitError(
                f"{what} is missing: {version} needs the nuScenes-lidarseg labels for training "
                f"and evaluation; extract nuScenes-lidarseg-all-v1.0.tar.bz2 into {root}"
            )
    if lidarseg_json.is_file():
        _check_lidarseg(table_dir, label_dir)

    for record in read_table(table_dir / "map.json"):
        map_file = root / str(record.get("filename", ""))
        if not map_file.is_file():
            raise TpvkitError(
                f"map mask {map_file} (map.json) is missing: the devkit opens it on load; "
                "extract the maps folder into the dataroot"
            )


def _check_lidarseg(table_dir: Path, label_dir: Path) -> None:
    categories = read_table(table_dir / "category.json")
    if any("index" not in c for c in categories):
        raise TpvkitError(
            f"{table_dir / 'category.json'} has no 'index' field: use the category.json that "
            "comes with nuScenes-lidarseg"
        )
    indices = sorted(int(c["index"]) for c in categories)
    if indices != list(range(len(GENERAL_CLASS_NAMES))):
        raise TpvkitError(
            f"{table_dir / 'category.json'}: expected the {len(GENERAL_CLASS_NAMES)} lidarseg "
            f"categories with indices 0..{len(GENERAL_CLASS_NAMES) - 1}, got {indices}"
        )
    records = read_table(table_dir / "lidarseg.json")
    files = set(os.listdir(label_dir)) if label_dir.is_dir() else set()
    bins = {f for f in files if f.endswith(".bin")}
    if len(bins) != len(records):
        raise TpvkitError(
            f"{label_dir} holds {len(bins)} .bin files but lidarseg.json lists {len(records)} "
            "records: the devkit requires them to match (never write predictions there)"
        )


def find_missing_files(dataroot: str | Path, relative_paths: Iterable[str]) -> list[str]:
    """The paths (relative to dataroot) that do not exist, listing each folder only once."""
    root = Path(dataroot)
    listings: dict[str, set[str]] = {}
    missing = []
    for rel in relative_paths:
        folder, _, name = str(rel).rpartition("/")
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(root / folder))
            except OSError:
                listings[folder] = set()
        if name not in listings[folder]:
            missing.append(str(rel))
    return missing


def check_sample_files(
    dataroot: str | Path,
    sample_data: Iterable[Mapping[str, Any]],
    lidarseg: Iterable[Mapping[str, Any]] = (),
) -> None:
    """Every key-frame LiDAR sweep and camera image (and every lidarseg file) must exist."""
    needed = []
    for record in sample_data:
        filename = str(record.get("filename", ""))
        parts = filename.split("/")
        if record.get("is_key_frame") and len(parts) == 3 and parts[1] in USED_CHANNELS:
            needed.append(filename)
    needed.extend(str(r["filename"]) for r in lidarseg)
    missing = find_missing_files(dataroot, needed)
    if missing:
        raise TpvkitError(
            f"{len(missing)} of {len(needed)} sample files are missing under {dataroot}: "
            f"{_name_some(missing)}; extract the complete samples/ (and lidarseg/) folders"
        )


def validate_dataroot(dataroot: str | Path, version: str) -> None:
    """Everything above, reading the tables itself (for use without a loaded devkit)."""
    validate_dataroot_structure(dataroot, version)
    table_dir = Path(dataroot) / version
    lidarseg = []
    if (table_dir / "lidarseg.json").is_file():
        lidarseg = read_table(table_dir / "lidarseg.json")
    check_sample_files(dataroot, read_table(table_dir / "sample_data.json"), lidarseg)
