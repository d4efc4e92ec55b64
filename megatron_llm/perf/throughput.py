"""Throughput arithmetic shared by the trainer's metrics and the profiler's report: one definition of tokens/s,
TFLOP/s per GPU and MFU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float  # whole job
    tflops_per_gpu: float  # model FLOPs / time / GPUs
    mfu: Optional[float]  # tflops_per_gpu / dense peak; None where no peak is known (CPU, unknown GPU)


def throughput(flops: float, tokens: float, seconds: float, world_size: int,
               peak_tflops: Optional[float]) -> Throughput:
    """Figures for ``tokens`` trained with ``flops`` model FLOPs in ``seconds`` on ``world_size`` devices."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    tflops = flops / seconds / world_size / 1e12
    return Throughput(tokens_per_s=tokens / seconds, tflops_per_gpu=tflops,
                      mfu=tflops / peak_tflops if peak_tflops else None)


def host_rss_gb() -> float:
    """Peak resident memory of this process in GiB (what a CPU run reports where a GPU run reports
    max_memory_allocated)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # ru_maxrss is KiB on Linux
