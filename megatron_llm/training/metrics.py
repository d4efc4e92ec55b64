"""Per-iteration metrics: Megatron-style iteration lines, metrics.jsonl and tensorboard scalars (logging rank).

FLOPs are model FLOPs by megatron_llm.perf.flops (full attention counted; DESIGN.md section 4), MFU is
against the device's dense peak for the training dtype, and is left empty (None) where no peak is known —
on CPU, or an unknown GPU without --gpu-peak-tflops — rather than guessed.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Any, Dict, Optional

import torch

from megatron_llm.config.training import RunConfig
from megatron_llm.perf.flops import flops_per_iteration
from megatron_llm.perf.peaks import resolve_peak
from megatron_llm.perf.peaks import training_dtype as peak_dtype
from megatron_llm.perf.throughput import host_rss_gb, throughput

METRIC_TAGS = {  # metrics.jsonl key -> tensorboard tag
    "lm_loss": "lm loss",
    "val_loss": "validation loss",
    "lr": "learning-rate",
    "grad_norm": "grad-norm",
    "loss_scale": "loss-scale",
    "tokens_per_s": "throughput/tokens-per-sec",
    "tflops": "throughput/tflops-per-gpu",
    "mfu": "throughput/mfu",
    "mem_gb": "memory/max-allocated-gb",
}


def training_dtype(cfg: RunConfig) -> str:
    return peak_dtype(cfg.optim.bf16, cfg.optim.fp16, allow_tf32=torch.backends.cuda.matmul.allow_tf32)


def peak_tflops(cfg: RunConfig, device: str) -> Optional[float]:
    """Dense peak TFLOP/s per device for MFU, or None when it is not known (CPU, unknown GPU)."""
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return resolve_peak(device, name, training_dtype(cfg), cfg.logging.gpu_peak_tflops).tflops


def local_mem_gb(device: str) -> float:
    """This rank's peak memory: GPU memory allocated on CUDA, resident host memory on CPU."""
    return (torch.cuda.max_memory_allocated() / 2 ** 30) if device == "cuda" else host_rss_gb()


def max_over_ranks(value: float, device: str) -> float:
    """Max of a per-rank figure over the world (one tiny all-reduce; call it on every rank, at log intervals only).
    Pipeline stage 0 holds the most activations while the logging rank is the last stage."""
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        if device == "cuda":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def is_log_iteration(cfg: RunConfig, iteration: int) -> bool:
    return iteration % cfg.train.log_interval == 0 or iteration == cfg.train.train_iters


class MetricsLogger:
    def __init__(self, cfg: RunConfig, info, vocab_size: int) -> None:
        self.cfg = cfg
        self.world_size = info.world_size
        self.device = info.device
        gbs = cfg.global_batch_size(info.dp)
        self.global_batch_size = gbs
        self.flops_per_iteration = flops_per_iteration(cfg.model, cfg.data.seq_length, vocab_size, gbs)
        self.peak = peak_tflops(cfg, info.device)
        self.skipped = 0
        self.jsonl = None
        self.tb = None
        tb_dir = cfg.logging.tensorboard_dir
        if tb_dir:
            os.makedirs(tb_dir, exist_ok=True)
            self.jsonl = open(os.path.join(tb_dir, "metrics.jsonl"), "a", encoding="utf-8")
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=tb_dir)
        if self.peak is None:
            why = "CPU run" if info.device != "cuda" else "unknown GPU peak (set --gpu-peak-tflops)"
            self.info(f"MFU not applicable: {why}")
        else:
            self.info(f"MFU against {self.peak:.0f} TFLOP/s dense {training_dtype(cfg)} per device; "
                      f"model FLOPs/iteration {self.flops_per_iteration:.4e} (full attention counted)")

    def log_iteration(self, iteration: int, m: Dict[str, Any], consumed: int) -> Dict[str, Any]:
        tp = throughput(self.flops_per_iteration, self.global_batch_size * self.cfg.data.seq_length,
                        m["iteration_time_s"], self.world_size, self.peak)
        m = dict(m)
        m.update(
            iteration=iteration,
            consumed_samples=consumed,
            tokens_per_s=tp.tokens_per_s,
            flops_per_iteration=self.flops_per_iteration,
            tflops=tp.tflops_per_gpu,
            mfu=tp.mfu,
            # the trainer passes the max over ranks at log intervals; between them this rank's own figure
            mem_gb=m["mem_gb"] if m.get("mem_gb") is not None else local_mem_gb(self.device),
        )
        self.skipped += int(bool(m.get("skipped")))
        if is_log_iteration(self.cfg, iteration):
            self._print_line(iteration, m)
            self._write(iteration, {k: m.get(k) for k in (
                "iteration", "lm_loss", "lr", "grad_norm", "loss_scale", "tokens_per_s", "flops_per_iteration",
                "tflops", "mfu", "mem_gb", "iteration_time_s", "consumed_samples")})
        return m

    def log_validation(self, iteration: int, val_loss: float) -> None:
        print(f" validation loss at iteration {iteration} | lm loss value: {val_loss:.6E} |", flush=True)
        self._write(iteration, {"iteration": iteration, "val_loss": val_loss})

    def _write(self, iteration: int, record: Dict[str, Any]) -> None:
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        if self.tb is not None:
            for key, tag in METRIC_TAGS.items():
                if record.get(key) is not None:
                    self.tb.add_scalar(tag, record[key], iteration)
            self.tb.flush()

    def _print_line(self, iteration: int, m: Dict[str, Any]) -> None:
        now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        mfu = f"{100 * m['mfu']:.1f}%" if m["mfu"] is not None else "n/a"
        grad = f"{m['grad_norm']:.3f}" if m.get("grad_norm") is not None else "n/a"
        loss = f"{m['lm_loss']:.6E}" if m.get("lm_loss") is not None else "n/a"
        print(f" [{now}] iteration {iteration:8d}/{self.cfg.train.train_iters:8d} |"
              f" consumed samples: {m['consumed_samples']:12d} |"
              f" elapsed time per iteration (ms): {1000 * m['iteration_time_s']:.1f} |"
              f" learning rate: {m['lr']:.6E} | global batch size: {self.global_batch_size:5d} |"
              f" lm loss: {loss} | loss scale: {m['loss_scale']:.1f} | grad norm: {grad} |"
              f" tokens/s: {m['tokens_per_s']:.1f} | TFLOP/s/GPU: {m['tflops']:.2f} | MFU: {mfu} |"
              f" mem (GB): {m['mem_gb']:.2f} | number of skipped iterations: {self.skipped:3d} |", flush=True)

    def info(self, msg: str) -> None:
        print(f"[megatron-llm] {msg}", flush=True)

    def error(self, msg: str) -> None:
        print(f"[megatron-llm] ERROR: {msg}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()

