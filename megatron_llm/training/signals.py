"""Preemption and time-limit signals: checkpoint at the next iteration boundary, then exit for requeue.

A rank installs the handler as its first act (before torch is even imported), because Slurm may deliver the warning
while the job is still starting; a signal that arrives during start-up is kept and acted on at the first iteration
boundary. Until then SIGUSR1's default action would kill the rank with nothing saved.
"""

from __future__ import annotations

import signal
import time
from typing import Optional

HANDLED = (signal.SIGUSR1, signal.SIGTERM)
# One event often arrives twice: Slurm signals every process of a job step, and a launcher in the step (torchrun)
# relays the same signal to its workers. Repeats this close to the first are that echo, not a user insisting.
ECHO_WINDOW_S = 5.0


class StopSignalHandler:
    """Records SIGUSR1/SIGTERM instead of dying mid-step; the ranks agree on it at log boundaries
    (training/health.py)."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.received_at = 0.0
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        if self.received is not None:
            if signum == signal.SIGUSR1 or time.monotonic() - self.received_at < ECHO_WINDOW_S:
                # SIGUSR1 only ever asks for a checkpoint (a batch script may repeat it until the ranks have it);
                # anything within the window is the same request delivered by a second path
                return
            # A later SIGTERM means "now": stop waiting for the iteration boundary (e.g. a hung collective).
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        self.received_at = time.monotonic()

    def install(self) -> "StopSignalHandler":
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def restore(self) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received else "no signal"


_installed: Optional[StopSignalHandler] = None


def install() -> StopSignalHandler:
    """The process's handler, installed on first use; later calls return it with any signal already received."""
    global _installed
    if _installed is None or not _installed._previous:
        _installed = StopSignalHandler().install()
    return _installed
