"""The stand-ins registered under apex's module names drive megatron-core's own fused paths: its
FusedScaleMaskSoftmax with masked_softmax_fusion on equals its unfused softmax, and
linear_with_grad_accumulation_and_async_allreduce with gradient_accumulation_fusion accumulates into main_grad."""

from __future__ import annotations

import sys

import pytest
import torch

from megatron_llm.ops import megatron_names

from ops_helpers import backend  # noqa: F401  (fixture)


@pytest.fixture
def names(monkeypatch):
    for name, mod in megatron_names.build_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    yield


def _softmax_pair(mask_type, dtype):
    from megatron.core.fusions.fused_softmax import FusedScaleMaskSoftmax
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.utils import attention_mask_func

    kind = {"causal": AttnMaskType.causal, "padding": AttnMaskType.padding}[mask_type]
    make = lambda fused: FusedScaleMaskSoftmax(  # noqa: E731
        input_in_fp16=dtype == torch.float16, input_in_bf16=dtype == torch.bfloat16, attn_mask_type=kind,
        scaled_masked_softmax_fusion=fused, mask_func=attention_mask_func, softmax_in_fp32=True, scale=0.7)
    return make(True), make(False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mask_type,with_mask", [("causal", False), ("padding", True), ("padding", False)])
def test_fused_softmax_equals_megatron_core_unfused(names, backend, dtype, mask_type, with_mask):
    fused, unfused = _softmax_pair(mask_type, dtype)
    b, h, s = 2, 2, 20  # megatron-core takes the fused path only for 16 < sk <= 4096, sq % 4 == 0, b*h % 4 == 0
    g = torch.Generator().manual_seed(0)
    x = (2 * torch.randn(b, h, s, s, generator=g)).to(dtype)
    mask = None
    if with_mask:
        mask = torch.rand(b, 1, s, s, generator=g) < 0.3
        mask[0, 0, 3] = True  # one fully masked row: uniform, as in apex
    assert fused.is_kernel_available(mask, b, h, s, s)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    # the unfused causal path would build its triu mask on "cuda": hand it the same mask on the CPU
    unfused_mask = torch.ones(s, s).triu(1).bool() if mask_type == "causal" else mask
    ya, yb = fused(xa, mask), unfused(xb, unfused_mask)
    torch.testing.assert_close(ya, yb, atol=1e-2, rtol=1e-2)
    gy = torch.randn(ya.shape, generator=g).to(dtype)
    ya.backward(gy)
    yb.backward(gy)
    if with_mask:
        torch.testing.assert_close(ya[0, :, 3].float(), torch.full((h, s), 1.0 / s), atol=1e-3, rtol=0)
        # apex's backward sees no mask, so a fully masked row's uniform softmax passes gradient where masked_fill
        # stops it: compare the other rows
        xa.grad[0, :, 3] = xb.grad[0, :, 3] = 0
    torch.testing.assert_close(xa.grad, xb.grad, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16])
def test_gradient_accumulation_fusion_through_megatron_core(names, monkeypatch, grad_dtype):
    from megatron.core.tensor_parallel import layers

    monkeypatch.setattr(layers, "fused_weight_gradient_mlp_cuda", sys.modules["fused_weight_gradient_mlp_cuda"],
                        raising=False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, 12, generator=g).to(torch.bfloat16).requires_grad_(True)
    w = torch.nn.Parameter(torch.randn(7, 12, generator=g).to(torch.bfloat16))
    start = torch.randn(7, 12, generator=g)
    w.main_grad = start.clone().to(grad_dtype)
    y = layers.linear_with_grad_accumulation_and_async_allreduce(
        x, w, None, gradient_accumulation_fusion=True, allreduce_dgrad=False, sequence_parallel=False)
    gy = torch.randn(y.shape, generator=g).to(y.dtype)
    y.backward(gy)
    expected = start + gy.float().reshape(-1, 7).t() @ x.detach().float().reshape(-1, 12)
    torch.testing.assert_close(w.main_grad.float(), expected.to(grad_dtype).float(),
                               **(dict(atol=1e-4, rtol=1e-4) if grad_dtype == torch.float32 else
                                  dict(atol=5e-2, rtol=2e-2)))


def test_install_keeps_a_real_module_and_patches_layers(monkeypatch):
    from megatron.core.tensor_parallel import layers

    real = type(sys)("scaled_softmax_cuda", "apex's own")
    monkeypatch.setitem(sys.modules, "scaled_softmax_cuda", real)
    for name in set(megatron_names.NAMES) - {"scaled_softmax_cuda"}:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(layers, "_grad_accum_fusion_available", False)
    installed = megatron_names.install_megatron_extension_modules(force=True)
    assert set(installed) == set(megatron_names.NAMES) - {"scaled_softmax_cuda"}
    assert sys.modules["scaled_softmax_cuda"] is real
    assert layers._grad_accum_fusion_available is True
    assert layers.fused_weight_gradient_mlp_cuda is sys.modules["fused_weight_gradient_mlp_cuda"]
    for name in installed:
        monkeypatch.delitem(sys.modules, name)
