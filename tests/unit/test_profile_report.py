"""ProfilerCallback + report, driven directly with synthetic step metrics (no trainer, no GPU), and the CPU trace."""

import csv
import dataclasses
import json
import os
from types import SimpleNamespace

import pytest
import torch

from megatron_llm.config.model import ModelConfig
from megatron_llm.config.training import DataConfig, LoggingConfig, OptimConfig, ParallelConfig, RunConfig
from megatron_llm.profiling import report as report_mod
from megatron_llm.profiling.callback import ProfilerCallback
from megatron_llm.profiling.telemetry import TelemetrySampler
from megatron_llm.profiling.trace import TraceWindow, parse_window
from megatron_llm.training.callbacks import TrainContext

PNG = b"\x89PNG\r\n\x1a\n"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class FakeNvml:
    NVML_CLOCK_SM, NVML_TEMPERATURE_GPU = 1, 0

    def __init__(self, state):
        self.state = state  # dict updated by the test: power_w, util, clock, throttle

    def nvmlInit(self): ...
    def nvmlShutdown(self): ...
    def nvmlDeviceGetCount(self): return 1
    def nvmlDeviceGetHandleByIndex(self, i): return i
    def nvmlDeviceGetName(self, h): return "NVIDIA H100 80GB HBM3"
    def nvmlDeviceGetUtilizationRates(self, h): return SimpleNamespace(gpu=self.state["util"])
    def nvmlDeviceGetMemoryInfo(self, h): return SimpleNamespace(used=60 * 2 ** 30)
    def nvmlDeviceGetPowerUsage(self, h): return int(self.state["power_w"] * 1000)
    def nvmlDeviceGetClockInfo(self, h, k): return self.state["clock"]
    def nvmlDeviceGetTemperature(self, h, k): return 55
    def nvmlDeviceGetCurrentClocksEventReasons(self, h): return self.state["throttle"]


class ManualSampler(TelemetrySampler):
    """Samples only when the test says so, on the test's clock."""

    def start(self):
        pass


def tinyllama_cfg(**parallel):
    # DESIGN.md section 4 shape
    m = ModelConfig(num_layers=22, hidden_size=2048, num_attention_heads=32, num_query_groups=4,
                    ffn_hidden_size=5632, vocab_size=32000, max_position_embeddings=2048)
    return RunConfig(model=m, data=DataConfig(seq_length=2048, micro_batch_size=4, global_batch_size=4 * 1),
                     optim=OptimConfig(bf16=True), parallel=ParallelConfig(**parallel), logging=LoggingConfig(),
                     recipe="tinyllama-1.1b")


TINYLLAMA_FLOPS_PER_TOKEN = 3 * (22 * (2 * 2048 * (2048 + 2 * 256) + 2 * 2048 ** 2 + 6 * 2048 * 5632
                                       + 4 * 2048 * 2048) + 2 * 2048 * 32000)

STEP_TIMES = [0.9, 0.5, 0.201, 0.207, 0.195, 0.199, 0.204]  # 2 warm-up steps, then 5 measured


def timers_for(step):
    # Realistic proportions for one GPU: forward 30%, backward 60%, optimizer 6%.
    return {"timer_forward_compute_s": 0.30 * step, "timer_backward_compute_s": 0.60 * step,
            "timer_forward_backward_s": 0.91 * step, "timer_optimizer_s": 0.06 * step,
            "timer_optimizer_inner_step_s": 0.05 * step}


def run_emulated_gpu(tmp_path, device_name="NVIDIA H100 80GB HBM3", peak_override=None):
    clock = Clock()
    state = {"power_w": 90.0, "util": 0, "clock": 345, "throttle": 0x1}
    sampler = ManualSampler(nvml=FakeNvml(state), clock=clock, interval_s=0.05)
    cfg = tinyllama_cfg()
    cfg.logging.gpu_peak_tflops = peak_override
    cb = ProfilerCallback(str(tmp_path / "report"), warmup_iters=2, profile_iters=5, clock=clock,
                          device_name=device_name, sampler_factory=lambda device: sampler)
    ctx = TrainContext(cfg=cfg, rank=0, world_size=1, device="cuda", vocab_size=32000)
    cb.on_train_start(ctx)
    for it, step in enumerate(STEP_TIMES, start=1):
        cb.on_step_start(ctx, it)
        measured = it > 2
        state.update(power_w=650.0 if measured else 300.0, util=100 if measured else 60,
                     clock=1980 if measured else 1500, throttle=0x4 if it == 5 else 0)
        for _ in range(4):  # four samples per step, inside it
            clock.t += step / 5
            sampler.sample_once()
        clock.t += step / 5
        cb.on_step_end(ctx, it, {"iteration_time_s": step, "lm_loss": 10.0 - it, **timers_for(step)})
    state.update(power_w=80.0, util=0, clock=345)
    clock.t += 1.0
    sampler.sample_once()  # after training: outside the measured window
    cb.on_train_end(ctx, {})
    return cb


def test_emulated_h100_report_numbers(tmp_path):
    run_emulated_gpu(tmp_path)
    out = tmp_path / "report"
    s = json.loads((out / "summary.json").read_text())["summary"]
    measured = STEP_TIMES[2:]
    tokens = 4 * 2048
    assert s["measured_iterations"] == [3, 4, 5, 6, 7]
    assert s["tokens_per_s"] == pytest.approx(tokens * 5 / sum(measured), rel=1e-12)
    tflops = TINYLLAMA_FLOPS_PER_TOKEN * tokens * 5 / sum(measured) / 1e12
    assert s["tflops_per_gpu"] == pytest.approx(tflops, rel=1e-12)
    assert s["mfu"] == pytest.approx(tflops / 989.5, rel=1e-12)
    assert s["hfu"] == pytest.approx(s["mfu"])  # no recompute configured
    assert s["step_time_s"]["median"] == pytest.approx(0.201)
    # breakdown: forward 30%, backward 60%, optimizer 6%, no comm on one GPU, the rest is "other"
    (row,) = s["breakdown"]
    mean_step = sum(measured) / 5
    assert row["forward"] == pytest.approx(0.30 * mean_step)
    assert row["backward"] == pytest.approx(0.60 * mean_step)
    assert row["optimizer"] == pytest.approx(0.06 * mean_step)
    assert row["pipeline_wait"] == 0 and row["dp_comm_exposed"] == 0
    assert row["other"] == pytest.approx(0.04 * mean_step)
    assert row["dp_comm_overlapped"] == 0.0  # DP = 1
    # telemetry over the measured window only: warm-up (300 W) and after-training (80 W) samples excluded
    (g,) = s["telemetry"]
    assert g["samples"] == 5 * 4
    assert g["power_mean_w"] == pytest.approx(650.0)
    assert g["sm_clock_min_mhz"] == 1980 and g["util_mean_pct"] == 100
    assert g["throttle_fraction"] == {"sw_power_cap": pytest.approx(4 / 20)}
    assert s["power_mean_w_per_gpu"] == pytest.approx(650.0)
    # energy per token: 650 W x measured time / tokens
    assert s["joules_per_token"] == pytest.approx(650.0 * sum(measured) / (5 * tokens), rel=1e-6)

    md = (out / "report.md").read_text()
    assert f"| tokens/s | {tokens * 5 / sum(measured):,.1f} |" in md  # the hand-computed figures, not summary.json's
    assert f"| MFU | {100 * tflops / 989.5:.1f}% |" in md
    assert "989.5 TFLOP/s dense bf16" in md and "H100 SXM" in md
    assert "full s x s attention counted" in md
    assert "sw_power_cap 20%" in md
    for png in ("step_time_mfu.png", "breakdown.png", "telemetry.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, png
        assert f"]({png})" in md
    rows = list(csv.DictReader((out / "iterations.csv").open()))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 8))
    assert [r["measured"] for r in rows] == ["False"] * 2 + ["True"] * 5
    assert float(rows[3]["mfu"]) == pytest.approx(TINYLLAMA_FLOPS_PER_TOKEN * tokens / 0.207 / 1e12 / 989.5)
    tele_rows = list(csv.DictReader((out / "telemetry.csv").open()))
    assert len(tele_rows) == 7 * 4 + 1


def test_traced_iterations_are_excluded_from_throughput(tmp_path):
    import dataclasses

    cb = run_emulated_gpu(tmp_path)
    meta = dataclasses.replace(cb.meta, trace_iters=[4, 5])
    s = report_mod.summarise(meta, cb.payloads)
    assert s["measured_iterations"] == [3, 6, 7] and s["traced_excluded"] == [4, 5]
    kept = [STEP_TIMES[i - 1] for i in (3, 6, 7)]
    assert s["tokens_per_s"] == pytest.approx(4 * 2048 * 3 / sum(kept))
    assert "excluded, under torch.profiler: 4, 5" in report_mod.render_markdown(meta, s, [])
    s = report_mod.summarise(dataclasses.replace(cb.meta, trace_iters=[3, 7]), cb.payloads)
    assert "every measured iteration was under torch.profiler" in s["error"]


def test_tensorboard_scalars_are_the_hand_computed_figures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_emulated_gpu(tmp_path)
    out = tmp_path / "report"
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    mfu = {e.step: e.value for e in acc.Scalars("profile/mfu")}
    tokens_per_s = {e.step: e.value for e in acc.Scalars("profile/tokens-per-sec")}
    assert sorted(mfu) == list(range(1, 8))
    for it, t in enumerate(STEP_TIMES, start=1):  # every step, warm-up included, from the emulated step times
        assert mfu[it] == pytest.approx(TINYLLAMA_FLOPS_PER_TOKEN * 4 * 2048 / t / 1e12 / 989.5, rel=1e-6)
        assert tokens_per_s[it] == pytest.approx(4 * 2048 / t, rel=1e-6)
    assert "telemetry/rank0-gpu0/power-w" in tags
    assert len(acc.Scalars("telemetry/rank0-gpu0/power-w")) == 7 * 4 + 1


def test_unknown_gpu_and_override(tmp_path):
    run_emulated_gpu(tmp_path, device_name="NVIDIA A10G")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "unknown device 'NVIDIA A10G'" in md
    assert "| MFU | n/a (no peak) |" in md
    s = json.loads((tmp_path / "report" / "summary.json").read_text())["summary"]
    assert s["mfu"] is None and s["tflops_per_gpu"] > 0
    run_emulated_gpu(tmp_path, device_name="NVIDIA A10G", peak_override=125.0)
    s = json.loads((tmp_path / "report" / "summary.json").read_text())["summary"]
    assert s["mfu"] == pytest.approx(s["tflops_per_gpu"] / 125.0)


def test_cpu_two_stage_pipeline_slowest_rank_and_breakdown(tmp_path):
    """Two ranks of a PP=2 CPU run: the step time is the slower rank's; the pipeline timers are pipeline wait;
    MFU is not applicable; no telemetry plot, and the report says why."""
    cfg = tinyllama_cfg(pipeline_model_parallel_size=2)
    cfg.model = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                            vocab_size=256, max_position_embeddings=64)
    cfg.data = DataConfig(seq_length=64, micro_batch_size=2, global_batch_size=8)
    cfg.optim = OptimConfig()
    out = str(tmp_path / "r")
    clock = Clock()
    cbs, ctxs = [], []
    for rank in range(2):
        cb = ProfilerCallback(out, warmup_iters=1, profile_iters=3, clock=clock)
        ctx = TrainContext(cfg=cfg, rank=rank, world_size=2, device="cpu", vocab_size=256)
        cb.on_train_start(ctx)
        cbs.append(cb)
        ctxs.append(ctx)
    times = {0: [1.0, 0.30, 0.32, 0.31], 1: [1.0, 0.31, 0.30, 0.33]}
    for it in range(1, 5):
        for rank in range(2):
            cbs[rank].on_step_start(ctxs[rank], it)
        clock.t += 0.3
        for rank in range(2):
            st = times[rank][it - 1]
            tm = {"timer_forward_compute_s": 0.1, "timer_backward_compute_s": 0.15, "timer_optimizer_s": 0.02}
            if rank == 0:
                tm["timer_backward_recv_s"] = 0.01
                tm["timer_forward_send_s"] = 0.005
            else:
                tm["timer_forward_recv_s"] = 0.02
                tm["timer_backward_send_s"] = 0.003
                tm["timer_embedding_grads_all_reduce_s"] = 0.004
            cbs[rank].on_step_end(ctxs[rank], it, {"iteration_time_s": st, **tm})
    payloads = []
    for rank in range(2):
        cbs[rank].sampler.stop()
        payloads.append(cbs[rank]._payload(ctxs[rank]))
    s = report_mod.write_report(cbs[0].meta, payloads, out)
    slowest = [0.31, 0.32, 0.33]
    assert s["tokens_per_s"] == pytest.approx(8 * 64 * 3 / sum(slowest))
    assert s["mfu"] is None and s["hfu"] is None
    r0, r1 = s["breakdown"]
    assert r0["pipeline_wait"] == pytest.approx(0.015) and r1["pipeline_wait"] == pytest.approx(0.023)
    assert r1["other_comm"] == pytest.approx(0.004) and r0["other_comm"] == 0
    assert r0["other"] == pytest.approx(sum(slowest) / 3 - 0.1 - 0.15 - 0.015 - 0.02)
    md = open(os.path.join(out, "report.md")).read()
    assert "| MFU | not applicable |" in md and "MFU not applicable: cpu run" in md
    assert "No telemetry: cpu run: no GPU to sample" in md
    assert "| 1 | - | 320.0 |" in md  # PP stage unknown without megatron-core's parallel state: "-"
    assert os.path.exists(os.path.join(out, "step_time_mfu.png"))
    assert not os.path.exists(os.path.join(out, "telemetry.png"))
    assert s["mem_kind"] == "host RSS" and s["mem_max_allocated_gb"] > 0


def test_no_measured_iterations_is_reported(tmp_path):
    cfg = tinyllama_cfg()
    cb = ProfilerCallback(str(tmp_path), warmup_iters=5, profile_iters=3)
    ctx = TrainContext(cfg=cfg, rank=0, world_size=1, device="cpu", vocab_size=32000)
    cb.on_train_start(ctx)
    for it in (1, 2):
        cb.on_step_start(ctx, it)
        cb.on_step_end(ctx, it, {"iteration_time_s": 0.1})
    cb.on_train_end(ctx, {})
    assert "no measured iterations" in (tmp_path / "report.md").read_text()


def test_timer_names_and_breakdown():
    assert report_mod.timer_values({"timer_forward-compute_s": 1.0, "timer_all_grads_sync_s": 2.0,
                                    "timer_x_s": None, "lm_loss": 3.0}) == \
        {"forward-compute": 1.0, "all-grads-sync": 2.0}
    b = report_mod.breakdown(1.0, {"forward-compute": 0.2, "backward-compute": 0.4, "optimizer": 0.15,
                                   "params-all-gather": 0.05, "all-grads-sync": 0.1,
                                   "backward-send-forward-recv": 0.03, "forward-backward": 0.8})
    assert b["optimizer"] == pytest.approx(0.10)  # params-all-gather runs inside optimizer.step
    assert b["dp_comm_exposed"] == pytest.approx(0.15)
    assert b["pipeline_wait"] == pytest.approx(0.03)
    assert sum(b.values()) == pytest.approx(1.0)
    assert report_mod.breakdown(1.0, {}) is None


def test_cpu_trace_window(tmp_path):
    tw = TraceWindow(2, 3, str(tmp_path), rank=0, device="cpu")
    a = torch.randn(128, 128)
    for it in range(1, 5):
        tw.step_start(it)
        assert tw.active == (2 <= it <= 3)
        for _ in range(3):
            a = torch.softmax(a @ a, dim=-1)
        tw.step_end(it)
    r = tw.result
    assert r is not None and r.kind == "cpu ops" and (r.first, r.last, r.iterations) == (2, 3, 2)
    trace = json.loads(open(r.trace_path).read())
    names = {e.get("name") for e in trace["traceEvents"] if e.get("cat") == "cpu_op"}
    assert "aten::mm" in names
    assert r.top and [e.total_ms for e in r.top] == sorted((e.total_ms for e in r.top), reverse=True)
    assert sum(e.percent for e in r.top) <= 100.0 + 1e-6
    mm = next(e for e in r.top if e.name == "aten::mm")
    assert mm.calls == 6  # 3 per iteration, 2 iterations


def test_parse_window():
    assert parse_window("5:6") == (5, 6)
    assert parse_window("4") == (4, 4)
    assert parse_window(None) is None
    for bad in ("6:5", "0:2", "a:b", "1:2:3"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_recompute_read_from_model_config_gives_hfu(tmp_path):
    """HFU counts the recomputation the model's megatron-core TransformerConfig asks for (DDP exposes it as
    .config); here full uniform recompute: hardware = model + one forward of every layer."""
    cfg = tinyllama_cfg()
    tc = SimpleNamespace(num_layers=22, recompute_granularity="full", recompute_method="uniform",
                         recompute_num_layers=1)
    cb = ProfilerCallback(str(tmp_path), warmup_iters=0, profile_iters=2, device_name="NVIDIA H100 80GB HBM3",
                          sampler_factory=lambda device: TelemetrySampler(disabled_reason="test"))
    ctx = TrainContext(cfg=cfg, rank=0, world_size=1, device="cuda", vocab_size=32000,
                       model=[SimpleNamespace(config=tc)])
    cb.on_train_start(ctx)
    for it in (1, 2):
        cb.on_step_start(ctx, it)
        cb.on_step_end(ctx, it, {"iteration_time_s": 0.25})
    cb.on_train_end(ctx, {})
    layer_fwd = 2 * 2048 * (2048 + 512) + 2 * 2048 ** 2 + 6 * 2048 * 5632 + 4 * 2048 * 2048
    tokens = 4 * 2048
    assert cb.meta.recompute == "full"
    assert cb.meta.hardware_flops_per_iteration - cb.meta.model_flops_per_iteration == 22 * layer_fwd * tokens
    s = cb.summary
    assert s["hfu"] / s["mfu"] == pytest.approx(1 + 22 * layer_fwd / TINYLLAMA_FLOPS_PER_TOKEN)
    assert "No telemetry: test" in (tmp_path / "report.md").read_text()


def test_report_without_matplotlib(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    run_emulated_gpu(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "No plots: matplotlib is not installed" in md and "| MFU |" in md
    assert not list((tmp_path / "report").glob("*.png"))


def test_comm_overlap_from_gpu_timeline(tmp_path):
    """Kernel intervals (us) on two streams, overlap worked out by hand:
    compute [0,100] [150,300] [300,320]; NCCL [80,170] [310,400] [390,420]; a memcpy [350,360] (not compute).
    comm union [80,170] [310,420] = 200 us; overlapped with compute: [80,100] + [150,170] + [310,320] = 50 us."""
    from megatron_llm.profiling.trace import comm_overlap, kernel_rows, kernels_from_chrome_trace

    def k(name, ts, dur):
        return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur}

    events = [k("sm90_xmma_gemm_bf16", 0, 100), k("flash_fwd_kernel", 150, 150), k("elementwise", 300, 20),
              k("ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL", 80, 90),
              k("ncclDevKernel_AllGather_RING_LL", 310, 90), k("ncclDevKernel_AllGather_RING_LL", 390, 30),
              {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 1000},
              # a copy-engine transfer during exposed communication hides none of it
              {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pinned -> Device)", "ts": 350, "dur": 10}]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": events}))
    kernels = kernels_from_chrome_trace(str(path))
    exposed, overlapped = comm_overlap(kernels)
    assert overlapped == pytest.approx(0.050) and exposed == pytest.approx(0.150)
    rows = kernel_rows(kernels)
    assert rows["ncclDevKernel_AllGather_RING_LL"] == [90.0, 30.0] and "aten::mm" not in rows

    # In the report: DP = 2, overlap on, TP = PP = 1 -> the column is the timeline's overlapped time per step
    meta = SimpleNamespace(dp=2, tp=1, pp=1, overlap_grad_reduce=True, device="cuda")
    tr = {"comm_overlapped_ms": 50.0, "iterations": 2}
    assert report_mod._overlapped(meta, {"trace": tr}, {"dp_comm_exposed": 0.01}) == pytest.approx(0.025)
    assert report_mod._overlapped(SimpleNamespace(**{**meta.__dict__, "tp": 2}), {"trace": tr}, {}) is None
    assert report_mod._overlapped(meta, {"trace": None}, {"dp_comm_exposed": 0.01}) is None


def test_gpu_kernels_by_family_and_idle_time(tmp_path):
    """One traced step as kineto names the GPU's work on an H100, durations (us) chosen by hand:
    GEMM 600 (nvjet 400 + xmma 200), attention 200 (cuDNN SDPA 100 + 50, flash 50), ours 90 (RMSNorm 60 + RoPE 30),
    optimizer 40, copies 25 (a memcpy 10 + a copy kernel 15), torch elementwise 35 (30 + 5), other 15: 1005 in all.
    Timeline: busy [0, 700], [750, 1000], [1100, 1145] -> span 1145, idle 50 + 100."""
    from megatron_llm.profiling.trace import gpu_idle, kernel_families, kernel_rows, kernels_from_chrome_trace

    work = [("kernel", "nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NNT", 0, 400),
            ("kernel", "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", 400, 200),
            ("kernel", "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128", 600, 100),
            ("kernel", "void at::native::vectorized_elementwise_kernel<4, FillFunctor<float>, ...>(...)", 690, 5),
            ("kernel", "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_1", 750, 50),
            ("kernel", "void flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4> >(Flash_fwd_params)", 800, 50),
            ("kernel", "void mllm::(anonymous namespace)::rms_fwd_kernel<__nv_bfloat16>(...)", 850, 60),
            ("kernel", "void mllm::(anonymous namespace)::rope_kernel<__nv_bfloat16, false>(...)", 910, 30),
            ("kernel", "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous "
                       "namespace)::TensorListMetadata<4>, FusedAdamMathFunctor<float, 4> >(...)", 940, 40),
            ("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", 980, 10),
            ("kernel", "void at::native::vectorized_elementwise_kernel<4, direct_copy_kernel_cuda, ...>(...)",
             985, 15),
            ("kernel", "void at::native::vectorized_elementwise_kernel<4, CUDAFunctor_add<c10::BFloat16>, ...>(...)",
             1100, 30),
            ("kernel", "void some_library_kernel<7>(...)", 1130, 15)]
    events = [{"ph": "X", "cat": cat, "name": n, "ts": ts, "dur": dur} for cat, n, ts, dur in work]
    events.append({"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 2000})  # host side: not GPU work
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": events}))
    kernels = kernels_from_chrome_trace(str(path))
    assert len(kernels) == len(work)
    families = kernel_families(kernel_rows(kernels))
    assert {f.family: (f.calls, f.total_ms) for f in families} == {
        "GEMM": (2, pytest.approx(0.6)), "attention (SDPA)": (3, pytest.approx(0.2)),
        "ours (csrc/)": (2, pytest.approx(0.09)), "optimizer / foreach": (1, pytest.approx(0.04)),
        "copies": (2, pytest.approx(0.025)), "torch elementwise / reductions": (2, pytest.approx(0.035)),
        "other kernels": (1, pytest.approx(0.015))}
    assert [f.family for f in families][:3] == ["GEMM", "attention (SDPA)", "ours (csrc/)"]  # largest first
    assert families[0].percent == pytest.approx(100 * 600 / 1005)
    assert sum(f.percent for f in families) == pytest.approx(100.0)
    span, idle = gpu_idle(kernels)
    assert span == pytest.approx(1.145) and idle == pytest.approx(0.150)
    assert gpu_idle([]) == (0.0, 0.0)

    # In the report: the idle share and the family table
    cb = run_emulated_gpu(tmp_path)
    s = report_mod.summarise(cb.meta, cb.payloads)
    s["trace"] = {"kind": "cuda kernels", "first": 7, "last": 7, "iterations": 1, "trace_path": str(path),
                  "total_ms": 1.005, "comm_ms": 0.0, "top": [], "kernel_span_ms": span, "gpu_idle_ms": idle,
                  "families": [dataclasses.asdict(f) for f in families]}
    md = report_mod.render_markdown(cb.meta, s, [])
    assert "ms from the first kernel to the last (13.1%)" in md  # 150 / 1145
    assert "| GEMM | 2 | 0.60 | 59.7 |" in md and "| optimizer / foreach | 1 | 0.04 | 4.0 |" in md
