"""The helpers the benchmarks in tools/ share from the package (instead of copying each other):
the synthetic dataroot's info paths, metrics.jsonl records and the step clock."""

from __future__ import annotations

import json

import pytest

from tpvkit.data.synthetic import ensure_synthetic, synthetic_info_path
from tpvkit.engine.runlog import read_records
from tpvkit.engine.train import StepClock
from tpvkit.errors import TpvkitError


def test_ensure_synthetic_uses_a_given_dataroot_and_names_a_missing_info_file(
    tmp_path, synthetic_root
):
    assert ensure_synthetic(synthetic_root, scenes=1, samples_per_scene=1, seed=0) == synthetic_root
    assert synthetic_info_path(synthetic_root, "mini_val").is_file()
    missing = "tpvkit_infos_mini_train.json is missing: .* is not a synthetic dataroot"
    with pytest.raises(TpvkitError, match=missing):
        ensure_synthetic(tmp_path, scenes=1, samples_per_scene=1, seed=0, generate=False)


def test_read_records_keeps_one_kind_without_its_key(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_records(path, "train") == []
    lines = [{"kind": "train", "iter": 1, "loss": 2.0}, {"kind": "val", "iter": 1, "miou": 0.1}]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    assert read_records(path, "train") == [{"iter": 1, "loss": 2.0}]
    assert read_records(path, "val") == [{"iter": 1, "miou": 0.1}]


def test_step_clock_median_gap():
    clock = StepClock()
    assert clock.seconds_per_iteration(skip=0) != clock.seconds_per_iteration(skip=0)  # nan
    clock.stamps = [0.0, 10.0, 11.0, 13.0, 14.0, 18.0]  # gaps after skip=1: 1, 2, 1, 4
    assert clock.seconds_per_iteration(skip=1) == 1.5  # the median of an even count averages
