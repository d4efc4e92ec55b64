"""Planner memory prediction beside the trainer's measured peak (torch.cuda.max_memory_allocated) on one GPU:
the tinyllama-1.1b preset, bf16, at several micro-batch sizes, with and without full recomputation.

    python bench/planner_memory_gpu.py [--out runs/planner_memory] [--micro-batch-sizes 1 2 4]

Each configuration is a real `megatron-llm train` run (2 iterations, mock data); the figure is metrics.jsonl's
mem_gb (GiB) of its last iteration. Needs CUDA. Exit status 1 when a prediction is off by more than 10%, when
memory does not grow with the micro-batch, or when full recomputation does not lower it (the GPU check step of
scripts/gpu_checks.sh; run once there, not again under pytest, to spare device time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.mock_train import metrics, mock_train_args  # noqa: E402


def recompute_supported() -> bool:
    from megatron_llm.planner.search import trainer_options

    return "full" in trainer_options()["recompute"]


def predicted_gb(mbs: int, recompute: str, gpu_name: str) -> float:
    from megatron_llm.config.arguments import build_config
    from megatron_llm.perf.peaks import match_gpu
    from megatron_llm.planner.layout import Layout
    from megatron_llm.planner.predict import predict
    from megatron_llm.planner.problem import build_problem

    cfg = build_config({"micro_batch_size": mbs, "global_batch_size": 2 * mbs, "bf16": True}, "tinyllama-1.1b")
    # The layer implementation `train` uses on CUDA (planner/problem.trainer_impl) sets the activation profile.
    pb = build_problem(cfg, 1, match_gpu(gpu_name) or "H100 SXM", 1)
    return predict(pb, Layout(1, 1, 1, mbs, recompute=recompute)).memory.total_gb


def train_args(tb: str, mbs: int, recompute: str) -> List[str]:
    """The `megatron-llm train` command line measured for one row (tests validate it on CPU)."""
    args = mock_train_args("cuda", ["--recipe", "tinyllama-1.1b", "--bf16"], mbs, 2 * mbs, 2, tb)
    if recompute == "full":
        args += ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]
    return args


def measured_gb(out: str, mbs: int, recompute: str) -> float:
    tb = os.path.join(out, f"mbs{mbs}-{recompute}")
    cmd = [sys.executable, "-m", "megatron_llm.cli", *train_args(tb, mbs, recompute)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), ROOT])))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"train failed ({p.returncode}): {p.stderr[-2000:]}")
    return float([r["mem_gb"] for r in metrics(tb) if r.get("mem_gb") is not None][-1])


def run(out: str, sizes: List[int]) -> List[dict]:
    import torch

    name = torch.cuda.get_device_name()
    rows = []
    for rc in ["none"] + (["full"] if recompute_supported() else []):
        for mbs in sizes:
            pred, meas = predicted_gb(mbs, rc, name), measured_gb(out, mbs, rc)
            rows.append({"micro_batch_size": mbs, "recompute": rc, "measured_gb": meas, "predicted_gb": pred,
                         "error": (pred - meas) / meas})
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/planner_memory")
    p.add_argument("--micro-batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    return p


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    rows = run(a.out, a.micro_batch_sizes)
    print("| MBS | recompute | measured peak GiB | planner GiB | error |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['micro_batch_size']} | {r['recompute']} | {r['measured_gb']:.2f} | {r['predicted_gb']:.2f} | "
              f"{100 * r['error']:+.1f}% |")
    os.makedirs(a.out, exist_ok=True)
    from megatron_llm.fileio import atomic_write_text

    atomic_write_text(os.path.join(a.out, "planner_memory.json"), json.dumps(rows, indent=2))
    ok = all(abs(r["error"]) <= 0.10 for r in rows)
    none = {r["micro_batch_size"]: r["measured_gb"] for r in rows if r["recompute"] == "none"}
    ok &= list(none.values()) == sorted(none.values())
    ok &= all(r["measured_gb"] < none[r["micro_batch_size"]] for r in rows if r["recompute"] == "full")
    print("planner memory check:", "PASS (within 10%)" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
