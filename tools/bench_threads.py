"""Measure how to split a CPU budget between torch's intra-op threads and DataLoader workers.

Times tpv_tiny training steps (forward, backward, update: what `tpvkit train` does per
iteration, data loading included) and inference batches (what `tpvkit eval`/`predict` do) for
each split "intra:workers", each in a fresh process so that every split starts with its own
thread pool. The splits run interleaved (round 1: A B C D, round 2: A B C D, ...) so that a
change of machine load hits all of them alike; the load average is recorded before and after.
The default of `--threads` (tpvkit/utils/threads.py) is the split this measures fastest on the
machine at hand; docs/training.md ("CPU threads") has the figures.

    python tools/bench_threads.py --out /tmp/threads            # synthetic data made there
    python tools/bench_threads.py --data work_dirs/demo/data --splits 2:0,1:1,2:1 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("/tmp/tpvkit_bench_threads"))
    p.add_argument("--data", type=Path, help="A synthetic dataroot with infos/ (else made)")
    p.add_argument("--splits", default="2:0,1:1,2:1,1:0", help="intra:workers, comma-separated")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per run")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    p.add_argument("--child", nargs=3, metavar=("INTRA", "WORKERS", "DATA"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(intra: int, workers: int, data: Path, steps: int) -> dict:
    """One measurement in this process: training steps, then inference batches."""
    import torch
    from torch.utils.data import DataLoader

    from tpvkit.config import load_config
    from tpvkit.data.infos import info_file_name, load_infos
    from tpvkit.engine.inference import inference_loader
    from tpvkit.engine.train import build_parts

    torch.set_num_threads(intra)
    infos = data / "infos"
    cfg = load_config(
        "tpv_tiny",
        [
            f"data.train_infos={infos / info_file_name('mini_train')}",
            "data.val_infos=''",
            "train.device=cpu",
            f"data.num_workers={workers}",
        ],
    )
    torch.manual_seed(0)
    parts = build_parts(cfg)
    model, optimizer = parts.model.train(), torch.optim.AdamW(parts.model.parameters(), lr=1e-5)
    loader = DataLoader(
        parts.train_set, batch_size=1, shuffle=False, num_workers=workers,
        collate_fn=parts.collate_fn, persistent_workers=workers > 0,
    )  # fmt: skip
    times: list[float] = []
    batches = iter(loader)
    for i in range(steps + 2):  # two warm-up steps (lazy initialisation, worker start)
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        loss = parts.compute_losses(model, batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)

    val = load_infos(infos / info_file_name("mini_val"))
    eval_loader = inference_loader(cfg, val, torch.device("cpu"))
    model.eval()
    start = time.perf_counter()
    count = 0
    with torch.inference_mode():
        for batch in eval_loader:
            model(batch["inputs"], decode_voxels=True)
            count += 1
    infer = (time.perf_counter() - start) / max(count, 1)
    return {"intra": intra, "workers": workers, "train_s": times, "infer_s_per_batch": infer}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        intra, workers, data = int(args.child[0]), int(args.child[1]), Path(args.child[2])
        print(json.dumps(child(intra, workers, data, args.steps)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        from tpvkit.data.synthetic import generate_synthetic

        data = args.out / "data"
        if not (data / "infos").is_dir():
            generate_synthetic(data, scenes=10, samples_per_scene=3, seed=0, overwrite=True)
    splits = [tuple(int(v) for v in s.split(":")) for s in args.splits.split(",")]
    env = {**os.environ, "OMP_NUM_THREADS": ""}  # each child sets its own intra-op count
    env.pop("OMP_NUM_THREADS")
    results: dict[str, dict[str, list[float]]] = {}
    load_before = os.getloadavg()
    for round_ in range(args.rounds):
        for intra, workers in splits:
            cmd = [sys.executable, __file__, "--child", str(intra), str(workers), str(data)]
            done = subprocess.run(
                [*cmd, "--steps", str(args.steps)], capture_output=True, text=True, env=env,
                check=True,
            )  # fmt: skip
            record = json.loads(done.stdout.strip().splitlines()[-1])
            key = f"{intra}:{workers}"
            entry = results.setdefault(key, {"train_s": [], "infer_s_per_batch": []})
            entry["train_s"] += record["train_s"]
            entry["infer_s_per_batch"].append(record["infer_s_per_batch"])
            print(
                f"round {round_ + 1} intra {intra} workers {workers}: "
                f"train median {statistics.median(record['train_s']):.3f} s/iter, "
                f"inference {record['infer_s_per_batch']:.3f} s/batch",
                flush=True,
            )
    load_after = os.getloadavg()
    lines = [
        f"CPUs available: {len(os.sched_getaffinity(0))}; load average (1 min) "
        f"{load_before[0]:.1f} -> {load_after[0]:.1f}",
        "",
        "| intra-op threads : workers | train median s/iter | train p90 | inference s/batch |",
        "|---|---|---|---|",
    ]
    for key, entry in results.items():
        train = sorted(entry["train_s"])
        p90 = train[int(0.9 * (len(train) - 1))]
        lines.append(
            f"| {key} | {statistics.median(train):.3f} | {p90:.3f} | "
            f"{statistics.median(entry['infer_s_per_batch']):.3f} |"
        )
    summary = "\n".join(lines)
    print(summary)
    (args.out / "summary.md").write_text(summary + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
