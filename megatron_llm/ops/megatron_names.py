"""Stand-ins for the apex extension modules megatron-core imports by name, so its `gradient_accumulation_fusion`
and `masked_softmax_fusion` flags work without apex:

- fused_weight_gradient_mlp_cuda.wgrad_gemm_accum_fp32 / _fp16(total_input, grad_output, main_grad):
  main_grad += grad_output^T @ total_input (tensor_parallel/layers.py), one GEMM accumulating in fp32 on CUDA
  (torch.addmm with out_dtype), an fp32 upcast GEMM on the CPU;
- scaled_upper_triang_masked_softmax_cuda / scaled_masked_softmax_cuda / scaled_softmax_cuda with the
  forward/backward(+ get_batch_per_block) signatures of fusions/fused_softmax.py, on our softmax kernels.

megatron-core's layers.py reads `fused_weight_gradient_mlp_cuda` when it is first imported, so the modules go into
sys.modules, and, when layers.py was imported already, its module globals are updated too.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Dict, List, Optional

import torch

from . import reference
from .dispatch import extension

NAMES = ("fused_weight_gradient_mlp_cuda", "scaled_upper_triang_masked_softmax_cuda", "scaled_masked_softmax_cuda",
         "scaled_softmax_cuda")


_fp32_out_gemm = True


def wgrad_gemm_accum(total_input: torch.Tensor, grad_output: torch.Tensor, main_grad: torch.Tensor) -> None:
    x = total_input.reshape(-1, total_input.shape[-1])
    g = grad_output.reshape(-1, grad_output.shape[-1])
    global _fp32_out_gemm
    if main_grad.is_cuda and main_grad.dtype == torch.float32 and x.dtype != torch.float32:
        if _fp32_out_gemm:
            try:  # one GEMM: low-precision inputs, fp32 accumulate into main_grad in place
                torch.addmm(main_grad, g.t(), x, out_dtype=torch.float32, out=main_grad)
                return
            except (RuntimeError, TypeError):  # a torch without addmm(out_dtype=) on this GPU
                _fp32_out_gemm = False
        # A low-precision GEMM, its product added in fp32: what megatron-core does without the fusion. Upcasting the
        # inputs instead would run the weight-gradient GEMMs (a third of the FLOPs) at fp32 speed.
        main_grad.add_(torch.mm(g.t(), x))
    elif main_grad.is_cuda and x.dtype == main_grad.dtype:
        main_grad.addmm_(g.t(), x)
    else:
        reference.wgrad_accumulate(total_input, grad_output, main_grad)


def softmax_forward(inputs: torch.Tensor, mask: Optional[torch.Tensor], scale, causal: bool) -> torch.Tensor:
    scale = float(scale)
    ext = extension(inputs)
    if ext is None:
        return reference.scaled_masked_softmax(inputs, mask, scale, causal)
    sk = inputs.shape[-1]
    sq = inputs.shape[-2]
    heads = inputs.shape[1] if inputs.dim() == 4 else 1
    if mask is not None:
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, inputs.shape[0]) or \
                tuple(mask.shape[2:]) != (sq, sk):
            return reference.scaled_masked_softmax(inputs, mask, scale, causal)
        mask_u8 = mask.to(torch.uint8).contiguous()
    else:
        mask_u8 = torch.empty(0, dtype=torch.uint8, device=inputs.device)
    return ext.softmax_fwd(inputs.contiguous(), mask_u8, heads, scale, causal)


def softmax_backward(output_grads: torch.Tensor, softmax_results: torch.Tensor, scale) -> torch.Tensor:
    ext = extension(output_grads)
    if ext is None:
        return reference.softmax_backward(output_grads, softmax_results, float(scale))
    return ext.softmax_bwd(output_grads.contiguous(), softmax_results.contiguous(), float(scale))


def _batch_per_block(sq, sk, b, np):  # our kernels take any batch split: no divisibility constraint
    return 1


def build_modules() -> Dict[str, types.ModuleType]:
    def module(name: str, **functions) -> types.ModuleType:
        mod = types.ModuleType(name, f"megatron_llm stand-in for apex's {name} (megatron_llm/ops/megatron_names.py)")
        for key, fn in functions.items():
            setattr(mod, key, fn)
        return mod

    return {
        "fused_weight_gradient_mlp_cuda": module(
            "fused_weight_gradient_mlp_cuda", wgrad_gemm_accum_fp32=wgrad_gemm_accum,
            wgrad_gemm_accum_fp16=wgrad_gemm_accum),
        "scaled_upper_triang_masked_softmax_cuda": module(
            "scaled_upper_triang_masked_softmax_cuda",
            forward=lambda inputs, scale: softmax_forward(inputs, None, scale, True), backward=softmax_backward),
        "scaled_masked_softmax_cuda": module(
            "scaled_masked_softmax_cuda", forward=lambda inputs, mask, scale: softmax_forward(inputs, mask, scale,
                                                                                              False),
            backward=softmax_backward, get_batch_per_block=_batch_per_block),
        "scaled_softmax_cuda": module(
            "scaled_softmax_cuda", forward=lambda inputs, scale: softmax_forward(inputs, None, scale, False),
            backward=softmax_backward),
    }


def install_megatron_extension_modules(force: bool = False) -> List[str]:
    """Register the stand-ins under megatron-core's names when our extension is built (or `force`); a module
    someone else installed (real apex) is left alone. Returns the names registered."""
    from . import build

    if not force and build.load()[0] is None:
        return []
    installed = []
    for name, mod in build_modules().items():
        existing = sys.modules.get(name)
        if existing is not None and not (existing.__doc__ or "").startswith("megatron_llm"):
            continue  # real apex, imported already
        if existing is None and importlib.util.find_spec(name) is not None:
            continue  # real apex, importable
        sys.modules[name] = mod
        installed.append(name)
    layers = sys.modules.get("megatron.core.tensor_parallel.layers")
    if layers is not None and "fused_weight_gradient_mlp_cuda" in installed:
        layers.fused_weight_gradient_mlp_cuda = sys.modules["fused_weight_gradient_mlp_cuda"]
        layers._grad_accum_fusion_available = True
    return installed
