"""A wheel install works outside the repository: the shipped configs are package data.

The wheel is built from a copy of the sources, installed (without dependencies) into a fresh
virtual environment that sees this interpreter's packages through a .pth file, and used from a
temporary folder that is not below the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import tpvkit

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "setup.py", "README.md", "configs", "tpvkit"]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{cmd}:\n{result.stdout}\n{result.stderr}"
    return result


def test_wheel_ships_the_configs_and_runs_from_outside_the_repository(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(src)],
        tmp_path, env,
    )  # fmt: skip
    # The packaging metadata draws no setuptools warning (0.2: a deprecated license table and
    # a package-data folder absent from `packages`, ~80 lines on every install).
    log = built.stdout + built.stderr
    assert "Warning" not in log and "!!" not in log, log
    (wheel,) = (tmp_path / "dist").glob("tpvkit-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    venv_site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            tmp_path, env,
        ).stdout.strip()
    )  # fmt: skip
    # The test environment's packages (torch, typer, pip, ...) are visible as a plain path: the
    # .pth files there (an editable tpvkit among them) are not processed, and the venv's own
    # site-packages, holding the wheel, comes first.
    test_sites = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (venv_site / "test_env.pth").write_text("".join(f"{p}\n" for p in sorted(test_sites)))
    _run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        tmp_path, env,
    )  # fmt: skip

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    check = (
        "import tpvkit, tpvkit.config as c\n"
        "from pathlib import Path\n"
        "print(Path(tpvkit.__file__).resolve())\n"
        "names = sorted(c.shipped_configs())\n"
        "assert names, 'no shipped configs'\n"
        "for n in names:\n"
        "    c.load_config(n)\n"
        "print(' '.join(names))\n"
        "from tpvkit.outputs import view\n"  # the viewer's template and vendored three.js
        "for name in ('template.html', 'viewer.js', 'vendor/three.module.min.js',\n"
        "             'vendor/three.core.min.js', 'vendor/OrbitControls.js',\n"
        "             'vendor/three.LICENSE'):\n"
        "    assert view._resource(name), name\n"
    )
    out = _run([str(python), "-c", check], outside, env).stdout.splitlines()
    assert Path(out[0]).is_relative_to(venv_site), out[0]  # the wheel, not the repository
    shipped = set(out[1].split())
    assert shipped == {p.stem for p in (REPO / "configs").glob("*.yaml")}

    script = venv / ("Scripts/tpvkit.exe" if os.name == "nt" else "bin/tpvkit")
    result = _run([str(script), "train", "tpv_tiny", "--help"], outside, env)
    assert "Usage" in result.stdout and "--work-dir" in result.stdout
    result = _run([str(python), "-m", "tpvkit", "--help"], outside, env)
    assert "train" in result.stdout
    result = _run([str(script), "--version"], outside, env)
    assert result.stdout.strip() == f"tpvkit {tpvkit.__version__}"  # the repository's
