"""Where this rank is, and since when: kept in memory at every phase change, written to disk in the background.

`at(iteration, phase)` costs one tuple assignment, so the step loop marks each phase (forward-backward, gradient
reduction, optimizer step, health exchange, save). `HeartbeatWriter` writes the latest mark to
<dir>/heartbeat/rank_NNNNN.json from a daemon thread: when it has changed, at most every PERIOD_S seconds, and
once more when the writer is closed or the process exits. A hung job thus shows where each rank stopped and since
when, and the step loop does no file I/O. Why not a write per step: after the step's grad-norm read the GPU has
nothing queued, so a write at step start is GPU idle time, and thousands of ranks renaming a file every step on a
shared filesystem load its metadata server.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import threading
import time
from typing import Optional, Tuple

from megatron_llm.fileio import atomic_write_text

PERIOD_S = 5.0  # far below --distributed-timeout-minutes: a hang is diagnosed minutes after it starts

# (iteration, phase, unix time the phase began): replaced whole, so the writer thread never reads half an update.
_where: Tuple[int, str, float] = (0, "start-up", time.time())


def at(iteration: int, phase: str) -> None:
    global _where
    _where = (iteration, phase, time.time())


def where() -> Tuple[int, str, float]:
    return _where


class HeartbeatWriter:
    def __init__(self, directory: str, rank: int, period_s: float = PERIOD_S) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"rank_{rank:05d}.json")
        self.rank, self.period_s = rank, period_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.writes = 0
        self._written: Optional[Tuple[int, str, float]] = None
        self._failed = False
        self._lock = threading.Lock()  # close() and the thread may write at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # an exception ending the rank still records where it was

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.write()

    def write(self) -> None:
        with self._lock:
            state = _where
            if state == self._written:
                return
            iteration, phase, since = state
            try:  # off the step loop, so a durable write (fsync) costs the training nothing
                atomic_write_text(self.path, json.dumps({"rank": self.rank, "iteration": iteration, "phase": phase,
                                                         "since": since, "host": self.host, "pid": self.pid}))
            except OSError as e:  # a lost heartbeat must not stop training; say so once
                if not self._failed:
                    self._failed = True
                    print(f"[megatron-llm] WARNING: rank {self.rank}: cannot write heartbeat {self.path}: {e}",
                          file=sys.stderr, flush=True)
                return
            self._written = state
            self.writes += 1

    def close(self) -> None:
        """Stop the thread and write the last mark (idempotent)."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=10.0)
            atexit.unregister(self.close)
        self.write()
