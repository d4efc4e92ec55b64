"""Profiler on a real GPU (the H100): tinyllama-1.1b preset, a few steps.

Checks the report's tokens/s and MFU against an independent timing of the same iterations (CUDA events recorded
by a separate callback around each step, FLOPs counted by hand here), and that NVML telemetry is real: samples
exist and the GPU drew more power and ran a faster SM clock while training than when idle just before.
"""

import json
import time

import pytest
import torch

from megatron_llm.launch.local import free_port
from megatron_llm.training.callbacks import TrainCallback

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

WARMUP, PROFILE, TRACE = 3, 7, (10, 10)  # iterations 4-9 measured; 10 is traced (excluded from throughput)


class CudaEventTimer(TrainCallback):
    """Independent timing: a CUDA event at the start and at the end of every step, on the current stream."""

    def __init__(self):
        self.events = {}

    def on_step_start(self, ctx, iteration):
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        self.events[iteration] = [start, None]

    def on_step_end(self, ctx, iteration, metrics):
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.events[iteration][1] = end

    def seconds(self, iteration):
        start, end = self.events[iteration]
        end.synchronize()
        return start.elapsed_time(end) / 1000.0


def _idle_nvml(index, seconds=2.0):
    """(idle power W, idle SM clock MHz, max SM clock MHz) of the GPU before the run."""
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    power, clock = [], []
    t_end = time.time() + seconds
    while time.time() < t_end:
        power.append(pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0)
        clock.append(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM))
        time.sleep(0.1)
    return min(power), min(clock), pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)


def test_tinyllama_profile_matches_independent_timing(tmp_path, monkeypatch):
    from megatron_llm.config.arguments import build_config, parse_run_args
    from megatron_llm.profiling.callback import ProfilerCallback
    from megatron_llm.profiling.telemetry import nvml_index_for_cuda_device
    from megatron_llm.training.pretrain import pretrain

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    idle_power, idle_clock, max_clock = _idle_nvml(nvml_index_for_cuda_device(0))

    # MBS 2: DESIGN.md section 4 measured megatron-core's local spec at 63.9 GB there (MBS 4 ran out of memory).
    # Synthetic tokens over TinyLlama's 32,000-entry vocabulary (DESIGN.md section 4), whatever tokenizer the
    # recipe names: the profile measures compute, and the hand count below needs the vocabulary size.
    args, values = parse_run_args(["--recipe", "tinyllama-1.1b", "--mock-data", "--bf16", "--device", "cuda",
                                   "--tokenizer-type", "NullTokenizer", "--vocab-size", "32000",
                                   "--micro-batch-size", "2", "--global-batch-size", "4",
                                   "--train-iters", str(WARMUP + PROFILE), "--eval-interval", "0"])
    cfg = build_config(values, args.recipe)
    cfg.checkpoint.save = None
    report = tmp_path / "report"
    prof = ProfilerCallback(str(report), WARMUP, PROFILE, trace_iters=TRACE, sample_interval_s=0.05)
    timer = CudaEventTimer()
    pretrain(cfg, [prof, timer])

    summary = json.loads((report / "summary.json").read_text())
    meta, s = summary["meta"], summary["summary"]
    measured = list(range(WARMUP + 1, TRACE[0]))
    assert s["measured_iterations"] == measured

    # Independent figures: CUDA-event time of the same iterations, FLOPs counted here from the model shape.
    m, seq = cfg.model, cfg.data.seq_length
    h, L, f = m.hidden_size, m.num_layers, m.ffn_hidden_size
    q, kv = m.num_attention_heads * m.head_dim, m.num_query_groups * m.head_dim
    V = m.vocab_size
    per_token = 3 * (L * (2 * h * (q + 2 * kv) + 2 * q * h + 6 * h * f + 4 * seq * q) + 2 * h * V)
    tokens = cfg.data.global_batch_size * seq
    event_s = sum(timer.seconds(i) for i in measured)
    tokens_per_s = tokens * len(measured) / event_s
    assert meta["peak_tflops"] is not None, meta["peak_description"]  # the test GPU must be in the table
    mfu = per_token * tokens * len(measured) / event_s / 1e12 / meta["peak_tflops"]
    assert s["tokens_per_s"] == pytest.approx(tokens_per_s, rel=0.03)
    assert s["mfu"] == pytest.approx(mfu, rel=0.03)

    # NVML: real samples while training, busier than idle
    (g,) = s["telemetry"]
    assert g["samples"] >= 3
    assert g["power_mean_w"] > idle_power + 30, (g["power_mean_w"], idle_power)
    # "Clock above idle": a GPU in its idle P-state runs the SM clock at a few hundred MHz, but the project's H100
    # measured 1980 MHz (its maximum) when idle too — its clocks are not lowered — and a power-capped GPU under
    # load runs *below* that. So the check is against the low idle P-state: above half the maximum SM clock.
    assert g["sm_clock_mean_mhz"] > 0.5 * max_clock, (g["sm_clock_mean_mhz"], idle_clock, max_clock)
    assert 0 < g["mem_max_gb"] < 200 and g["util_mean_pct"] > 50
    assert (report / "telemetry.png").exists()

    # GPU trace: kernels, not CPU ops; GEMMs among the top
    tr = s["trace"]
    assert tr["kind"] == "cuda kernels" and tr["top"]
    # cuBLAS on Hopper names its GEMMs nvjet_sm90_* (measured), older ones *gemm* / cutlass
    assert any(k in e["name"].lower() for e in tr["top"][:10] for k in ("gemm", "cutlass", "nvjet", "sm90"))
    # by family: GEMMs take the most time at this shape (88M of 105M forward FLOPs per token and layer) and the
    # fused spec (the CUDA default) ran our csrc kernels; the idle time lies within the traced span (how much of it
    # is idle is not asserted: the profiler's own recording slows the host of the traced step)
    families = {f["family"]: f for f in tr["families"]}
    assert max(families.values(), key=lambda f: f["total_ms"])["family"] == "GEMM", tr["families"]
    assert "ours (csrc/)" in families and "attention (SDPA)" in families, tr["families"]
    assert tr["kernel_span_ms"] > 0 and 0 <= tr["gpu_idle_ms"] < tr["kernel_span_ms"], tr
    md = (report / "report.md").read_text()
    print(md[: md.index("## Time per step")])
