"""The CUDA kernels against the torch references (and megatron-core's unfused paths) in bf16 and fp32, at the
1.1B shape's sizes (hidden 2048, FFN 5632, vocab 32000, head dim 64). Run on the lent GPU (scripts/gpu_checks.sh);
skipped without CUDA. The first test builds the extension (JIT, CUDA + CPU) and fails if it cannot."""

from __future__ import annotations

import sys

import pytest
import torch

from megatron_llm import ops
from megatron_llm.ops import build, megatron_names, reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}
DTYPES = [torch.bfloat16, torch.float32]


@pytest.fixture(scope="module", autouse=True)
def cuda_ext():
    build.reset_for_tests()
    ext, why = build.load()
    assert ext is not None and ext.with_cuda(), f"CUDA extension not available: {why}"
    return ext


def _check(fn, ref, inputs, dtype):
    a = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    b = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out_a, out_b = fn(*a), ref(*b)
    out_a = out_a if isinstance(out_a, tuple) else (out_a,)
    out_b = out_b if isinstance(out_b, tuple) else (out_b,)
    grads = [torch.randn_like(o, dtype=torch.float32).to(o.dtype) for o in out_b]
    for x, y in zip(out_a, out_b):
        torch.testing.assert_close(x.float(), y.float(), **TOL[dtype])
    torch.autograd.backward(out_a, grads)
    torch.autograd.backward(out_b, grads)
    for x, y in zip(a, b):
        if x.grad is not None:
            # weight gradients sum 8k rows: relative to the gradient's scale
            scale = y.grad.float().abs().max().clamp(min=1.0)
            torch.testing.assert_close(x.grad.float() / scale, y.grad.float() / scale, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_and_residual(dtype):
    x = torch.randn(2048, 4, 2048, device="cuda").to(dtype)
    r = torch.randn_like(x)
    w = (1 + 0.1 * torch.randn(2048, device="cuda")).to(dtype)
    _check(lambda x, w: ops.rms_norm(x, w, 1e-5), lambda x, w: reference.rms_norm(x, w, 1e-5), [x, w], dtype)
    _check(lambda x, r, w: ops.rms_norm_residual(x, r, w, 1e-5),
           lambda x, r, w: reference.rms_norm_residual(x, r, w, 1e-5), [x, r, w], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope(dtype):
    inv = 1.0 / 10000 ** (torch.arange(0, 64, 2, device="cuda", dtype=torch.float32) / 64)
    f = torch.outer(torch.arange(2048, device="cuda", dtype=torch.float32), inv)
    freqs = torch.cat((f, f), -1)[:, None, None, :]
    q = torch.randn(2048, 4, 32, 64, device="cuda").to(dtype)
    _check(ops.rope, reference.rope, [q, freqs], dtype)
    _check(ops.rope, reference.rope, [q[..., :48].contiguous(), freqs[..., :32]], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu(dtype):
    x = torch.randn(2048, 4, 2 * 5632, device="cuda").to(dtype)
    _check(ops.swiglu, reference.swiglu, [x], dtype)


def test_swiglu_more_rows_than_the_grid_and_odd_width():
    # 70,001 rows: past the grid's 65,535 rows, so blocks stride over rows; 601 columns: a partial column block
    x = torch.randn(70001, 2 * 601, device="cuda").to(torch.bfloat16)
    _check(ops.swiglu, reference.swiglu, [x], torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_padded_vocab_and_memory(dtype):
    logits = (3 * torch.randn(2048, 4, 32128, device="cuda")).to(dtype)
    target = torch.randint(0, 32000, (2048, 4), device="cuda")
    _check(lambda z: ops.vocab_parallel_cross_entropy(z, target, label_smoothing=0.1, vocab_size=32000),
           lambda z: reference.cross_entropy(z, target, 0.1, vocab_size=32000), [logits], dtype)
    # forward + backward never hold an fp32 copy of the logits: peak extra memory well under one fp32 copy
    z = logits.detach().clone().requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ops.vocab_parallel_cross_entropy(z, target, vocab_size=32000).sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < 1.2 * z.numel() * z.element_size() + (64 << 20), extra  # the gradient itself, not fp32 copies


@pytest.mark.parametrize("causal", [True, False])
def test_megatron_softmax_names(causal):
    mods = megatron_names.build_modules()
    x = torch.randn(4, 8, 256, 256, device="cuda", dtype=torch.bfloat16)
    if causal:
        y = mods["scaled_upper_triang_masked_softmax_cuda"].forward(x.view(-1, 256, 256), 0.125).view_as(x)
        ref = reference.scaled_masked_softmax(x, None, 0.125, causal=True)
    else:
        mask = torch.rand(4, 1, 256, 256, device="cuda") < 0.2
        y = mods["scaled_masked_softmax_cuda"].forward(x, mask, 0.125)
        ref = reference.scaled_masked_softmax(x, mask, 0.125)
    torch.testing.assert_close(y.float(), ref.float(), atol=1e-2, rtol=1e-2)
    g = torch.randn_like(y)
    dx = mods["scaled_softmax_cuda"].backward(g, y, 0.125)
    torch.testing.assert_close(dx.float(), reference.softmax_backward(g, y, 0.125).float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16])
def test_wgrad_gemm_accum(grad_dtype):
    x = torch.randn(8192, 2048, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(8192, 5632, device="cuda", dtype=torch.bfloat16)
    main = torch.randn(5632, 2048, device="cuda").to(grad_dtype)
    expected = main.float() + g.float().t() @ x.float()
    megatron_names.wgrad_gemm_accum(x, g, main)
    torch.testing.assert_close(main.float() / 100, expected / 100, atol=5e-2, rtol=2e-2)


def test_install_registers_names_for_megatron_core(monkeypatch):
    for name in megatron_names.NAMES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    installed = megatron_names.install_megatron_extension_modules()
    assert set(installed) == set(megatron_names.NAMES)
    from megatron.core.tensor_parallel import layers

    assert layers._grad_accum_fusion_available
    rows = {op: impl for op, impl, _ in ops.status("cuda")}
    assert rows["rms_norm"] == "CUDA kernel"
