#!/usr/bin/env python
"""Proof of learning for dense occupancy: train tpv_occ3d_tiny and bev_occ3d_tiny on the
synthetic world's Occ3D labels for the same CPU wall-clock budget and score both on the
held-out scenes (mini_val) with the Occ3D mIoU (camera mask, no mask) and SparseOcc's RayIoU,
next to label-blind predictors.

Steps: generate a synthetic v1.0-mini dataroot (by default 8 training scenes, 2 held-out
scenes, Occ3D ground truth for every key frame); for each config, time a few iterations to
size the cosine schedule to the budget, train for the budget (checkpoints at regular
intervals), evaluate the kept checkpoints on mini_val (the curve) and the last one in full, as
`tpvkit eval` does (metrics.json, per-class table). The models train side by side, one
process and one torch thread each, so both see the same machine load.

Chance levels, from the training labels only (every voxel, free included):
- "frequency draw": each voxel draws a class with the training voxel frequencies;
- "all majority": every voxel gets the most frequent training class (free, so 0 everywhere);
- "position prior": each voxel gets the class most frequent at that grid position over the
  training frames (label-blind but position-aware: it knows where the ground usually is).

Writes to --out: results.json, curves.csv, summary.md (the tables of docs/learning.md). A
benchmark, not a test: it takes about --minutes (parallel) plus the data and the evaluation.

    python tools/bench_occ_learning.py --out runs/occ_learning --minutes 6
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpvkit.config import Config, apply_overrides, load_config
from tpvkit.utils.io import atomic_write_text

# The lidarseg benchmark's data set-up and small helpers (same splits, same synthetic data);
# tools/ is this script's folder, so it imports as a sibling module.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_learning import (  # noqa: E402
    TRAIN_SPLIT,
    VAL_SPLIT,
    StepClock,
    ensure_data,
    fmt,
    info_path,
    read_losses,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="Output folder (data, runs, results).")
    p.add_argument("--minutes", type=float, default=6.0, help="Training budget per model.")
    p.add_argument(
        "--configs", default="tpv_occ3d_tiny,bev_occ3d_tiny", help="Comma-separated configs."
    )
    p.add_argument("--data", type=Path, help="Reuse this synthetic dataroot (default: generate).")
    p.add_argument("--scenes", type=int, default=10, help="Synthetic scenes (10: 8 train + 2 val).")
    p.add_argument("--samples-per-scene", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="Seed of the data and of training.")
    p.add_argument("--curve-points", type=int, default=4, help="Checkpoints evaluated per run.")
    p.add_argument("--calibration-iters", type=int, default=6, help="Iterations timed first.")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads per training process (0: default)."
    )
    p.add_argument(
        "--parallel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Train the models side by side (one process each); --no-parallel: one by one.",
    )
    p.add_argument("--schedule-margin", type=float, default=1.1)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Chance levels


def chance_levels(root: Path, seed: int) -> dict[str, Any]:
    """Scores of the three label-blind predictors on mini_val (see the module docstring)."""
    from tpvkit.data.infos import load_infos
    from tpvkit.data.occ3d import (
        INFO_FIELD,
        OCC3D_CLASS_NAMES,
        OCC3D_GRID,
        OCC3D_NUM_CLASSES,
        read_labels,
        scene_ray_origins,
    )
    from tpvkit.engine.occupancy import OccupancyMetricsSink

    C = OCC3D_NUM_CLASSES
    train = load_infos(info_path(root, TRAIN_SPLIT))
    per_position = np.zeros((*OCC3D_GRID, C), dtype=np.int32)
    grid_index = np.indices(OCC3D_GRID)
    for sample in train:
        sem = read_labels(train.resolve(sample[INFO_FIELD])).semantics
        per_position[grid_index[0], grid_index[1], grid_index[2], sem] += 1
    counts = per_position.reshape(-1, C).sum(0).astype(np.float64)
    freq = counts / counts.sum()
    predictors = {
        "frequency draw": None,
        "all majority": np.full(OCC3D_GRID, int(freq.argmax()), dtype=np.int64),
        "position prior": per_position.argmax(-1).astype(np.int64),
    }
    val = load_infos(info_path(root, VAL_SPLIT))
    origins = scene_ray_origins(val.samples)
    sinks = {name: OccupancyMetricsSink() for name in predictors}
    rng = np.random.default_rng(seed)
    for sample, orig in zip(val.samples, origins, strict=True):
        labels = read_labels(val.resolve(sample[INFO_FIELD]))
        batch = {
            "occ_semantics": torch.from_numpy(labels.semantics.astype(np.int64))[None],
            "occ_mask_camera": torch.from_numpy(labels.mask_camera)[None],
            "ray_origins": [torch.from_numpy(orig)],
        }
        for name, volume in predictors.items():
            if volume is None:
                volume = rng.choice(C, size=OCC3D_GRID, p=freq)
            # one-hot "logits": the sink's own argmax path scores exactly this volume
            logits = torch.nn.functional.one_hot(torch.from_numpy(volume), C).permute(3, 0, 1, 2)
            sinks[name].add(batch, {"voxel_logits": logits[None].float()})
    out: dict[str, Any] = {name: sink.finish() for name, sink in sinks.items()}
    out["train_voxel_frequency"] = {
        n: float(f) for n, f in zip(OCC3D_CLASS_NAMES, freq, strict=True)
    }
    out["majority_class"] = OCC3D_CLASS_NAMES[int(freq.argmax())]
    return out


# ---------------------------------------------------------------------------------------------
# Training and evaluation


def run_config(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from tpvkit.engine.evaluate import evaluate
    from tpvkit.engine.train import train

    if args.threads > 0:  # also in a worker process of --parallel
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    base = load_config(name, args.overrides)
    common = {
        "data.train_infos": str(info_path(root, TRAIN_SPLIT)),
        "data.val_infos": "",  # no validation inside the budget: scored afterwards
        "data.dataroot": str(root),
        "data.num_workers": 0,  # one process per model: the budget is one core each
        "train.device": "cpu",
        "train.seed": args.seed,
        "train.epochs": 100_000,  # the budget, not the epoch count, ends the run
        "train.log_interval": 5,
        "train.keep_checkpoints": 0,
    }
    cal_dir = args.out / "runs" / f"{name}_calibration"
    shutil.rmtree(cal_dir, ignore_errors=True)
    clock = StepClock()
    n_cal = max(args.calibration_iters, 4)
    train(
        apply_overrides(base, {**common, "train.max_iters": n_cal, "train.ckpt_interval": 0}),
        cal_dir,
        parts=clock.parts,
    )
    sec_per_iter = clock.seconds_per_iteration(skip=2)
    shutil.rmtree(cal_dir, ignore_errors=True)
    budget_iters = max(
        int(args.schedule_margin * args.minutes * 60 / sec_per_iter), args.curve_points
    )
    print(f"[{name}] ~{sec_per_iter:.2f} s/iteration -> schedule of {budget_iters} iterations")

    work_dir = args.out / "runs" / name
    shutil.rmtree(work_dir, ignore_errors=True)
    cfg = apply_overrides(
        base,
        {
            **common,
            "train.max_iters": budget_iters,
            "train.max_minutes": args.minutes,
            "train.ckpt_interval": max(budget_iters // args.curve_points, 1),
        },
    )
    clock = StepClock()
    t0 = time.perf_counter()
    final_ckpt = train(cfg, work_dir, parts=clock.parts)
    train_seconds = time.perf_counter() - t0
    curve = evaluate_checkpoints(cfg, work_dir, root, final_ckpt)
    final = evaluate(
        cfg,
        final_ckpt,
        info_path(root, VAL_SPLIT),
        out_dir=work_dir,
        save_predictions=args.out / "predictions" / name,
        progress=False,
    )
    return {
        "config": name,
        "loss": cfg.train.loss,
        "occ_loss_mask": cfg.train.occ_loss_mask,
        "seconds_per_iteration_calibrated": sec_per_iter,
        "seconds_per_iteration_median": clock.seconds_per_iteration(skip=2),
        "schedule_iterations": budget_iters,
        "iterations": len(clock.times),
        "train_seconds": train_seconds,
        "final_checkpoint": str(final_ckpt),
        "losses": read_losses(work_dir / "metrics.jsonl"),
        "curve": curve,
        "final": final,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def evaluate_checkpoints(
    cfg: Config, work_dir: Path, root: Path, final: Path
) -> list[dict[str, Any]]:
    """Occupancy scores of the untrained model and the intermediate checkpoints (the final
    one is scored in full by `evaluate`)."""
    from tpvkit.data.dataset import LidarSegDataset, build_dataloader
    from tpvkit.engine.checkpoint import list_iter_checkpoints, load_model_weights
    from tpvkit.engine.evaluate import evaluate_model
    from tpvkit.models.tpvformer import build_model
    from tpvkit.utils.rng import seed_everything

    dataset = LidarSegDataset(info_path(root, VAL_SPLIT), cfg.data, cfg.model, train=False)
    loader = build_dataloader(dataset, batch_size=1, num_workers=0)
    points = [(0, None), *list_iter_checkpoints(work_dir)]
    curve = []
    for iteration, path in points:
        if path is not None and Path(path).resolve() == final.resolve():
            continue
        seed_everything(cfg.train.seed)  # iteration 0: the same initial weights as training
        model = build_model(cfg.model)
        if path is not None:
            load_model_weights(model, path, cfg)
        m = evaluate_model(
            model,
            loader,
            "cpu",
            num_classes=cfg.model.num_classes,
            voxel_metrics=False,
            progress=False,
            occupancy=True,
        )
        row = {k: m[k] for k in ("miou", "miou_nomask", "rayiou")}
        curve.append({"iter": iteration, **row})
        print(
            f"  {cfg.name} iteration {iteration}: "
            + " ".join(f"{k} {fmt(v)}" for k, v in row.items())
        )
    return curve


# ---------------------------------------------------------------------------------------------
# Reports


SCORE_KEYS = ("miou", "miou_nomask", "rayiou_1", "rayiou_2", "rayiou_4", "rayiou")


def summary_markdown(runs: list[dict], chance: dict) -> str:
    lines = [
        "| model | iterations | train min | s/iter | mIoU (mask) | mIoU (no mask) | "
        "RayIoU@1 | @2 | @4 | RayIoU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        f = run["final"]
        lines.append(
            f"| {run['config']} | {run['iterations']} | {run['train_seconds'] / 60:.1f} | "
            f"{run['seconds_per_iteration_median']:.2f} | "
            + " | ".join(fmt(f[k]) for k in SCORE_KEYS)
            + " |"
        )
    for name in ("frequency draw", "all majority", "position prior"):
        label = f"chance: {name}"
        if name == "all majority":
            label += f" ({chance['majority_class']})"
        lines.append(
            f"| {label} | | | | " + " | ".join(fmt(chance[name][k]) for k in SCORE_KEYS) + " |"
        )
    lines += [
        "",
        "| class (IoU inside mask_camera) | "
        + " | ".join(r["config"] for r in runs)
        + " | position prior | frequency draw |",
        "|---|" + "---|" * (len(runs) + 2),
    ]
    for cls in runs[0]["final"]["iou_per_class"]:
        cells = [fmt(r["final"]["iou_per_class"][cls]) for r in runs]
        cells += [
            fmt(chance[n]["iou_per_class"][cls]) for n in ("position prior", "frequency draw")
        ]
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_curves(out: Path, runs: list[dict]) -> None:
    with open(out / "curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["config", "kind", "iter", "loss", "miou", "miou_nomask", "rayiou"])
        for run in runs:
            for r in run["losses"]:
                w.writerow([run["config"], "train", r["iter"], r.get("loss"), "", "", ""])
            for r in run["curve"]:
                w.writerow(
                    [run["config"], "val", r["iter"], "", r["miou"], r["miou_nomask"], r["rayiou"]]
                )
            f = run["final"]
            w.writerow(
                [
                    run["config"],
                    "val",
                    run["iterations"],
                    "",
                    f["miou"],
                    f["miou_nomask"],
                    f["rayiou"],
                ]
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = ensure_data(args)
    names = [name for name in args.configs.split(",") if name]
    if args.parallel:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(
            len(names), mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            runs = list(pool.map(run_config, names, [args] * len(names), [root] * len(names)))
    else:
        runs = [run_config(name, args, root) for name in names]
    chance = chance_levels(root, args.seed)
    results = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else argv,
        "minutes_per_model": args.minutes,
        "data": {
            "root": str(root),
            "scenes": args.scenes,
            "samples_per_scene": args.samples_per_scene,
            "seed": args.seed,
        },
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "chance": chance,
        "runs": runs,
        "total_seconds": time.perf_counter() - started,
    }
    atomic_write_text(args.out / "results.json", json.dumps(results, indent=1, default=str) + "\n")
    write_curves(args.out, runs)
    summary = summary_markdown(runs, chance)
    atomic_write_text(args.out / "summary.md", summary)
    print(summary)
    print(f"wrote {args.out / 'results.json'}, curves.csv, summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
