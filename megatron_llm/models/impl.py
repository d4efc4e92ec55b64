"""--transformer-impl and the per-op fusion switches -> megatron-core TransformerConfig fields and a layer spec.

    local               megatron-core's own modules. On CUDA its own fusions where they run without TE/apex
                        (torch SwiGLU; fused softmax and wgrad accumulation through the extension modules of
                        megatron_llm.ops); RoPE fusion needs TE's kernel and stays off. On CPU everything unfused:
                        the reference the other implementations are compared with.
    fused               local + SDPA core attention + our RMSNorm, RoPE, SwiGLU, cross entropy (any device);
                        gradient-accumulation fusion on CUDA.
    transformer_engine  megatron-core's TE spec for a user's own TE install. Untested here: TE cannot be installed
                        on this project's machines.

Any model family builds its spec through layer_spec(impl) (the Llama builder in models/llama.py does).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Dict, List, Optional, Tuple

from megatron_llm.config.training import ImplConfig

IMPLS = ("local", "fused", "transformer_engine")


def te_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def resolve_transformer_impl(requested: Optional[str], device: str) -> str:
    if requested is None:
        if device != "cuda":
            return "local"
        return "transformer_engine" if te_available() else "fused"
    if requested not in IMPLS:
        raise ValueError(f"--transformer-impl {requested!r}: choose one of {', '.join(IMPLS)}")
    if requested == "transformer_engine" and not te_available():
        raise ValueError("--transformer-impl transformer_engine: transformer_engine does not import here; install "
                         "it or use --transformer-impl fused")
    if requested == "transformer_engine" and device != "cuda":
        raise ValueError("--transformer-impl transformer_engine needs --device cuda")
    return requested


def fusion_fields(impl: str, flags: ImplConfig, device: str) -> Tuple[Dict[str, Any], List[str]]:
    """TransformerConfig fusion fields for this impl and device, and one line per fusion the flags asked for but
    this impl/device does not do (for the start-up log)."""
    cuda = device == "cuda"
    off: List[str] = []
    if impl == "transformer_engine":
        fields = dict(masked_softmax_fusion=flags.masked_softmax_fusion,
                      bias_activation_fusion=flags.bias_swiglu_fusion, apply_rope_fusion=flags.rope_fusion,
                      cross_entropy_loss_fusion=flags.cross_entropy_loss_fusion, cross_entropy_fusion_impl="te",
                      gradient_accumulation_fusion=flags.gradient_accumulation_fusion)
        return fields, off
    if impl == "fused":
        fields = dict(masked_softmax_fusion=False,  # SDPA is the attention; no softmax kernel of its own
                      bias_activation_fusion=flags.bias_swiglu_fusion, apply_rope_fusion=flags.rope_fusion,
                      cross_entropy_loss_fusion=flags.cross_entropy_loss_fusion,
                      cross_entropy_fusion_impl="native",
                      gradient_accumulation_fusion=flags.gradient_accumulation_fusion and cuda)
        if flags.gradient_accumulation_fusion and not cuda:
            off.append("gradient accumulation fusion: CUDA only")
        return fields, off
    # local
    fields = dict(masked_softmax_fusion=flags.masked_softmax_fusion and cuda,
                  bias_activation_fusion=flags.bias_swiglu_fusion and cuda, apply_rope_fusion=False,
                  cross_entropy_loss_fusion=flags.cross_entropy_loss_fusion and cuda,
                  cross_entropy_fusion_impl="native",
                  gradient_accumulation_fusion=flags.gradient_accumulation_fusion and cuda)
    if not cuda:
        return fields, ["all fusions: the local implementation runs unfused on CPU (--transformer-impl fused "
                        "runs ours)"]
    if flags.rope_fusion:
        off.append("RoPE fusion: megatron-core's needs Transformer Engine; --transformer-impl fused has ours")
    return fields, off


# TransformerConfig field -> the extension module megatron-core imports for it (local / fused impls; TE brings its
# own kernels).
EXTENSION_MODULES = {"gradient_accumulation_fusion": "fused_weight_gradient_mlp_cuda",
                     "masked_softmax_fusion": "scaled_upper_triang_masked_softmax_cuda"}


def _importable(name: str) -> bool:
    import sys

    return name in sys.modules or importlib.util.find_spec(name) is not None


def missing_kernels(impl: str, fields: Dict[str, Any]) -> List[str]:
    """The fusions `fields` turns on whose megatron-core extension module is not importable (e.g. csrc/ not built
    on this machine)."""
    if impl == "transformer_engine":
        return []
    return [f for f, mod in EXTENSION_MODULES.items() if fields.get(f) and not _importable(mod)]


def prepare(impl: str, fields: Dict[str, Any]) -> None:
    """Make the kernels the fields name importable before the TransformerConfig and modules are built, and turn off
    (in `fields`) a fusion whose kernel is still missing: megatron-core would refuse to build the model."""
    if impl == "fused":
        from megatron_llm.models.fused_spec import install_fused_ops

        install_fused_ops()
    elif impl == "local" and any(fields.get(f) for f in EXTENSION_MODULES):
        from megatron_llm import ops

        ops.install_megatron_extension_modules()
    for f in missing_kernels(impl, fields):
        fields[f] = False


def recompute_fields(flags: ImplConfig) -> Dict[str, Any]:
    return dict(recompute_granularity=flags.recompute_granularity, recompute_method=flags.recompute_method,
                recompute_num_layers=flags.recompute_num_layers)


def layer_spec(impl: str):
    """The transformer layer spec of a Llama-family decoder for this impl."""
    if impl == "fused":
        from megatron_llm.models.fused_spec import fused_layer_spec

        return fused_layer_spec()
    if impl == "transformer_engine":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from megatron_llm.models.norms import RMSNorm

    # Our RMSNorm: it supports sequence parallelism, megatron-core's torch wrapper does not.
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.input_layernorm = RMSNorm
    spec.submodules.pre_mlp_layernorm = RMSNorm
    return spec


def final_norm(impl: str):
    if impl == "fused":
        from megatron_llm.models.fused_spec import norm_module

        return norm_module()
    if impl == "transformer_engine":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    from megatron_llm.models.norms import RMSNorm

    return RMSNorm


def describe(flags: ImplConfig, device: str) -> str:
    """One start-up line: the implementation, the fusions on, and why asked-for ones are off."""
    impl = resolve_transformer_impl(flags.transformer_impl, device)
    fields, off = fusion_fields(impl, flags, device)
    for f in missing_kernels(impl, fields):  # as prepare() found them when the model was built
        fields[f] = False
        off.append(f"{f}: {EXTENSION_MODULES[f]} not built here (megatron-llm ops says why)")
    on = [k for k, v in fields.items() if v is True]
    rec = flags.recompute_granularity or "none"
    if flags.recompute_granularity == "full":
        rec += f" ({flags.recompute_method}, {flags.recompute_num_layers} layers)"
    line = f"--transformer-impl {impl}: fusions on: {', '.join(on) or 'none'}; recompute: {rec}"
    return line + (f"; off: {'; '.join(off)}" if off else "")
