"""GPU peak table: real NVML name strings map to the right board; unknown names get no number."""

import re
from pathlib import Path

import pytest

from megatron_llm.perf import peaks

# Name strings as NVML (nvidia-smi --query-gpu=name, torch.cuda.get_device_name) prints them.
REAL_NAMES = [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H800", "H800 SXM"),
    ("NVIDIA H800 PCIe", "H800 PCIe"),
    ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA GH200 480GB", "GH200"),
    ("NVIDIA GH200 144G HBM3e", "GH200"),
    ("NVIDIA A100-SXM4-40GB", "A100 SXM4 40GB"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM4 80GB"),
    ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
    ("NVIDIA A800-SXM4-80GB", "A800 SXM4 80GB"),
    ("NVIDIA A800 80GB PCIe", "A800 PCIe 80GB"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA L40", "L40"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA A10", "A10"),
    ("NVIDIA B200", "B200"),
    ("Tesla V100-SXM2-16GB", "V100 SXM2"),
    ("Tesla V100-PCIE-32GB", "V100 PCIe"),
    ("Tesla V100S-PCIE-32GB", "V100S PCIe"),
]


@pytest.mark.parametrize("name,key", REAL_NAMES)
def test_real_nvml_names(name, key):
    assert peaks.match_gpu(name) == key


@pytest.mark.parametrize("name", [
    "NVIDIA A10G",              # AWS board, no public datasheet: must not fall back to A10 or A100
    "NVIDIA A800 40GB Active",  # workstation A800, different clocks
    "NVIDIA H100",              # no variant: SXM and PCIe differ by 30%
    "NVIDIA GeForce RTX 4090",
    "Tesla V100-SXM3-32GB",
    "AMD Instinct MI300X",
    "",
])
def test_unknown_names_are_not_guessed(name):
    assert peaks.match_gpu(name) is None
    r = peaks.lookup_peak(name, "bf16")
    assert r.status == "unknown_device" and r.tflops is None and not r.applicable
    assert "unknown device" in r.describe() and "--gpu-peak-tflops" in r.describe()


def test_dense_values_are_half_the_sparse_datasheet_figures():
    # H100 SXM datasheet: BF16 1,979 TFLOPS with sparsity -> 989.5 dense; FP8 3,958 -> 1,979; TF32 989 -> 494.5.
    assert peaks.peak_tflops_for_device("NVIDIA H100 80GB HBM3", "bf16") == 989.5
    assert peaks.peak_tflops_for_device("NVIDIA H100 80GB HBM3", "fp8") == 1979.0
    assert peaks.peak_tflops_for_device("NVIDIA H100 80GB HBM3", "tf32") == 494.5
    assert peaks.peak_tflops_for_device("NVIDIA H100 PCIe", "bf16") == 756.5
    assert peaks.peak_tflops_for_device("NVIDIA A800-SXM4-80GB", "bf16") == 312.0


def test_every_entry_is_sane_and_cites_a_datasheet():
    for key, e in peaks.PEAKS.items():
        assert e.name == key
        assert set(e.tflops) == set(peaks.DTYPES)
        assert "datasheet" in e.source or "specifications" in e.source
        vals = e.tflops
        # Tensor-core ordering on every architecture: fp8 = 2 x bf16, bf16 = fp16, tf32 = bf16 / 2 (Ampere+).
        if vals["bf16"] is not None:
            assert vals["fp16"] == vals["bf16"]
            assert vals["tf32"] == pytest.approx(vals["bf16"] / 2, rel=0.02)  # datasheets round (L40S: 183 vs 362.05)
            assert vals["fp32"] < vals["tf32"] * 1.01
        if vals["fp8"] is not None:
            assert vals["fp8"] == pytest.approx(2 * vals["bf16"], rel=0.02)  # L40S: 733 vs 2 x 362.05


# Entries whose datasheets quote per-system petaFLOPs or have no BF16: figures worked out by hand here.
PER_SYSTEM_BF16 = {"B200": 36_000 / 8 / 2, "GB200": 360_000 / 72 / 2}  # PF* per system / GPUs / sparsity
VOLTA_FP16 = {"V100 SXM2": 125.0, "V100 PCIe": 112.0, "V100S PCIe": 130.0}


def _comment_bf16_dense(lines, key):
    """The dense BF16 figure of the datasheet comment above a PEAKS entry: quoted as 'dense | sparse*', or as
    'sparse*' alone (dense = half)."""
    i = next(n for n, line in enumerate(lines) if re.match(rf'\s*"{re.escape(key)}": GpuPeaks', line))
    j = i - 1
    while not lines[j].strip().startswith("#"):  # entries of one family share the comment above them
        j -= 1
    m = re.search(r"BF16(?:/FP16)?\s+(?:([\d.,]+)\s*\|\s*)?([\d.,]+)\*", lines[j])
    assert m, f"{key}: no 'BF16 ... N*' figure in its comment: {lines[j]}"
    dense, sparse = (float(g.replace(",", "")) if g else None for g in m.groups())
    return dense if dense is not None else sparse / 2


def test_table_values_are_the_quoted_datasheet_figures_halved():
    """The number used for MFU agrees with the datasheet figure written beside it (dense = sparse / 2)."""
    src = Path(peaks.__file__).read_text()
    lines = src[src.index("PEAKS: Dict"):src.index("def _tokens")].splitlines()
    for key, e in peaks.PEAKS.items():
        if key in PER_SYSTEM_BF16:
            assert e.tflops["bf16"] == PER_SYSTEM_BF16[key]
        elif key in VOLTA_FP16:
            assert e.tflops["fp16"] == VOLTA_FP16[key] and e.tflops["bf16"] is None
        else:
            assert e.tflops["bf16"] == pytest.approx(_comment_bf16_dense(lines, key), rel=1e-3), key


def test_unsupported_dtype_and_override_and_cpu():
    r = peaks.lookup_peak("Tesla V100-SXM2-32GB", "bf16")
    assert r.status == "unsupported_dtype" and r.tflops is None
    assert peaks.lookup_peak("Tesla V100-SXM2-32GB", "fp16").tflops == 125.0
    r = peaks.resolve_peak("cuda", "NVIDIA A10G", "bf16", override=140.0)
    assert r.status == "override" and r.tflops == 140.0
    r = peaks.resolve_peak("cuda", "NVIDIA A10G", "bf16")
    assert r.status == "unknown_device"
    r = peaks.resolve_peak("cpu", "", "fp32", override=140.0)
    assert r.status == "not_applicable" and r.tflops is None and "not applicable" in r.describe()
    r = peaks.resolve_peak("cuda", "NVIDIA H200", "bf16")
    assert r.status == "table" and r.tflops == 989.5 and "H200" in r.describe()
    with pytest.raises(ValueError):
        peaks.lookup_peak("NVIDIA H200", "int8")


def test_training_dtype():
    assert peaks.training_dtype(bf16=True, fp16=False) == "bf16"
    assert peaks.training_dtype(bf16=False, fp16=True) == "fp16"
    assert peaks.training_dtype(bf16=True, fp16=False, fp8=True) == "fp8"
    assert peaks.training_dtype(bf16=False, fp16=False, allow_tf32=False) == "fp32"
    assert peaks.training_dtype(bf16=False, fp16=False, allow_tf32=True) == "tf32"
    assert peaks.training_dtype(bf16=True, fp16=False, allow_tf32=True) == "bf16"  # TF32 matters for fp32 only
