"""A warm interpreter for the tests' `python -m megatron_llm...` commands.

A server process imports what a CPU rank imports (torch, megatron-core, our training stack: ~4 s of CPU on the CI
machines), then for each command forks a child at its top level that runs the module as `python -m` would, in its
own process group, with the command's environment and its stdout/stderr in files. The child is a fresh process for
everything under test (nothing is initialised before the fork: no process group, no tensor work); only the imports
are shared. The launcher in it forks its CPU ranks as usual (launch/forked_rank.py). One server per pytest process,
running one command at a time; it ends when its stdin closes.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from typing import List, Optional

SERVER = r"""
import gc, json, os, runpy, sys, time
t0 = time.monotonic()
from megatron_llm.parallel import cpu_emulation
cpu_emulation.eager_jit_fusions()  # as a CPU rank does before importing megatron-core (training/worker.py)
import torch._inductor.config, torch.distributed.checkpoint, torch.utils.tensorboard
import megatron.core.models.gpt, megatron.core.dist_checkpointing, megatron.core.datasets.gpt_dataset
import megatron.core.optimizer, megatron.core.pipeline_parallel
import megatron_llm.cli, megatron_llm.cli.train, megatron_llm.cli.checks, megatron_llm.training.worker
import megatron_llm.training.pretrain, megatron_llm.training.checkpointing, megatron_llm.training.optimizer
import megatron_llm.training.initialize, megatron_llm.training.metrics, megatron_llm.training.health
import megatron_llm.models.llama, megatron_llm.models.build, megatron_llm.data.gpt_datasets
gc.freeze()
print(json.dumps({"ready_s": time.monotonic() - t0}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    # opened before the fork: the files exist even when the child is killed at once
    out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = out if job["stderr"] == job["stdout"] else os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                                             0o644)
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.environ.clear()
        os.environ.update(job["env"])
        sys.argv = [job["module"], *job["argv"]]
        # `python -m module`: SystemExit and exceptions end this process as they end an interpreter
        runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
        sys.exit(0)
    for fd in {out, err}:
        os.close(fd)
    try:
        os.setpgid(pid, pid)  # as the child does: killpg(pid) works from the moment the pid is reported
    except OSError:
        pass
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class ForkServer:
    def __init__(self):
        # unbuffered, as the launcher makes its ranks: a command killed part-way (a timeout, the kill tests) leaves
        # all it printed in its files
        env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, start_new_session=True)
        self.lines: "queue.Queue[Optional[dict]]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready_s = self.next(300)["ready_s"]

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def next(self, timeout: float) -> dict:
        msg = self.lines.get(timeout=timeout)
        assert msg is not None, "the tests' fork server (tests/distributed/warm_launch.py) died"
        return msg

    def start(self, module: str, argv: List[str], env: dict, stdout: str, stderr: Optional[str] = None) -> "Forked":
        """`python -m module argv` with environment `env` (the whole of it), output in files; a Popen-like handle."""
        job = {"module": module, "argv": list(argv), "env": env, "stdout": str(stdout), "stderr": str(stderr or stdout)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return Forked(self, self.next(60)["pid"])

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


class Forked:
    def __init__(self, server: ForkServer, pid: int):
        self.server, self.pid, self.returncode = server, pid, None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            try:
                msg = self.server.lines.get_nowait()
            except queue.Empty:
                return None
            assert msg is not None, "the tests' fork server died"
            self.returncode = msg["exit"]
        return self.returncode

    def wait(self, timeout: float = 300) -> int:
        """The exit status (Popen's convention: -N for signal N); queue.Empty when it has not ended in time."""
        if self.returncode is None:
            self.returncode = self.server.next(timeout)["exit"]
        return self.returncode


_server: Optional[ForkServer] = None


def server() -> ForkServer:
    """This pytest process's server, started on first use."""
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = ForkServer()
        atexit.register(_server.close)
    return _server
