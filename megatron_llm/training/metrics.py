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
from megatron_llm.perf.flops import attention_counted, flops_per_iteration
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
    "step_time_max_s": "health/step-time-max-s",
    "stragglers": "health/stragglers",
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


def drop_records_after(path: str, iteration: int) -> int:
    """Remove metrics.jsonl records of iterations after `iteration` (a killed run logged past its last checkpoint),
    so a resumed run logs every iteration once. Returns how many were dropped."""
    if not os.path.isfile(path):
        return 0
    from megatron_llm.fileio import atomic_write_text

    lines = open(path, encoding="utf-8").read().splitlines()
    keep = []
    for line in lines:
        try:
            it = json.loads(line).get("iteration")
        except ValueError:
            continue  # a line torn by a kill
        if it is None or it <= iteration:
            keep.append(line)
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(l + "\n" for l in keep))
    return len(lines) - len(keep)


class MetricsLogger:
    def __init__(self, cfg: RunConfig, info, vocab_size: int, resumed_at: int = 0) -> None:
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
            path = os.path.join(tb_dir, "metrics.jsonl")
            dropped = drop_records_after(path, resumed_at)
            if dropped:
                self.info(f"{path}: dropped {dropped} record(s) after iteration {resumed_at}, the iteration this "
                          f"run starts from (they are logged again as it proceeds)")
            self.jsonl = open(path, "a", encoding="utf-8")
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: tensorboard hides the events a killed run wrote past the checkpoint we resume from
            self.tb = SummaryWriter(log_dir=tb_dir, purge_step=resumed_at + 1)
        if self.peak is None:
            why = "CPU run" if info.device != "cuda" else "unknown GPU peak (set --gpu-peak-tflops)"
            self.info(f"MFU not applicable: {why}")
        else:
            self.info(f"MFU against {self.peak:.0f} TFLOP/s dense {training_dtype(cfg)} per device; "
                      f"model FLOPs/iteration {self.flops_per_iteration:.4e} ({attention_counted(cfg.model)})")

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
            # the max over ranks when the trainer's health exchange provides it (training/health.py)
            mem_gb=m["mem_gb"] if m.get("mem_gb") is not None else local_mem_gb(self.device),
        )
        self.skipped += int(m.get("skipped") or 0)  # skipped iterations in this log interval
        # Called once per log interval (the trainer decides the boundaries).
        self._print_line(iteration, m)
        self._write(iteration, {k: m.get(k) for k in (
            "iteration", "lm_loss", "lr", "grad_norm", "loss_scale", "tokens_per_s", "flops_per_iteration",
            "tflops", "mfu", "mem_gb", "iteration_time_s", "consumed_samples", "step_time_max_s", "stragglers")})
        return m

    def rolled_back(self, from_iteration: int, to_iteration: int) -> None:
        """--nan-policy rollback: the records after the checkpoint go (those iterations are replayed and logged
        again), and one event record says what happened."""
        if self.jsonl is not None:
            self.jsonl.close()
            drop_records_after(self.jsonl.name, to_iteration)
            self.jsonl = open(self.jsonl.name, "a", encoding="utf-8")
            self.jsonl.write(json.dumps({"event": "rollback", "iteration": to_iteration,
                                         "nonfinite_at": from_iteration}) + "\n")
            self.jsonl.flush()

    def straggler(self, iteration: int, names) -> None:
        self.info(f"WARNING: iteration {iteration}: straggler(s) slower than the median step by more than "
                   f"{100 * self.cfg.train.straggler_threshold:.0f}%: {'; '.join(names)}")

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

