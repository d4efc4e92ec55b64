"""ProfilerCallback: what `megatron-llm profile` hangs into the training loop.

On every rank it records each step (the trainer's measured step time and the megatron-core timer values it puts
into the metrics), samples NVML telemetry in a background thread, and optionally runs a torch.profiler window.
At the end every rank's record is gathered on rank 0, which writes the report (report.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional, Tuple

from megatron_llm.perf import flops as flops_mod
from megatron_llm.perf.peaks import resolve_peak
from megatron_llm.perf.throughput import host_rss_gb
from megatron_llm.profiling.report import ProfileMeta, timer_values, write_report
from megatron_llm.profiling.telemetry import TelemetrySampler, aggregate, sampler_for_rank
from megatron_llm.profiling.trace import TraceWindow
from megatron_llm.training.callbacks import TrainCallback, TrainContext
from megatron_llm.training.metrics import training_dtype

MAX_PLOT_SAMPLES = 4000  # per rank; the sampler may run for a long warm-up, the plot needs no more


def _parallel_ranks() -> Dict[str, Optional[int]]:
    try:
        from megatron.core import parallel_state as ps

        if ps.model_parallel_is_initialized():
            return {"pp_rank": ps.get_pipeline_model_parallel_rank(), "tp_rank": ps.get_tensor_model_parallel_rank(),
                    "dp_rank": ps.get_data_parallel_rank()}
    except Exception:
        pass
    return {"pp_rank": None, "tp_rank": None, "dp_rank": None}


def _transformer_config(model: Any) -> Any:
    """megatron-core's TransformerConfig of the first model chunk (DDP wrappers carry it as .config)."""
    chunks = model if isinstance(model, (list, tuple)) else [model]
    for c in chunks:
        for obj in (c, getattr(c, "module", None)):
            tc = getattr(obj, "config", None)
            if tc is not None and hasattr(tc, "num_layers"):
                return tc
    return None


class ProfilerCallback(TrainCallback):
    wants_timers = True

    def __init__(self, report_dir: str, warmup_iters: int, profile_iters: int,
                 trace_iters: Optional[Tuple[int, int]] = None, sample_interval_s: float = 0.1,
                 attention: str = "full", breakdown: bool = True, tensorboard: bool = True,
                 sampler_factory: Optional[Callable[[str], TelemetrySampler]] = None,
                 clock: Callable[[], float] = time.perf_counter, device_name: Optional[str] = None) -> None:
        self.report_dir = report_dir
        self.device_name = device_name  # None: ask torch (tests pass a name to emulate a GPU)
        self.warmup_iters, self.profile_iters = warmup_iters, profile_iters
        self.trace_iters = trace_iters
        self.sample_interval_s = sample_interval_s
        self.attention = attention
        self.wants_timers = breakdown
        self.tensorboard = tensorboard
        self._sampler_factory = sampler_factory or (lambda device: sampler_for_rank(device, sample_interval_s))
        self.clock = clock
        self.meta: Optional[ProfileMeta] = None
        self.records: List[Dict[str, Any]] = []
        self.sampler: Optional[TelemetrySampler] = None
        self.trace: Optional[TraceWindow] = None
        self._t_start: Dict[int, float] = {}
        self._window: List[Optional[float]] = [None, None]
        self.summary: Optional[Dict[str, Any]] = None
        self.rank = 0

    # ------------------------------------------------------------------------------------------ hooks

    def in_window(self, iteration: int) -> bool:
        return self.warmup_iters < iteration <= self.warmup_iters + self.profile_iters

    def on_train_start(self, ctx: TrainContext) -> None:
        cfg = ctx.cfg
        self.rank = ctx.rank
        m, d, p = cfg.model, cfg.data, cfg.parallel
        tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
        dp = max(1, cfg.data_parallel_size(ctx.world_size))
        gbs = cfg.global_batch_size(dp)
        # Model FLOPs count the tokenizer's vocabulary; hardware FLOPs the padded one the logits really use.
        model_vocab = int(getattr(ctx, "tokenizer_vocab_size", None) or m.vocab_size or ctx.vocab_size)
        hw_vocab = int(ctx.vocab_size or model_vocab)
        tc = _transformer_config(ctx.model)
        chunks = len(ctx.model) if isinstance(ctx.model, (list, tuple)) else 1
        recompute, recompute_layers = flops_mod.recompute_from_transformer_config(tc, chunks * pp) if tc is not None \
            else ("none", None)
        dtype = training_dtype(cfg)
        device_name = self.device_name or self._device_name(ctx.device)
        peak = resolve_peak(ctx.device, device_name, dtype, cfg.logging.gpu_peak_tflops)
        shape = {k: getattr(m, k) for k in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                                            "ffn_hidden_size", "kv_channels", "untie_embeddings_and_output_weights")}
        shape["vocab_size"] = model_vocab
        shape["padded_vocab_size"] = hw_vocab
        self.meta = ProfileMeta(
            world_size=ctx.world_size, device=ctx.device, device_name=device_name, dtype=dtype, tp=tp, pp=pp, dp=dp,
            global_batch_size=gbs, micro_batch_size=d.micro_batch_size, seq_length=d.seq_length,
            model_flops_per_iteration=flops_mod.flops_per_iteration(m, d.seq_length, model_vocab, gbs,
                                                                    attention=self.attention),
            hardware_flops_per_iteration=flops_mod.hardware_flops_per_iteration(
                m, d.seq_length, hw_vocab, gbs, recompute, recompute_layers, attention=self.attention),
            recompute=recompute if recompute_layers is None else f"{recompute} ({recompute_layers} layers)",
            attention=self.attention, peak_tflops=peak.tflops, peak_description=peak.describe(),
            warmup_iters=self.warmup_iters, profile_iters=self.profile_iters,
            flops_convention=flops_mod.describe_convention(self.attention, m),
            model_shape=shape,
            overlap_grad_reduce=bool(p.overlap_grad_reduce), recipe=cfg.recipe,
            trace_iters=list(self.trace_iters) if self.trace_iters else None,
        )
        self.parallel_ranks = _parallel_ranks()
        if self.trace_iters:
            self.trace = TraceWindow(self.trace_iters[0], self.trace_iters[1], self.report_dir, ctx.rank, ctx.device)
        self.sampler = self._sampler_factory(ctx.device)
        self.sampler.start()
        if ctx.rank == 0:
            print(f"[megatron-llm profile] {peak.describe()}", flush=True)
            if not self.sampler.available:
                print(f"[megatron-llm profile] {self.sampler.reason}", flush=True)

    def on_step_start(self, ctx: TrainContext, iteration: int) -> None:
        self._t_start[iteration] = self.clock()
        if self.trace is not None:
            self.trace.step_start(iteration)

    def on_step_end(self, ctx: TrainContext, iteration: int, metrics: Dict[str, Any]) -> None:
        t_end = self.clock()
        t_start = self._t_start.pop(iteration, t_end - float(metrics["iteration_time_s"]))
        if self.in_window(iteration):
            if self._window[0] is None:
                self._window[0] = t_start
            self._window[1] = t_end
        self.records.append({
            "iteration": iteration,
            "iteration_time_s": float(metrics["iteration_time_s"]),
            "t_start": t_start,
            "t_end": t_end,
            "lm_loss": metrics.get("lm_loss"),
            "timers": timer_values(metrics),
        })
        if self.trace is not None:
            self.trace.step_end(iteration)

    def on_train_end(self, ctx: TrainContext, summary: Optional[Dict[str, Any]] = None) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.trace is not None:
            self.trace.finish()
        payload = self._payload(ctx)
        gathered = self._gather(payload, ctx)
        self.payloads = gathered  # kept for callers/tests that want the raw per-rank records
        if ctx.rank == 0 and self.meta is not None:
            self.summary = write_report(self.meta, gathered, self.report_dir, tensorboard=self.tensorboard)
            self._print_summary()

    # ------------------------------------------------------------------------------------------ helpers

    @staticmethod
    def _device_name(device: str) -> str:
        if device == "cuda":
            import torch

            return torch.cuda.get_device_name()
        import platform

        return platform.processor() or platform.machine() or "cpu"

    def _payload(self, ctx: TrainContext) -> Dict[str, Any]:
        tele: Dict[str, Any] = {"reason": "", "stats": [], "samples": []}
        if self.sampler is not None:
            tele["reason"] = "" if self.sampler.available else self.sampler.reason
            samples = self.sampler.samples
            if self.sampler.available and self._window[0] is not None:
                stats = aggregate(samples, self._window[0], self._window[1], self.sampler.names)
                tele["stats"] = [g.to_dict() for g in stats.values()]
                if not stats:
                    tele["reason"] = (f"no NVML sample fell inside the measured window "
                                      f"({self._window[1] - self._window[0]:.3f} s; sampling every "
                                      f"{self.sampler.interval_s} s): profile more iterations")
            step = max(1, len(samples) // MAX_PLOT_SAMPLES)
            tele["samples"] = [asdict(s) for s in samples[::step]]
            tele["errors"] = self.sampler.errors
        import torch

        if ctx.device == "cuda" and torch.cuda.is_available():
            mem, kind = torch.cuda.max_memory_allocated() / 2 ** 30, "torch max allocated"
        else:
            mem, kind = host_rss_gb(), "host RSS"
        return {
            "rank": ctx.rank,
            **getattr(self, "parallel_ranks", {}),
            "iterations": self.records,
            "measured_window": self._window if self._window[0] is not None else None,
            "telemetry": tele,
            "trace": self.trace.result.to_dict() if self.trace is not None and self.trace.result else None,
            "mem_max_allocated_gb": mem,
            "mem_kind": kind,
        }

    @staticmethod
    def _gather(payload: Dict[str, Any], ctx: TrainContext) -> List[Dict[str, Any]]:
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                out: List[Any] = [None] * dist.get_world_size()
                dist.all_gather_object(out, payload)
                return sorted(out, key=lambda r: r["rank"])
        except ImportError:
            pass
        return [payload]

    def _print_summary(self) -> None:
        s = self.summary or {}
        if "tokens_per_s" not in s:
            print(f"[megatron-llm profile] {s.get('error', 'no measured iterations')}", flush=True)
            return
        mfu = f"{100 * s['mfu']:.1f}%" if s.get("mfu") is not None else "n/a"
        print(f"[megatron-llm profile] tokens/s {s['tokens_per_s']:,.1f} | TFLOP/s per GPU "
              f"{s['tflops_per_gpu']:.3g} | MFU {mfu} | report: {os.path.abspath(self.report_dir)}/report.md",
              flush=True)
