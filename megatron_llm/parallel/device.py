"""Which device a run uses: --device, or CUDA when a GPU is visible."""

from __future__ import annotations

from typing import Optional


def resolve_device(requested: Optional[str]) -> str:
    if requested == "cpu":  # decided without importing torch (~1 s): the launcher of a CPU run never needs it
        return "cpu"
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is visible; use --device cpu for a CPU run")
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")
