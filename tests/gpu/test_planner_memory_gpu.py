"""Planner memory vs the trainer's peak allocated memory on the lent GPU: tinyllama-1.1b, bf16, micro-batch 1, 2,
4, with and without full recomputation, within 10% (the figures: bench/planner_memory_gpu.py)."""

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def test_planner_memory_within_10_percent_of_measured_peak(tmp_path):
    from planner_memory_gpu import run

    rows = run(str(tmp_path), [1, 2, 4])
    bad = [r for r in rows if abs(r["error"]) > 0.10]
    assert not bad, rows
    # More micro-batch, more memory; recomputation, less.
    none = {r["micro_batch_size"]: r["measured_gb"] for r in rows if r["recompute"] == "none"}
    assert list(none.values()) == sorted(none.values())
    for r in rows:
        if r["recompute"] == "full":
            assert r["measured_gb"] < none[r["micro_batch_size"]]
