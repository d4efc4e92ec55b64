"""The straggler report's per-step compute time (training/health.py ComputeClock) on the host clock: step start to
the FIRST finalize_model_grads entry, the step's end where finalize was not entered, the interval's mean, cleared at
the boundary. The same code reads CUDA events on a GPU (tests/gpu/test_compute_clock_gpu.py)."""

import time

import pytest

from megatron_llm.training.health import ComputeClock


def _timed_step(clock, compute_s, after_s, enter_finalize=True):
    clock.start()
    time.sleep(compute_s)
    if enter_finalize:
        clock.compute_ended()
        time.sleep(after_s)
        clock.compute_ended()  # a later entry does not move the end
    else:
        time.sleep(after_s)
    clock.step_done()


def test_compute_ends_at_the_first_finalize_entry_and_steps_average():
    clock = ComputeClock("cpu")
    _timed_step(clock, 0.05, 0.30)
    _timed_step(clock, 0.15, 0.30)
    assert len(clock.steps) == 2
    assert clock.mean_s() == pytest.approx(0.10, abs=0.04)  # (0.05 + 0.15) / 2, not counting the 0.30 s after
    clock.clear()
    assert clock.mean_s() == 0.0


def test_a_step_without_finalize_ends_at_step_done():
    clock = ComputeClock("cpu")
    _timed_step(clock, 0.05, 0.20, enter_finalize=False)
    assert clock.mean_s() == pytest.approx(0.25, abs=0.04)
