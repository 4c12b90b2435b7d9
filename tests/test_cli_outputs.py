"""The output policy of every command: an existing output file or a non-empty output folder is
refused without --overwrite, and an output that is one of the command's inputs is refused always;
either way the exit code is 2, one line says why, and the existing file keeps its bytes.

The refusals come before anything is read, so the inputs here are placeholder files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tpvkit.cli import app

BYTES = b"the user's own file \x00\x01\x02"


def _invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _owned(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(BYTES)
    return path


def _assert_refused(args: list, kept: Path, *phrases: str) -> None:
    code, output = _invoke(args)
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for phrase in phrases:
        assert phrase in output, (phrase, output)
    assert kept.read_bytes() == BYTES


EXISTS = ("exists", "--overwrite")
NOT_EMPTY = ("is not empty", "--overwrite")
INPUT = ("an output may not replace an input",)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "ckpt": _owned(tmp_path / "ck.pth"),
        "npz": _owned(tmp_path / "preds" / "a.npz"),
        "infos": _owned(tmp_path / "infos.json"),
    }


def test_export(tmp_path, files):
    out = _owned(tmp_path / "scene.ply")
    _assert_refused(["export", files["npz"], "--out", out], out, "--out", *EXISTS)
    # The case: `tpvkit export X.npz --out X.npz` replaced the prediction with a PLY.
    npz = files["npz"]
    _assert_refused(["export", npz, "--out", npz], npz, "input prediction file", *INPUT)
    _assert_refused(["export", npz, "--out", npz, "--overwrite"], npz, *INPUT)


def test_deploy(tmp_path, files):
    out = _owned(tmp_path / "model.onnx")
    _assert_refused(["deploy", files["ckpt"], "--out", out], out, *EXISTS)
    # The case: `tpvkit deploy CK.pth --out CK.pth` replaced the checkpoint.
    ckpt = files["ckpt"]
    _assert_refused(["deploy", ckpt, "--out", ckpt, "--overwrite"], ckpt, "the checkpoint", *INPUT)


def test_view(tmp_path, files):
    out = _owned(tmp_path / "scene.html")
    _assert_refused(["view", files["npz"], "--out", out], out, *EXISTS)
    npz = files["npz"]
    _assert_refused(["view", npz, "--out", npz, "--overwrite"], npz, *INPUT)


def test_visualize(tmp_path, files):
    kept = _owned(tmp_path / "pictures" / "cameras.png")
    _assert_refused(["visualize", files["npz"], "--out", kept.parent], kept, *NOT_EMPTY)
    folder = files["npz"].parent
    _assert_refused(["visualize", folder, "--out", folder, "--overwrite"], files["npz"], *INPUT)


def test_predict(tmp_path, files):
    kept = _owned(tmp_path / "out" / "token.npz")
    base = ["predict", files["ckpt"], "--infos", files["infos"]]
    _assert_refused([*base, "--out", kept.parent], kept, *NOT_EMPTY)
    ckpt = files["ckpt"]
    _assert_refused([*base, "--out", ckpt, "--overwrite"], ckpt, "the checkpoint", *INPUT)


def test_eval(tmp_path, files):
    from tpvkit.engine.evaluate import default_metrics_path

    base = ["eval", files["ckpt"], "--infos", files["infos"]]
    beside = _owned(default_metrics_path(files["ckpt"], files["infos"]))
    _assert_refused(base, beside, "the metrics file", *EXISTS)
    in_out = _owned(tmp_path / "results" / "metrics.json")
    _assert_refused([*base, "--out", in_out.parent], in_out, "--out", *EXISTS)
    kept = _owned(tmp_path / "sub" / "lidarseg" / "x.bin")
    _assert_refused(
        [*base, "--out", tmp_path / "new", "--save-predictions", tmp_path / "sub"],
        kept,
        "--save-predictions",
        *NOT_EMPTY,
    )
    # An info file called metrics.json in the --out folder is an input: refused always.
    infos = _owned(tmp_path / "here" / "metrics.json")
    args = ["eval", files["ckpt"], "--infos", infos, "--out", infos.parent, "--overwrite"]
    _assert_refused(args, infos, "the info file", *INPUT)


def test_eval_default_names_differ_per_checkpoint_and_info_file(tmp_path):
    from tpvkit.engine.evaluate import default_metrics_path

    names = {
        default_metrics_path(tmp_path / ck, tmp_path / infos)
        for ck in ("latest.pth", "iter_000288.pth")
        for infos in ("tpvkit_infos_mini_val.json", "occ3d_val.json")
    }
    assert len(names) == 4 and all(p.parent == tmp_path for p in names)


def test_demo(tmp_path):
    kept = _owned(tmp_path / "mine" / "notes.txt")
    _assert_refused(["demo", "--work-dir", kept.parent], kept, "notes.txt", "--overwrite")


def test_train_never_rewrites_its_config(tmp_path):
    work = tmp_path / "w"
    config = work / "config.yaml"
    config.parent.mkdir()
    config.write_bytes(b"name: mine\n")
    code, output = _invoke(["train", config, "--work-dir", work])
    assert code == 2 and "CONFIG" in output and "may not replace an input" in output, output
    assert config.read_bytes() == b"name: mine\n"


@pytest.mark.parametrize(
    "command",
    [
        ["prepare", "synthetic", "--scenes", "1"],
        ["prepare", "nuscenes", "--dataroot", "{root}", "--version", "v1.0-mini"],
        ["prepare", "occupancy", "--dataroot", "{root}", "--version", "v1.0-mini"],
    ],
    ids=["prepare-synthetic", "prepare-nuscenes", "prepare-occupancy"],
)
def test_prepare(tmp_path, command):
    kept = _owned(tmp_path / "data" / "mine.json")
    args = [c.replace("{root}", str(tmp_path)) for c in command]
    _assert_refused([*args, "--out", kept.parent], kept, "--overwrite")
