"""Turn what every rank recorded into numbers (summarise) and files (write_report): report.md, summary.json,
iterations.csv, telemetry.csv, PNG plots and tensorboard scalars.

Throughput is computed over the measured iterations only (after warm-up). A step's time is the slowest rank's
(every rank waits for it at the next collective). tokens/s = tokens per step x steps / sum of step times;
TFLOP/s per GPU = FLOPs per step x steps / sum of step times / GPUs; MFU = model TFLOP/s per GPU / dense peak,
HFU = hardware TFLOP/s per GPU / dense peak (flops.py says what each counts).

Time breakdown, from megatron-core timers (seconds per step, disjoint parts):
  forward            'forward-compute'  (schedule; every micro-batch)
  backward           'backward-compute' (schedule)
  pipeline wait      every p2p timer of the schedules: 'forward-recv', 'backward-send-forward-recv', ...
  DP comm exposed    'all-grads-sync' (finalize_model_grads waiting for the gradient reduce-scatter/all-reduce
                     that backward did not hide) + 'params-all-gather' (distributed optimizer, not overlapped)
  other comm         embedding / layer-norm (sequence-parallel) gradient all-reduces
  optimizer          'optimizer' minus 'params-all-gather' (which runs inside optimizer.step)
  other              the step time not covered above (zero_grad, loss reduction, data loading, timer syncs)
  DP comm overlapped (GPU, with a trace window, TP = PP = 1) NCCL kernel time per step that ran concurrently with
                     compute kernels on the trace's timeline; "n/a" otherwise: without kernel timestamps the hidden
                     part cannot be measured. The trace section also gives the timeline's exposed share, which is
                     the better "exposed" figure with --overlap-grad-reduce: timers synchronise the device, so a
                     reduction still running when backward ends is charged to 'backward-compute'.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from megatron_llm.fileio import atomic_write_text
from megatron_llm.perf.throughput import throughput

COMPONENTS = ("forward", "backward", "pipeline_wait", "dp_comm_exposed", "other_comm", "optimizer", "other")
OTHER_COMM_TIMERS = ("embedding-grads-all-reduce", "non-tensor-parallel-grads-all-reduce",
                     "conditional-embedder-grads-all-reduce")
DP_EXPOSED_TIMERS = ("all-grads-sync", "params-all-gather")


def timer_values(metrics: Dict[str, Any]) -> Dict[str, float]:
    """megatron-core timer values from a metrics dict: keys 'timer_<name>_s', name with '-' or '_'."""
    out = {}
    for k, v in metrics.items():
        if k.startswith("timer_") and k.endswith("_s") and v is not None:
            out[k[len("timer_"):-len("_s")].replace("_", "-")] = float(v)
    return out


def is_p2p_timer(name: str) -> bool:
    return name.startswith(("forward-", "backward-")) and ("send" in name or "recv" in name)


def breakdown(step_s: float, timers: Dict[str, float]) -> Optional[Dict[str, float]]:
    """Disjoint parts of one step from its timers (None when no timers were recorded)."""
    if not timers:
        return None
    t = timers.get
    parts = {
        "forward": t("forward-compute", 0.0),
        "backward": t("backward-compute", 0.0),
        "pipeline_wait": sum(v for k, v in timers.items() if is_p2p_timer(k)),
        "dp_comm_exposed": sum(t(k, 0.0) for k in DP_EXPOSED_TIMERS),
        "other_comm": sum(t(k, 0.0) for k in OTHER_COMM_TIMERS),
        "optimizer": max(0.0, t("optimizer", 0.0) - t("params-all-gather", 0.0)),
    }
    parts["other"] = step_s - sum(parts.values())
    return parts


@dataclass
class ProfileMeta:
    """Run facts the report needs; filled by the callback on rank 0."""

    world_size: int
    device: str
    device_name: str
    dtype: str
    tp: int
    pp: int
    dp: int
    global_batch_size: int
    micro_batch_size: int
    seq_length: int
    model_flops_per_iteration: float
    hardware_flops_per_iteration: float
    recompute: str
    attention: str
    peak_tflops: Optional[float]
    peak_description: str
    warmup_iters: int
    profile_iters: int
    flops_convention: str
    model_shape: Dict[str, Any] = field(default_factory=dict)
    overlap_grad_reduce: bool = False
    recipe: Optional[str] = None
    trace_iters: Optional[List[int]] = None  # [first, last] under torch.profiler: excluded from throughput


def _stats(xs: List[float]) -> Dict[str, float]:
    if not xs:
        return {}
    return {"mean": statistics.fmean(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0}


def summarise(meta: ProfileMeta, ranks: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Numbers of the report from every rank's payload (see ProfilerCallback._payload)."""
    lo, hi = meta.warmup_iters, meta.warmup_iters + meta.profile_iters
    # iteration -> slowest rank's step time
    step: Dict[int, float] = {}
    for r in ranks:
        for rec in r["iterations"]:
            it = rec["iteration"]
            step[it] = max(step.get(it, 0.0), rec["iteration_time_s"])
    traced = set(range(meta.trace_iters[0], meta.trace_iters[1] + 1)) if meta.trace_iters else set()
    # The profiler's own overhead (event recording, trace export at the window's end) would lower the figures.
    measured = sorted(it for it in step if lo < it <= hi and it not in traced)
    tokens_per_step = meta.global_batch_size * meta.seq_length
    per_iter = []
    for it in sorted(step):
        model = throughput(meta.model_flops_per_iteration, tokens_per_step, step[it], meta.world_size,
                           meta.peak_tflops)
        hw = throughput(meta.hardware_flops_per_iteration, tokens_per_step, step[it], meta.world_size,
                        meta.peak_tflops)
        per_iter.append({"iteration": it, "measured": it in measured, "step_time_s": step[it],
                         "tokens_per_s": model.tokens_per_s, "tflops_per_gpu": model.tflops_per_gpu,
                         "hw_tflops_per_gpu": hw.tflops_per_gpu, "mfu": model.mfu, "hfu": hw.mfu})
    s: Dict[str, Any] = {"measured_iterations": measured, "tokens_per_step": tokens_per_step,
                         "per_iteration": per_iter,
                         "traced_excluded": sorted(it for it in traced if lo < it <= hi and it in step)}
    if not measured:
        why = (f"training stopped at iteration {max(step) if step else 0}, warm-up is {lo}" if not
               s["traced_excluded"] else "every measured iteration was under torch.profiler; move --trace-iters "
               "out of the measured window or add --profile-iters")
        s["error"] = f"no measured iterations: {why}"
        return s
    total_t = sum(step[it] for it in measured)
    n = len(measured)
    s["step_time_s"] = _stats([step[it] for it in measured])
    model = throughput(meta.model_flops_per_iteration * n, tokens_per_step * n, total_t, meta.world_size,
                       meta.peak_tflops)
    hw = throughput(meta.hardware_flops_per_iteration * n, tokens_per_step * n, total_t, meta.world_size,
                    meta.peak_tflops)
    s["tokens_per_s"] = model.tokens_per_s
    s["tokens_per_s_per_gpu"] = model.tokens_per_s / meta.world_size
    s["tflops_per_gpu"], s["mfu"] = model.tflops_per_gpu, model.mfu
    s["hw_tflops_per_gpu"], s["hfu"] = hw.tflops_per_gpu, hw.mfu
    s["mem_max_allocated_gb"] = max((r.get("mem_max_allocated_gb") or 0.0) for r in ranks)
    s["mem_kind"] = ranks[0].get("mem_kind", "")

    # Per-rank breakdown, mean over measured iterations.
    rows = []
    for r in ranks:
        parts_list = []
        for rec in r["iterations"]:
            if rec["iteration"] in measured:
                b = breakdown(step[rec["iteration"]], rec.get("timers") or {})
                if b is not None:
                    parts_list.append(b)
        row = {"rank": r["rank"], "pp_rank": r.get("pp_rank"), "tp_rank": r.get("tp_rank"),
               "dp_rank": r.get("dp_rank"), "step_s": total_t / n}
        if parts_list:
            for c in COMPONENTS:
                row[c] = statistics.fmean(p[c] for p in parts_list)
        row["dp_comm_overlapped"] = _overlapped(meta, r, row)
        rows.append(row)
    s["breakdown"] = rows

    # Telemetry per rank (already aggregated over the measured window on each rank).
    tele = []
    for r in ranks:
        for g in r.get("telemetry", {}).get("stats", []):
            tele.append({"rank": r["rank"], **g})
    s["telemetry"] = tele
    s["telemetry_reason"] = next((r["telemetry"]["reason"] for r in ranks
                                  if r.get("telemetry", {}).get("reason")), "")
    if tele:
        s["power_mean_w_per_gpu"] = statistics.fmean(g["power_mean_w"] for g in tele)
        s["power_max_w"] = max(g["power_max_w"] for g in tele)
        s["sm_clock_mean_mhz"] = statistics.fmean(g["sm_clock_mean_mhz"] for g in tele)
        s["util_mean_pct"] = statistics.fmean(g["util_mean_pct"] for g in tele)
        s["nvml_mem_max_gb"] = max(g["mem_max_gb"] for g in tele)
        energies = [g["energy_j"] for g in tele if g["energy_j"] == g["energy_j"]]
        if energies and len(energies) == len(tele):
            # Energy over the sampled span of the measured window, scaled to the window's length.
            span = statistics.fmean(g["duration_s"] for g in tele)
            if span > 0:
                s["joules_per_token"] = sum(energies) * (total_t / span) / (tokens_per_step * n)
    s["trace"] = next((r["trace"] for r in ranks if r.get("trace") and r["rank"] == 0), None) or \
        next((r["trace"] for r in ranks if r.get("trace")), None)
    return s


def _overlapped(meta: ProfileMeta, r: Dict[str, Any], row: Dict[str, Any]) -> Optional[float]:
    """Hidden data-parallel communication per step, seconds, where it can be measured (see module doc)."""
    if meta.dp == 1:
        return 0.0
    if not meta.overlap_grad_reduce and "dp_comm_exposed" in row:
        return 0.0  # no overlap configured: the whole reduction sits inside 'all-grads-sync'
    tr = r.get("trace")
    # From the GPU timeline: only when data parallelism is the only communication (TP = PP = 1).
    if not tr or tr.get("comm_overlapped_ms") is None or meta.tp != 1 or meta.pp != 1 or not tr["iterations"]:
        return None
    return tr["comm_overlapped_ms"] / 1000.0 / tr["iterations"]


# ----------------------------------------------------------------------------------------------- formatting


def _fmt(x: Optional[float], spec: str = ",.1f", na: str = "n/a") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return na
    return format(x, spec)


def _flops(x: Optional[float]) -> str:
    """TFLOP/s with 2 decimals, or 3 significant digits below 1 (CPU runs are ~1e-3)."""
    if x is None:
        return "n/a"
    return f"{x:.2f}" if x >= 1 else f"{x:.3g}"


def _pct(x: Optional[float], na: str) -> str:
    return na if x is None else f"{100 * x:.1f}%"


def render_markdown(meta: ProfileMeta, s: Dict[str, Any], plots: List[str]) -> str:
    out = io.StringIO()
    w = out.write
    shape = meta.model_shape
    w(f"# MFU profile: {meta.recipe or 'custom model'}\n\n")
    w(f"- model: {shape.get('num_layers')} layers, hidden {shape.get('hidden_size')}, "
      f"{shape.get('num_attention_heads')} heads / {shape.get('num_query_groups')} KV groups, "
      f"FFN {shape.get('ffn_hidden_size')}, vocab {shape.get('vocab_size')}, seq {meta.seq_length}\n")
    w(f"- layout: {meta.world_size} x {meta.device_name} ({meta.device}), TP {meta.tp} x PP {meta.pp} x "
      f"DP {meta.dp}; micro-batch {meta.micro_batch_size}, global batch {meta.global_batch_size} "
      f"({s['tokens_per_step']:,} tokens/step); {meta.dtype}\n")
    excl = s.get("traced_excluded") or []
    w(f"- measured: iterations {meta.warmup_iters + 1}-{meta.warmup_iters + meta.profile_iters} "
      f"({len(s['measured_iterations'])} measured after {meta.warmup_iters} warm-up"
      f"{'; excluded, under torch.profiler: ' + ', '.join(map(str, excl)) if excl else ''})\n")
    w(f"- FLOPs: {meta.flops_convention}; recompute: {meta.recompute}; model "
      f"{meta.model_flops_per_iteration:.4e} / hardware {meta.hardware_flops_per_iteration:.4e} FLOPs per step\n")
    w(f"- peak: {meta.peak_description}\n\n")
    if "error" in s:
        w(f"**{s['error']}**\n")
        return out.getvalue()

    na = "not applicable" if meta.device != "cuda" else "n/a (no peak)"
    st = s["step_time_s"]
    w("| metric | value |\n|---|---|\n")
    w(f"| tokens/s | {_fmt(s['tokens_per_s'])} |\n")
    unit = "GPU" if meta.device == "cuda" else "process"
    w(f"| tokens/s per {unit} | {_fmt(s['tokens_per_s_per_gpu'])} |\n")
    w(f"| step time (ms): mean / median / min / max | {1e3 * st['mean']:.1f} / {1e3 * st['median']:.1f} / "
      f"{1e3 * st['min']:.1f} / {1e3 * st['max']:.1f} |\n")
    w(f"| TFLOP/s per {'GPU' if meta.device == 'cuda' else 'process'} (model) | {_flops(s['tflops_per_gpu'])} |\n")
    w(f"| TFLOP/s per {'GPU' if meta.device == 'cuda' else 'process'} (hardware) | "
      f"{_flops(s['hw_tflops_per_gpu'])} |\n")
    w(f"| MFU | {_pct(s['mfu'], na)} |\n")
    w(f"| HFU | {_pct(s['hfu'], na)} |\n")
    w(f"| memory ({s['mem_kind']}, max over ranks, GB) | {_fmt(s['mem_max_allocated_gb'], '.2f')} |\n")
    tele_na = "n/a (no GPU telemetry)"
    w(f"| GPU memory used (NVML, max, GB) | {_fmt(s.get('nvml_mem_max_gb'), '.2f', tele_na)} |\n")
    w(f"| power (mean per GPU / max, W) | {_fmt(s.get('power_mean_w_per_gpu'), '.0f', tele_na)}"
      f"{' / ' + _fmt(s.get('power_max_w'), '.0f') if 'power_max_w' in s else ''} |\n")
    w(f"| SM clock (mean, MHz) | {_fmt(s.get('sm_clock_mean_mhz'), '.0f', tele_na)} |\n")
    w(f"| GPU busy (NVML utilisation, mean) | {_fmt(s.get('util_mean_pct'), '.1f', tele_na)}"
      f"{'%' if 'util_mean_pct' in s else ''} |\n")
    w(f"| energy per token (J) | {_fmt(s.get('joules_per_token'), '.4f', tele_na)} |\n\n")

    w("## Time per step, by part (mean over measured steps, ms; megatron-core timers)\n\n")
    rows = s["breakdown"]
    if rows and any("forward" in r for r in rows):
        w("| rank | PP stage | step | forward | backward | pipeline wait | DP comm exposed | DP comm overlapped "
          "| other comm | optimizer | other |\n|" + "---|" * 11 + "\n")
        for r in rows:
            vals = " | ".join(_fmt(1e3 * r[c], ".1f") if c in r else "n/a" for c in
                              ("forward", "backward", "pipeline_wait", "dp_comm_exposed"))
            ov = r.get("dp_comm_overlapped")
            tail = " | ".join(_fmt(1e3 * r[c], ".1f") if c in r else "n/a" for c in
                              ("other_comm", "optimizer", "other"))
            pp_rank = '-' if r.get('pp_rank') is None else r['pp_rank']
            w(f"| {r['rank']} | {pp_rank} | {1e3 * r['step_s']:.1f} | {vals} | "
              f"{'n/a' if ov is None else f'{1e3 * ov:.1f}'} | {tail} |\n")
        w("\n'other' = step - the named parts (zero_grad, loss all-reduce, data, timer synchronisation). "
          "'DP comm overlapped' needs a CUDA trace window (--trace-iters) with TP = PP = 1 when --overlap-grad-reduce is on.\n\n")
    else:
        w("No timers were recorded (profile run without --breakdown).\n\n")

    w("## GPU telemetry (NVML, measured window)\n\n")
    if s["telemetry"]:
        w("| rank | GPU | name | samples | busy % (mean) | power W (mean / max) | SM clock MHz (mean / min) "
          "| temp C (max) | memory GB (max) | throttle reasons (share of samples) |\n|" + "---|" * 10 + "\n")
        for g in s["telemetry"]:
            thr = ", ".join(f"{k} {100 * v:.0f}%" for k, v in g["throttle_fraction"].items()) or "none"
            w(f"| {g['rank']} | {g['gpu']} | {g['name']} | {g['samples']} | {g['util_mean_pct']:.1f} | "
              f"{g['power_mean_w']:.0f} / {g['power_max_w']:.0f} | {g['sm_clock_mean_mhz']:.0f} / "
              f"{g['sm_clock_min_mhz']:.0f} | {g['temp_max_c']:.0f} | {g['mem_max_gb']:.2f} | {thr} |\n")
        w("\n")
    else:
        w(f"No telemetry: {s['telemetry_reason'] or 'sampler did not run'}.\n\n")

    tr = s.get("trace")
    if tr:
        w(f"## Top {tr['kind']} (torch.profiler, iterations {tr['first']}-{tr['last']}, rank 0)\n\n")
        w(f"Chrome trace: `{os.path.basename(tr['trace_path'])}` (open in https://ui.perfetto.dev). "
          f"Total {tr['total_ms']:.1f} ms over {tr['iterations']} iteration(s); communication "
          f"{tr['comm_ms']:.1f} ms"
          + (f" (GPU timeline: {tr['comm_exposed_ms']:.1f} ms exposed, {tr['comm_overlapped_ms']:.1f} ms "
             f"overlapped with compute; all process groups)" if tr.get("comm_exposed_ms") is not None else "")
          + ".\n\n")
        if tr.get("kernel_span_ms"):
            span, idle = tr["kernel_span_ms"], tr["gpu_idle_ms"]
            w(f"GPU idle (no kernel or copy running) for {idle:.1f} ms of the {span:.1f} ms from the first kernel to "
              f"the last ({100 * idle / span:.1f}%): time the GPU waited for the host, which the profiler's own "
              f"recording slows (an upper bound for untraced steps).\n\n")
        if tr.get("families"):
            w("| kernel family | calls | total ms | % |\n|---|---|---|---|\n")
            for f in tr["families"]:
                w(f"| {f['family']} | {f['calls']} | {f['total_ms']:.2f} | {f['percent']:.1f} |\n")
            w("\n")
        w("| # | name | calls | total ms | % |\n|---|---|---|---|---|\n")
        for i, e in enumerate(tr["top"], 1):
            name = e["name"].replace("|", "\\|")
            if len(name) > 100:
                name = name[:97] + "..."
            w(f"| {i} | `{name}` | {e['calls']} | {e['total_ms']:.2f} | {e['percent']:.1f} |\n")
        w("\n")
    if s.get("plots_skipped"):
        w(f"## Plots\n\nNo plots: {s['plots_skipped']}.\n\n")
    if plots:
        w("## Plots\n\n")
        for p in plots:
            w(f"![{p}]({p})\n\n")
    w("## Files\n\nsummary.json (all figures), iterations.csv (per step), telemetry.csv (NVML samples), "
      "tensorboard/ (the same scalars), trace_rank*.json (when --trace-iters is given).\n")
    return out.getvalue()


# ----------------------------------------------------------------------------------------------- writing


def _plots(meta: ProfileMeta, s: Dict[str, Any], samples: List[Dict[str, Any]], t_window, out_dir: str) -> List[str]:
    try:
        import matplotlib
    except ImportError:
        # The numbers matter more than the pictures: write the report without plots and say why.
        s["plots_skipped"] = "matplotlib is not installed (pip install matplotlib)"
        return []

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    made = []
    per = s["per_iteration"]
    if per:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        its = [p["iteration"] for p in per]
        ax.plot(its, [1e3 * p["step_time_s"] for p in per], "o-", color="tab:blue", label="step time")
        ax.set_xlabel("iteration")
        ax.set_ylabel("step time (ms)", color="tab:blue")
        if meta.warmup_iters:
            ax.axvspan(min(its) - 0.5, meta.warmup_iters + 0.5, color="0.85", label="warm-up")
        ax2 = ax.twinx()
        if meta.peak_tflops:
            ax2.plot(its, [100 * p["mfu"] for p in per], "s--", color="tab:red", label="MFU")
            ax2.set_ylabel("MFU (%)", color="tab:red")
            title = "step time and MFU"
        else:
            ax2.plot(its, [p["tflops_per_gpu"] for p in per], "s--", color="tab:red", label="TFLOP/s")
            ax2.set_ylabel("model TFLOP/s per process (MFU not applicable)", color="tab:red")
            title = "step time and TFLOP/s (MFU not applicable)"
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "step_time_mfu.png"), dpi=110)
        plt.close(fig)
        made.append("step_time_mfu.png")
    rows = [r for r in s.get("breakdown", []) if "forward" in r]
    if rows:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        bottom = [0.0] * len(rows)
        labels = [f"rank {r['rank']}" for r in rows]
        for c in COMPONENTS:
            vals = [max(0.0, 1e3 * r[c]) for r in rows]
            ax.bar(labels, vals, bottom=bottom, label=c.replace("_", " "))
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_ylabel("ms per step")
        ax.set_title("time per step by part (megatron-core timers)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, not over them
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "breakdown.png"), dpi=110)
        plt.close(fig)
        made.append("breakdown.png")
    if samples:
        t0 = min(x["t"] for x in samples)
        fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
        keys = [("util_pct", "GPU busy (%)"), ("power_w", "power (W)"), ("sm_clock_mhz", "SM clock (MHz)")]
        series: Dict[tuple, List[Dict[str, Any]]] = {}
        for x in samples:
            series.setdefault((x["rank"], x["gpu"]), []).append(x)
        for ax, (k, label) in zip(axes, keys):
            for (rank, gpu), xs in sorted(series.items()):
                ax.plot([x["t"] - t0 for x in xs], [x[k] for x in xs], label=f"rank {rank} / GPU {gpu}")
            if t_window:
                ax.axvspan(t_window[0] - t0, t_window[1] - t0, color="0.9", label="measured")
            ax.set_ylabel(label)
        axes[-1].set_xlabel("time (s)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "telemetry.png"), dpi=110)
        plt.close(fig)
        made.append("telemetry.png")
    return made


def _tensorboard(meta: ProfileMeta, s: Dict[str, Any], samples: List[Dict[str, Any]], out_dir: str) -> None:
    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(log_dir=os.path.join(out_dir, "tensorboard"))
    try:
        for p in s["per_iteration"]:
            it = p["iteration"]
            tb.add_scalar("profile/step-time-s", p["step_time_s"], it)
            tb.add_scalar("profile/tokens-per-sec", p["tokens_per_s"], it)
            tb.add_scalar("profile/tflops-per-gpu", p["tflops_per_gpu"], it)
            tb.add_scalar("profile/hw-tflops-per-gpu", p["hw_tflops_per_gpu"], it)
            if p["mfu"] is not None:
                tb.add_scalar("profile/mfu", p["mfu"], it)
                tb.add_scalar("profile/hfu", p["hfu"], it)
        for r in s.get("breakdown", []):
            for c in COMPONENTS:
                if c in r:
                    tb.add_scalar(f"profile/breakdown-rank{r['rank']}/{c}-s", r[c], 0)
        if samples:
            t0 = min(x["t"] for x in samples)
            for x in samples:
                step = int(round(1000 * (x["t"] - t0)))  # milliseconds since the first sample
                tag = f"telemetry/rank{x['rank']}-gpu{x['gpu']}"
                tb.add_scalar(f"{tag}/power-w", x["power_w"], step)
                tb.add_scalar(f"{tag}/util-pct", x["util_pct"], step)
                tb.add_scalar(f"{tag}/sm-clock-mhz", x["sm_clock_mhz"], step)
                tb.add_scalar(f"{tag}/temp-c", x["temp_c"], step)
    finally:
        tb.close()


def write_report(meta: ProfileMeta, ranks: List[Dict[str, Any]], out_dir: str,
                 tensorboard: bool = True) -> Dict[str, Any]:
    """Write every report file into out_dir; returns the summary (also in summary.json)."""
    os.makedirs(out_dir, exist_ok=True)
    s = summarise(meta, ranks)
    samples = [{"rank": r["rank"], **x} for r in ranks for x in r.get("telemetry", {}).get("samples", [])]
    window = next((r.get("measured_window") for r in ranks if r.get("measured_window")), None)
    plots = _plots(meta, s, samples, window, out_dir)
    atomic_write_text(os.path.join(out_dir, "report.md"), render_markdown(meta, s, plots))
    atomic_write_text(os.path.join(out_dir, "summary.json"),
                  json.dumps({"meta": meta.__dict__, "summary": s}, indent=1, default=str))
    buf = io.StringIO()
    cols = ["iteration", "measured", "step_time_s", "tokens_per_s", "tflops_per_gpu", "hw_tflops_per_gpu", "mfu",
            "hfu"]
    wr = csv.DictWriter(buf, fieldnames=cols)
    wr.writeheader()
    for p in s["per_iteration"]:
        wr.writerow({k: p[k] for k in cols})
    atomic_write_text(os.path.join(out_dir, "iterations.csv"), buf.getvalue())
    if samples:
        buf = io.StringIO()
        cols = ["rank", "gpu", "t", "util_pct", "mem_used_gb", "power_w", "sm_clock_mhz", "temp_c", "throttle"]
        wr = csv.DictWriter(buf, fieldnames=cols)
        wr.writeheader()
        for x in samples:
            wr.writerow({k: x[k] for k in cols})
        atomic_write_text(os.path.join(out_dir, "telemetry.csv"), buf.getvalue())
    if tensorboard:
        _tensorboard(meta, s, samples, out_dir)
    return s
