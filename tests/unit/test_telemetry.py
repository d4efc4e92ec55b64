"""NVML sampler and aggregation, driven by a fake NVML module (no GPU needed)."""

import math
import random
import time
from types import SimpleNamespace

import pytest

from megatron_llm.profiling import telemetry
from megatron_llm.profiling.telemetry import Sample, TelemetrySampler, aggregate


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakeNvml:
    """The subset of pynvml the sampler uses. Readings are functions of the fake clock, per device."""

    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, clock, n=2, power_w=None, util=None, throttle=None, mem_bytes=None, fail=None,
                 event_reasons=True, init_error=None, names=None):
        self.clock, self.n = clock, n
        self.power_w = power_w or (lambda i, t: 100.0 + i)
        self.util = util or (lambda i, t: 50)
        self.throttle = throttle or (lambda i, t: 0)
        self.mem_bytes = mem_bytes or (lambda i, t: 2 ** 30)
        self.fail = fail or (lambda i, t: False)
        self.init_error = init_error
        self.names = names or [b"NVIDIA H100 80GB HBM3"] * n
        self.shutdown_called = False
        if not event_reasons:  # older drivers/bindings only have the "throttle" spelling
            self.nvmlDeviceGetCurrentClocksEventReasons = None

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):
        self.shutdown_called = True

    def nvmlDeviceGetCount(self):
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetName(self, h):
        return self.names[h[1]]

    def _check(self, h):
        if self.fail(h[1], self.clock()):
            raise self.NVMLError("GPU is lost")

    def nvmlDeviceGetUtilizationRates(self, h):
        self._check(h)
        return SimpleNamespace(gpu=self.util(h[1], self.clock()), memory=0)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=self.mem_bytes(h[1], self.clock()), total=80 * 2 ** 30, free=0)

    def nvmlDeviceGetPowerUsage(self, h):
        return int(round(self.power_w(h[1], self.clock()) * 1000))  # milliwatts

    def nvmlDeviceGetClockInfo(self, h, kind):
        assert kind == self.NVML_CLOCK_SM
        return 1980 - 10 * h[1]

    def nvmlDeviceGetTemperature(self, h, kind):
        assert kind == self.NVML_TEMPERATURE_GPU
        return 60 + h[1]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self.throttle(h[1], self.clock())

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
        return self.throttle(h[1], self.clock())


def test_reader_units_and_names():
    clock = FakeClock()
    nv = FakeNvml(clock, n=1, power_w=lambda i, t: 412.345, mem_bytes=lambda i, t: 40 * 2 ** 30,
                  throttle=lambda i, t: 0x4 | 0x40, event_reasons=False, util=lambda i, t: 97)
    s = TelemetrySampler(nvml=nv, clock=clock)
    assert s.available and s.devices == [0] and s.names == {0: "NVIDIA H100 80GB HBM3"}
    s.sample_once()
    (x,) = s.samples
    assert x.power_w == pytest.approx(412.345, abs=1e-3)  # mW -> W
    assert x.mem_used_gb == 40.0                          # bytes -> GiB
    assert x.util_pct == 97 and x.sm_clock_mhz == 1980 and x.temp_c == 60
    assert telemetry.decode_throttle(x.throttle) == ["sw_power_cap", "hw_thermal_slowdown"]
    s.stop()
    assert nv.shutdown_called


def test_unavailable_nvml_is_a_noop_with_a_reason():
    nv = FakeNvml(FakeClock(), init_error=RuntimeError("NVML Shared Library Not Found"))
    s = TelemetrySampler(nvml=nv)
    assert not s.available and "NVML Shared Library Not Found" in s.reason
    s.start()
    s.sample_once()
    s.stop()
    assert s.samples == []
    cpu = telemetry.sampler_for_rank("cpu")
    assert not cpu.available and "cpu run" in cpu.reason


def test_real_pynvml_on_a_machine_without_driver():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU driver; the GPU test covers real NVML")
    s = TelemetrySampler()
    assert not s.available and "NVML" in s.reason


def test_aggregation_properties_random():
    """For power linear in time the trapezoidal energy is exact, so it can be checked against the closed-form
    integral; counts, fractions and means are checked against the generating values; the result must not depend
    on sample order, and samples outside the window must not change it."""
    rng = random.Random(1234)
    for trial in range(200):
        clock = FakeClock()
        n = rng.randint(1, 4)
        a = [rng.uniform(50, 400) for _ in range(n)]
        b = [rng.uniform(-5, 5) for _ in range(n)]
        masks = {}
        utils = {}

        def throttle(i, t):
            return masks.setdefault((i, t), rng.choice([0, 0x1, 0x4, 0x4 | 0x20, 0x8]))

        def util(i, t):
            return utils.setdefault((i, t), rng.randint(0, 100))

        nv = FakeNvml(clock, n=n, power_w=lambda i, t: a[i] + b[i] * t, throttle=throttle, util=util)
        devices = sorted(rng.sample(range(n), rng.randint(1, n)))
        s = TelemetrySampler(devices=devices, nvml=nv, clock=clock)
        times = []
        for _ in range(rng.randint(1, 40)):
            clock.t += rng.uniform(0.01, 0.5)
            times.append(clock.t)
            s.sample_once()
        t0 = rng.uniform(0, times[-1])
        t1 = rng.uniform(t0, times[-1] + 0.5)
        inside = [t for t in times if t0 <= t <= t1]
        stats = aggregate(s.samples, t0, t1, s.names)
        if not inside:
            assert stats == {}
            continue
        assert sorted(stats) == devices
        for i in devices:
            g = stats[i]
            assert g.samples == len(inside)
            assert g.duration_s == pytest.approx(inside[-1] - inside[0])
            tf, tl = inside[0], inside[-1]
            if len(inside) > 1:
                exact = a[i] * (tl - tf) + b[i] * (tl ** 2 - tf ** 2) / 2
                assert g.energy_j == pytest.approx(exact, rel=1e-5, abs=1e-2)  # mW rounding
            else:
                assert math.isnan(g.energy_j)
            assert g.power_mean_w == pytest.approx(a[i] + b[i] * sum(inside) / len(inside), abs=1e-3)
            assert g.util_mean_pct == pytest.approx(sum(utils[(i, t)] for t in inside) / len(inside))
            for bit, name in telemetry.THROTTLE_REASONS.items():
                share = sum(1 for t in inside if masks[(i, t)] & bit) / len(inside)
                assert g.throttle_fraction.get(name, 0.0) == pytest.approx(share)
            assert g.sm_clock_min_mhz <= g.sm_clock_mean_mhz <= g.sm_clock_max_mhz
            assert g.name == "NVIDIA H100 80GB HBM3"
        shuffled = s.samples
        rng.shuffle(shuffled)
        outliers = [Sample(t0 - 1.0, devices[0], 100, 99, 9999, 1, 99, 0xFF),
                    Sample(t1 + 1.0, devices[-1], 100, 99, 9999, 1, 99, 0xFF)]
        assert aggregate(shuffled + outliers, t0, t1, s.names) == stats


def test_failed_reads_are_counted_not_fatal():
    clock = FakeClock()
    nv = FakeNvml(clock, n=2, fail=lambda i, t: i == 1 and t < 2.5)
    s = TelemetrySampler(nvml=nv, clock=clock)
    for k in range(5):
        clock.t = float(k)
        s.sample_once()
    assert s.errors == 3
    stats = aggregate(s.samples)
    assert stats[0].samples == 5 and stats[1].samples == 2


def test_background_thread_samples_and_stops():
    nv = FakeNvml(time.perf_counter, n=1)
    s = TelemetrySampler(nvml=nv, interval_s=0.01)
    s.start()
    deadline = time.time() + 10  # a loaded CI machine may schedule the thread late; wait for 5 samples
    while len(s.samples) < 5 and time.time() < deadline:
        time.sleep(0.01)
    s.stop()
    got = s.samples
    assert len(got) >= 5
    assert all(x.t < y.t for x, y in zip(got, got[1:]))
    time.sleep(0.05)
    assert len(s.samples) == len(got)  # stopped means stopped


def test_nvml_index_mapping(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert telemetry.nvml_index_for_cuda_device(2) == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert telemetry.nvml_index_for_cuda_device(0) == 3
    assert telemetry.nvml_index_for_cuda_device(1) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8a1b,GPU-77cd")
    assert telemetry.nvml_index_for_cuda_device(1) == 1
