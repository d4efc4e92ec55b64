"""The csrc/ lightning-attention kernel (the C++ CPU build, and the CUDA kernel on the CPU emulation) against the
torch forms: forward and gradients, lengths that are and are not multiples of the block, several decay rates,
fp32/fp64 gradcheck, non-contiguous inputs, fallback."""

import pytest
import torch

from megatron_llm.ops import build
from megatron_llm.ops.linear_attention import (linear_attention_lightning, linear_attention_lightning_torch,
                                               linear_attention_parallel, linear_attention_recurrent)
from ops_helpers import use_cpu_extension, use_emulated_cuda

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(params=("cpu-kernel", "emulated-cuda"))
def ext(request, monkeypatch):
    build.reset_for_tests()
    yield use_emulated_cuda(monkeypatch) if request.param == "emulated-cuda" else use_cpu_extension(monkeypatch)
    build.reset_for_tests()


def inputs(n, d=8, e=6, h=3, b=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, n, d, generator=g, dtype=dtype) * 0.5 for _ in range(2))
    v = torch.randn(b, h, n, e, generator=g, dtype=dtype)
    return q, k, v


def kernel_and_grads(q, k, v, slopes, block, gout):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = linear_attention_lightning(*leaves, slopes, block_size=block)
    assert type(out.grad_fn).__name__ == "_LightningKernelBackward", "the kernel path did not run"
    out.backward(gout)
    return out.detach(), [t.grad for t in leaves]


def reference_and_grads(q, k, v, slopes, gout):
    """The quadratic form in fp64 through autograd: an independent expectation for values and gradients."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = linear_attention_parallel(*leaves, slopes)
    out.backward(gout.double())
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("n,block", [(1, 4), (4, 4), (7, 4), (13, 4), (33, 8), (70, 256)])
@pytest.mark.parametrize("rates", [(0.0, 0.0, 0.0), (0.05, 0.3, 2.0), (1e-3, 0.9, 8.0)])
def test_kernel_matches_reference(ext, n, block, rates):
    q, k, v = inputs(n)
    slopes = torch.tensor(rates)
    gout = torch.randn(2, 3, n, 6, generator=torch.Generator().manual_seed(1))
    out, grads = kernel_and_grads(q, k, v, slopes, block, gout)
    ref, ref_grads = reference_and_grads(q, k, v, slopes, gout)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, **TOL)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, **TOL)
    # and the torch lightning form it replaces, block for block
    torch.testing.assert_close(out, linear_attention_lightning_torch(q, k, v, slopes, block), **TOL)


def test_kernel_different_value_width_and_recurrent(ext):
    q, k, v = inputs(19, d=5, e=11, h=2, b=1)
    slopes = torch.tensor([0.2, 1.1])
    out = linear_attention_lightning(q, k, v, slopes, block_size=6)
    torch.testing.assert_close(out, linear_attention_recurrent(q, k, v, slopes)[0], **TOL)


@pytest.mark.filterwarnings("ignore:Input #:UserWarning")  # fp32 gradcheck, with fp32-sized tolerances
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradcheck(ext, dtype):
    q, k, v = (t.requires_grad_() for t in inputs(6, d=3, e=2, h=2, b=1, dtype=dtype))
    slopes = torch.tensor([0.1, 0.7])
    fn = lambda q, k, v: linear_attention_lightning(q, k, v, slopes, block_size=4)  # noqa: E731
    tol = dict(eps=1e-6, atol=1e-5, rtol=1e-4) if dtype == torch.float64 else dict(eps=1e-3, atol=2e-2, rtol=2e-2)
    assert torch.autograd.gradcheck(fn, (q, k, v), **tol)


def test_non_contiguous_inputs(ext):
    # [b, n, h, d] storage viewed as [b, h, n, d], as the model's transposes give it
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in inputs(21))
    assert not q.is_contiguous()
    slopes = torch.tensor([0.05, 0.3, 2.0])
    gout = torch.randn(2, 3, 21, 6, generator=torch.Generator().manual_seed(2)).transpose(1, 2).contiguous()
    out, grads = kernel_and_grads(q, k, v, slopes, 8, gout.transpose(1, 2))
    ref, ref_grads = reference_and_grads(q, k, v, slopes, gout.transpose(1, 2))
    torch.testing.assert_close(out.double(), ref, **TOL)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, **TOL)


def test_bf16_kernel_against_fp64(ext):
    q, k, v = inputs(40)
    slopes = torch.tensor([0.05, 0.3, 2.0])
    out = linear_attention_lightning(q.bfloat16(), k.bfloat16(), v.bfloat16(), slopes, block_size=16)
    assert out.dtype == torch.bfloat16
    ref = linear_attention_parallel(q.double(), k.double(), v.double(), slopes)
    assert ((out.double() - ref).norm() / ref.norm()) < 1e-2


def test_no_ext_and_state_use_the_torch_form(ext, monkeypatch):
    q, k, v = (t.requires_grad_() for t in inputs(9))
    slopes = torch.tensor([0.05, 0.3, 2.0])
    out, state = linear_attention_lightning(q, k, v, slopes, block_size=4, return_state=True)
    assert type(out.grad_fn).__name__ != "_LightningKernelBackward"
    assert state.shape == (2, 3, 8, 6)
    monkeypatch.setenv("MEGATRON_LLM_NO_EXT", "1")
    build.reset_for_tests()
    out2 = linear_attention_lightning(q, k, v, slopes, block_size=4)
    assert type(out2.grad_fn).__name__ != "_LightningKernelBackward"
    torch.testing.assert_close(out2, out, **TOL)


def test_kernel_rejects_bad_inputs(ext):
    q, k, v = inputs(5)
    with pytest.raises(RuntimeError, match="one decay rate per head"):
        ext.lightning_attention_fwd(q, k, v, torch.tensor([0.1]), 4)
    with pytest.raises(RuntimeError, match="block size must be positive"):
        ext.lightning_attention_fwd(q, k, v, torch.tensor([0.1, 0.2, 0.3]), 0)


def test_ops_status_lists_the_kernel(ext):
    from megatron_llm import ops

    rows = {op: impl for op, impl, _ in ops.status("cpu")}
    assert rows["lightning_attention"] == "C++ CPU kernel"
