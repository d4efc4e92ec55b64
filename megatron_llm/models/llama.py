"""Llama-family decoder on megatron-core: GPTModel + a layer spec (RMSNorm, RoPE, SwiGLU, GQA)."""

from __future__ import annotations

import functools
from typing import List, Optional

import torch

from megatron_llm.config.training import RunConfig
from megatron_llm.models import impl as impl_mod


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 128) -> int:
    """Megatron pads the vocabulary so every TP shard is a multiple of `divisible_by` rows (GEMM-friendly,
    --make-vocab-size-divisible-by x TP as in Megatron-LM). The padding depends on TP, so the padded rows must never
    matter: their logits are masked (mask_padded_logits) and their weights start and stay zero."""
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


def transformer_impl(cfg: RunConfig, device: Optional[str] = None) -> str:
    """The --transformer-impl this run builds (resolved for the device when not given)."""
    from megatron_llm.parallel.device import resolve_device

    return impl_mod.resolve_transformer_impl(cfg.impl.transformer_impl, device or resolve_device(cfg.launch.device))


def mask_padded_logits(logits: torch.Tensor, vocab_size: int, vocab_start: int = 0) -> torch.Tensor:
    """Logits whose last dim holds vocabulary entries [vocab_start, vocab_start + n), with the entries at or beyond
    the real `vocab_size` (padding rows) set to -inf, so that no softmax, loss or sampler ever gives them mass.
    Pass vocab_start = tp_rank * partition size for a vocab-parallel shard, 0 for gathered logits. Returns the
    input itself when it holds no padding."""
    n = logits.size(-1)
    first_padded = vocab_size - vocab_start
    if first_padded >= n:
        return logits
    padded = torch.arange(n, device=logits.device) >= max(first_padded, 0)
    return logits.masked_fill(padded, float("-inf"))


def transformer_config(cfg: RunConfig, device: str, timers=None):
    """megatron-core TransformerConfig for a Llama-family model."""
    from megatron.core.transformer import TransformerConfig

    m, p, o = cfg.model, cfg.parallel, cfg.optim
    impl = transformer_impl(cfg, device)
    fusions, _ = impl_mod.fusion_fields(impl, cfg.impl, device)
    impl_mod.prepare(impl, fusions)
    dtype = torch.bfloat16 if o.bf16 else torch.float16 if o.fp16 else torch.float32
    vl = p.num_layers_per_virtual_pipeline_stage
    tc = TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        ffn_hidden_size=m.ffn_hidden_size,
        kv_channels=m.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=m.add_qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_method_std,
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=(m.num_layers // (p.pipeline_model_parallel_size * vl)
                                              if vl else None),
        sequence_parallel=p.sequence_parallel,
        # p2p overlap exists for the interleaved schedule; it excludes batched p2p (megatron-core's rule).
        overlap_p2p_comm=bool(p.overlap_p2p_communication) and vl is not None,
        batch_p2p_comm=not (bool(p.overlap_p2p_communication) and vl is not None),
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=o.bf16,
        fp16=o.fp16,
        # Fusions per --transformer-impl and the per-op switches (models/impl.py).
        **fusions,
        **impl_mod.recompute_fields(cfg.impl),
        transformer_impl="transformer_engine" if impl == "transformer_engine" else "local",
        bias_dropout_fusion=False,
        persist_layer_norm=False,
        # Weights are initialised by init_weights() below, identically for any TP/PP layout.
        perform_initialization=False,
        use_cpu_initialization=device == "cpu",
        deallocate_pipeline_outputs=True,
        # The loss func returns (sum, token count): gradients are scaled by the global batch's token count in
        # finalize_model_grads, so the gradient is that of the token-weighted mean the log reports.
        calculate_per_token_loss=True,
        timers=timers,
    )
    return tc


def block_spec(tc, vp_stage: Optional[int], impl: str = "local"):
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    n = get_num_layers_to_build(tc, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[impl_mod.layer_spec(impl)] * n,
                                      layer_norm=impl_mod.final_norm(impl))


@functools.lru_cache(maxsize=None)
def _llama_model_class():
    """Defined on first use: megatron-core is imported only once the process is set up (CPU emulation first)."""
    from megatron.core.models.gpt import GPTModel

    class LlamaModel(GPTModel):
        """GPTModel whose padded vocabulary rows never take part in the softmax: masked in the loss (on every TP
        rank's vocab shard, before vocab-parallel cross entropy) and in the logits it returns without labels."""

        def __init__(self, *args, real_vocab_size: int, **kwargs):
            super().__init__(*args, **kwargs)
            self.real_vocab_size = real_vocab_size

        def _vocab_start(self, logits: torch.Tensor) -> int:
            if logits.size(-1) == self.vocab_size:  # gathered over TP (or TP1)
                return 0
            return self.pg_collection.tp.rank() * logits.size(-1)

        def compute_language_model_loss(self, labels, logits):
            logits = mask_padded_logits(logits, self.real_vocab_size, self._vocab_start(logits))
            return super().compute_language_model_loss(labels, logits)

        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            if self.post_process and kwargs.get("labels") is None and len(args) < 5:
                out = mask_padded_logits(out, self.real_vocab_size, self._vocab_start(out))
            return out

    return LlamaModel


def build_model_chunks(cfg: RunConfig, tc, vocab_size: int, real_vocab_size: Optional[int] = None,
                       impl: Optional[str] = None) -> List[torch.nn.Module]:
    """One model per virtual pipeline stage held by this rank (one chunk without interleaving). `vocab_size` is
    the padded vocabulary (the embedding's rows), `real_vocab_size` the tokenizer's (default: no padding); `impl`
    the --transformer-impl (default: resolved from the config for its device)."""
    from megatron.core import parallel_state

    GPTModel = _llama_model_class()
    impl = impl or transformer_impl(cfg)
    vp = tc.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vp or 1):
        stage = vp_stage if vp else None
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage)
        model = GPTModel(
            config=tc,
            transformer_layer_spec=block_spec(tc, stage, impl),
            vocab_size=vocab_size,
            max_sequence_length=cfg.model.max_position_embeddings,
            pre_process=pre,
            post_process=post,
            share_embeddings_and_output_weights=not cfg.model.untie_embeddings_and_output_weights,
            position_embedding_type="rope",
            rotary_base=int(cfg.model.rotary_base),
            vp_stage=stage,
            real_vocab_size=real_vocab_size or vocab_size,
        )
        if pre and cfg.model.use_stable_embedding:
            from megatron_llm.models.stable_embedding import attach

            attach(model.embedding, cfg.model.hidden_size, tc.params_dtype, tc.sequence_parallel)
        chunks.append(model)
    return chunks
