"""Dense peak TFLOP/s per GPU for MFU, looked up from the NVML device name — or an explicit "unknown device".

Vendor datasheets quote tensor-core throughput "with sparsity" (2:4 structured sparsity doubles it); training does
not use it, so every figure here is the DENSE peak: half the datasheet's starred number ("specifications 1/2 lower
without sparsity", datasheet footnote). Figures are at boost clock; a GPU held at lower clocks (power cap, thermal
throttling — see telemetry) cannot reach them, which is part of what MFU measures.

A GPU we do not know gets status "unknown_device" and no number: an MFU against a guessed peak is worse than none
(DESIGN.md section 7). --gpu-peak-tflops overrides the table. A CPU run has no MFU ("not_applicable"). MIG slices
report their parent's name; their peak is a fraction of it, so use --gpu-peak-tflops there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional

DTYPES = ("fp8", "bf16", "fp16", "tf32", "fp32")

# Datasheets (dense = half of the sparse tensor-core figure; fp32 is the non-tensor CUDA-core peak):
_H100_DS = "NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100), table 'Technical Specifications'"
_H200_DS = "NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200), 'Technical Specifications'"
_H800_DS = "NVIDIA H800 Tensor Core GPU datasheet (nvidia.cn/data-center/h800), 'Technical Specifications'"
_GH200_DS = "NVIDIA GH200 Grace Hopper Superchip datasheet (nvidia.com/en-us/data-center/grace-hopper-superchip)"
_A100_DS = "NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf)"
_A800_DS = "NVIDIA A800 Tensor Core GPU datasheet (nvidia.cn/data-center/a800), 'Specifications'"
_L40S_DS = "NVIDIA L40S GPU datasheet (nvidia.com/en-us/data-center/l40s)"
_L40_DS = "NVIDIA L40 GPU datasheet (nvidia.com/en-us/data-center/l40)"
_L4_DS = "NVIDIA L4 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/l4)"
_A10_DS = "NVIDIA A10 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/products/a10-gpu)"
_A30_DS = "NVIDIA A30 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/products/a30-gpu)"
_A40_DS = "NVIDIA A40 GPU datasheet (nvidia.com/en-us/data-center/a40)"
_B200_DS = "NVIDIA HGX B200 specifications (nvidia.com/en-us/data-center/hgx), per-system figures / 8 GPUs"
_GB200_DS = "NVIDIA GB200 NVL72 specifications (nvidia.com/en-us/data-center/gb200-nvl72), per-rack figures / 72 GPUs"
_V100_DS = "NVIDIA Tesla V100 GPU datasheet (tesla-volta-v100-datasheet-letter-fnl-web.pdf)"


@dataclass(frozen=True)
class GpuPeaks:
    name: str
    tflops: Dict[str, Optional[float]]  # dtype -> dense TFLOP/s; None: the dtype has no tensor-core path there
    source: str


def _hopper(fp32, tf32_sparse, bf16_sparse, fp8_sparse):
    return {"fp32": fp32, "tf32": tf32_sparse / 2, "bf16": bf16_sparse / 2, "fp16": bf16_sparse / 2,
            "fp8": fp8_sparse / 2}


def _ampere(fp32, tf32_sparse, bf16_sparse):
    return {"fp32": fp32, "tf32": tf32_sparse / 2, "bf16": bf16_sparse / 2, "fp16": bf16_sparse / 2, "fp8": None}


PEAKS: Dict[str, GpuPeaks] = {
    # H100 SXM5: FP32 67 TF; TF32 989*, BF16/FP16 1,979*, FP8 3,958* TF (* with sparsity)
    "H100 SXM": GpuPeaks("H100 SXM", _hopper(67, 989, 1979, 3958), _H100_DS),
    # H100 PCIe: FP32 51 TF; TF32 756*, BF16/FP16 1,513*, FP8 3,026*
    "H100 PCIe": GpuPeaks("H100 PCIe", _hopper(51, 756, 1513, 3026), _H100_DS),
    # H100 NVL (per GPU, 94 GB): FP32 60 TF; TF32 835*, BF16/FP16 1,671*, FP8 3,341*
    "H100 NVL": GpuPeaks("H100 NVL", _hopper(60, 835, 1671, 3341), _H100_DS),
    # H800 SXM5: FP32 67 TF; TF32 989*, BF16/FP16 1,979*, FP8 3,958* (FP64 and NVLink cut, tensor cores not)
    "H800 SXM": GpuPeaks("H800 SXM", _hopper(67, 989, 1979, 3958), _H800_DS),
    # H800 PCIe: FP32 51 TF; TF32 756*, BF16/FP16 1,513*, FP8 3,026*
    "H800 PCIe": GpuPeaks("H800 PCIe", _hopper(51, 756, 1513, 3026), _H800_DS),
    # H200 SXM: FP32 67 TF; TF32 989*, BF16/FP16 1,979*, FP8 3,958*
    "H200 SXM": GpuPeaks("H200 SXM", _hopper(67, 989, 1979, 3958), _H200_DS),
    # H200 NVL: FP32 60 TF; TF32 835*, BF16/FP16 1,671*, FP8 3,341*
    "H200 NVL": GpuPeaks("H200 NVL", _hopper(60, 835, 1671, 3341), _H200_DS),
    # GH200 (its Hopper GPU): FP32 67 TF; TF32 494 | 989*, BF16/FP16 990 | 1,979*, FP8 1,979 | 3,958*
    "GH200": GpuPeaks("GH200", _hopper(67, 989, 1979, 3958), _GH200_DS),
    # A100 SXM4 / PCIe, 40 and 80 GB (same tensor peaks): FP32 19.5 TF; TF32 156 | 312*, BF16/FP16 312 | 624*
    "A100 SXM4 40GB": GpuPeaks("A100 SXM4 40GB", _ampere(19.5, 312, 624), _A100_DS),
    "A100 SXM4 80GB": GpuPeaks("A100 SXM4 80GB", _ampere(19.5, 312, 624), _A100_DS),
    "A100 PCIe 40GB": GpuPeaks("A100 PCIe 40GB", _ampere(19.5, 312, 624), _A100_DS),
    "A100 PCIe 80GB": GpuPeaks("A100 PCIe 80GB", _ampere(19.5, 312, 624), _A100_DS),
    # A800 SXM4 / PCIe (A100 silicon, NVLink cut to 400 GB/s): FP32 19.5 TF; TF32 156 | 312*, BF16 312 | 624*
    "A800 SXM4 40GB": GpuPeaks("A800 SXM4 40GB", _ampere(19.5, 312, 624), _A800_DS),
    "A800 SXM4 80GB": GpuPeaks("A800 SXM4 80GB", _ampere(19.5, 312, 624), _A800_DS),
    "A800 PCIe 40GB": GpuPeaks("A800 PCIe 40GB", _ampere(19.5, 312, 624), _A800_DS),
    "A800 PCIe 80GB": GpuPeaks("A800 PCIe 80GB", _ampere(19.5, 312, 624), _A800_DS),
    # L40S: FP32 91.6 TF; TF32 183 | 366*, BF16/FP16 362.05 | 733*, FP8 733 | 1,466*
    "L40S": GpuPeaks("L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05, "fp8": 733.0}, _L40S_DS),
    # L40: FP32 90.5 TF; TF32 90.5 | 181*, BF16/FP16 181.05 | 362.1*, FP8 362 | 724*
    "L40": GpuPeaks("L40", {"fp32": 90.5, "tf32": 90.5, "bf16": 181.05, "fp16": 181.05, "fp8": 362.0}, _L40_DS),
    # L4: FP32 30.3 TF; TF32 120*, BF16/FP16 242*, FP8 485*
    "L4": GpuPeaks("L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0, "fp8": 242.5}, _L4_DS),
    # A10: FP32 31.2 TF; TF32 62.5 | 125*, BF16/FP16 125 | 250*
    "A10": GpuPeaks("A10", _ampere(31.2, 125, 250), _A10_DS),
    # A30: FP32 10.3 TF; TF32 82 | 165*, BF16/FP16 165 | 330*
    "A30": GpuPeaks("A30", _ampere(10.3, 165, 330), _A30_DS),
    # A40: FP32 37.4 TF; TF32 74.8 | 149.6*, BF16/FP16 149.7 | 299.4*
    "A40": GpuPeaks("A40", _ampere(37.4, 149.6, 299.4), _A40_DS),
    # B200 (HGX B200, 8 GPUs): FP32 600 TF; TF32 18 PF*, FP16/BF16 36 PF*, FP8 72 PF* -> per GPU, dense
    "B200": GpuPeaks("B200", {"fp32": 75.0, "tf32": 1125.0, "bf16": 2250.0, "fp16": 2250.0, "fp8": 4500.0},
                     _B200_DS),
    # GB200 NVL72 (72 GPUs): FP32 5,760 TF; TF32 180 PF*, FP16/BF16 360 PF*, FP8 720 PF* -> per GPU, dense
    "GB200": GpuPeaks("GB200", {"fp32": 80.0, "tf32": 1250.0, "bf16": 2500.0, "fp16": 2500.0, "fp8": 5000.0},
                      _GB200_DS),
    # V100 (Volta, no sparsity, no BF16/TF32/FP8 tensor cores): tensor FP16 SXM2 125, PCIe 112, V100S 130 TF;
    # FP32 15.7 / 14 / 16.4 TF
    "V100 SXM2": GpuPeaks("V100 SXM2", {"fp32": 15.7, "tf32": None, "bf16": None, "fp16": 125.0, "fp8": None},
                          _V100_DS),
    "V100 PCIe": GpuPeaks("V100 PCIe", {"fp32": 14.0, "tf32": None, "bf16": None, "fp16": 112.0, "fp8": None},
                          _V100_DS),
    "V100S PCIe": GpuPeaks("V100S PCIe", {"fp32": 16.4, "tf32": None, "bf16": None, "fp16": 130.0, "fp8": None},
                           _V100_DS),
}


def _tokens(device_name: str) -> list:
    """'NVIDIA A800-SXM4-80GB' -> ['A800', 'SXM4', '80GB']; vendor words dropped, case folded."""
    toks = [t for t in re.split(r"[\s\-_/]+", device_name.upper()) if t]
    return [t for t in toks if t not in ("NVIDIA", "TESLA", "TENSOR", "CORE", "GPU")]


def _memory(toks) -> Optional[str]:
    for t in toks:
        m = re.fullmatch(r"(\d+)G(B)?", t)
        if m:
            return m.group(1) + "GB"
    return None


def match_gpu(device_name: str) -> Optional[str]:
    """Key of PEAKS for an NVML/torch device name, or None when the name does not identify one entry.

    Variants with different peaks (H100 SXM / PCIe / NVL) are told apart by the words NVML puts in the name
    ("NVIDIA H100 80GB HBM3" is the SXM5 board, the PCIe and NVL boards say so). A name that names the family
    but not the variant is not guessed.
    """
    toks = _tokens(device_name or "")
    if not toks:
        return None
    family, rest = toks[0], set(toks[1:])
    form_sxm = any(t.startswith("SXM") for t in rest)
    form_pcie = "PCIE" in rest
    if family in ("GH200", "GB200", "B200", "L40S", "L40", "L4", "A10", "A30", "A40"):
        return family
    if family in ("H100", "H200", "H800"):
        if "NVL" in rest:
            return f"{family} NVL" if family != "H800" else None
        if form_pcie:
            return f"{family} PCIe" if family != "H200" else None
        # NVML names the SXM boards without a form factor: "NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA H800".
        bare = not (rest - {"80GB", "141GB"})
        if form_sxm or "HBM3" in rest or "HBM3E" in rest or (family in ("H200", "H800") and bare):
            return f"{family} SXM"
        return None
    if family in ("A100", "A800"):
        mem = _memory(rest)
        form = "SXM4" if form_sxm else "PCIe" if form_pcie else None
        key = f"{family} {form} {mem}"
        return key if key in PEAKS else None
    if family == "V100":
        if form_sxm and "SXM2" in rest:
            return "V100 SXM2"
        return "V100 PCIe" if form_pcie else None
    if family == "V100S":
        return "V100S PCIe"
    return None


@dataclass(frozen=True)
class PeakResult:
    """The peak used for MFU and where it came from. tflops is None unless status is 'table' or 'override'."""

    status: str  # "table" | "override" | "unknown_device" | "unsupported_dtype" | "not_applicable"
    tflops: Optional[float]
    dtype: str
    device_name: str = ""
    gpu: Optional[str] = None
    source: str = ""

    @property
    def applicable(self) -> bool:
        return self.tflops is not None

    def describe(self) -> str:
        if self.status == "table":
            return (f"{self.tflops:g} TFLOP/s dense {self.dtype} per GPU ({self.gpu}, NVML name "
                    f"'{self.device_name}'; source: {self.source})")
        if self.status == "override":
            return f"{self.tflops:g} TFLOP/s per GPU (--gpu-peak-tflops; device '{self.device_name}')"
        if self.status == "unknown_device":
            return (f"MFU not available: unknown device '{self.device_name}' (no dense peak on record; "
                    f"pass --gpu-peak-tflops)")
        if self.status == "unsupported_dtype":
            return f"MFU not available: {self.gpu} has no {self.dtype} tensor-core peak (pass --gpu-peak-tflops)"
        return f"MFU not applicable: {self.source or 'not a GPU run'}"


def lookup_peak(device_name: str, dtype: str) -> PeakResult:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    key = match_gpu(device_name)
    if key is None:
        return PeakResult("unknown_device", None, dtype, device_name)
    entry = PEAKS[key]
    value = entry.tflops.get(dtype)
    if value is None:
        return PeakResult("unsupported_dtype", None, dtype, device_name, key, entry.source)
    return PeakResult("table", float(value), dtype, device_name, key, entry.source)


def resolve_peak(device: str, device_name: str, dtype: str, override: Optional[float] = None) -> PeakResult:
    """The peak for MFU on this run. device: 'cuda' | 'cpu'. A CPU run has no MFU even with --gpu-peak-tflops:
    that flag is a GPU's peak, and dividing CPU throughput by it would be a meaningless number."""
    if device != "cuda":
        return PeakResult("not_applicable", None, dtype, device_name or device,
                          source=f"{device} run (MFU is defined against a GPU's dense peak)")
    if override:
        return PeakResult("override", float(override), dtype, device_name, match_gpu(device_name), "--gpu-peak-tflops")
    return lookup_peak(device_name, dtype)


def peak_tflops_for_device(device_name: str, dtype: str) -> Optional[float]:
    """Dense peak TFLOP/s of a GPU for a dtype, or None when unknown (no guess)."""
    return lookup_peak(device_name, dtype).tflops


def training_dtype(bf16: bool, fp16: bool, fp8: bool = False, allow_tf32: bool = False) -> str:
    """The dtype whose peak applies to a run. fp32 training runs on TF32 tensor cores only when PyTorch allows
    it (``torch.backends.cuda.matmul.allow_tf32``, passed in by the caller: this module does not import torch)."""
    if fp8:
        return "fp8"
    if bf16:
        return "bf16"
    if fp16:
        return "fp16"
    return "tf32" if allow_tf32 else "fp32"
