"""Fused ops (the Python side of csrc/): RMSNorm (+ residual add), RoPE, SwiGLU, vocab-parallel cross entropy, and
stand-ins for the apex modules megatron-core imports by name. Each call runs the CUDA kernel for CUDA tensors and the
C++ CPU kernel for CPU tensors when the extension is built (ops/build.py), else the torch reference
(ops/reference.py); MEGATRON_LLM_NO_EXT=1 forces the reference. `megatron-llm ops` prints which and why."""

from . import modules
from .cross_entropy import vocab_parallel_cross_entropy
from .dispatch import status
from .functions import rms_norm, rms_norm_residual, rope, swiglu
from .megatron_names import install_megatron_extension_modules

__all__ = ["rms_norm", "rms_norm_residual", "rope", "swiglu", "vocab_parallel_cross_entropy", "modules", "status",
           "install_megatron_extension_modules"]
