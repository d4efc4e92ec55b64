"""The fused path's CUDA-only parts (run on the lent GPU; skipped without CUDA): SDPA core attention in bf16 against
an fp32 reference of the same attention, fused AdamW against foreach AdamW, and the device grad norm."""

import math

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _reference_attention(q, k, v, causal):
    """fp32 attention with explicit scores and a KV copy per query head: q [s,b,h,d], k/v [s,b,g,d]."""
    s, b, h, d = q.shape
    rep = h // k.shape[2]
    qf, kf, vf = (t.float().permute(1, 2, 0, 3) for t in (q, k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)))
    scores = qf @ kf.transpose(-1, -2) / math.sqrt(d)
    if causal:
        scores = scores.masked_fill(torch.triu(torch.ones(s, s, dtype=torch.bool, device=q.device), 1), -1e30)
    return (scores.softmax(-1) @ vf).permute(2, 0, 1, 3).reshape(s, b, h * d)


def test_sdpa_core_attention_bf16_matches_fp32_reference():
    from types import SimpleNamespace

    from megatron.core.transformer.enums import AttnMaskType

    from megatron_llm.models.sdpa_attention import SDPACoreAttention

    s, b, h, g, d = 2048, 2, 32, 4, 64  # the TinyLlama attention shape
    cfg = SimpleNamespace(context_parallel_size=1, window_size=None, softmax_type="vanilla", kv_channels=d,
                          attention_dropout=0.0)
    attn = SDPACoreAttention(config=cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(s, b, h, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(s, b, g, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(s, b, g, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    out = attn(q, k, v, None, attn_mask_type=AttnMaskType.causal)
    ref = _reference_attention(q, k, v, causal=True)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_fused_adamw_matches_foreach_on_cuda():
    from megatron_llm.training import optimizer as opt_mod

    def run(fused):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(1000, 33, device="cuda")),
              torch.nn.Parameter(torch.randn(7, device="cuda"))]
        opt = torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, foreach=True)

        class Wrapper:
            optimizer = opt

        if fused:
            opt_mod.use_fused_adamw(Wrapper(), "cuda")
        for i in range(3):
            for p in ps:
                p.grad = torch.cos(p.detach() * (i + 1))
            opt.step()
        if fused:
            assert all(g["fused"] for g in opt.param_groups)
            assert all(st["step"].device.type == "cuda" for st in opt.state.values())
        return [p.detach() for p in ps]

    for a, b in zip(run(True), run(False)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_grad_norm_on_device():
    from megatron_llm.training.optimizer import grad_norm

    ts = [torch.randn(4096, 512, device="cuda"), torch.randn(31, device="cuda", dtype=torch.bfloat16)]
    got = grad_norm(ts)
    assert got.device.type == "cuda" and got.shape == (1,)
    expected = torch.linalg.vector_norm(torch.cat([t.float().reshape(-1) for t in ts]))
    torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=0)
