"""Session fixtures shared by every test folder: one small synthetic nuScenes dataroot and its
tpvkit info files, generated once per test session (read-only for the tests: copy before
breaking anything)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# OpenMP threads that spin while waiting starve each other when the suite's subprocesses and
# DataLoader workers share 2 cores (see tpvkit/cli/demo.py); read when torch loads, so set here,
# before any test module imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SYNTHETIC_SCENES = 3
SYNTHETIC_SAMPLES_PER_SCENE = 2
SYNTHETIC_SEED = 0


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A synthetic v1.0-mini dataroot (3 scenes x 2 samples), with infos/ inside it."""
    from tpvkit.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic") / "nuscenes"
    generate_synthetic(
        root,
        scenes=SYNTHETIC_SCENES,
        samples_per_scene=SYNTHETIC_SAMPLES_PER_SCENE,
        seed=SYNTHETIC_SEED,
    )
    return root


@pytest.fixture(scope="session")
def synthetic_infos(synthetic_root) -> dict[str, Path]:
    """Split name ("mini_train", "mini_val") -> its tpvkit info file in the synthetic root."""
    from tpvkit.data.infos import info_file_name

    infos = {}
    for split in ("mini_train", "mini_val"):
        path = synthetic_root / "infos" / info_file_name(split)
        if path.is_file():
            infos[split] = path
    if not infos:
        raise RuntimeError(f"generate_synthetic wrote no info files under {synthetic_root}/infos")
    return infos
