"""FusedResidualTransformerLayer (the fused spec's layer: the attention's residual add fused into the pre-MLP
RMSNorm) against megatron-core's own TransformerLayer built from the same submodules and weights: outputs, input and
parameter gradients in fp64, with and without linear biases, with hidden dropout in training (same RNG seed, same
mask), and the fused kernel is what computed the pre-MLP norm. Where megatron-core's order between the add and the
norm does not hold (layernorm recompute: built here, run only with Transformer Engine), the layer keeps
megatron-core's own add; and a norm asked of another tensor than the sum is computed afresh.
One fresh CPU process (it initialises megatron-core's parallel state)."""

from megatron_process import run


def test_fused_residual_layer_matches_megatron_transformer_layer():
    proc = run("""
        import copy
        from megatron.core.transformer import TransformerConfig
        from megatron.core.transformer.spec_utils import build_module
        from megatron.core.transformer.transformer_layer import TransformerLayer
        from megatron_llm.models.fused_residual_layer import FusedResidualTransformerLayer
        from megatron_llm.models.fused_spec import fused_layer_spec
        from megatron_llm.ops import modules
        from megatron_llm.ops.modules import FusedResidualRMSNorm, RMSNorm

        calls = []
        plain_forward = FusedResidualRMSNorm.forward
        def spy(self, x, residual=None):
            calls.append(residual is not None)
            return plain_forward(self, x, residual)
        FusedResidualRMSNorm.forward = spy

        def config(bias, dropout, recompute_norm=False):
            extra = dict(recompute_granularity="selective", recompute_modules=["layernorm"]) if recompute_norm else {}
            return TransformerConfig(num_layers=1, hidden_size=24, num_attention_heads=4, num_query_groups=2,
                                     ffn_hidden_size=20, gated_linear_unit=True,
                                     activation_func=torch.nn.functional.silu, normalization="RMSNorm",
                                     add_bias_linear=bias, hidden_dropout=dropout, attention_dropout=0.0,
                                     masked_softmax_fusion=False, bias_activation_fusion=False,
                                     params_dtype=torch.float64, layernorm_epsilon=1e-5, **extra)

        def forward_backward(layer, x, grad, seed):
            x = x.detach().clone().requires_grad_()
            torch.manual_seed(seed)
            out, _ = layer(x, attention_mask=None)
            out.backward(grad)
            return [out.detach(), x.grad] + [p.grad for _, p in sorted(layer.named_parameters())]

        cases = 0
        for bias, dropout in [(False, 0.0), (True, 0.0), (False, 0.2)]:
            tc = config(bias, dropout)
            spec = fused_layer_spec()
            ours = build_module(spec, config=tc, layer_number=1)
            assert type(ours) is FusedResidualTransformerLayer and ours.fuses_residual_norm
            ref_spec = copy.deepcopy(spec)
            ref_spec.module = TransformerLayer
            ref_spec.submodules.pre_mlp_layernorm = RMSNorm
            ref = build_module(ref_spec, config=tc, layer_number=1)
            g = torch.Generator().manual_seed(cases)
            with torch.no_grad():
                for (na, a), (nb, b) in zip(sorted(ours.named_parameters()), sorted(ref.named_parameters())):
                    assert na == nb, (na, nb)
                    b.copy_(torch.randn(a.shape, generator=g, dtype=a.dtype))
                    a.copy_(b)
            s, b_ = 7, 3
            # a non-contiguous input: [b, s, h] storage viewed as [s, b, h]
            x = torch.randn(b_, s, 24, generator=g, dtype=torch.float64).transpose(0, 1)
            grad = torch.randn(s, b_, 24, generator=g, dtype=torch.float64)
            ours.train(); ref.train()
            calls.clear()
            got = forward_backward(ours, x, grad, seed=10 + cases)
            assert calls == [True], calls  # the fused add + norm made the pre-MLP norm, once
            want = forward_backward(ref, x, grad, seed=10 + cases)
            assert len(got) == len(want)
            for a, r in zip(got, want):
                torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
            assert ours._normed is None
            cases += 1

        # layernorm recompute checkpoints the norm on its own (megatron-core needs TE to run it): not fused
        from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
        layer = build_module(fused_layer_spec(), config=config(False, 0.0, recompute_norm=True), layer_number=1)
        assert not layer.fuses_residual_norm and layer.self_attn_bda is get_bias_dropout_add

        # megatron-core handing the norm a tensor other than the sum it computed: the norm is computed afresh
        tc = config(False, 0.0)
        layer = build_module(fused_layer_spec(), config=tc, layer_number=1)
        bda = layer.self_attn_bda(True, False)
        a, r, other = (torch.randn(5, 2, 24, dtype=torch.float64) for _ in range(3))
        total = bda((a, None), r, 0.0)
        torch.testing.assert_close(total, a + r)
        out = layer._forward_pre_mlp_layernorm(other)
        torch.testing.assert_close(out, modules.rms_norm(other, layer.pre_mlp_layernorm.weight, 1e-5))
        print("cases", cases)
    """)
    assert "cases 3" in proc.stdout
