#!/usr/bin/env python
"""Proof of learning: train tpv_tiny and bev_tiny on the synthetic set for the same CPU
wall-clock budget and score both on the held-out scenes (mini_val) against chance levels.

Steps: generate a synthetic v1.0-mini dataroot (8 training scenes, 2 held-out scenes); for each
config, time a few iterations to size the cosine schedule to the budget, train for the budget
(checkpoints at regular intervals, no validation inside the budget), then evaluate every kept
checkpoint on mini_val (the curves) and the last one in full (per-class table, metrics.json,
submission files scored again by the devkit's own LidarSegEval). Chance levels come from the
training-label frequencies: a predictor drawing classes at those frequencies, and one always
predicting the most frequent class.

Writes to --out: results.json (everything), curves.csv, per_class.csv, curves.png and
summary.md (the tables of docs/learning.md). A benchmark, not a test: it takes about
2 x --minutes plus the evaluation time.

    python tools/bench_learning.py --out runs/learning --minutes 10
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpvkit.config import Config, apply_overrides, load_config
from tpvkit.constants import CLASS_NAMES, NUM_CLASSES
from tpvkit.data.synthetic import ensure_synthetic, synthetic_info_path
from tpvkit.engine.runlog import read_records
from tpvkit.engine.train import StepClock
from tpvkit.outputs.metrics import ConfusionMatrix, iou_dict, nan_to_none
from tpvkit.utils.io import atomic_write_text

VAL_SPLIT = "mini_val"
TRAIN_SPLIT = "mini_train"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="Output folder (data, runs, results).")
    p.add_argument("--minutes", type=float, default=10.0, help="Training budget per model.")
    p.add_argument(
        "--configs", default="tpv_tiny,bev_tiny", help="Comma-separated configs to compare."
    )
    p.add_argument("--data", type=Path, help="Reuse this synthetic dataroot (default: generate).")
    p.add_argument("--scenes", type=int, default=10, help="Synthetic scenes (10: 8 train + 2 val).")
    p.add_argument("--samples-per-scene", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="Seed of the data and of training.")
    p.add_argument("--curve-points", type=int, default=8, help="Checkpoints evaluated per run.")
    p.add_argument("--calibration-iters", type=int, default=10, help="Iterations timed first.")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the training process (default 1: on a shared machine, more "
        "threads than free cores make OpenMP stall, timings become 5-10x slower and erratic; "
        "0: torch's default)",
    )
    p.add_argument(
        "--parallel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Train the models side by side (one process each), so that both see the same "
        "machine load; --no-parallel runs them one after the other.",
    )
    p.add_argument(
        "--schedule-margin",
        type=float,
        default=1.1,
        help="Schedule length = margin x the iterations the calibrated speed allows.",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Data and chance levels


def label_counts(infos: Path) -> np.ndarray:
    """(17,) int64 point counts per challenge class over every sample of an info file."""
    from tpvkit.data.dataset import read_labels
    from tpvkit.data.infos import load_infos

    info_set = load_infos(infos)
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for sample in info_set:
        path = info_set.resolve(sample["lidarseg_path"])
        n = path.stat().st_size  # one uint8 label per point
        counts += np.bincount(read_labels(path, n), minlength=NUM_CLASSES)
    return counts


def chance_levels(train_counts: np.ndarray, val_gt_counts: np.ndarray, seed: int) -> dict:
    """mIoU of label-blind predictors on the val ground truth, scored by the devkit rule.

    "frequency": each point draws a class with the training-label frequencies (classes 1..16);
    its confusion matrix is sampled exactly (a multinomial draw per ground-truth class).
    "majority": every point gets the most frequent training class.
    """
    freq = train_counts.astype(np.float64).copy()
    freq[0] = 0.0
    freq /= freq.sum()
    rng = np.random.default_rng(seed)
    drawn = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for g in range(1, NUM_CLASSES):
        drawn[g] = rng.multinomial(int(val_gt_counts[g]), freq)
    majority = np.zeros_like(drawn)
    majority[:, int(freq.argmax())] = val_gt_counts
    out = {}
    for name, matrix in (("frequency", drawn), ("majority", majority)):
        cm = ConfusionMatrix.from_matrix(matrix)
        out[name] = {
            "miou": nan_to_none(cm.miou()),
            "iou_per_class": iou_dict(cm.iou_per_class()),
        }
    out["majority"]["class"] = CLASS_NAMES[int(freq.argmax())]
    out["train_label_frequency"] = {CLASS_NAMES[k]: float(freq[k]) for k in range(1, NUM_CLASSES)}
    return out


# ---------------------------------------------------------------------------------------------
# Training and evaluation


def run_config(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from tpvkit.engine.train import train

    if args.threads > 0:  # also in a worker process of --parallel
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    base = load_config(name, args.overrides)
    common = {
        "data.train_infos": str(synthetic_info_path(root, TRAIN_SPLIT)),
        "data.val_infos": "",  # no validation inside the budget: curves are scored afterwards
        "data.dataroot": str(root),
        "train.device": "cpu",
        "train.seed": args.seed,
        "train.epochs": 100_000,  # the budget, not the epoch count, ends the run
        "train.log_interval": 5,
        "train.keep_checkpoints": 0,  # keep every checkpoint: each is a point of the curve
    }
    # 1. Time a few iterations (warm-up left out) to size the cosine schedule to the budget, so
    # that the learning rate has decayed when the time is up.
    cal_dir = args.out / "runs" / f"{name}_calibration"
    shutil.rmtree(cal_dir, ignore_errors=True)
    n_cal = max(args.calibration_iters, 4)
    clock = StepClock()
    cal_cfg = apply_overrides(base, {**common, "train.max_iters": n_cal, "train.ckpt_interval": 0})
    train(cal_cfg, cal_dir, parts=clock.parts)
    sec_per_iter = clock.seconds_per_iteration(skip=2)
    if math.isnan(sec_per_iter):
        raise SystemExit("calibration ran too few iterations; raise --calibration-iters")
    shutil.rmtree(cal_dir, ignore_errors=True)
    # The margin makes the time cap, not the schedule, end the run even when the machine gets
    # faster after calibrating (the LR is then ~2 % of its peak at the stop).
    budget_iters = max(
        int(args.schedule_margin * args.minutes * 60 / sec_per_iter), args.curve_points
    )
    ckpt_interval = max(budget_iters // args.curve_points, 1)
    print(f"[{name}] ~{sec_per_iter:.2f} s/iteration -> schedule of {budget_iters} iterations")

    # 2. Train for the budget (the time cap stops it even if the estimate was optimistic).
    work_dir = args.out / "runs" / name
    shutil.rmtree(work_dir, ignore_errors=True)
    cfg = apply_overrides(
        base,
        {
            **common,
            "train.max_iters": budget_iters,
            "train.max_minutes": args.minutes,
            "train.ckpt_interval": ckpt_interval,
        },
    )
    clock = StepClock()
    t0 = time.perf_counter()
    final_ckpt = train(cfg, work_dir, parts=clock.parts)
    train_seconds = time.perf_counter() - t0
    step_seconds = clock.seconds_per_iteration(skip=2)

    # 3. The curves: every checkpoint (and the untrained model) on mini_val.
    losses = read_records(work_dir / "metrics.jsonl", "train")
    for row in losses:  # wall-clock time at which each logged iteration started
        row["seconds"] = clock.stamps[row["iter"] - 1] - clock.stamps[0]
    curve = evaluate_checkpoints(cfg, work_dir, root)

    # 4. The last checkpoint in full, as `tpvkit eval` does, plus the devkit's own score.
    from tpvkit.engine.evaluate import evaluate

    sub = args.out / "submissions" / name
    shutil.rmtree(sub, ignore_errors=True)
    final = evaluate(
        cfg,
        final_ckpt,
        synthetic_info_path(root, VAL_SPLIT),
        out_dir=work_dir,
        save_predictions=sub,
        progress=False,
    )
    devkit = devkit_miou(root, sub)
    return {
        "config": name,
        "seconds_per_iteration_calibrated": sec_per_iter,
        "seconds_per_iteration_median": step_seconds,
        "schedule_iterations": budget_iters,
        "iterations": len(clock.stamps),
        "train_seconds": train_seconds,
        "final_checkpoint": str(final_ckpt),
        "losses": losses,
        "curve": curve,
        "final": final,
        "devkit_miou": devkit,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def evaluate_checkpoints(cfg: Config, work_dir: Path, root: Path) -> list[dict[str, Any]]:
    from tpvkit.data.dataset import LidarSegDataset, build_dataloader
    from tpvkit.engine.checkpoint import list_iter_checkpoints
    from tpvkit.engine.evaluate import evaluate_model
    from tpvkit.engine.inference import load_for_inference
    from tpvkit.models.tpvformer import build_model
    from tpvkit.utils.rng import seed_everything

    dataset = LidarSegDataset(
        synthetic_info_path(root, VAL_SPLIT), cfg.data, cfg.model, train=False
    )
    loader = build_dataloader(dataset, batch_size=1, num_workers=cfg.data.num_workers)
    points = [(0, None), *list_iter_checkpoints(work_dir)]
    curve = []
    for iteration, path in points:
        seed_everything(cfg.train.seed)  # iteration 0: the same initial weights as training
        if path is None:
            model = build_model(cfg)
        else:  # the one setup path of eval and predict
            model = load_for_inference(path, cfg, device="cpu").model
        m = evaluate_model(model, loader, "cpu", progress=False)
        curve.append({"iter": iteration, "miou": m["miou"], "miou_voxel": m["miou_voxel"]})
        print(f"  iteration {iteration}: val mIoU {fmt(m['miou'])} (voxels {fmt(m['miou_voxel'])})")
    return curve


def devkit_miou(root: Path, submission: Path) -> float:
    from nuscenes import NuScenes
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval

    nusc = NuScenes("v1.0-mini", str(root), verbose=False)
    return float(LidarSegEval(nusc, str(submission), VAL_SPLIT).evaluate()["miou"])


# ---------------------------------------------------------------------------------------------
# Reports


def fmt(value: float | None, scale: float = 100.0) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{scale * value:.1f}")
    )


def write_csvs(out: Path, runs: list[dict], chance: dict) -> None:
    with open(out / "curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["config", "kind", "iter", "loss", "loss_lovasz", "loss_ce", "miou", "miou_voxel"]
        )
        for run in runs:
            for r in run["losses"]:
                w.writerow(
                    [
                        run["config"],
                        "train",
                        r["iter"],
                        r.get("loss"),
                        r.get("loss_lovasz"),
                        r.get("loss_ce"),
                        "",
                        "",
                    ]
                )
            for r in run["curve"]:
                w.writerow(
                    [run["config"], "val", r["iter"], "", "", "", r["miou"], r["miou_voxel"]]
                )
    with open(out / "per_class.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        header = ["class"]
        for run in runs:
            header += [f"{run['config']}_points", f"{run['config']}_voxels"]
        w.writerow([*header, "chance_frequency", "chance_majority"])
        for name in CLASS_NAMES[1:]:
            row: list[Any] = [name]
            for run in runs:
                row += [
                    run["final"]["iou_per_class"][name],
                    run["final"]["iou_per_class_voxel"][name],
                ]
            row += [
                chance["frequency"]["iou_per_class"][name],
                chance["majority"]["iou_per_class"][name],
            ]
            w.writerow(row)


def plot_curves(out: Path, runs: list[dict], chance: dict) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no curves.png (the CSV has the numbers)")
        return None
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        its = np.array([r["iter"] for r in run["losses"]], dtype=float)
        loss = np.array([r["loss"] for r in run["losses"]], dtype=float)
        (line,) = ax_loss.plot(its, loss, alpha=0.3, lw=0.8)
        k = max(len(loss) // 20, 1)  # moving average over ~5 % of the run
        if len(loss) > k:
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax_loss.plot(its[k - 1 :], smooth, color=line.get_color(), label=run["config"])
        curve_it = [r["iter"] for r in run["curve"]]
        ax_miou.plot(
            curve_it,
            [100 * (r["miou"] or 0) for r in run["curve"]],
            "o-",
            color=line.get_color(),
            label=f"{run['config']} points",
        )
        ax_miou.plot(
            curve_it,
            [100 * (r["miou_voxel"] or 0) for r in run["curve"]],
            "s--",
            color=line.get_color(),
            alpha=0.6,
            label=f"{run['config']} voxels",
        )
    for key, style in (("frequency", ":"), ("majority", "-.")):
        ax_miou.axhline(
            100 * (chance[key]["miou"] or 0), color="gray", ls=style, label=f"chance ({key})"
        )
    ax_loss.set(xlabel="iteration", ylabel="training loss (Lovasz + CE)", title="loss")
    ax_miou.set(xlabel="iteration", ylabel="mIoU on mini_val (%)", title="held-out mIoU")
    ax_loss.legend()
    ax_miou.legend(fontsize=8)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_markdown(runs: list[dict], chance: dict, args: argparse.Namespace) -> str:
    lines = [
        "| model | iterations | train min | s/iter | mIoU points | mIoU voxels | devkit mIoU |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        f = run["final"]
        lines.append(
            f"| {run['config']} | {run['iterations']} | {run['train_seconds'] / 60:.1f} | "
            f"{run['seconds_per_iteration_median']:.2f} | {fmt(f['miou'])} | "
            f"{fmt(f['miou_voxel'])} | {fmt(run['devkit_miou'])} |"
        )
    lines.append(f"| chance: frequency draw | | | | {fmt(chance['frequency']['miou'])} | | |")
    lines.append(
        f"| chance: always {chance['majority']['class']} | | | | "
        f"{fmt(chance['majority']['miou'])} | | |"
    )
    lines += [
        "",
        "| class | val points | "
        + " | ".join(f"{r['config']} pts | {r['config']} vox" for r in runs)
        + " | freq. draw |",
        "|---|---|" + "---|" * (2 * len(runs) + 1),
    ]
    for name in CLASS_NAMES[1:]:
        k = CLASS_NAMES.index(name)
        n_val = int(np.asarray(runs[0]["final"]["confusion_matrix"])[k].sum())
        cells = []
        for run in runs:
            cells += [
                fmt(run["final"]["iou_per_class"][name]),
                fmt(run["final"]["iou_per_class_voxel"][name]),
            ]
        lines.append(
            f"| {name} | {n_val} | "
            + " | ".join(cells)
            + f" | {fmt(chance['frequency']['iou_per_class'][name])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = ensure_synthetic(
        args.data or args.out / "data",
        scenes=args.scenes,
        samples_per_scene=args.samples_per_scene,
        seed=args.seed,
        generate=args.data is None,
        splits=(TRAIN_SPLIT, VAL_SPLIT),
    )
    train_counts = label_counts(synthetic_info_path(root, TRAIN_SPLIT))
    names = [name for name in args.configs.split(",") if name]
    if args.parallel:
        # Side by side, the models see the same machine load for the whole budget.
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(
            len(names), mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            runs = list(pool.map(run_config, names, [args] * len(names), [root] * len(names)))
    else:
        runs = [run_config(name, args, root) for name in names]
    val_gt = np.asarray(runs[0]["final"]["confusion_matrix"]).sum(axis=1)
    chance = chance_levels(train_counts, val_gt, args.seed)
    results = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else argv,
        "minutes_per_model": args.minutes,
        "data": {
            "root": str(root),
            "scenes": args.scenes,
            "samples_per_scene": args.samples_per_scene,
            "seed": args.seed,
        },
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "chance": chance,
        "runs": runs,
        "total_seconds": time.perf_counter() - started,
    }
    atomic_write_text(args.out / "results.json", json.dumps(results, indent=1, default=str) + "\n")
    write_csvs(args.out, runs, chance)
    png = plot_curves(args.out, runs, chance)
    summary = summary_markdown(runs, chance, args)
    atomic_write_text(args.out / "summary.md", summary)
    print(summary)
    print(
        f"wrote {args.out / 'results.json'}, curves.csv, per_class.csv, summary.md"
        + (f", {png.name}" if png else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
