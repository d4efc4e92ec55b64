"""Memory bandwidth per GPU (datasheet figures), for op microbenchmarks' GB/s against the device's HBM."""

from __future__ import annotations

from typing import Optional

from megatron_llm.perf.peaks import match_gpu

# GB/s (10^9 bytes/s), NVIDIA datasheets (same sources as peaks.py).
HBM_GBPS = {
    "H100 SXM": 3350.0, "H100 PCIe": 2000.0, "H100 NVL": 3900.0,
    "H200 SXM": 4800.0, "H200 NVL": 4800.0, "GH200": 4000.0, "H800 SXM": 3350.0,
    "A100 SXM4 80GB": 2039.0, "A100 SXM4 40GB": 1555.0, "A100 PCIe 80GB": 1935.0, "A100 PCIe 40GB": 1555.0,
}


def hbm_gbps(device_name: str) -> Optional[float]:
    """Datasheet memory bandwidth of the named GPU, or None when it is not in the table (not guessed)."""
    key = match_gpu(device_name)
    return HBM_GBPS.get(key) if key else None
