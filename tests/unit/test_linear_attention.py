"""The three forms of decayed linear attention agree (forward and gradients) with each other and with a direct sum."""

import math

import pytest
import torch

from megatron_llm.ops.linear_attention import (alibi_slopes, layer_slopes, linear_attention,
                                               linear_attention_lightning, linear_attention_parallel,
                                               linear_attention_recurrent)

TOL = dict(rtol=1e-5, atol=1e-5)


def direct(q, k, v, slopes):
    """o_i = sum_{j<=i} exp(-s (i-j)) (q_i . k_j) v_j, summed term by term in float64."""
    b, h, n, _ = q.shape
    out = torch.zeros(b, h, n, v.shape[-1], dtype=torch.float64)
    for hh in range(h):
        for i in range(n):
            for j in range(i + 1):
                w = math.exp(-float(slopes[hh]) * (i - j)) * (q[:, hh, i].double() * k[:, hh, j].double()).sum(-1)
                out[:, hh, i] += w.unsqueeze(-1) * v[:, hh, j].double()
    return out


def inputs(n, d=8, e=6, h=3, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, n, d, generator=g) * 0.5 for _ in range(2))
    v = torch.randn(b, h, n, e, generator=g)
    return q, k, v


def test_parallel_matches_direct_sum():
    q, k, v = inputs(7)
    slopes = torch.tensor([0.0, 0.3, 2.0])
    torch.testing.assert_close(linear_attention_parallel(q, k, v, slopes).double(), direct(q, k, v, slopes), **TOL)


@pytest.mark.parametrize("n,block", [(1, 4), (5, 4), (8, 4), (13, 4), (33, 8), (40, 256)])
@pytest.mark.parametrize("rates", [(0.0, 0.01, 0.5), (1e-3, 0.2, 3.0)])
def test_three_forms_agree_forward_and_backward(n, block, rates):
    slopes = torch.tensor(rates)
    grads = {}
    outs = {}
    g_out = torch.randn(2, 3, n, 6, generator=torch.Generator().manual_seed(1))
    for name, fn in {"parallel": lambda q, k, v: linear_attention_parallel(q, k, v, slopes),
                     "recurrent": lambda q, k, v: linear_attention_recurrent(q, k, v, slopes)[0],
                     "lightning": lambda q, k, v: linear_attention_lightning(q, k, v, slopes, block)}.items():
        q, k, v = (t.requires_grad_() for t in inputs(n))
        out = fn(q, k, v)
        (out * g_out).sum().backward()
        outs[name], grads[name] = out.detach(), [t.grad for t in (q, k, v)]
    for name in ("recurrent", "lightning"):
        torch.testing.assert_close(outs[name], outs["parallel"], **TOL)
        for got, want in zip(grads[name], grads["parallel"]):
            torch.testing.assert_close(got, want, **TOL)


def test_lightning_state_continues_generation():
    # Prefill with the block-wise form, then decode token by token from its state: same as one pass.
    q, k, v = inputs(21)
    slopes = torch.tensor([0.05, 0.5, 1.0])
    full = linear_attention_parallel(q, k, v, slopes)
    head, state = linear_attention_lightning(q[:, :, :13], k[:, :, :13], v[:, :, :13], slopes, 4, return_state=True)
    tail, _ = linear_attention_recurrent(q[:, :, 13:], k[:, :, 13:], v[:, :, 13:], slopes, state=state)
    torch.testing.assert_close(torch.cat([head, tail], dim=2), full, **TOL)


def test_bf16_inputs_accumulate_in_fp32():
    q, k, v = inputs(300)
    slopes = torch.tensor([0.01, 0.1, 1.0])
    ref = linear_attention_parallel(q, k, v, slopes)
    got = linear_attention_lightning(q.bfloat16(), k.bfloat16(), v.bfloat16(), slopes)
    assert got.dtype == torch.bfloat16
    assert (got.float() - ref).abs().max() / ref.abs().max() < 2e-2


def test_slopes_are_alibi_and_scaled_per_layer():
    assert alibi_slopes(8) == [2.0 ** -(i + 1) for i in range(8)]
    six = alibi_slopes(6)  # 4 of the power-of-two set + every other one of the 8-head set
    assert six[:4] == alibi_slopes(4) and six[4:] == alibi_slopes(8)[0::2][:2]
    first, last = layer_slopes(8, 0, 4), layer_slopes(8, 3, 4)
    torch.testing.assert_close(first, torch.tensor(alibi_slopes(8), dtype=torch.float64) * (1 + 1e-5))
    torch.testing.assert_close(last, torch.tensor(alibi_slopes(8), dtype=torch.float64) * 1e-5)


def test_bad_shapes_and_names_are_refused():
    q, k, v = inputs(4)
    with pytest.raises(ValueError, match="one rate per head"):
        linear_attention_parallel(q, k, v, torch.tensor([0.1]))
    with pytest.raises(ValueError, match="unknown linear attention"):
        linear_attention(q, k, v, torch.zeros(3), impl="softmax")
