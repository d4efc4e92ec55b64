"""`megatron-llm profile` end to end on CPU (gloo, CPU emulation of megatron-core), against the real trainer."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"

TINY = ["--device", "cpu", "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "256",
        "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--num-query-groups", "2",
        "--seq-length", "64", "--max-position-embeddings", "64", "--micro-batch-size", "2", "--log-interval", "1"]


def run(cmd, tmp_path, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return p


def test_profile_cpu_pipeline_parallel(tmp_path):
    report, tb = tmp_path / "report", tmp_path / "tb"
    p = run([sys.executable, "-m", "megatron_llm.cli", "profile", *TINY, "--nproc-per-node", "2",
             "--pipeline-model-parallel-size", "2", "--global-batch-size", "8", "--tensorboard-dir", str(tb),
             "--warmup-iters", "1", "--profile-iters", "4", "--trace-iters", "3:3", "--report-dir", str(report)],
            tmp_path)
    assert "MFU not applicable" in p.stdout

    summary = json.loads((report / "summary.json").read_text())
    meta, s = summary["meta"], summary["summary"]
    # iterations 2-5 measured, 3 excluded because it ran under torch.profiler
    assert s["measured_iterations"] == [2, 4, 5] and s["traced_excluded"] == [3]
    assert s["mfu"] is None and s["hfu"] is None and meta["peak_tflops"] is None

    # Throughput recomputed from the per-step CSV
    rows = {int(r["iteration"]): r for r in csv.DictReader((report / "iterations.csv").open())}
    assert sorted(rows) == [1, 2, 3, 4, 5]
    times = [float(rows[i]["step_time_s"]) for i in (2, 4, 5)]
    tokens = 8 * 64
    assert s["tokens_per_s"] == pytest.approx(tokens * 3 / sum(times), rel=1e-9)

    # Cross-check with the trainer's own log (metrics.jsonl, logging rank): same model FLOPs per step from the
    # same formula, and the profiler's step (slowest rank) is never shorter than the logging rank's step.
    logged = {}
    for line in (tb / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "iteration_time_s" in rec:
            logged[rec["iteration"]] = rec
    assert sorted(logged) == [1, 2, 3, 4, 5]
    assert logged[2]["flops_per_iteration"] == pytest.approx(meta["model_flops_per_iteration"], rel=1e-12)
    # hand count: 3 x (2 layers x (2h(q+2kv) + 2qh + 6hf + 4sq) + 2hV) x tokens, h=q=64, kv=32, f=256, s=64, V=256
    per_token = 3 * (2 * (2 * 64 * (64 + 64) + 2 * 64 * 64 + 6 * 64 * 256 + 4 * 64 * 64) + 2 * 64 * 256)
    assert meta["model_flops_per_iteration"] == per_token * tokens
    for i in (2, 4, 5):
        assert float(rows[i]["step_time_s"]) >= logged[i]["iteration_time_s"] - 1e-9

    # Breakdown from megatron-core timers: both pipeline stages computed and waited on p2p
    b = {r["rank"]: r for r in s["breakdown"]}
    assert sorted(b) == [0, 1] and b[0]["pp_rank"] == 0 and b[1]["pp_rank"] == 1
    for r in b.values():
        assert r["forward"] > 0 and r["backward"] > 0 and r["optimizer"] > 0 and r["pipeline_wait"] > 0
        parts = sum(r[c] for c in ("forward", "backward", "pipeline_wait", "dp_comm_exposed", "other_comm",
                                   "optimizer", "other"))
        assert parts == pytest.approx(r["step_s"])

    md = (report / "report.md").read_text()
    assert "| MFU | not applicable |" in md and "| HFU | not applicable |" in md
    assert f"| tokens/s | {tokens * 3 / sum(times):,.1f} |" in md
    assert "No telemetry: cpu run" in md
    assert "full s x s attention counted" in md
    assert "## Top cpu ops (torch.profiler, iterations 3-3, rank 0)" in md
    assert "`aten::mm`" in md
    trace = json.loads((report / "trace_rank0.json").read_text())
    assert any(e.get("name") == "aten::mm" for e in trace["traceEvents"])
    assert (report / "trace_rank1.json").exists()
    for png in ("step_time_mfu.png", "breakdown.png"):
        assert (report / png).read_bytes().startswith(PNG)
        assert f"]({png})" in md
    assert not (report / "telemetry.png").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(report / "tensorboard"))
    acc.Reload()
    tb_tokens = {e.step: e.value for e in acc.Scalars("profile/tokens-per-sec")}
    assert sorted(tb_tokens) == [1, 2, 3, 4, 5]
    for i, r in rows.items():  # the per-step figure is tokens of the global batch over the slowest rank's step
        assert tb_tokens[i] == pytest.approx(tokens / float(r["step_time_s"]), rel=1e-6)


def test_profile_tool_script_data_parallel(tmp_path):
    """tools/profile_mfu.py, DP=2: the gradient all-reduce shows up as exposed data-parallel communication."""
    report = tmp_path / "report"
    run([sys.executable, str(ROOT / "tools" / "profile_mfu.py"), *TINY, "--nproc-per-node", "2",
         "--global-batch-size", "4", "--warmup-iters", "1", "--profile-iters", "2", "--report-dir", str(report)],
        tmp_path)
    s = json.loads((report / "summary.json").read_text())["summary"]
    assert s["measured_iterations"] == [2, 3]
    for r in s["breakdown"]:
        assert r["dp_rank"] in (0, 1) and r["dp_comm_exposed"] > 0
        assert r["pipeline_wait"] == 0
        assert r["dp_comm_overlapped"] == 0.0  # --overlap-grad-reduce off: nothing is hidden


def test_profile_rejects_bad_window(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "megatron_llm.cli", "profile", *TINY, "--warmup-iters", "1",
                        "--profile-iters", "2", "--trace-iters", "2:9"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--trace-iters 2:9 ends after the last iteration (3" in p.stderr
