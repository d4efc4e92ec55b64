"""Each fused op, on the torch reference, the C++ CPU kernels and the CUDA kernels on the CPU emulation
(tests/cuda_emulation), against plain torch / megatron-core's unfused functions: forward and gradients,
bf16/fp16/fp32, odd sizes, non-contiguous inputs, fp64 gradcheck."""

from __future__ import annotations

import pytest
import torch

from megatron_llm import ops
from megatron_llm.ops import reference

from ops_helpers import backend, compare  # noqa: F401  (fixture)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _plain_rms_norm(x, w, eps):  # independent of ours: torch.nn.functional.rms_norm in fp32
    return torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), w.float(), eps).to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 67), (7, 1024)])
def test_rms_norm(backend, dtype, shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(dtype)
    compare(lambda x, w: ops.rms_norm(x, w, 1e-5), lambda x, w: _plain_rms_norm(x, w, 1e-5), [x, w], dtype)


def test_rms_norm_non_contiguous(backend):
    x = torch.randn(9, 6, 40).transpose(0, 1)  # [6, 9, 40], strided
    w = torch.randn(40)
    compare(lambda x, w: ops.rms_norm(x, w, 1e-6), lambda x, w: _plain_rms_norm(x, w, 1e-6), [x, w], torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_residual(backend, dtype):
    g = torch.Generator().manual_seed(2)
    x, r = (torch.randn(4, 3, 33, generator=g).to(dtype) for _ in range(2))
    w = torch.randn(33, generator=g).to(dtype)
    compare(lambda x, r, w: ops.rms_norm_residual(x, r, w, 1e-5),
            lambda x, r, w: (_plain_rms_norm(x + r, w, 1e-5), x + r), [x, r, w], dtype)


def _megatron_rope(t, freqs):
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    return _apply_rotary_pos_emb_bshd(t, freqs, rotary_interleaved=False)


def _freqs(s, d_rot, base=10000.0):  # as megatron-core's RotaryEmbedding builds them: cat(f, f) per position
    inv = 1.0 / base ** (torch.arange(0, d_rot, 2, dtype=torch.float32) / d_rot)
    f = torch.outer(torch.arange(s, dtype=torch.float32), inv)
    return torch.cat((f, f), dim=-1)[:, None, None, :]


@pytest.mark.parametrize("dtype", [torch.float32])
@pytest.mark.parametrize("d,d_rot", [(16, 16), (24, 10)])
def test_rope_matches_megatron_core(backend, dtype, d, d_rot):
    t = torch.randn(7, 3, 5, d).to(dtype)
    compare(ops.rope, _megatron_rope, [t, _freqs(7, d_rot)], dtype, constant=(1,))  # angles: not learned


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rope_low_precision_against_fp32(backend, dtype):
    # megatron-core rounds cos/sin to the input dtype first; ours rotates in fp32: compare with the fp32 result
    t = torch.randn(6, 2, 4, 32)
    f = _freqs(6, 32)
    out = ops.rope(t.to(dtype), f)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), _megatron_rope(t.to(dtype).float(), f), atol=2e-2, rtol=2e-2)


def test_rope_general_angles_and_strided_input(backend):
    # angles differing between the halves (not megatron-core's cat(f, f)) exercise the exact transposed backward
    t = torch.randn(5, 4, 3, 20).permute(0, 2, 1, 3)[:, :, :3]  # [5, 3, 3, 20], non-contiguous
    f = torch.randn(5, 1, 1, 12)
    compare(ops.rope, _megatron_rope, [t, f], torch.float32, constant=(1,))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3, 2 * 37), (11, 2 * 64)])
def test_swiglu_matches_megatron_core(backend, dtype, shape):
    from megatron.core.fusions.fused_bias_swiglu import bias_swiglu_impl

    x = torch.randn(*shape).to(dtype)
    compare(ops.swiglu, lambda x: bias_swiglu_impl(x, None), [x], dtype)


def test_swiglu_non_contiguous(backend):
    x = torch.randn(8, 2 * 10, 3).transpose(1, 2)  # [8, 3, 20] strided
    compare(ops.swiglu, lambda x: torch.nn.functional.silu(x[..., :10]) * x[..., 10:], [x], torch.float32)


def test_gradcheck_fp64(backend):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 8, dtype=torch.float64, generator=g, requires_grad=True)
    r = torch.randn(3, 2, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: ops.rms_norm(x, w, 1e-5), (x, w))
    assert torch.autograd.gradcheck(lambda x, r, w: ops.rms_norm_residual(x, r, w, 1e-5), (x, r, w))
    t = torch.randn(4, 2, 3, 8, dtype=torch.float64, generator=g, requires_grad=True)
    f = torch.randn(4, 1, 1, 6, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda t: ops.rope(t, f), (t,))
    assert torch.autograd.gradcheck(ops.swiglu, (torch.randn(3, 10, dtype=torch.float64, generator=g,
                                                             requires_grad=True),))
    logits = torch.randn(3, 2, 11, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randint(0, 9, (3, 2), generator=g)
    assert torch.autograd.gradcheck(
        lambda z: ops.vocab_parallel_cross_entropy(z, target, label_smoothing=0.1, vocab_size=9), (logits,))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="weight has 3 elements"):
        ops.rms_norm(torch.randn(2, 4), torch.ones(3))
    with pytest.raises(ValueError, match="must be even"):
        ops.swiglu(torch.randn(2, 5))
    with pytest.raises(ValueError, match="rotary dim"):
        ops.rope(torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 6))
    with pytest.raises(ValueError, match="vocab_size"):
        ops.vocab_parallel_cross_entropy(torch.randn(2, 1, 8), torch.zeros(2, 1, dtype=torch.long), vocab_size=9)


def test_rms_norm_module_in_a_layer_spec_slot():
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2, sequence_parallel=False,
                            normalization="RMSNorm")
    norm = ops.modules.RMSNorm(config=cfg, hidden_size=16, eps=1e-6)
    assert norm.weight.sequence_parallel is False and torch.equal(norm.weight, torch.ones(16))
    x = torch.randn(3, 2, 16)
    torch.testing.assert_close(norm(x), torch.nn.RMSNorm(16, eps=1e-6)(x))
    fused = ops.modules.FusedResidualRMSNorm(config=cfg, hidden_size=16)
    y, total = fused(x, x)
    torch.testing.assert_close(total, 2 * x)
    torch.testing.assert_close(y, reference.rms_norm(2 * x, fused.weight, 1e-5))


def test_dispatch_and_status_name_the_implementation(backend):
    x = torch.randn(3, 8, requires_grad=True)
    kernel = type(ops.rms_norm(x, torch.ones(8)).grad_fn).__name__.startswith("_RMSNorm")
    assert kernel == (backend != "torch")
    rows = {op: (impl, why) for op, impl, why in ops.status("cpu")}
    assert set(rows) >= {"rms_norm", "rms_norm_residual", "rope", "swiglu", "vocab_parallel_cross_entropy"}
    expected = "C++ CPU kernel" if backend != "torch" else "torch reference"  # dispatch: an extension, CPU tensors
    assert rows["swiglu"][0] == expected
    if backend == "torch":
        assert "MEGATRON_LLM_NO_EXT" in rows["swiglu"][1]
    # this CPU build has no CUDA kernels: CUDA tensors would take the torch path, and status says why
    assert ops.status("cuda")[0][1] == "torch reference"
