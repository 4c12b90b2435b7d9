#!/usr/bin/env python
"""Proof of learning for dense occupancy at a fixed number of iterations: train Occ3D configs
(default tpv_occ3d_tiny and bev_occ3d_tiny) with two seeds each on the synthetic world's Occ3D
labels and score them on held-out streets next to label-blind predictors.

Steps: generate (or reuse, --data) a synthetic dataroot whose val scenes are streets no
training frame shows (default: a v1.0-trainval-named world of 96 training streets and 8 val
streets, 4 key frames each; `--version v1.0-mini` for the 8 + 2 streets of 0.2's proof);
train every (config, seed) for exactly --iters iterations (wall-clock is recorded beside it,
never used to stop), keeping --curve-points checkpoints; score the untrained model and every
checkpoint on the val streets with the Occ3D metrics tpvkit eval computes (mIoU inside
mask_camera and without a mask, RayIoU at 1/2/4 m) plus, from the same confusion matrices,
object-class mIoU (classes 1-10: barrier ... truck) and geometric IoU (occupied vs free inside
mask_camera); the final checkpoint also by distance from the ego origin (RANGE_BINS: the masked
IoU of the voxels 0-10 m, 10-20 m, ... away). Runs go --jobs at a time, one torch thread each.

Label-blind predictors, from the training labels only (every voxel, free included):
- "frequency draw": each voxel draws a class with the training voxel frequencies;
- "all free": every voxel free (the most frequent class);
- "position prior": each voxel the class most frequent at that grid position in training
  (label-blind but it knows where the ground usually is).

Writes to --out: results.json (everything), curves.csv, summary.md (the tables of
docs/learning.md), curves.png. A benchmark, not a test.

    python tools/bench_occ_learning.py --out runs/occ --configs tpv_occ3d_tiny --seeds 0,1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpvkit.config import Config, apply_overrides, load_config
from tpvkit.constants import SPLITS_BY_VERSION
from tpvkit.data.occ3d import OCC3D_CLASS_NAMES, OCC3D_FREE
from tpvkit.data.synthetic import ensure_synthetic, synthetic_info_path, synthetic_splits
from tpvkit.engine.runlog import read_records
from tpvkit.engine.train import StepClock
from tpvkit.errors import TpvkitError
from tpvkit.outputs.occ_metrics import geometric_iou
from tpvkit.utils.io import atomic_write_text

SPLITS = {v: SPLITS_BY_VERSION[v][:2] for v in ("v1.0-mini", "v1.0-trainval")}
OBJECT_CLASSES = tuple(range(1, 11))  # Occ3D: barrier, bicycle, ..., truck
SCORE_KEYS = ("miou", "miou_objects", "geometric_iou", "miou_nomask", "rayiou")
RANGE_BINS = (0.0, 10.0, 20.0, 30.0, 40.0)  # metres from the ego origin
RANGE_CLASSES = ("car", "manmade", "driveable_surface")  # reported per range in summary.md


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="Output folder (data, runs, results).")
    p.add_argument(
        "--iters", type=int, default=3000, help="Training iterations per run (the proof: 3000)."
    )
    p.add_argument("--configs", default="tpv_occ3d_tiny,bev_occ3d_tiny", help="Comma-separated.")
    p.add_argument("--seeds", default="0,1", help="Training seeds, comma-separated.")
    p.add_argument(
        "--runs", default="", help="Explicit runs CONFIG:SEED,... (instead of configs x seeds)."
    )
    p.add_argument("--data", type=Path, help="Reuse this synthetic dataroot (default: generate).")
    p.add_argument("--version", default="v1.0-trainval", choices=sorted(SPLITS))
    p.add_argument("--scenes", type=int, default=104, help="Synthetic scenes (train + val).")
    p.add_argument("--val-scenes", type=int, default=8, help="v1.0-trainval: held-out streets.")
    p.add_argument("--samples-per-scene", type=int, default=4)
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=(400, 224),
        metavar=("W", "H"),
        help="Camera images of a generated world (tpv_occ3d_tiny reads 400x224).",
    )
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument(
        "--more-train-data",
        type=Path,
        nargs="*",
        default=[],
        help="Other synthetic dataroots (e.g. made with other --seed values) whose training "
        "streets join the training set; the val streets stay --data's (unseen streets).",
    )
    p.add_argument("--curve-points", type=int, default=5, help="Checkpoints scored per run.")
    p.add_argument("--jobs", type=int, default=2, help="Runs at a time (one thread each).")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="Report the runs already in --out (their run.json, else score them again).",
    )
    return p.parse_args(argv)


def fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}"


# ---------------------------------------------------------------------------------------------
# Scores


def derived_scores(results: dict[str, Any]) -> dict[str, Any]:
    """Object-class mIoU (the mean over classes 1-10 present in GT or prediction, from the
    sink's own per-class IoU) and geometric IoU of an occupancy result (masked)."""
    ious = [results["iou_per_class"][OCC3D_CLASS_NAMES[c]] for c in OBJECT_CLASSES]
    ious = [v for v in ious if v is not None]
    m = np.asarray(results["confusion_matrix"], dtype=np.float64)
    return {
        "miou_objects": float(np.mean(ious)) if ious else None,
        "geometric_iou": geometric_iou(m, OCC3D_FREE),
        "predicted_classes": int((m.sum(0) > 0).sum()),
    }


def score_model(
    model: torch.nn.Module, cfg: Config, root: Path, ray_iou: bool = True
) -> dict[str, Any]:
    from tpvkit.data.infos import load_infos
    from tpvkit.engine.inference import inference_loader, run_inference
    from tpvkit.engine.occupancy import OccupancyMetricsSink

    loader = inference_loader(
        apply_overrides(cfg, {"data.num_workers": 0}),
        load_infos(synthetic_info_path(root, synthetic_splits(root)[1])),
        torch.device("cpu"),
    )
    # the final checkpoint (the one with RayIoU) is also scored by distance
    sink = OccupancyMetricsSink(ray_iou=ray_iou, range_bins=RANGE_BINS if ray_iou else ())
    out = run_inference(model, loader, "cpu", [sink], progress=False)[0]
    return {**out, **derived_scores(out)}


def training_infos(root: Path, more: list[Path], out: Path) -> Path:
    """The training info file: --data's training split, or it merged with the training samples of
    `more` dataroots (paths made absolute, tokens and scene names prefixed so that they stay
    unique) into out/train_infos.json."""
    if not more:
        return synthetic_info_path(root, synthetic_splits(root)[0])
    doc: dict[str, Any] = {}
    samples = []
    for k, world in enumerate([root, *more]):
        doc = json.loads(synthetic_info_path(world, synthetic_splits(world)[0]).read_text())
        for sample in doc["samples"]:
            for key in ("lidar_path", "lidarseg_path", "occ3d_path"):
                if sample.get(key):
                    sample[key] = str((world / sample[key]).resolve())
            for cam in sample["cams"].values():
                cam["img_path"] = str((world / cam["img_path"]).resolve())
            for key in ("token", "scene_token", "scene_name"):
                sample[key] = f"w{k}_{sample[key]}"
            samples.append(sample)
    doc["samples"] = samples
    path = out / "train_infos.json"
    atomic_write_text(path, json.dumps(doc))
    return path


def label_blind(root: Path, seed: int, train_infos: Path | None = None) -> dict[str, Any]:
    """Scores of the three label-blind predictors on the val streets (module docstring)."""
    from tpvkit.data.infos import load_infos
    from tpvkit.data.occ3d import (
        INFO_FIELD,
        OCC3D_GRID,
        OCC3D_NUM_CLASSES,
        read_labels,
        scene_ray_origins,
    )
    from tpvkit.engine.occupancy import OccupancyMetricsSink

    C = OCC3D_NUM_CLASSES
    train_split, val_split = synthetic_splits(root)
    train = load_infos(train_infos or synthetic_info_path(root, train_split))
    per_position = np.zeros((*OCC3D_GRID, C), dtype=np.int32)
    grid_index = np.indices(OCC3D_GRID)
    for sample in train:
        sem = read_labels(train.resolve(sample[INFO_FIELD])).semantics
        per_position[grid_index[0], grid_index[1], grid_index[2], sem] += 1
    counts = per_position.reshape(-1, C).sum(0).astype(np.float64)
    freq = counts / counts.sum()
    predictors = {
        "frequency draw": None,
        "all free": np.full(OCC3D_GRID, OCC3D_FREE, dtype=np.int64),
        "position prior": per_position.argmax(-1).astype(np.int64),
    }
    val = load_infos(synthetic_info_path(root, val_split))
    sinks = {name: OccupancyMetricsSink() for name in predictors}
    rng = np.random.default_rng(seed)
    for sample, orig in zip(val.samples, scene_ray_origins(val.samples), strict=True):
        labels = read_labels(val.resolve(sample[INFO_FIELD]))
        batch = {
            "occ_semantics": torch.from_numpy(labels.semantics.astype(np.int64))[None],
            "occ_mask_camera": torch.from_numpy(labels.mask_camera)[None],
            "ray_origins": [torch.from_numpy(orig)],
        }
        for name, volume in predictors.items():
            if volume is None:
                volume = rng.choice(C, size=OCC3D_GRID, p=freq)
            # one-hot "logits": the sink's own argmax scores exactly this volume
            logits = torch.nn.functional.one_hot(torch.from_numpy(volume), C).permute(3, 0, 1, 2)
            sinks[name].add(batch, {"voxel_logits": logits[None].float()})
    out: dict[str, Any] = {}
    for name, sink in sinks.items():
        res = sink.finish()
        out[name] = {**res, **derived_scores(res)}
    out["train_voxel_frequency"] = {
        n: float(f) for n, f in zip(OCC3D_CLASS_NAMES, freq, strict=True)
    }
    return out


# ---------------------------------------------------------------------------------------------
# Training


def run_one(job: tuple[str, int], args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Train one (config, seed) for exactly --iters iterations and score its checkpoints."""
    from tpvkit.engine.checkpoint import list_iter_checkpoints
    from tpvkit.engine.inference import load_for_inference
    from tpvkit.engine.train import train
    from tpvkit.models.tpvformer import build_model
    from tpvkit.utils.rng import seed_everything

    name, seed = job
    torch.set_num_threads(1)
    work_dir = args.out / "runs" / f"{name}_seed{seed}"
    if args.eval_only and (work_dir / "run.json").is_file():
        return json.loads((work_dir / "run.json").read_text())
    cfg = load_config(name, args.overrides)
    cfg = apply_overrides(
        cfg,
        {
            "data.train_infos": str(args.train_infos),
            "data.val_infos": "",  # scored afterwards, outside the timed training
            "data.dataroot": str(root),
            "data.num_workers": 0,
            "train.device": "cpu",
            "train.seed": seed,
            "train.max_iters": args.iters,
            "train.max_minutes": 0,
            "train.ckpt_interval": max(args.iters // args.curve_points, 1),
            "train.keep_checkpoints": 0,
            "train.log_interval": 10,
        },
    )
    clock = StepClock()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    if not args.eval_only:
        train(cfg, work_dir, resume=(work_dir / "latest.pth").exists(), parts=clock.parts)
    train_seconds = time.perf_counter() - t0
    stored = load_config(work_dir / "config.yaml")  # with the counted class frequencies
    curve = []
    points = [(0, None), *list_iter_checkpoints(work_dir)]
    for iteration, path in points:
        seed_everything(seed)  # iteration 0: the initial weights of training
        if path is None:
            model = build_model(stored)
        else:  # the one setup path of eval and predict
            model = load_for_inference(path, stored, device="cpu").model
        # RayIoU (a few seconds a frame on one core) for the final checkpoint only
        scores = score_model(model, stored, root, ray_iou=iteration == points[-1][0])
        seconds = None
        if clock.stamps and iteration > 0:
            seconds = clock.stamps[min(iteration, len(clock.stamps)) - 1] - clock.stamps[0]
        curve.append({"iter": iteration, "train_seconds": seconds, **scores})
        print(
            f"[{name} seed {seed}] iteration {iteration}: "
            + " ".join(f"{k} {fmt(scores.get(k))}" for k in SCORE_KEYS),
            flush=True,
        )
    gaps = np.diff(clock.stamps[2:]) if len(clock.stamps) > 3 else np.array([np.nan])
    result = {
        "config": name,
        "seed": seed,
        "iterations": args.iters,
        "train_seconds": train_seconds if not args.eval_only else None,
        "seconds_per_iteration_median": float(np.median(gaps)),
        "losses": read_records(work_dir / "metrics.jsonl", "train"),
        "curve": curve,
        "final": curve[-1],
        "train": {k: v for k, v in vars(stored.train).items() if k != "class_frequencies"},
        "class_frequencies": stored.train.class_frequencies,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    # Each run's result as soon as it exists: a report of finished runs needs no re-scoring
    # (--eval-only reuses it) and does not wait for the others.
    atomic_write_text(work_dir / "run.json", json.dumps(result, default=str) + "\n")
    return result


# ---------------------------------------------------------------------------------------------
# Reports


def summary_markdown(runs: list[dict], blind: dict) -> str:
    head = (
        "| model | seed | iterations | train min | s/iter | mIoU (mask) | object mIoU | geo IoU "
        "| mIoU (no mask) | RayIoU@1 | @2 | @4 | RayIoU |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    keys = (
        "miou",
        "miou_objects",
        "geometric_iou",
        "miou_nomask",
        "rayiou_1",
        "rayiou_2",
        "rayiou_4",
        "rayiou",
    )
    for run in runs:
        f = run["final"]
        minutes = "-" if run["train_seconds"] is None else f"{run['train_seconds'] / 60:.1f}"
        lines.append(
            f"| {run['config']} | {run['seed']} | {run['iterations']} | {minutes} | "
            f"{run['seconds_per_iteration_median']:.2f} | "
            + " | ".join(fmt(f.get(k)) for k in keys)
            + " |"
        )
    for name in ("position prior", "frequency draw", "all free"):
        lines.append(
            f"| {name} | | | | | " + " | ".join(fmt(blind[name].get(k)) for k in keys) + " |"
        )
    lines += [
        "",
        "| class (IoU inside mask_camera) | "
        + " | ".join(f"{r['config']} s{r['seed']}" for r in runs)
        + " | position prior | frequency draw |",
        "|---|" + "---|" * (len(runs) + 2),
    ]
    for cls in runs[0]["final"]["iou_per_class"]:
        cells = [fmt(r["final"]["iou_per_class"][cls]) for r in runs]
        cells += [fmt(blind[n]["iou_per_class"][cls]) for n in ("position prior", "frequency draw")]
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    ranged = [r for r in runs if r["final"].get("iou_per_class_by_range")]
    if ranged:
        bins = list(ranged[0]["final"]["iou_per_class_by_range"])
        lines += [
            "",
            "| masked IoU by distance from the ego origin | "
            + " | ".join(f"{r['config']} s{r['seed']}" for r in ranged)
            + " |",
            "|---|" + "---|" * len(ranged),
        ]
        for cls in (*RANGE_CLASSES, "mIoU"):
            for key in bins:
                cells = [
                    fmt(
                        r["final"]["miou_by_range"][key]
                        if cls == "mIoU"
                        else r["final"]["iou_per_class_by_range"][key][cls]
                    )
                    for r in ranged
                ]
                lines.append(f"| {cls} {key} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Held-out curves (mIoU inside mask_camera / object mIoU / RayIoU (final only), x100):",
        "",
    ]
    for run in runs:
        pts = ", ".join(
            f"{c['iter']}: {fmt(c['miou'])} / {fmt(c['miou_objects'])} / {fmt(c.get('rayiou'))}"
            for c in run["curve"]
        )
        lines.append(f"- {run['config']} seed {run['seed']}: {pts}")
    return "\n".join(lines) + "\n"


def write_curves(out: Path, runs: list[dict]) -> None:
    with open(out / "curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["config", "seed", "kind", "iter", "train_seconds", "loss", *SCORE_KEYS])
        for run in runs:
            for r in run["losses"]:
                w.writerow([run["config"], run["seed"], "train", r["iter"], "", r.get("loss")])
            for c in run["curve"]:
                w.writerow(
                    [run["config"], run["seed"], "val", c["iter"], c["train_seconds"], ""]
                    + [c.get(k) for k in SCORE_KEYS]
                )


def plot_curves(out: Path, runs: list[dict], blind: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for run in runs:
        label = f"{run['config']} seed {run['seed']}"
        losses = run["losses"]
        axes[0].plot([r["iter"] for r in losses], [r["loss"] for r in losses], label=label, lw=1)
        it = [c["iter"] for c in run["curve"]]
        axes[1].plot(it, [100 * (c["miou"] or 0) for c in run["curve"]], "o-", label=label)
        axes[2].plot(it, [100 * (c["miou_objects"] or 0) for c in run["curve"]], "o-", label=label)
    prior = blind["position prior"]
    axes[1].axhline(100 * prior["miou"], color="gray", ls="--", label="position prior")
    axes[2].axhline(
        100 * (prior["miou_objects"] or 0), color="gray", ls="--", label="position prior"
    )
    axes[0].set(title="training loss", xlabel="iteration", yscale="log")
    axes[1].set(title="held-out mIoU inside mask_camera (x100)", xlabel="iteration")
    axes[2].set(title="held-out object-class mIoU (x100)", xlabel="iteration")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = ensure_synthetic(
        args.data or args.out / "data",
        scenes=args.scenes,
        samples_per_scene=args.samples_per_scene,
        seed=args.data_seed,
        generate=args.data is None,
        splits=SPLITS[args.version] if args.data is None else (),
        version=args.version,
        val_scenes=args.val_scenes if args.version == "v1.0-trainval" else 0,
        image_size=tuple(args.image_size),
    )
    try:
        synthetic_splits(root)
    except TpvkitError as err:
        raise SystemExit(f"error: {err}") from None
    args.train_infos = training_infos(root, args.more_train_data, args.out)
    jobs = [(c, int(s)) for s in args.seeds.split(",") for c in args.configs.split(",") if c]
    if args.runs:
        jobs = [(r.split(":")[0], int(r.split(":")[1])) for r in args.runs.split(",") if r]
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(args.jobs, len(jobs)), mp_context=ctx) as pool:
            runs = list(pool.map(run_one, jobs, [args] * len(jobs), [root] * len(jobs)))
    else:
        runs = [run_one(job, args, root) for job in jobs]
    blind = label_blind(root, args.data_seed, args.train_infos)
    results = {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "iterations": args.iters,
        "data": {
            "root": str(root),
            "splits": synthetic_splits(root),
            "samples_per_scene": args.samples_per_scene,
            "more_train_data": [str(p) for p in args.more_train_data],
            "train_infos": str(args.train_infos),
        },
        "cpu_count": os.cpu_count(),
        "label_blind": blind,
        "runs": runs,
        "total_seconds": time.perf_counter() - started,
    }
    atomic_write_text(args.out / "results.json", json.dumps(results, indent=1, default=str) + "\n")
    write_curves(args.out, runs)
    plot_curves(args.out, runs, blind)
    summary = summary_markdown(runs, blind)
    atomic_write_text(args.out / "summary.md", summary)
    print(summary)
    print(f"wrote {args.out / 'results.json'}, curves.csv, curves.png, summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
