"""What the ranks tell each other once per log interval, in ONE small all-gather (not one collective per step):

- the stop flag (a SIGUSR1/SIGTERM seen by any rank; ranks agree at log-interval boundaries, so with
  --log-interval 1 a signal is acted on at the next iteration as before, with a larger interval at the boundary),
- whether --save-interval-minutes has elapsed (rank clocks differ; the max decides for all),
- each rank's mean compute time per step in the interval (stragglers: ranks slower than the median by
  --straggler-threshold are named with rank, host and device),
- each rank's peak memory (mem_gb is the max over ranks: the first pipeline stage holds the most activations),
- the interval's losses, kept on the device until then (one host read per interval, not per step).

Compute time is step start to the moment the rank enters the gradient reduction (finalize_model_grads): a rank that
waits for a slow one in that collective does not look slow itself. It is read on the device's clock: on a GPU from
CUDA events, read at the boundary (the host only enqueues kernels and runs ahead of them, so its clock would mostly
time kernel launches and could miss a slow GPU); on CPU from the host clock.

Heartbeats: every rank marks each phase of a step in memory (training/heartbeat.py); a background thread writes the
latest to <dir>/heartbeat/rank_NNNNN.json (iteration, phase, since, host, pid), <dir> being --save, else
--tensorboard-dir. A hung job shows where each rank stopped and since when.

Test hook: MEGATRON_LLM_TEST_SLOW_RANK=RANK:SECONDS[:ITER] makes RANK sleep SECONDS in the compute part of every
step (or of iteration ITER only).
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from megatron_llm.training.heartbeat import HeartbeatWriter, at, where

SLOW_RANK_ENV = "MEGATRON_LLM_TEST_SLOW_RANK"
# A straggler is also this much slower than the median in absolute terms: on a loaded host (or tiny CPU steps)
# a relative threshold alone names noise.
MIN_EXCESS_S = 0.05
HEADER = 4  # stop, save-due, mean compute time, mem GB; then (loss sum, token count) per iteration


def describe_failure(exc: BaseException, cfg) -> str:
    """The message of a rank whose collective failed: rank, host, the operation, the timeout, the heartbeats."""
    rank = int(os.environ.get("RANK", "0"))
    iteration, phase, _ = where()
    hb = heartbeat_dir(cfg)
    hb_note = f"; per-rank heartbeats (where each rank is, and since when) in {hb}" if hb else ""
    return (f"rank {rank} ({socket.gethostname()}): {phase} at iteration {iteration} failed "
            f"(--distributed-timeout-minutes {cfg.launch.distributed_timeout_minutes}: a peer rank hung, died or "
            f"is too slow){hb_note}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")


def heartbeat_dir(cfg) -> Optional[str]:
    root = cfg.checkpoint.save or cfg.logging.tensorboard_dir
    return os.path.join(root, "heartbeat") if root else None


def memory_gb(device: str) -> float:
    from megatron_llm.training.metrics import local_mem_gb

    return local_mem_gb(device)


@dataclass
class IntervalReport:
    stop: bool
    save_due: bool
    losses: Dict[int, float]  # iteration -> token-weighted loss over the data-parallel replicas
    step_time_s: List[float]  # per rank: mean compute time per step in the interval
    mem_gb_max: float
    stragglers: List[str] = field(default_factory=list)  # "rank R (host, device): T s vs median M s"


class _HostEvent:
    """torch.cuda.Event's timing interface on the host clock, for CPU runs."""

    __slots__ = ("t",)

    def record(self) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: "_HostEvent") -> float:
        return 1000.0 * (end.t - self.t)  # milliseconds, as torch.cuda.Event


class ComputeClock:
    """Per-step compute time (step start -> first finalize_model_grads entry) on the device's clock. Recording an
    event does not synchronise; the events are read at the log boundary, after the step's grad-norm read."""

    def __init__(self, device: str) -> None:
        self._event = (lambda: torch.cuda.Event(enable_timing=True)) if device == "cuda" else _HostEvent
        self.steps: List[tuple] = []  # (start, end) events of the interval's steps
        self._start = self._end = None

    def _mark(self):
        ev = self._event()
        ev.record()
        return ev

    def start(self) -> None:
        self._start, self._end = self._mark(), None

    def compute_ended(self) -> None:
        if self._end is None:  # only the first entry ends the compute part
            self._end = self._mark()

    def step_done(self) -> None:
        self.steps.append((self._start, self._end if self._end is not None else self._mark()))

    def mean_s(self) -> float:
        if not self.steps:
            return 0.0
        self.steps[-1][1].synchronize()  # on a GPU the interval's events have run (the boundary syncs anyway)
        return sum(s.elapsed_time(e) for s, e in self.steps) / (1000.0 * len(self.steps))

    def clear(self) -> None:
        self.steps.clear()


def _slow_hook(rank: int):
    spec = os.environ.get(SLOW_RANK_ENV, "").strip()
    if not spec:
        return None
    parts = spec.split(":")
    try:
        r, secs = int(parts[0]), float(parts[1])
        only = int(parts[2]) if len(parts) > 2 else None
    except (ValueError, IndexError):
        raise ValueError(f"{SLOW_RANK_ENV}={spec!r}: expected RANK:SECONDS[:ITER]") from None
    return (secs, only) if r == rank else None


class HealthMonitor:
    def __init__(self, cfg, info) -> None:
        from megatron.core import parallel_state as ps

        self.cfg, self.info = cfg, info
        self.rank = info.rank
        # The losses of a data-parallel replica live on its last pipeline stage, once per TP group.
        self.owns_loss = (ps.is_pipeline_last_stage(ignore_virtual=True)
                          and ps.get_tensor_model_parallel_rank() == 0)
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}" if info.device == "cuda" else "cpu")
        self.pending: List[tuple] = []  # (iteration, loss tensor [sum, count] on the device or None)
        self.clock = ComputeClock(info.device)
        self.last_save = time.monotonic()
        self.slow = _slow_hook(self.rank)
        dev = f"cuda:{torch.cuda.current_device()}" if info.device == "cuda" else "cpu"
        # Names for the straggler report, gathered once at start (strings cannot ride in the float vector).
        self.names: List[str] = [None] * info.world_size
        dist.all_gather_object(self.names, f"{socket.gethostname()}, {dev}")
        hb_dir = heartbeat_dir(cfg)
        self.heartbeat = HeartbeatWriter(hb_dir, self.rank) if hb_dir else None

    # -------------------------------------------------------------------------------- per step (no sync)

    def wrap_finalize(self, finalize):
        """The schedule calls finalize_model_grads after the last backward: that is where compute ends."""
        def timed(*args, **kwargs):
            self.clock.compute_ended()
            at(where()[0], "gradient reduction (finalize_model_grads)")
            return finalize(*args, **kwargs)
        return timed

    def step_start(self, iteration: int) -> None:
        at(iteration, "forward-backward (pipeline send/recv, tensor-parallel collectives)")
        self.clock.start()
        if self.slow is not None and self.slow[1] in (None, iteration):
            from megatron_llm.training import signals

            until = time.monotonic() + self.slow[0]  # a stop signal (the launcher giving up) ends the nap
            while time.monotonic() < until and signals.install().received is None:
                time.sleep(min(0.05, max(0.0, until - time.monotonic())))

    def optimizer_step(self, iteration: int) -> None:
        at(iteration, "optimizer step (gradient-norm all-reduce, parameter all-gather)")

    def step_end(self, iteration: int, loss: Optional[torch.Tensor]) -> None:
        at(iteration, "after the optimizer step (evaluation or checkpoint save)")
        self.clock.step_done()
        self.pending.append((iteration, loss if self.owns_loss else None))

    def discard_pending(self) -> None:
        """A rollback: the iterations since the last boundary are replayed."""
        self.pending.clear()
        self.clock.clear()

    def saved(self) -> None:
        self.last_save = time.monotonic()

    # ------------------------------------------------------------------------------ per log interval

    def exchange(self, stop_requested: bool) -> IntervalReport:
        """Collective: every rank calls it at the same iterations."""
        at(where()[0], "health exchange (all-gather at the log boundary)")
        n = len(self.pending)
        minutes = self.cfg.checkpoint.save_interval_minutes
        save_due = bool(minutes) and time.monotonic() - self.last_save >= 60.0 * minutes
        mean_compute = self.clock.mean_s()
        vec = torch.zeros(HEADER + 2 * n, dtype=torch.float64, device=self.device)
        vec[:HEADER] = torch.tensor([float(stop_requested), float(save_due), mean_compute,
                                     memory_gb(self.info.device)], dtype=torch.float64)
        for i, (_, loss) in enumerate(self.pending):
            if loss is not None:
                vec[HEADER + 2 * i: HEADER + 2 * i + 2] = loss.detach().to(torch.float64)
        out = [torch.empty_like(vec) for _ in range(self.info.world_size)]
        dist.all_gather(out, vec)
        table = torch.stack(out).cpu()  # the interval's one host read
        totals = table[:, HEADER:].sum(0)
        losses = {}
        for i, (it, _) in enumerate(self.pending):
            count = float(totals[2 * i + 1])
            if count > 0:
                losses[it] = float(totals[2 * i]) / count
        report = IntervalReport(stop=bool(table[:, 0].max() > 0), save_due=bool(table[:, 1].max() > 0),
                                losses=losses, step_time_s=[float(x) for x in table[:, 2]],
                                mem_gb_max=float(table[:, 3].max()))
        report.stragglers = self._stragglers(report.step_time_s)
        self.pending.clear()
        self.clock.clear()
        return report

    def _stragglers(self, times: List[float]) -> List[str]:
        if len(times) < 2:
            return []
        med = statistics.median(times)
        limit = med * (1.0 + self.cfg.train.straggler_threshold)
        return [f"rank {r} ({self.names[r]}): {t:.3f} s/step vs median {med:.3f} s"
                for r, t in enumerate(times) if t > limit and t - med > MIN_EXCESS_S]

    def close(self, iteration: int, exit_code: int) -> None:
        at(iteration, f"training ended (exit code {exit_code})")
        if self.heartbeat is not None:
            self.heartbeat.close()
