"""CPU ranks forked from the launcher after it made the imports every rank makes, instead of N fresh interpreters.

A CPU rank spends most of its start-up importing torch and megatron-core (about 4 s of CPU each on the CI machines);
N spawned ranks pay that N times over on the same cores, forked ones once. Used only where a fork is safe:
- Linux, CPU ranks: a CUDA context cannot survive a fork, so GPU ranks are always spawned;
- a launcher running one thread: a fork copies no other thread, nor the locks those threads held;
- a rank module offering `preload(argv)`, the imports its `main(argv)` makes (nothing initialised: no process group,
  no tensor work, so that OpenMP has not started its threads).
A forked rank then sets its environment, runs `main(argv)` and ends as an interpreter does (threads joined, atexit
handlers run: they release the process groups and stop the checkpoint writer) without unwinding into the launcher's
frames.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import signal
import sys
import threading
import traceback
from types import ModuleType
from typing import List, Optional


def preloaded(module: str, argv: List[str]) -> Optional[ModuleType]:
    """The rank module, its preload done in this process, when CPU ranks of it can be forked from here; else None."""
    if not sys.platform.startswith("linux") or threading.active_count() > 1:
        return None
    mod = importlib.import_module(module)
    preload = getattr(mod, "preload", None)
    if preload is None:
        return None
    preload(argv)
    gc.freeze()  # the imported objects stay shared: no garbage collection in a rank writes to their pages
    return mod


class ForkedRank:
    """One rank forked from this process, with the part of subprocess.Popen's interface the launcher uses."""

    def __init__(self, mod: ModuleType, argv: List[str], env: dict):
        for stream in (sys.stdout, sys.stderr):  # else the child would write the launcher's buffered text again
            stream.flush()
        self.returncode: Optional[int] = None
        self.pid = os.fork()
        if self.pid == 0:
            _run_rank(mod, argv, env)

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)  # -N when killed by signal N, as Popen's
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _run_rank(mod: ModuleType, argv: List[str], env: dict) -> None:
    """The forked child: never returns."""
    code: object = 1
    try:
        os.environ.update(env)
        torch = sys.modules.get("torch")
        if torch is not None and "OMP_NUM_THREADS" in env:  # OpenMP read it when the launcher loaded torch
            torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
        for stream in (sys.stdout, sys.stderr):  # what PYTHONUNBUFFERED gives a spawned rank
            stream.reconfigure(line_buffering=True, write_through=True)
        code = mod.main(argv)
    except SystemExit as e:  # the interpreter's convention: None is 0, a message is printed and exits 1
        if e.code is None or isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    status = code if isinstance(code, int) else int(code is not None)
    try:
        threading._shutdown()  # what the interpreter does at exit, in its order: join threads, then atexit
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(status)
