"""Shared by the ops tests: run a case on each implementation (the torch reference, forced with
MEGATRON_LLM_NO_EXT=1, the extension's C++ CPU kernels, and its CUDA kernels run by the CPU emulation of
tests/cuda_emulation) and compare values and gradients."""

from __future__ import annotations

from typing import Callable, Sequence

import pytest
import torch

from cuda_emulation import emulated_ext
from megatron_llm.ops import build

BACKENDS = ("torch", "ext", "emulated-cuda")

# fp32 accumulation in both, differences come from the output rounding: a couple of ulps of the dtype
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2), torch.float16: dict(atol=2e-3, rtol=2e-3)}


def use_cpu_extension(monkeypatch):
    """The ops run the extension's C++ CPU kernels, which must build (a failed build fails the test). Returns the
    module."""
    monkeypatch.delenv("MEGATRON_LLM_NO_EXT", raising=False)
    ext, why = build.load()
    assert ext is not None, f"the csrc extension did not build: {why}"
    return ext


def use_emulated_cuda(monkeypatch):
    """From here on the ops run the CUDA kernels on the CPU emulation: build.load() returns that extension (still
    none under MEGATRON_LLM_NO_EXT=1). Returns the module."""
    monkeypatch.delenv("MEGATRON_LLM_NO_EXT", raising=False)
    ext = emulated_ext.load()

    def load():
        if build.disabled():
            return None, "MEGATRON_LLM_NO_EXT is set"
        return ext, "CUDA kernels on the CPU emulation (tests/cuda_emulation)"

    monkeypatch.setattr(build, "load", load)
    return ext


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """'torch': the reference path; 'ext': the C++ CPU kernels, which must build (a failed build fails the test);
    'emulated-cuda': the CUDA kernels on the CPU emulation (the ops then find that extension as theirs)."""
    build.reset_for_tests()
    if request.param == "torch":
        monkeypatch.setenv("MEGATRON_LLM_NO_EXT", "1")
    elif request.param == "emulated-cuda":
        use_emulated_cuda(monkeypatch)
    else:
        use_cpu_extension(monkeypatch)
    yield request.param
    build.reset_for_tests()


def leaves(tensors: Sequence[torch.Tensor], constant: Sequence[int] = ()):
    return [t.detach().clone().requires_grad_(i not in constant) for i, t in enumerate(tensors)]


def compare(fn: Callable, expected_fn: Callable, inputs: Sequence[torch.Tensor], dtype: torch.dtype, seed: int = 0,
            constant: Sequence[int] = ()):
    """fn(*inputs) against expected_fn(*inputs): outputs (one tensor or a tuple) and the gradients of every input
    but those at the `constant` positions, for the same random upstream gradients."""
    a, b = leaves(inputs, constant), leaves(inputs, constant)
    out_a, out_b = fn(*a), expected_fn(*b)
    out_a = out_a if isinstance(out_a, tuple) else (out_a,)
    out_b = out_b if isinstance(out_b, tuple) else (out_b,)
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(o.shape, generator=gen).to(o.dtype) for o in out_b]
    for x, y in zip(out_a, out_b):
        assert x.dtype == y.dtype and x.shape == y.shape
        torch.testing.assert_close(x, y, **TOL[dtype])
    torch.autograd.backward(out_a, grads)
    torch.autograd.backward(out_b, grads)
    for i, (x, y) in enumerate(zip(a, b)):
        if i not in constant:
            torch.testing.assert_close(x.grad, y.grad, **TOL[dtype])
