"""torch.profiler over a window of iterations -> Chrome trace (open in https://ui.perfetto.dev) + top-N table.

On a GPU the table lists CUDA kernels by total device time, read from the trace's "kernel" events (time the GPU
actually spent in each kernel; a kernel's name says what it is — GEMM, flash/cuDNN attention, NCCL collective).
On a CPU run there are no kernels, so it lists CPU operators by self time (time in the op minus its children),
which is what sums to the wall time without double counting nested ops.

On a GPU the kernels are also summed by family (GEMM, attention, our csrc kernels, optimizer, copies, torch's
elementwise and reduction kernels, communication; by name), and the GPU's idle time is measured: the part of the
span from the first kernel to the last in which neither a kernel nor a copy ran, i.e. the GPU waiting for the
host (slowed in the traced steps by the profiler's own recording: an upper bound for untraced ones).

Communication kernels (NCCL) are also totalled, and on a GPU split by the trace's timestamps into exposed time
(no compute kernel running at the same time) and overlapped time (hidden under compute). This is the measurement
of "exposed vs overlapped" that timers cannot give: megatron-core's timers synchronise the device when they start
and stop, so gradient reductions still in flight at the end of backward are charged to 'backward-compute'.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

_COMM_KERNEL = re.compile(r"nccl|AllReduce|AllGather|ReduceScatter|SendRecv", re.IGNORECASE)
# Collectives a data-parallel gradient sync uses (reduce-scatter + all-gather with the distributed optimizer,
# all-reduce without it); point-to-point SendRecv is pipeline traffic.
_COLLECTIVE = re.compile(r"AllReduce|AllGather|ReduceScatter|all_reduce|all_gather|reduce_scatter", re.IGNORECASE)
_COMM_CPU_OP = re.compile(r"^(c10d::|gloo:|nccl:)|record_param_comms")
# Kernel families by name, first match wins. Names as kineto records them: cuBLAS's GEMMs are nvjet_* on Hopper
# (measured), sm90_xmma_gemm_* / *gemm* / cutlass otherwise; cuDNN's SDPA is cudnn_generated_fort_native_sdpa_*,
# flash's flash_fwd/bwd_*, memory-efficient fmha_*; ours live in namespace mllm; fused AdamW and foreach norms run
# as multi_tensor_apply_kernel.
KERNEL_FAMILIES = (
    ("communication (NCCL)", _COMM_KERNEL),
    ("attention (SDPA)", re.compile(r"sdpa|cudnn|flash_|fmha|attention", re.IGNORECASE)),  # cuDNN runs only SDPA here
    ("GEMM", re.compile(r"gemm|gemv|nvjet|cutlass|xmma|cublas", re.IGNORECASE)),
    ("ours (csrc/)", re.compile(r"\bmllm::")),
    ("optimizer / foreach", re.compile(r"multi_tensor|adam|foreach", re.IGNORECASE)),
    ("copies", re.compile(r"^Mem(cpy|set)|copy|cat_|CatArray", re.IGNORECASE)),  # Memcpy/Memset: kineto's names
    ("torch elementwise / reductions", re.compile(r"elementwise|reduce_kernel|reduction|softmax|norm", re.IGNORECASE)),
)
OTHER_FAMILY = "other kernels"


@dataclass
class TopEntry:
    name: str
    calls: int
    total_ms: float
    percent: float  # of the table's total (all kernels / all CPU self time) in the window


@dataclass
class FamilyEntry:
    family: str
    calls: int
    total_ms: float
    percent: float  # of all kernels' device time in the window


@dataclass
class TraceResult:
    trace_path: str
    first: int
    last: int
    kind: str  # "cuda kernels" | "cpu ops"
    top: List[TopEntry] = field(default_factory=list)
    total_ms: float = 0.0  # all kernels' device time / all CPU ops' self time in the window
    comm_ms: float = 0.0  # communication kernels (GPU) / c10d ops (CPU) in the window
    collective_ms: float = 0.0  # of which collectives (all-reduce / all-gather / reduce-scatter)
    comm_exposed_ms: Optional[float] = None  # GPU: communication kernel time with no compute kernel running
    comm_overlapped_ms: Optional[float] = None  # GPU: communication kernel time hidden under compute kernels
    iterations: int = 0
    families: List[FamilyEntry] = field(default_factory=list)  # GPU: kernel time by family
    kernel_span_ms: Optional[float] = None  # GPU: first kernel's start to the last kernel's end
    gpu_idle_ms: Optional[float] = None  # GPU: time in that span with no kernel or copy running

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def parse_window(spec: Optional[str]) -> Optional[Tuple[int, int]]:
    """'a:b' (inclusive) or 'a' -> (a, b); None/'' -> None. Iterations count from 1, as in the training log."""
    if not spec:
        return None
    parts = spec.split(":")
    try:
        if len(parts) == 1:
            a = b = int(parts[0])
        elif len(parts) == 2:
            a, b = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"--trace-iters {spec!r}: expected FIRST:LAST iteration numbers, e.g. 5:6") from None
    if a < 1 or b < a:
        raise ValueError(f"--trace-iters {spec!r}: need 1 <= FIRST <= LAST")
    return a, b


def _rank_table(rows: Dict[str, List[float]], top_n: int) -> Tuple[List[TopEntry], float]:
    total = sum(sum(v) for v in rows.values())
    entries = [TopEntry(name, len(v), sum(v) / 1000.0, 100.0 * sum(v) / total if total else 0.0)
               for name, v in rows.items()]
    entries.sort(key=lambda e: (-e.total_ms, e.name))
    return entries[:top_n], total / 1000.0


class Kernel(NamedTuple):
    name: str
    ts: float  # start (us)
    dur: float  # duration (us)
    cat: str  # kineto's category: "kernel", or a copy-engine transfer / memset (not compute)


GPU_ACTIVITY = ("kernel", "gpu_memcpy", "gpu_memset")  # kineto's categories of work on the device


def kernels_from_chrome_trace(path: str) -> List[Kernel]:
    """The GPU's work in a Chrome trace written by torch.profiler (kineto), kernels and memory copies/sets:
    (name, start us, duration us, category)."""
    with open(path, encoding="utf-8") as f:
        events = json.load(f).get("traceEvents", [])
    return [Kernel(ev.get("name", "?"), float(ev.get("ts", 0.0)), float(ev.get("dur", 0.0)), ev["cat"])
            for ev in events if ev.get("ph") == "X" and ev.get("cat") in GPU_ACTIVITY]


def kernel_rows(kernels: List[Kernel]) -> Dict[str, List[float]]:
    """Kernel durations (us) by name."""
    rows: Dict[str, List[float]] = {}
    for k in kernels:
        rows.setdefault(k.name, []).append(k.dur)
    return rows


def kernel_family(name: str) -> str:
    return next((family for family, pattern in KERNEL_FAMILIES if pattern.search(name)), OTHER_FAMILY)


def kernel_families(rows: Dict[str, List[float]]) -> List[FamilyEntry]:
    """Kernel time by family, largest first."""
    sums: Dict[str, List[float]] = {}
    for name, durs in rows.items():
        fam = sums.setdefault(kernel_family(name), [0, 0.0])
        fam[0] += len(durs)
        fam[1] += sum(durs)
    total = sum(t for _, t in sums.values())
    entries = [FamilyEntry(f, int(c), t / 1000.0, 100.0 * t / total if total else 0.0) for f, (c, t) in sums.items()]
    return sorted(entries, key=lambda e: (-e.total_ms, e.family))


def gpu_idle(kernels: List[Kernel]) -> Tuple[float, float]:
    """(span_ms, idle_ms): first start to last end of the GPU's work, and the time in it with nothing running."""
    if not kernels:
        return 0.0, 0.0
    busy = _union([(k.ts, k.ts + k.dur) for k in kernels])
    span = busy[-1][1] - busy[0][0]
    return span / 1000.0, (span - sum(b - a for a, b in busy)) / 1000.0


def _union(intervals: List[Tuple[float, float]]) -> List[Tuple[float, float]]:
    merged: List[List[float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _intersection_length(xs: List[Tuple[float, float]], ys: List[Tuple[float, float]]) -> float:
    """Total length of the overlap of two sorted, disjoint interval lists."""
    i = j = 0
    total = 0.0
    while i < len(xs) and j < len(ys):
        lo, hi = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if hi > lo:
            total += hi - lo
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return total


def comm_overlap(kernels: List[Kernel]) -> Tuple[float, float]:
    """(exposed_ms, overlapped_ms) of communication kernels on the GPU timeline: time in which some NCCL kernel
    ran while no compute kernel ran (exposed), and while one did (overlapped). Kernel intervals come from the
    trace's timestamps (ts, dur in microseconds), so this measures what actually ran concurrently."""
    comm, compute = [], []
    for k in kernels:
        if k.cat == "kernel":  # a copy or memset running beside NCCL hides none of it
            (comm if _COMM_KERNEL.search(k.name) else compute).append((k.ts, k.ts + k.dur))
    comm_u, compute_u = _union(comm), _union(compute)
    total = sum(b - a for a, b in comm_u)
    overlapped = _intersection_length(comm_u, compute_u)
    return (total - overlapped) / 1000.0, overlapped / 1000.0


def cpu_ops_from_profiler(prof) -> Dict[str, List[float]]:
    """CPU operators' self time (us) by name; each op's calls are spread evenly (key_averages keeps totals)."""
    rows: Dict[str, List[float]] = {}
    for e in prof.key_averages():
        if e.self_cpu_time_total > 0:
            rows[e.key] = [e.self_cpu_time_total / e.count] * e.count
    return rows


class TraceWindow:
    """Profile iterations first..last (inclusive) on this rank; call step_start/step_end every iteration."""

    def __init__(self, first: int, last: int, out_dir: str, rank: int = 0, device: str = "cpu",
                 top_n: int = 25) -> None:
        self.first, self.last = first, last
        self.out_dir, self.rank, self.device, self.top_n = out_dir, rank, device, top_n
        self._prof = None
        self.result: Optional[TraceResult] = None

    @property
    def active(self) -> bool:
        return self._prof is not None

    def step_start(self, iteration: int) -> None:
        if iteration != self.first or self._prof is not None:
            return
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        # No shapes/stacks: they multiply the trace size and profiling overhead, and the table does not use them.
        self._prof = profile(activities=acts, record_shapes=False, with_stack=False, profile_memory=False)
        self._prof.__enter__()

    def step_end(self, iteration: int) -> None:
        if self._prof is not None and iteration >= self.last:
            self.finish(iteration)

    def finish(self, iteration: Optional[int] = None) -> Optional[TraceResult]:
        """Stop and write (also called at the end of training if the window was cut short)."""
        if self._prof is None:
            return self.result
        prof, self._prof = self._prof, None
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        prof.__exit__(None, None, None)
        os.makedirs(self.out_dir, exist_ok=True)
        path = os.path.join(self.out_dir, f"trace_rank{self.rank}.json")
        tmp = path + ".tmp"
        prof.export_chrome_trace(tmp)
        os.replace(tmp, path)
        last = self.last if iteration is None else min(iteration, self.last)
        gpu: Dict[str, Any] = {}
        if self.device == "cuda":
            kernels = kernels_from_chrome_trace(path)
            rows, kind = kernel_rows(kernels), "cuda kernels"
            comm = {k: v for k, v in rows.items() if _COMM_KERNEL.search(k)}
            exposed, overlapped = comm_overlap(kernels)
            span, idle = gpu_idle(kernels)
            gpu = dict(comm_exposed_ms=exposed, comm_overlapped_ms=overlapped, families=kernel_families(rows),
                       kernel_span_ms=span, gpu_idle_ms=idle)
        else:
            rows, kind = cpu_ops_from_profiler(prof), "cpu ops"
            comm = {k: v for k, v in rows.items() if _COMM_CPU_OP.search(k)}
        top, total = _rank_table(rows, self.top_n)
        self.result = TraceResult(
            trace_path=path, first=self.first, last=last, kind=kind, top=top, total_ms=total,
            comm_ms=sum(sum(v) for v in comm.values()) / 1000.0,
            collective_ms=sum(sum(v) for k, v in comm.items() if _COLLECTIVE.search(k)) / 1000.0,
            iterations=last - self.first + 1, **gpu,
        )
        return self.result
