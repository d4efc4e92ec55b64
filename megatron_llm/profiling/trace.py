"""torch.profiler over a window of iterations -> Chrome trace (open in https://ui.perfetto.dev) + top-N table.

On a GPU the table lists CUDA kernels by total device time, read from the trace's "kernel" events (time the GPU
actually spent in each kernel; a kernel's name says what it is — GEMM, flash/cuDNN attention, NCCL collective).
On a CPU run there are no kernels, so it lists CPU operators by self time (time in the op minus its children),
which is what sums to the wall time without double counting nested ops.

Communication kernels (NCCL) are also totalled: with the megatron-core timers' "all-grads-sync" (the part of the
data-parallel gradient reduction the backward pass did not hide), they give the overlapped share.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

_COMM_KERNEL = re.compile(r"nccl|AllReduce|AllGather|ReduceScatter|SendRecv", re.IGNORECASE)
# Collectives a data-parallel gradient sync uses (reduce-scatter + all-gather with the distributed optimizer,
# all-reduce without it); point-to-point SendRecv is pipeline traffic.
_COLLECTIVE = re.compile(r"AllReduce|AllGather|ReduceScatter|all_reduce|all_gather|reduce_scatter", re.IGNORECASE)
_COMM_CPU_OP = re.compile(r"^(c10d::|gloo:|nccl:)|record_param_comms")


@dataclass
class TopEntry:
    name: str
    calls: int
    total_ms: float
    percent: float  # of the table's total (all kernels / all CPU self time) in the window


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
    iterations: int = 0

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


def kernels_from_chrome_trace(path: str) -> Dict[str, List[float]]:
    """GPU kernel durations (us) by name from a Chrome trace written by torch.profiler (kineto)."""
    with open(path, encoding="utf-8") as f:
        events = json.load(f).get("traceEvents", [])
    rows: Dict[str, List[float]] = {}
    for ev in events:
        if ev.get("ph") == "X" and ev.get("cat") == "kernel":
            rows.setdefault(ev.get("name", "?"), []).append(float(ev.get("dur", 0.0)))
    return rows


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
        if self.device == "cuda":
            rows, kind = kernels_from_chrome_trace(path), "cuda kernels"
            comm = {k: v for k, v in rows.items() if _COMM_KERNEL.search(k)}
        else:
            rows, kind = cpu_ops_from_profiler(prof), "cpu ops"
            comm = {k: v for k, v in rows.items() if _COMM_CPU_OP.search(k)}
        top, total = _rank_table(rows, self.top_n)
        self.result = TraceResult(
            trace_path=path, first=self.first, last=last, kind=kind, top=top, total_ms=total,
            comm_ms=sum(sum(v) for v in comm.values()) / 1000.0,
            collective_ms=sum(sum(v) for k, v in comm.items() if _COLLECTIVE.search(k)) / 1000.0,
            iterations=last - self.first + 1,
        )
        return self.result
