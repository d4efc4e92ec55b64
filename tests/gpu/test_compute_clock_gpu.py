"""On a GPU the straggler report's compute time is the GPU's: the host only enqueues kernels and returns, so a clock
on the host would mostly time kernel launches and could miss a slow GPU. ComputeClock("cuda") reads CUDA events;
here the GPU spins (torch.cuda._sleep) while the host has long moved on. CPU counterpart:
tests/unit/test_compute_clock.py. Skipped without CUDA."""

import time

import pytest
import torch

from megatron_llm.training.health import ComputeClock

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _gpu_spin_s(cycles: int) -> float:
    """How long the GPU takes for torch.cuda._sleep(cycles), timed on the host around a synchronize."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    torch.cuda._sleep(cycles)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def test_cuda_clock_times_the_gpu_not_the_kernel_launches():
    cycles = 10_000_000
    _gpu_spin_s(cycles)  # warm-up
    while _gpu_spin_s(cycles) < 0.05:  # at least 50 ms a step, whatever the GPU's clock rate
        cycles *= 2
    spin = min(_gpu_spin_s(cycles) for _ in range(3))

    clock = ComputeClock("cuda")
    host_s = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        clock.start()
        torch.cuda._sleep(cycles)
        clock.compute_ended()
        host_s.append(time.perf_counter() - t0)
        clock.step_done()
    measured = clock.mean_s()  # no synchronize before it: mean_s waits for the events itself
    assert max(host_s) < 0.2 * spin, (host_s, spin)  # what a host clock would have reported
    assert measured == pytest.approx(spin, rel=0.2), (measured, spin)
