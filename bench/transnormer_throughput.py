"""TransNormerLLM vs Llama of the same shape: training tokens/s at sequence 2k, 8k, 32k on one GPU (bf16).

The Llama baseline has transnormer-385m's shape (24 layers, hidden 1024, 8 heads, FFN 2816, vocab 64000) with
softmax attention; TransNormer is the transnormer-385m preset with lightning attention. Tokens per iteration are
the same at every length (32k: micro-batch = 32768 / seq), so the ratio shows how each cost grows with s. Prints a
markdown table (for docs/performance.md) and writes it to --out. Usage (on the GPU machine):
    python bench/transnormer_throughput.py --out runs/bench_transnormer.md [--iters 8] [--seqs 2048 8192 32768]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

SHAPE = ["--num-layers", "24", "--hidden-size", "1024", "--num-attention-heads", "8", "--ffn-hidden-size", "2816",
         "--vocab-size", "64000", "--no-untie-embeddings-and-output-weights"]
TOKENS_PER_ITER = 32768

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.mock_train import metrics, mock_train_args  # noqa: E402


def train_args(arch: str, seq: int, iters: int, device: str, tokens_per_iter: int, tb: str) -> List[str]:
    """The `megatron-llm train` command line of one row (tests validate it on CPU)."""
    mbs = max(1, tokens_per_iter // seq)
    args = mock_train_args(device, [*SHAPE, "--architecture", arch, "--seq-length", str(seq),
                                    "--max-position-embeddings", str(seq)], mbs, mbs, iters, tb)
    return args + (["--bf16"] if device == "cuda" else [])


def run(arch: str, seq: int, iters: int, device: str, tokens_per_iter: int = TOKENS_PER_ITER) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"tn-bench-{arch}-{seq}-"))
    args = [sys.executable, "-m", "megatron_llm.cli", *train_args(arch, seq, iters, device, tokens_per_iter,
                                                                  str(out / "tb"))]
    proc = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if proc.returncode != 0:
        if "out of memory" in proc.stderr.lower():
            return {"error": "OOM"}
        errors = [line for line in proc.stderr.splitlines() if "Error" in line] or ["exit %d" % proc.returncode]
        return {"error": errors[-1].strip()[:100]}
    recs = [r for r in metrics(str(out / "tb")) if r.get("tokens_per_s")][2:]  # drop warm-up iterations
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in recs),
            "mem_gb": max(r.get("mem_gb") or 0 for r in recs)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", type=int, nargs="+", default=[2048, 8192, 32768])
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--tokens-per-iter", type=int, default=TOKENS_PER_ITER)
    return ap


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    lines = ["| seq | Llama (softmax) tokens/s | TransNormer (lightning) tokens/s | ratio | memory GB (L / T) |",
             "|---|---|---|---|---|"]
    for seq in a.seqs:
        llama, tn = (run(arch, seq, a.iters, a.device, a.tokens_per_iter) for arch in ("llama", "transnormer"))
        fmt = lambda r: r.get("error") or f"{r['tokens_per_s']:.0f}"  # noqa: E731
        ratio = (f"{tn['tokens_per_s'] / llama['tokens_per_s']:.2f}x"
                 if "tokens_per_s" in llama and "tokens_per_s" in tn else "-")
        mem = " / ".join(f"{r['mem_gb']:.1f}" if "mem_gb" in r else "-" for r in (llama, tn))
        lines.append(f"| {seq} | {fmt(llama)} | {fmt(tn)} | {ratio} | {mem} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if a.out:
        from megatron_llm.fileio import atomic_write_text

        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(a.out, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
