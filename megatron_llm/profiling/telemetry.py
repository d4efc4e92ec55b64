"""GPU telemetry: NVML sampled in a background thread, aggregated per GPU over a time window.

What NVML gives (nvidia-ml-py's pynvml, the same library nvidia-smi uses):
  util_pct      nvmlDeviceGetUtilizationRates().gpu — percent of the last sample period in which at least one
                kernel ran on the GPU. It is "busy time", not SM occupancy: a single tiny kernel reads 100%.
                (True SM activity needs DCGM profiling metrics, not available through NVML.)
  mem_used_gb   nvmlDeviceGetMemoryInfo().used — device memory in use by every process, incl. CUDA contexts and
                the caching allocator's reserve (so it is >= torch.cuda.max_memory_allocated()).
  power_w       nvmlDeviceGetPowerUsage (milliwatts; board power averaged by the driver over ~1 s on Hopper).
  sm_clock_mhz  nvmlDeviceGetClockInfo(NVML_CLOCK_SM).
  temp_c        nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU).
  throttle      nvmlDeviceGetCurrentClocksEventReasons (newer drivers) / ...ThrottleReasons: a bitmask of why the
                clock is below its maximum (power cap, thermal, ...), decoded with THROTTLE_REASONS.

Each training rank samples the GPU it computes on, so every local GPU of a node is covered once when one rank
drives one GPU; the report aggregates per rank. Where NVML cannot be used (CPU machine, no driver) the sampler
is a no-op that says why (`reason`), and the report prints that reason instead of numbers.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

# nvmlClocksEventReason* / nvmlClocksThrottleReason* bits (nvml.h).
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def decode_throttle(mask: int) -> List[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit]


@dataclass(frozen=True)
class Sample:
    t: float  # seconds, time.perf_counter() clock (the same clock the profiler stamps iterations with)
    gpu: int  # NVML device index
    util_pct: float
    mem_used_gb: float
    power_w: float
    sm_clock_mhz: float
    temp_c: float
    throttle: int


class NvmlReader:
    """Reads one sample per device from a pynvml-like module (injectable, so the logic is testable on CPU)."""

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml
        self._handles: Dict[int, Any] = {}

    def open(self, devices: Optional[Sequence[int]]) -> List[int]:
        """Initialise NVML; returns the device indices to sample (all when devices is None)."""
        if self._nvml is None:
            import pynvml  # nvidia-ml-py

            self._nvml = pynvml
        nv = self._nvml
        nv.nvmlInit()
        count = nv.nvmlDeviceGetCount()
        idx = list(range(count)) if devices is None else [d for d in devices if 0 <= d < count]
        if not idx:
            raise RuntimeError(f"no such NVML device among {count}: {list(devices or [])}")
        self._handles = {i: nv.nvmlDeviceGetHandleByIndex(i) for i in idx}
        return idx

    def name(self, index: int) -> str:
        n = self._nvml.nvmlDeviceGetName(self._handles[index])
        return n.decode() if isinstance(n, bytes) else str(n)

    def read(self, index: int, t: float) -> Sample:
        nv, h = self._nvml, self._handles[index]
        util = nv.nvmlDeviceGetUtilizationRates(h)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        reasons = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            nv.nvmlDeviceGetCurrentClocksThrottleReasons
        return Sample(
            t=t,
            gpu=index,
            util_pct=float(util.gpu),
            mem_used_gb=mem.used / 2 ** 30,
            power_w=nv.nvmlDeviceGetPowerUsage(h) / 1000.0,  # milliwatts
            sm_clock_mhz=float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
            temp_c=float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
            throttle=int(reasons(h)),
        )

    def close(self) -> None:
        if self._nvml is not None and self._handles:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
        self._handles = {}


class TelemetrySampler:
    """Samples the given NVML devices every interval_s in a daemon thread until stop().

    If NVML cannot be initialised, `available` is False and `reason` says why; start/stop are then no-ops.
    """

    def __init__(self, devices: Optional[Sequence[int]] = None, interval_s: float = 0.1, nvml: Any = None,
                 clock: Callable[[], float] = time.perf_counter, disabled_reason: Optional[str] = None) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._reader = NvmlReader(nvml)
        self._devices = devices
        self._lock = threading.Lock()
        self._samples: List[Sample] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.devices: List[int] = []
        self.names: Dict[int, str] = {}
        self.errors = 0
        self.available = False
        self.reason = disabled_reason or ""
        if disabled_reason:
            return
        try:
            self.devices = self._reader.open(devices)
            self.names = {i: self._reader.name(i) for i in self.devices}
            self.available = True
        except Exception as e:  # pynvml raises NVMLError_LibraryNotFound / DriverNotLoaded on CPU machines
            self.reason = f"NVML unavailable ({type(e).__name__}: {e}); no GPU telemetry"

    def sample_once(self) -> None:
        """Take one sample of every device now (the thread calls this; tests call it directly)."""
        t = self.clock()
        got = []
        for i in self.devices:
            try:
                got.append(self._reader.read(i, t))
            except Exception:
                # One failed read (a transient NVML error) must not end the profile; count it for the report.
                self.errors += 1
        with self._lock:
            self._samples.extend(got)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        if not self.available or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10 * self.interval_s + 5)
            self._thread = None
        self._reader.close()

    @property
    def samples(self) -> List[Sample]:
        with self._lock:
            return list(self._samples)


@dataclass
class GpuStats:
    """One GPU's telemetry over a window."""

    gpu: int
    name: str = ""
    samples: int = 0
    duration_s: float = 0.0
    util_mean_pct: float = math.nan
    util_max_pct: float = math.nan
    mem_max_gb: float = math.nan
    power_mean_w: float = math.nan
    power_max_w: float = math.nan
    energy_j: float = math.nan  # trapezoidal integral of power over the samples' time span
    sm_clock_mean_mhz: float = math.nan
    sm_clock_min_mhz: float = math.nan
    sm_clock_max_mhz: float = math.nan
    temp_mean_c: float = math.nan
    temp_max_c: float = math.nan
    throttle_fraction: Dict[str, float] = field(default_factory=dict)  # reason -> share of samples it was set

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _mean(xs: List[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def aggregate(samples: Iterable[Sample], t0: Optional[float] = None, t1: Optional[float] = None,
              names: Optional[Dict[int, str]] = None) -> Dict[int, GpuStats]:
    """Per-GPU statistics of the samples taken in [t0, t1] (inclusive; None: unbounded).

    Samples may come in any order and interleaved across GPUs (the sampler reads GPUs one after another).
    """
    by_gpu: Dict[int, List[Sample]] = {}
    for s in samples:
        if (t0 is None or s.t >= t0) and (t1 is None or s.t <= t1):
            by_gpu.setdefault(s.gpu, []).append(s)
    out: Dict[int, GpuStats] = {}
    for gpu, ss in sorted(by_gpu.items()):
        ss.sort(key=lambda s: s.t)
        power = [s.power_w for s in ss]
        energy = sum((b.t - a.t) * (a.power_w + b.power_w) / 2 for a, b in zip(ss, ss[1:]))
        counts: Dict[str, int] = {}
        for s in ss:
            for r in decode_throttle(s.throttle):
                counts[r] = counts.get(r, 0) + 1
        out[gpu] = GpuStats(
            gpu=gpu,
            name=(names or {}).get(gpu, ""),
            samples=len(ss),
            duration_s=ss[-1].t - ss[0].t,
            util_mean_pct=_mean([s.util_pct for s in ss]),
            util_max_pct=max(s.util_pct for s in ss),
            mem_max_gb=max(s.mem_used_gb for s in ss),
            power_mean_w=_mean(power),
            power_max_w=max(power),
            energy_j=energy if len(ss) > 1 else math.nan,
            sm_clock_mean_mhz=_mean([s.sm_clock_mhz for s in ss]),
            sm_clock_min_mhz=min(s.sm_clock_mhz for s in ss),
            sm_clock_max_mhz=max(s.sm_clock_mhz for s in ss),
            temp_mean_c=_mean([s.temp_c for s in ss]),
            temp_max_c=max(s.temp_c for s in ss),
            throttle_fraction={r: c / len(ss) for r, c in sorted(counts.items())},
        )
    return out


def nvml_index_for_cuda_device(cuda_index: int) -> int:
    """NVML enumerates all GPUs; CUDA only the visible ones, in CUDA_VISIBLE_DEVICES order. Map one to the other
    for the common integer form of CUDA_VISIBLE_DEVICES (a UUID/MIG list falls back to the CUDA index)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return cuda_index
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if cuda_index < len(ids) and ids[cuda_index].isdigit():
        return int(ids[cuda_index])
    return cuda_index


def sampler_for_rank(device: str, interval_s: float = 0.1, nvml: Any = None) -> TelemetrySampler:
    """The sampler a training rank should run: its own GPU on CUDA, a no-op with a reason on CPU."""
    if device != "cuda":
        return TelemetrySampler(disabled_reason=f"{device} run: no GPU to sample (NVML telemetry is GPU-only)")
    import torch

    return TelemetrySampler([nvml_index_for_cuda_device(torch.cuda.current_device())], interval_s, nvml)
