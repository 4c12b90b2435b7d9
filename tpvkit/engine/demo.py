"""`tpvkit demo`: the whole workflow, end to end, on the built-in synthetic data set.

synthetic dataroot + info files, then for each demo model (tpv_tiny for LiDAR segmentation,
tpv_occ3d_tiny for dense Occ3D occupancy), each on its synthetic world: train for a fixed
schedule -> evaluate on held-out streets (the per-class table) -> predict two samples ->
export them to PLY -> render pictures and write the offline 3D viewer page. Eval and predict
run through the one inference path (tpvkit.engine.inference). Every stage prints what it
wrote; a summary lists all paths and the metrics at the end.

The result does not depend on machine load: a fixed iteration count whose warm-up + cosine
schedule always completes, fixed seeds, data order, worker count and CPU threads, so two runs
on the same machine print the same metrics. The time estimate comes from the per-iteration
rate measured here before training. Running it again in the same work dir reuses the data and
the trained model (or finishes an interrupted training run).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpvkit.config import Config, apply_overrides, load_config
from tpvkit.constants import SPLITS_BY_VERSION
from tpvkit.data.infos import info_file_name, load_infos
from tpvkit.data.synthetic import generate_synthetic, synthetic_info_path, synthetic_splits
from tpvkit.engine.checkpoint import find_resume_checkpoint, load_resume_checkpoint
from tpvkit.engine.evaluate import evaluate
from tpvkit.engine.predict import predict
from tpvkit.engine.train import build_parts, train
from tpvkit.errors import TpvkitError
from tpvkit.outputs.export import export_ply
from tpvkit.outputs.view import write_viewer
from tpvkit.outputs.visualize import visualize

DEMO_CONFIG = "tpv_tiny"
DEMO_SEED = 0
# 24 epochs (the public recipe's count) of the 24 mini_train samples at batch 1: the warm-up +
# cosine schedule always runs to its end. Measured figures: docs/training.md.
DEMO_ITERS = 576
DEMO_PREDICT_SAMPLES = 2
# One intra-op thread: with two, some multithreaded CPU kernel of the training step is not
# bit-reproducible (measured: weights after 6 steps differed between two runs with 2 threads,
# were identical with 1; two 480-iteration runs ended at mIoU 24.72 and 24.30). The second
# core runs the data-loading worker.
DEMO_THREADS = 1
# Whole-demo time in training iterations beyond the schedule itself: data loading and the
# validations inside training (x1.15), then eval, predict, export and renders, measured in
# units of one training step on this model (see docs/training.md).
TRAIN_OVERHEAD = 1.15
AFTER_TRAIN_STEPS = 30
# The occupancy model: tpvkit's recipe (configs/tpv_occ3d_tiny.yaml: C2-C4 features, the LiDAR
# depth loss as an auxiliary task) at 200x112 images, lr 2e-3, two refinement blocks and 4 free
# samples per occupied voxel, for 600 iterations. Measured on 16 held-out frames of a demo-like
# world (docs/learning.md, "What the demo's occupancy model shows"), two seeds: masked mIoU
# 18.6 / 18.4, car 14.0 / 13.4, RayIoU 20.5 / 16.7, against 14.5, car 8.8, RayIoU 12.6 for the
# settings before (C3-C5, no depth loss, lr 1e-3, one block, 8 free samples) at 600 iterations
# and 13.6, car 3.3 at their 400.
DEMO_OCC_CONFIG = "tpv_occ3d_tiny"
DEMO_OCC_ITERS = 600
DEMO_OCC_OVERRIDES = (
    "data.img_size=[112,200]",
    "optim.lr=2e-3",
    "model.head.refine_layers=2",
    "train.occ_free_per_occupied=4",
)
# Its evaluation decodes the whole 200x200x16 grid and scores RayIoU: more steps' worth.
OCC_AFTER_TRAIN_STEPS = 60


@dataclass(frozen=True)
class DemoData:
    """The synthetic world a demo model trains on and is scored on (generated once, then
    reused): its folder under the work dir and `tpvkit prepare synthetic`'s options."""

    folder: str
    version: str
    scenes: int
    samples_per_scene: int
    val_scenes: int = 0  # v1.0-trainval only


# lidarseg: the ten v1.0-mini scene names (8 mini_train streets, 2 mini_val), 3 frames each.
DEMO_DATA = DemoData("data", "v1.0-mini", 10, 3)
# Occupancy learns where objects are only from many streets: on 8 it memorises them
# (docs/learning.md). 48 training streets of 2 frames (96 frames, 6 epochs in 600
# iterations) and 2 held-out streets; v1.0-trainval names lift the 10-scene cap.
DEMO_OCC_DATA = DemoData("occupancy/data", "v1.0-trainval", 50, 2, val_scenes=2)


@dataclass(frozen=True)
class DemoModel:
    """One model the demo trains and shows: its task, config, schedule, sub-folder and data."""

    task: str  # "lidarseg" | "occupancy"
    config: str
    iters: int
    folder: str  # "" (the work dir itself) or a sub-folder of it
    after_train_steps: int
    data: DemoData = DEMO_DATA
    overrides: tuple[str, ...] = ()  # config overrides before the user's


DEMO_MODELS: dict[str, DemoModel] = {
    "lidarseg": DemoModel("lidarseg", DEMO_CONFIG, DEMO_ITERS, "", AFTER_TRAIN_STEPS),
    "occupancy": DemoModel(
        "occupancy",
        DEMO_OCC_CONFIG,
        DEMO_OCC_ITERS,
        "occupancy",
        OCC_AFTER_TRAIN_STEPS,
        DEMO_OCC_DATA,
        DEMO_OCC_OVERRIDES,
    ),
}


# What the demo writes in its --work-dir; a second run reuses data/ and train/ and rewrites
# the rest, so a work dir holding anything else is not a demo's and is refused (check_work_dir).
DEMO_ENTRIES = ("data", "train", "eval", "predictions", "export", "renders", "view", "occupancy")


def check_work_dir(work_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse a --work-dir that holds files the demo did not write (unless `overwrite`): the
    demo rewrites its own outputs there on every run, and must not mix them into a user's
    folder."""
    from tpvkit.utils.io import check_output_dir

    work_dir = check_output_dir(work_dir, "--work-dir")
    if work_dir.is_dir() and not overwrite:
        foreign = sorted(p.name for p in work_dir.iterdir() if p.name not in DEMO_ENTRIES)
        if foreign:
            shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
            raise TpvkitError(
                f"--work-dir {work_dir} holds files the demo did not write ({shown}): choose a "
                "new folder, or pass --overwrite to write the demo's folders into it"
            )
    return work_dir


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def demo_config(
    data_root: Path,
    iters: int,
    overrides: list[str] | None = None,
    config: str = DEMO_CONFIG,
) -> Config:
    """A demo model's config pointed at the info files of its synthetic world, with the demo's
    fixed schedule on the CPU."""
    train_split, val_split = synthetic_splits(data_root)
    infos = data_root / "infos"
    return load_config(
        config,
        [
            f"data.train_infos={infos / info_file_name(train_split)}",
            f"data.val_infos={infos / info_file_name(val_split)}",
            "train.device=cpu",
            f"train.seed={DEMO_SEED}",
            f"train.max_iters={iters}",
            f"train.val_interval={max(iters // 2, 1)}",
            f"train.ckpt_interval={max(iters // 4, 1)}",
            "train.max_minutes=0",
            *(overrides or []),
        ],
    )


def seconds_per_iteration(cfg: Config, steps: int = 3) -> float:
    """Time `steps` training steps of `cfg`'s model on its first samples (after one warm-up).

    Runs on its own model and optimizer under an isolated RNG, so it changes nothing of the
    training run that follows.
    """
    import torch

    from tpvkit.engine.distributed import select_device, to_device
    from tpvkit.utils.rng import isolated_rng

    with isolated_rng(DEMO_SEED):
        parts = build_parts(apply_overrides(cfg, {"data.val_infos": ""}))
        device = select_device(cfg.train.device)
        model = parts.model.to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        n = len(parts.train_set)  # type: ignore[arg-type]
        elapsed = 0.0
        for i in range(steps + 1):
            start = time.perf_counter()
            batch = to_device(parts.collate_fn([parts.train_set[i % n]]), device)
            loss = parts.compute_losses(model, batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i > 0:  # the first step pays for lazy initialisation
                elapsed += time.perf_counter() - start
    return elapsed / steps


def estimated_seconds(
    iters: int, per_iter: float, after_train_steps: int = AFTER_TRAIN_STEPS
) -> float:
    """Seconds from the start of a model's training to the end of its stages at `per_iter`
    s/iteration."""
    return (iters * TRAIN_OVERHEAD + after_train_steps) * per_iter


def _clock(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 60}:{seconds % 60:02d}"


def _stored_train_config(train_dir: Path, cfg: Config) -> tuple[Config, int]:
    """`cfg` with the schedule keys of the run already in `train_dir` (a second run finishes or
    reuses that run rather than starting another schedule), and the iterations it has done."""
    found = load_resume_checkpoint(train_dir)
    assert found is not None
    _, ckpt = found
    stored = ckpt["config"]["train"]
    keys = ("max_iters", "val_interval", "ckpt_interval")
    return apply_overrides(cfg, {f"train.{k}": stored[k] for k in keys}), int(ckpt["iteration"])


def run_demo(
    work_dir: str | Path = "work_dirs/demo",
    *,
    tasks: Sequence[str] = ("lidarseg", "occupancy"),
    iters: int | None = None,
    overrides: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage in `work_dir` for the demo models `tasks` (DEMO_MODELS); return
    {"runs": {task: {"checkpoint", "metrics", "paths"}}, "seconds"}, plus the first model's
    "checkpoint", "metrics" and "paths" (data included) at the top level.

    Per model, in work_dir (lidarseg) or work_dir/occupancy: data/ (its synthetic dataroot +
    infos, DemoModel.data), train/ (checkpoints, logs, TensorBoard), eval/metrics.json,
    predictions/*.npz, export/*.ply, renders/<token>/*.png, view/scene.html. `iters` replaces
    every model's fixed schedule (warm-up + cosine); `overrides` apply to every model.
    """
    import torch

    unknown = [t for t in tasks if t not in DEMO_MODELS]
    if unknown or not tasks:
        raise TpvkitError(
            f"--task {', '.join(unknown) or '(none)'}: give one of {', '.join(DEMO_MODELS)}"
        )
    if iters is not None and iters < 1:
        raise TpvkitError(f"--iters {iters}: give at least 1 training iteration")
    start = time.monotonic()
    work_dir = Path(work_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(DEMO_THREADS)
    try:
        runs: dict[str, dict[str, Any]] = {}
        for number, task in enumerate(tasks, start=1):
            model = DEMO_MODELS[task]
            label = f"{task} ({number}/{len(tasks)})"
            data_paths = _data_stage(work_dir, model.data, log)
            runs[task] = _run_model(
                model, work_dir, data_paths, iters, overrides, log, start, label
            )
            runs[task]["paths"] = {"data": data_paths, **runs[task]["paths"]}
    finally:
        torch.set_num_threads(threads)  # a caller (a test session) keeps its own setting
    seconds = time.monotonic() - start
    eta = sum(run["eta"] for run in runs.values())
    _banner(f"demo finished in {_clock(seconds)} (min:s; estimated {_clock(eta)} + data)")
    for task, run in runs.items():
        for stage, items in run["paths"].items():
            for p in items:
                log(f"  {task:9s} {stage:8s} {p}")
    for task, run in runs.items():
        log(_metrics_line(task, run["metrics"], run["val_split"]))
        log(f"TensorBoard ({task}): tensorboard --logdir {run['train_dir'] / 'tb'}")
    first = runs[tasks[0]]
    return {
        "checkpoint": first["checkpoint"],
        "metrics": first["metrics"],
        "paths": first["paths"],
        "runs": runs,
        "seconds": seconds,
    }


def _data_stage(work_dir: Path, data: DemoData, log: Callable[[str], None]) -> list[Path]:
    """A demo model's synthetic dataroot and its info files (reused when they exist)."""
    data_root = work_dir / data.folder
    _banner(f"synthetic data ({data.version}, {data.scenes} streets)")
    train_split, val_split = SPLITS_BY_VERSION[data.version][:2]
    with contextlib.suppress(TpvkitError):  # a complete dataroot is reused, of either version
        train_split, val_split = synthetic_splits(data_root)
    train_info = synthetic_info_path(data_root, train_split)
    val_info = synthetic_info_path(data_root, val_split)
    if train_info.is_file() and val_info.is_file():
        log(f"reusing the synthetic dataroot {data_root}")
    else:
        # A dataroot without its info files is a leftover we replace (generation is atomic).
        generate_synthetic(
            data_root,
            scenes=data.scenes,
            samples_per_scene=data.samples_per_scene,
            seed=DEMO_SEED,
            version=data.version,
            val_scenes=data.val_scenes,
            overwrite=data_root.exists(),
            workers=2,  # the same bytes with any worker count; nothing else runs yet
        )
    return [data_root, train_info, val_info]


def _run_model(
    model: DemoModel,
    work_dir: Path,
    data_paths: list[Path],
    iters: int | None,
    overrides: list[str] | None,
    log: Callable[[str], None],
    start: float,
    label: str,
) -> dict[str, Any]:
    """Train, evaluate, predict, export and render one demo model, under the demo's fixed
    thread count."""
    data_root, _, val_info = data_paths
    out = work_dir / model.folder if model.folder else work_dir
    paths: dict[str, list[Path]] = {}

    # Train --------------------------------------------------------------------------------
    cfg = demo_config(
        data_root, iters or model.iters, [*model.overrides, *(overrides or [])], model.config
    )
    train_dir = out / "train"
    done = 0
    # A second run continues the first one's; a fresh demo has nothing to resume from.
    resuming = find_resume_checkpoint(train_dir) is not None
    if resuming:
        cfg, done = _stored_train_config(train_dir, cfg)
    total = cfg.train.max_iters
    _banner(
        f"{label}: train {model.config} for {total} iterations"
        + (f" ({done} done)" if done else "")
    )
    per_iter = seconds_per_iteration(cfg)
    train_start = time.monotonic()
    eta = estimated_seconds(max(total - done, 0), per_iter, model.after_train_steps)
    log(
        f"{per_iter:.2f} s/iteration measured here: the {model.task} model's stages should end "
        f"in about {_clock(eta)} (min:s; {_clock(train_start - start)} so far)"
    )
    checkpoint = train(cfg, train_dir, resume=resuming)
    paths["train"] = [
        checkpoint,
        train_dir / "latest.pth",
        train_dir / "train.log",
        train_dir / "metrics.jsonl",
        train_dir / "tb",
    ]

    def progress(stage: str) -> None:
        now = time.monotonic()
        left = train_start + eta - now
        _banner(f"{label}: {stage}")
        log(f"elapsed {_clock(now - start)}, about {_clock(max(left, 0))} left for this model")

    # Evaluate -----------------------------------------------------------------------------
    val_split = synthetic_splits(data_root)[1]
    progress(f"evaluate on {val_split} (held-out streets)")
    eval_dir = out / "eval"
    metrics = evaluate(cfg, checkpoint, val_info, split=val_split, out_dir=eval_dir)
    paths["eval"] = [eval_dir / "metrics.json"]

    # Predict + export ---------------------------------------------------------------------
    progress(f"predict {DEMO_PREDICT_SAMPLES} samples and export PLY")
    tokens = _first_tokens(val_info, DEMO_PREDICT_SAMPLES)
    predictions = predict(cfg, checkpoint, val_info, out / "predictions", tokens=tokens)
    paths["predict"] = list(predictions)
    paths["export"] = []
    for npz in predictions:
        result = export_ply(npz, out / "export" / f"{npz.stem}.ply", mode="cubes")
        paths["export"].append(Path(result.path))
        log(f"wrote {result.path} ({result.num_items} voxels)")

    # Render -------------------------------------------------------------------------------
    progress("render pictures and the 3D viewer")
    paths["render"] = []
    for npz in predictions:
        written = visualize(npz, out / "renders" / npz.stem)
        paths["render"].extend(Path(p) for p in written)
        for p in written:
            log(f"wrote {p}")
    viewer = write_viewer(predictions, out / "view" / "scene.html")
    paths["render"].append(Path(viewer.path))
    log(f"wrote {viewer.path} ({viewer.size_bytes / 1e6:.1f} MB; open it in a browser, offline)")
    return {
        "checkpoint": checkpoint,
        "metrics": metrics,
        "paths": paths,
        "eta": eta,
        "train_dir": train_dir,
        "val_split": val_split,
    }


def _first_tokens(info_path: Path, count: int) -> list[str]:
    infos = load_infos(info_path)
    return [infos[i]["token"] for i in range(min(count, len(infos)))]


def _metrics_line(task: str, metrics: dict[str, Any], split: str) -> str:
    def pct(value: Any) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}"

    if task == "occupancy":
        occ = metrics.get("occupancy", metrics)
        per_class = occ.get("iou_per_class") or {}
        return (
            f"{split} occupancy mIoU (camera mask) {pct(occ.get('miou'))}, "
            f"RayIoU {pct(occ.get('rayiou'))}, car {pct(per_class.get('car'))}, "
            f"manmade {pct(per_class.get('manmade'))}, {occ.get('num_samples')} samples"
        )
    return (
        f"{split} mIoU (points) {pct(metrics.get('miou'))}, "
        f"mIoU (voxel look-up) {pct(metrics.get('miou_voxel'))}, "
        f"{metrics.get('num_samples')} samples"
    )
