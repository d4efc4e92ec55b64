"""bench/train_throughput.py runs end to end (--tiny, CPU) and its table and JSON hold consistent figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STACKS = "local,fused,hf-eager"


def test_tiny_bench_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "train_throughput.py"), "--tiny", "--stacks", STACKS,
                           "--micro-batches", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    meta = res["meta"]
    assert meta["complete"] is True
    # Hand-computed model FLOPs per token of the tiny shape (DESIGN.md section 4's formula, full attention):
    # L=2, h=64, kv=2 groups x 16 = 32, f=128, s=64, V=512
    L, h, kv, f, s, V = 2, 64, 32, 128, 64, 512
    per_token = 3 * (L * (2 * h * (h + 2 * kv) + 2 * h * h + 6 * h * f + 4 * s * h) + 2 * h * V)
    assert meta["micro_batches"] == 2  # two micro-batches per optimizer step: twice the tokens per step
    tokens = 2 * meta["micro_batch_size"] * meta["seq_length"]
    for name in STACKS.split(","):
        row = res["stacks"][name]
        assert "error" not in row, (name, row)
        assert row["tokens_per_s"] == pytest.approx(tokens / row["step_time_s"])
        assert row["tflops_full"] * 1e12 == pytest.approx(per_token * tokens / row["step_time_s"])
        assert row["tflops_causal"] < row["tflops_full"]
        assert row["mfu_full"] is None  # no peak on CPU: not guessed
        assert f"| {name} | " in proc.stdout
        if "trainer_tokens_per_s" in row:  # the trainer's own figure over the same iterations
            assert row["trainer_tokens_per_s"] == pytest.approx(row["tokens_per_s"], rel=1e-6)
    ops = {(r["op"], r["impl"]): r for r in res["ops"]}
    for op in ("rms_norm", "rope", "swiglu", "cross_entropy"):
        for impl in ("ours", "eager"):
            r = ops[(op, impl)]
            assert "error" not in r, r
            assert r["fwd_gbps"] == pytest.approx(r["bytes"] / (r["fwd_ms"] / 1e3) / 1e9)


def test_a_run_stopped_part_way_keeps_the_stacks_that_finished(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train_throughput", REPO / "bench" / "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = {"step_time_s": 1.0, "tokens_per_s": 2.0}

    def stopped(*_a, **_k):  # the second stack never ends: the device call's time limit stops the process
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_megatron", lambda *a, **k: dict(row))
    monkeypatch.setattr(bench, "run_hf", stopped)
    out = tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--tiny", "--stacks", "fused,hf-eager,local", "--no-ops", "--json", str(out)])
    res = json.loads(out.read_text())
    assert res["meta"]["complete"] is False and res["stacks"] == {"fused": row}
