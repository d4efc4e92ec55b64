"""Lightning attention on the GPU in bf16 against the fp64 parallel reference (skipped without CUDA): the csrc/ CUDA
kernel, which must build here (a CUDA build of the extension is part of what this checks)."""

import pytest
import torch

from megatron_llm.ops import build
from megatron_llm.ops.linear_attention import layer_slopes, linear_attention_lightning, linear_attention_parallel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("n", [1000, 4096])
def test_lightning_bf16_matches_reference(n):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k = (torch.randn(2, 8, n, 64, device="cuda", generator=g) * 0.3 for _ in range(2))
    v = torch.randn(2, 8, n, 64, device="cuda", generator=g)
    slopes = layer_slopes(8, 3, 24).cuda()
    ref = linear_attention_parallel(q.double(), k.double(), v.double(), slopes)
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    ext, why = build.load()
    assert ext is not None and ext.with_cuda(), f"no CUDA build of the csrc extension: {why}"
    out = linear_attention_lightning(qb, kb, vb, slopes)
    assert type(out.grad_fn).__name__ == "_LightningKernelBackward", "the CUDA kernel did not run"
    assert out.dtype == torch.bfloat16
    rel = (out.double() - ref).norm() / ref.norm()
    assert rel < 1e-2, rel
    out.float().sum().backward()
    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    linear_attention_parallel(qr, kr, vr, slopes).sum().backward()
    for got, want in zip((qb.grad, kb.grad, vb.grad), (qr.grad, kr.grad, vr.grad)):
        assert (got.double() - want).norm() / want.norm() < 2e-2
