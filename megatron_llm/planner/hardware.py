"""What the time model needs to know about a GPU and its links, per GPU type, with sources.

Peaks come from perf/peaks.py (datasheet dense figures). The rest are documented defaults: HBM bandwidth and
capacity from the datasheets; achievable bus bandwidth of NCCL collectives from nccl-tests' definition of busbw
(docs: "bus bandwidth" = algbw x 2(n-1)/n for all-reduce); efficiency factors fitted once to the two published
tables in docs/planner.md and kept fixed. `plan --calibrate` replaces the matmul and collective figures with
measured ones (calibration.json).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Optional

from megatron_llm.perf.peaks import PEAKS, lookup_peak


@dataclass(frozen=True)
class GpuSpec:
    name: str  # key of perf.peaks.PEAKS
    peak_tflops: float  # dense, for the training dtype
    memory_gb: float  # usable by the allocator, GiB (capacity less CUDA context and NCCL buffers)
    hbm_gbps: float  # achievable HBM bandwidth, GB/s (~85% of the datasheet figure)
    nvlink_busbw_gbps: float  # NCCL all-reduce bus bandwidth inside one NVLink domain, GB/s
    nic_gbps_per_gpu: float  # achievable inter-node bandwidth per GPU (one HCA per GPU, "rail"), GB/s
    gemm_efficiency: float  # achieved / peak on a training step's GEMMs, sustained (fitted; docs/planner.md)
    attention_efficiency: float  # flash attention fwd+bwd, achieved / peak on the FLOPs it computes
    gemm_reference: float = 0.8  # one large square GEMM's efficiency the fitted gemm_efficiency goes with
    source: str = "defaults"


# Datasheet figures: memory (GB), HBM GB/s, NVLink GB/s (bidirectional, all links), HCA per GPU (Gb/s, DGX/HGX).
# gemm / attn: sustained efficiencies on a training step's GEMMs / flash attention, fitted once to the published
# tables (docs/planner.md) and kept fixed; gemm_ref: the efficiency of one large square GEMM on the same part
# (H100: 791 of 989 TFLOP/s measured at 8192^3, DESIGN.md section 4; A100: ~275 of 312 with cuBLAS), so that a
# calibration (which times a large GEMM here) scales the fitted figure by measured / gemm_ref.
_FAMILY = {
    # A100 SXM4 80GB: 80 GB HBM2e, 2,039 GB/s, NVLink 600 GB/s; DGX A100: 8x HDR 200 Gb/s compute HCAs.
    "A100": dict(memory=80, hbm=2039, nvlink=600, nic=200, gemm=0.72, attn=0.55, gemm_ref=0.88),
    # A800: A100 silicon with NVLink cut to 400 GB/s (datasheet); HCAs as A100 systems.
    "A800": dict(memory=80, hbm=2039, nvlink=400, nic=200, gemm=0.72, attn=0.55, gemm_ref=0.88),
    # H100 SXM5: 80 GB HBM3, 3.35 TB/s, NVLink 900 GB/s; DGX H100: 8x NDR 400 Gb/s.
    "H100": dict(memory=80, hbm=3350, nvlink=900, nic=400, gemm=0.58, attn=0.38, gemm_ref=0.80),
    # H800: NVLink cut to 400 GB/s.
    "H800": dict(memory=80, hbm=3350, nvlink=400, nic=400, gemm=0.58, attn=0.38, gemm_ref=0.80),
    # H200 SXM: 141 GB HBM3e, 4.8 TB/s, NVLink 900 GB/s.
    "H200": dict(memory=141, hbm=4800, nvlink=900, nic=400, gemm=0.58, attn=0.38, gemm_ref=0.80),
    "GH200": dict(memory=96, hbm=4000, nvlink=900, nic=400, gemm=0.75, attn=0.50, gemm_ref=0.80),
    "B200": dict(memory=180, hbm=8000, nvlink=1800, nic=400, gemm=0.75, attn=0.50, gemm_ref=0.80),
}
_DEFAULT_FAMILY = dict(memory=None, hbm=1000, nvlink=0, nic=100, gemm=0.6, attn=0.4, gemm_ref=0.8)

# One short alias per family for its SXM part with the most memory (the list).
ALIASES = {"a100": "A100 SXM4 80GB", "a800": "A800 SXM4 80GB", "h100": "H100 SXM", "h200": "H200 SXM",
           "h800": "H800 SXM"}

# Bus bandwidth NCCL reaches on a ring, as a fraction of the unidirectional link rate (nccl-tests all_reduce_perf
# on DGX A100 reports ~230 GB/s busbw over 300 GB/s per direction).
_LINK_EFFICIENCY = 0.78
_NIC_EFFICIENCY = 0.90


def _canon(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def resolve_gpu_type(text: str) -> str:
    """'A100 SXM4 80GB', 'a100-sxm4-80gb', 'h100' -> the key of perf.peaks.PEAKS; ValueError naming the choices."""
    if text.lower() in ALIASES:
        return ALIASES[text.lower()]
    want = _canon(text)
    for key in PEAKS:
        if _canon(key) == want:
            return key
    raise ValueError(f"--gpu-type {text!r}: unknown GPU; use one of {', '.join(PEAKS)} "
                     f"(case and separators free) or an alias: {', '.join(ALIASES)}")


def _memory_from_name(key: str) -> Optional[float]:
    m = re.search(r"(\d+)GB", key)
    return float(m.group(1)) if m else None


def gpu_spec(gpu_type: str, dtype: str = "bf16", inter_node_gbps: Optional[float] = None,
             gpus_per_node: int = 8, calibration: Optional[Dict] = None) -> GpuSpec:
    """The spec of a GPU type. inter_node_gbps: the node's inter-node bandwidth, Gbit/s, all HCAs together
    (DGX A100: 8 x 200 = 1600); default: one HCA per GPU at the family's rate."""
    key = resolve_gpu_type(gpu_type)
    peak = lookup_peak(key, dtype).tflops
    if peak is None:
        raise ValueError(f"--gpu-type {gpu_type!r}: {key} has no dense {dtype} peak on record")
    fam = _FAMILY.get(key.split()[0], _DEFAULT_FAMILY)
    memory = _memory_from_name(key) or fam["memory"] or 80.0
    nic = (inter_node_gbps / gpus_per_node if inter_node_gbps else fam["nic"]) / 8.0  # Gbit/s -> GB/s per GPU
    spec = GpuSpec(
        name=key, peak_tflops=peak,
        memory_gb=memory * 1e9 / 2 ** 30 - 2.0,  # datasheet GB -> GiB, less ~2 GiB context + NCCL buffers
        hbm_gbps=0.85 * fam["hbm"],
        nvlink_busbw_gbps=_LINK_EFFICIENCY * fam["nvlink"] / 2,
        nic_gbps_per_gpu=_NIC_EFFICIENCY * nic,
        gemm_efficiency=fam["gemm"], attention_efficiency=fam["attn"], gemm_reference=fam["gemm_ref"])
    if calibration and calibration.get("gpu") == key:
        spec = apply_calibration(spec, calibration)
    return spec


def apply_calibration(spec: GpuSpec, cal: Dict) -> GpuSpec:
    """Measured figures (plan --calibrate) replace the defaults they measure."""
    changes = {}
    if cal.get("matmul_tflops"):
        # A large GEMM measured here, relative to the one the defaults assume, scales the training figure.
        measured = cal["matmul_tflops"] / spec.peak_tflops
        changes["gemm_efficiency"] = min(1.0, spec.gemm_efficiency * measured / spec.gemm_reference)
    if cal.get("allreduce_busbw_gbps"):
        changes["nvlink_busbw_gbps"] = cal["allreduce_busbw_gbps"]
    if cal.get("hbm_gbps"):
        changes["hbm_gbps"] = cal["hbm_gbps"]
    return replace(spec, source=f"calibrated ({cal.get('measured_at', '?')})", **changes) if changes else spec


def calibration_path() -> Path:
    home = os.environ.get("MEGATRON_LLM_HOME") or os.path.join(os.path.expanduser("~"), ".megatron_llm")
    return Path(home) / "calibration.json"


def load_calibration(path: Optional[str] = None) -> Optional[Dict]:
    p = Path(path) if path else calibration_path()
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e}); delete it or re-run `megatron-llm plan --calibrate`") from e
