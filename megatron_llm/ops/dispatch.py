"""Per-call choice of implementation: a CUDA tensor and an extension built with CUDA -> the CUDA kernel; a CPU
tensor and a built extension -> the C++ CPU kernel; anything else -> the torch reference (ops/reference.py)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from . import build

OPS = ("rms_norm", "rms_norm_residual", "rope", "swiglu", "vocab_parallel_cross_entropy",
       "scaled_masked_softmax", "lightning_attention", "wgrad_gemm_accum")


def extension(*tensors: torch.Tensor):
    """The extension module to run these tensors with, or None for the torch reference."""
    if any(t.device.type not in ("cpu", "cuda") for t in tensors):
        return None
    ext, _ = build.load()
    if ext is None:
        return None
    if any(t.is_cuda for t in tensors) and not ext.with_cuda():
        return None
    return ext


def implementation(device: str) -> Tuple[str, str]:
    """(implementation, reason) the ops use for tensors on `device`."""
    ext, why = build.load()
    if ext is None:
        return "torch reference", why
    if device == "cuda":
        if ext.with_cuda():
            return "CUDA kernel", why
        return "torch reference", f"extension built without CUDA ({why})"
    return "C++ CPU kernel", why


def status(device: Optional[str] = None) -> List[Tuple[str, str, str]]:
    """[(op, implementation, reason)] for tensors on `device` (default: cuda when available, else cpu)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    impl, why = implementation(device)
    rows = []
    for op in OPS:
        if op == "wgrad_gemm_accum":  # a GEMM: ATen's on every device, the extension only provides the module name
            rows.append((op, "ATen GEMM (fp32 accumulate)", "megatron-core name registered by "
                         "install_megatron_extension_modules()"))
        else:
            rows.append((op, impl, f"{device}: {why}"))
    return rows
