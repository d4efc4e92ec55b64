#!/usr/bin/env python
"""Training throughput of the TinyLlama 1.1B shape, one table: megatron-core's local spec, our fused spec, HF
transformers eager and compiled; then per-op microbenchmarks (ours vs eager torch vs torch.compile).

Per stack: tokens/s, TFLOP/s per GPU, MFU with full attention counted (the Megatron-LM paper's convention, DESIGN.md
section 4) and, beside it, with causal attention halved (Megatron-LM's own logging since core 0.15), peak memory.

  megatron-core local   `megatron-llm train --transformer-impl local` with megatron-core's fusions off: the
                        stack as it ran before issue 12 (DotProductAttention, unfused norm/RoPE/SwiGLU/loss)
  ours fused            `megatron-llm train --transformer-impl fused --cross-entropy-loss-fusion`
  HF eager / compiled   LlamaForCausalLM (from a config, no download), fp32 weights, bf16 autocast, SDPA
                        attention, torch AdamW(fused=True); compiled = torch.compile(model)

The megatron rows run the real trainer in a subprocess (a fresh process per stack, one GPU, bf16, mock data,
global batch = micro-batch); timing is the trainer's own per-iteration time after --warmup iterations.

  python bench/train_throughput.py                      # GPU: the 1.1B shape, micro-batch 4
  python bench/train_throughput.py --tiny               # CPU smoke run (CI): a tiny shape, fp32, no compile
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.mock_train import metrics, mock_train_args  # noqa: E402
from megatron_llm.config.model import ModelConfig  # noqa: E402
from megatron_llm.perf import flops as flops_mod  # noqa: E402

TINY = dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=128,
            vocab_size=512, max_position_embeddings=64)
TINY_SEQ = 64
STACKS = ("local", "fused", "hf-eager", "hf-compiled")
MEGATRON_FLAGS = {
    "local": ["--transformer-impl", "local", "--no-masked-softmax-fusion", "--no-bias-swiglu-fusion",
              "--no-gradient-accumulation-fusion"],
    "fused": ["--transformer-impl", "fused", "--cross-entropy-loss-fusion"],
}


def model_shape(tiny: bool) -> tuple:
    """(ModelConfig, seq_length) of the benchmarked shape."""
    if tiny:
        return ModelConfig(**TINY), TINY_SEQ
    from megatron_llm.config.arguments import build_config

    cfg = build_config({}, "tinyllama-1.1b")
    return cfg.model, cfg.data.seq_length


def figures(model: ModelConfig, seq: int, gbs: int, step_times: List[float], mem_gb: Optional[float],
            peak: Optional[float]) -> Dict[str, Any]:
    """Throughput figures of one stack from its measured step times (`gbs` sequences per optimizer step)."""
    t = sum(step_times) / len(step_times)
    tokens = gbs * seq
    row = {"step_time_s": t, "tokens_per_s": tokens / t, "mem_gb": mem_gb, "iterations": len(step_times)}
    for att in flops_mod.ATTENTION_CHOICES:
        f = flops_mod.flops_per_iteration(model, seq, model.vocab_size, gbs, attention=att)
        tflops = f / t / 1e12
        row[f"tflops_{att}"] = tflops
        row[f"mfu_{att}"] = tflops / peak if peak else None
    return row


def megatron_train_args(stack: str, tiny: bool, device: str, mbs: int, iters: int, warmup: int,
                        tb_dir: str, micro_batches: int = 1) -> List[str]:
    """The `megatron-llm train` command line of one megatron stack (tests validate it on CPU)."""
    model, seq = model_shape(tiny)
    shape = (["--num-layers", str(model.num_layers), "--hidden-size", str(model.hidden_size),
              "--num-attention-heads", str(model.num_attention_heads),
              "--num-query-groups", str(model.num_query_groups), "--ffn-hidden-size", str(model.ffn_hidden_size),
              "--vocab-size", str(model.vocab_size), "--max-position-embeddings", str(seq),
              "--seq-length", str(seq)] if tiny else ["--recipe", "tinyllama-1.1b", "--bf16"])
    return mock_train_args(device, shape, mbs, mbs * micro_batches, warmup + iters, tb_dir) + MEGATRON_FLAGS[stack]


def run_megatron(stack: str, tiny: bool, device: str, mbs: int, iters: int, warmup: int,
                 timeout: int, micro_batches: int = 1) -> Dict[str, Any]:
    model, seq = model_shape(tiny)
    with tempfile.TemporaryDirectory(prefix=f"bench-{stack}-") as tmp:
        args = [sys.executable, "-m", "megatron_llm.cli",
                *megatron_train_args(stack, tiny, device, mbs, iters, warmup, os.path.join(tmp, "tb"),
                                     micro_batches)]
        env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        try:
            proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout}s"}
        if proc.returncode != 0:
            tail = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            why = next((ln for ln in reversed(tail) if "out of memory" in ln.lower()), tail[-1] if tail else "")
            return {"error": f"exit {proc.returncode}: {why.strip()[:200]}"}
        recs = metrics(os.path.join(tmp, "tb"))
    measured = [r for r in recs if r.get("iteration", 0) > warmup and r.get("iteration_time_s")]
    if not measured:
        return {"error": "no measured iterations in metrics.jsonl"}
    peak = None
    mfu, tflops = measured[-1].get("mfu"), measured[-1].get("tflops")
    if mfu and tflops:
        peak = tflops / mfu  # the trainer's own peak for this device and dtype
    mem = max((r.get("mem_gb") or 0.0) for r in measured) if device == "cuda" else None
    row = figures(model, seq, mbs * micro_batches, [r["iteration_time_s"] for r in measured], mem, peak)
    # cross-check: the trainer's own per-iteration tokens/s, combined over the same iterations (harmonic mean:
    # total tokens over total time)
    row["trainer_tokens_per_s"] = len(measured) / sum(1.0 / r["tokens_per_s"] for r in measured)
    return row


def run_hf(compiled: bool, tiny: bool, device: str, mbs: int, iters: int, warmup: int,
           peak: Optional[float], micro_batches: int = 1) -> Dict[str, Any]:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return {"error": "transformers is not installed"}
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model_cfg, seq = model_shape(tiny)
    hf_cfg = LlamaConfig(hidden_size=model_cfg.hidden_size, intermediate_size=model_cfg.ffn_hidden_size,
                         num_hidden_layers=model_cfg.num_layers, num_attention_heads=model_cfg.num_attention_heads,
                         num_key_value_heads=model_cfg.num_query_groups, vocab_size=model_cfg.vocab_size,
                         max_position_embeddings=seq, rms_norm_eps=model_cfg.norm_epsilon,
                         tie_word_embeddings=not model_cfg.untie_embeddings_and_output_weights,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf_cfg).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    step_model: Callable = torch.compile(model) if compiled else model
    ids = torch.randint(0, model_cfg.vocab_size, (mbs, seq), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast(
        "cpu", enabled=False)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    try:
        for i in range(warmup + iters):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(micro_batches):  # gradient accumulation, as the trainer does for --global-batch-size
                with autocast:
                    loss = step_model(input_ids=ids, labels=ids).loss / micro_batches
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    finally:
        mem = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None
        del model, opt, step_model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return figures(model_cfg, seq, mbs * micro_batches, times, mem, peak)


# ---- per-op microbenchmarks --------------------------------------------------------------------------------------

def _eager_ops():
    """Plain-torch baselines (what an unfused model runs): megatron_llm.ops' own torch references."""
    from megatron_llm.ops import reference

    return {"rms_norm": lambda x, w: reference.rms_norm(x, w, 1e-5), "rope": reference.rope,
            "swiglu": reference.swiglu, "cross_entropy": reference.cross_entropy}


def _op_inputs(tiny: bool, device: str):
    """Each op's inputs at the benchmark shape (bf16 on GPU, fp32 on CPU) and the bytes a forward must move."""
    import torch

    model, seq = model_shape(tiny)
    mbs = 1 if tiny else 4
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    h, f, d = model.hidden_size, model.ffn_hidden_size, model.head_dim
    n = seq * mbs
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, device=device, dtype=dt, generator=g).requires_grad_()

    es = torch.finfo(dt).bits // 8
    x, w = rnd(n, h), torch.ones(h, device=device, dtype=dt, requires_grad=True)
    t = rnd(seq, mbs, model.num_attention_heads, d)
    pos = torch.arange(seq, device=device, dtype=torch.float32)
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
    freqs = torch.cat([torch.outer(pos, inv)] * 2, dim=-1)[:, None, None, :]
    xs = rnd(n, 2 * f)
    logits = rnd(seq, mbs, model.vocab_size)
    target = torch.randint(0, model.vocab_size, (seq, mbs), device=device, generator=g)
    return {
        "rms_norm": ((x, w), 2 * x.numel() * es),
        "rope": ((t, freqs), 2 * t.numel() * es),
        "swiglu": ((xs,), xs.numel() * es * 3 // 2),
        "cross_entropy": ((logits, target), logits.numel() * es),
    }


def _time(fn: Callable, args, device: str, reps: int) -> tuple:
    """(forward ms, forward+backward ms), best of `reps` after one warm-up."""
    import torch

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fwd, both = [], []
    for i in range(reps + 1):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(*args)
        sync()
        t1 = time.perf_counter()
        out = fn(*args)
        out.float().sum().backward()
        sync()
        t2 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            both.append(t2 - t1)
    for a in args:
        if getattr(a, "grad", None) is not None:
            a.grad = None
    return 1e3 * min(fwd), 1e3 * min(both)


def run_op_benchmarks(tiny: bool, device: str, compile_: bool, reps: int) -> List[Dict[str, Any]]:
    import torch

    eager = _eager_ops()
    try:
        from megatron_llm import ops

        ours = {"rms_norm": lambda x, w: ops.rms_norm(x, w, 1e-5), "rope": ops.rope, "swiglu": ops.swiglu,
                "cross_entropy": ops.vocab_parallel_cross_entropy}
        ours_error = None
    except (ImportError, AttributeError) as e:
        ours, ours_error = {}, f"megatron_llm.ops unavailable: {e}"
    rows = []
    for name, (args, nbytes) in _op_inputs(tiny, device).items():
        impls = {"ours": ours.get(name), "eager": eager[name]}
        if compile_:
            impls["compiled"] = torch.compile(eager[name])
        for impl, fn in impls.items():
            row = {"op": name, "impl": impl, "bytes": nbytes}
            if fn is None:
                row["error"] = ours_error or "not provided"
            else:
                try:
                    fwd_ms, both_ms = _time(fn, args, device, reps)
                    row.update(fwd_ms=fwd_ms, fwd_bwd_ms=both_ms, fwd_gbps=nbytes / (fwd_ms / 1e3) / 1e9)
                except Exception as e:  # a failing implementation is a row, not the end of the benchmark
                    row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
            rows.append(row)
    return rows


# ---- report -------------------------------------------------------------------------------------------------------

def _pct(v):
    return f"{100 * v:.1f}%" if v is not None else "n/a"


def format_report(meta: Dict[str, Any], stacks: Dict[str, Dict[str, Any]], ops_rows: List[Dict[str, Any]]) -> str:
    lines = [f"device: {meta['device_name']}; dense peak {meta['peak_tflops'] or 'n/a'} TFLOP/s "
             f"({meta['dtype']}); HBM {meta['hbm_gbps'] or 'n/a'} GB/s",
             f"shape: {meta['shape']}; seq {meta['seq_length']}, micro-batch {meta['micro_batch_size']} x "
             f"{meta.get('micro_batches', 1)} per optimizer step, "
             f"{meta['iterations']} measured iterations after {meta['warmup']} warm-up",
             "MFU (full): full s x s attention counted (Megatron-LM paper); MFU (causal): attention halved",
             "", "| stack | tokens/s | TFLOP/s (full) | MFU (full) | MFU (causal) | peak memory GB |",
             "|---|---|---|---|---|---|"]
    for name, r in stacks.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | |")
            continue
        mem = f"{r['mem_gb']:.1f}" if r.get("mem_gb") is not None else "n/a"
        lines.append(f"| {name} | {r['tokens_per_s']:.1f} | {r['tflops_full']:.2f} | {_pct(r['mfu_full'])} | "
                     f"{_pct(r['mfu_causal'])} | {mem} |")
    if ops_rows:
        lines += ["", "| op | impl | fwd ms | fwd GB/s | % of HBM | fwd+bwd ms |", "|---|---|---|---|---|---|"]
        for r in ops_rows:
            if "error" in r:
                lines.append(f"| {r['op']} | {r['impl']} | {r['error']} | | | |")
                continue
            hbm = f"{100 * r['fwd_gbps'] / meta['hbm_gbps']:.0f}%" if meta["hbm_gbps"] else "n/a"
            lines.append(f"| {r['op']} | {r['impl']} | {r['fwd_ms']:.3f} | {r['fwd_gbps']:.1f} | {hbm} | "
                         f"{r['fwd_bwd_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny shape, fp32, no torch.compile")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None)
    ap.add_argument("--micro-batch-size", type=int, default=None, help="default 4 (1.1B), 2 (--tiny)")
    ap.add_argument("--micro-batches", type=int, default=1,
                    help="micro-batches per optimizer step (gradient accumulation; the global batch is "
                         "micro-batch size x this): more amortise the optimizer step, as a real run does")
    ap.add_argument("--iters", type=int, default=None, help="measured iterations (default 10; --tiny 2)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 3; --tiny 1)")
    ap.add_argument("--stacks", default=",".join(STACKS), help=f"comma-separated subset of {','.join(STACKS)}")
    ap.add_argument("--ops", action=argparse.BooleanOptionalAction, default=True, help="per-op microbenchmarks")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile baselines (HF compiled, compiled ops); default on except --tiny")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per megatron stack")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    return ap


def main(argv=None) -> int:
    ap = parser()
    a = ap.parse_args(argv)

    import torch

    from megatron_llm.perf.bandwidth import hbm_gbps
    from megatron_llm.perf.peaks import resolve_peak

    device = a.device or ("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    mbs = a.micro_batch_size or (2 if a.tiny else 4)
    iters = a.iters or (2 if a.tiny else 10)
    warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 3)
    compile_ = a.compile if a.compile is not None else not a.tiny
    if a.micro_batches < 1:
        ap.error(f"--micro-batches {a.micro_batches}: must be >= 1")
    stacks = [s for s in a.stacks.split(",") if s]
    for s in stacks:
        if s not in STACKS:
            ap.error(f"--stacks: unknown stack {s!r}; choose from {', '.join(STACKS)}")
    if not compile_:
        stacks = [s for s in stacks if s != "hf-compiled"]
    dtype = "bf16" if device == "cuda" else "fp32"
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = resolve_peak(device, name, dtype).tflops
    model, seq = model_shape(a.tiny)
    meta = {"device_name": name, "peak_tflops": peak, "dtype": dtype, "hbm_gbps": hbm_gbps(name) if device == "cuda"
            else None, "shape": "tiny" if a.tiny else "tinyllama-1.1b", "seq_length": seq, "micro_batch_size": mbs,
            "micro_batches": a.micro_batches, "iterations": iters, "warmup": warmup,
            "command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:]))}
    results: Dict[str, Dict[str, Any]] = {}
    ops_rows: List[Dict[str, Any]] = []

    def save(complete: bool) -> None:
        # after every stack, so a run stopped part way (a device call's time limit) keeps the stacks that finished
        if a.json:
            from megatron_llm.fileio import atomic_write_text

            atomic_write_text(a.json, json.dumps({"meta": dict(meta, complete=complete), "stacks": results,
                                                  "ops": ops_rows}, indent=1))

    for s in stacks:
        print(f"== {s}", file=sys.stderr, flush=True)
        if s in MEGATRON_FLAGS:
            results[s] = run_megatron(s, a.tiny, device, mbs, iters, warmup, a.timeout, a.micro_batches)
        else:
            results[s] = run_hf(s == "hf-compiled", a.tiny, device, mbs, iters, warmup, peak, a.micro_batches)
        print(f"{s}: {json.dumps(results[s])}", file=sys.stderr, flush=True)
        save(complete=False)
    ops_rows = run_op_benchmarks(a.tiny, device, compile_, reps=3 if a.tiny else 10) if a.ops else []
    report = format_report(meta, results, ops_rows)
    print(report, flush=True)
    save(complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
