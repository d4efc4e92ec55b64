"""SDPACoreAttention against megatron-core's own DotProductAttention (the local spec's core attention): same
inputs, same outputs and gradients in fp64 (causal, no mask, GQA, odd sizes, non-contiguous inputs); and a clear
error for what it does not support. One fresh CPU process (it initialises megatron-core's parallel state)."""

from megatron_process import run


def test_sdpa_matches_megatron_dot_product_attention():
    proc = run("""
        from megatron.core.transformer import TransformerConfig
        from megatron.core.transformer.dot_product_attention import DotProductAttention
        from megatron.core.transformer.enums import AttnMaskType
        from megatron_llm.models.sdpa_attention import SDPACoreAttention

        cases = 0
        for heads, groups, d, s, b in [(4, 2, 8, 13, 3), (6, 6, 5, 7, 2), (8, 1, 16, 33, 1)]:
            tc = TransformerConfig(num_layers=1, hidden_size=heads * d, num_attention_heads=heads,
                                   num_query_groups=groups, kv_channels=d, attention_dropout=0.0,
                                   masked_softmax_fusion=False, params_dtype=torch.float64)
            for mask in (AttnMaskType.causal, AttnMaskType.no_mask):
                ref = DotProductAttention(tc, 1, mask, "self")
                ours = SDPACoreAttention(config=tc, layer_number=1, attn_mask_type=mask, attention_type="self",
                                         cp_comm_type=None, softmax_scale=None, pg_collection=None)
                g = torch.Generator().manual_seed(cases)
                # non-contiguous: [b, s, h, d] storage viewed as [s, b, h, d]
                q = torch.randn(b, s, heads, d, generator=g, dtype=torch.float64).transpose(0, 1)
                k = torch.randn(b, s, groups, d, generator=g, dtype=torch.float64).transpose(0, 1)
                v = torch.randn(b, s, groups, d, generator=g, dtype=torch.float64).transpose(0, 1)
                grad = torch.randn(s, b, heads * d, generator=g, dtype=torch.float64)
                outs = []
                for mod in (ref, ours):
                    # the reference views its inputs, so it gets contiguous copies; ours the strided originals
                    qq, kk, vv = (t.detach().clone(memory_format=torch.contiguous_format) if mod is ref else t.detach() for t in (q, k, v))
                    qq, kk, vv = (t.requires_grad_() for t in (qq, kk, vv))
                    # megatron-core's local attention needs the causal mask tensor when its fused kernel is off
                    am = (torch.triu(torch.ones(s, s, dtype=torch.bool), 1)[None, None]
                          if mask == AttnMaskType.causal and mod is ref else None)
                    out = mod(qq, kk, vv, am, attn_mask_type=mask)
                    out.backward(grad)
                    outs.append((out.detach(), qq.grad, kk.grad, vv.grad))
                for a, r in zip(outs[1], outs[0]):
                    assert a.shape == r.shape, (a.shape, r.shape)
                    torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
                cases += 1

        ours = SDPACoreAttention(tc, 1, AttnMaskType.causal, "self")
        for bad, kw in [(AttnMaskType.padding, {}), (AttnMaskType.causal, {"attention_bias": torch.zeros(1)})]:
            try:
                ours(q, k, v, None, attn_mask_type=bad, **kw)
            except ValueError as e:
                msg = str(e)
                assert "does not support" in msg and "--transformer-impl local" in msg, msg
                if bad == AttnMaskType.padding:
                    assert "'padding'" in msg, msg
            else:
                raise AssertionError("no error for an unsupported input")
        try:
            SDPACoreAttention(tc, 1, AttnMaskType.arbitrary, "self")
        except ValueError as e:
            assert "'arbitrary'" in str(e)
        else:
            raise AssertionError("no error for an unsupported mask type at construction")
        print("cases", cases)
    """)
    assert "cases 6" in proc.stdout
