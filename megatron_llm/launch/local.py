"""Start one worker process per rank on this node, torchrun-style, unless a launcher (torchrun, srun) already did.
CPU ranks are forked from this process after their imports where that is safe (forked_rank.py), others spawned.

Workers get RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT. SIGUSR1/SIGTERM/SIGINT
sent to this process are forwarded to every worker (they checkpoint and exit); when one worker dies the others are
stopped, so a crash never leaves ranks hanging in a collective.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional

from megatron_llm.launch import forked_rank
from megatron_llm.launch.slurm_env import MASTER_PORT_BASE, MASTER_PORT_SPAN

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_externally() -> bool:
    """True inside torchrun or an srun task: this process is one rank already. An srun task gets its RANK /
    WORLD_SIZE / LOCAL_RANK / MASTER_* from SLURM_* here first (slurm_env.bridge), so every verb that asks
    (train, profile) treats `srun -n N megatron-llm ...` like torchrun."""
    from megatron_llm.launch.slurm_env import bridge

    bridge()
    return all(v in os.environ for v in LAUNCHER_VARS)


EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
# Below: Slurm jobs' master ports (slurm_env: one per job id, for jobs that share a node), then ports services use.
LOWEST_PORT = MASTER_PORT_BASE + MASTER_PORT_SPAN


def ephemeral_port_range(path: str = EPHEMERAL_RANGE_FILE) -> tuple:
    """The ports the kernel hands to outgoing connections and bind(0); Linux's default when unreadable."""
    try:
        with open(path) as f:
            lo, hi = (int(v) for v in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port(addr: str = "127.0.0.1", range_file: str = EPHEMERAL_RANGE_FILE) -> int:
    """A port free now and outside the kernel's ephemeral range. Rank 0 binds it seconds later (after importing
    torch); a port from bind(0) lies in the ephemeral range, where any outgoing connection meanwhile (gloo opens
    many) can take it, and rank 0 then dies with EADDRINUSE. Random, so concurrent callers rarely pick the same."""
    lo, hi = ephemeral_port_range(range_file)
    candidates = [*range(LOWEST_PORT, min(lo, 65536)), *range(max(hi + 1, LOWEST_PORT), 65536)]
    for port in random.SystemRandom().sample(candidates, min(100, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((addr, port))
                return port
            except OSError:
                continue
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # none outside the range (of 100 tried) is free
        s.bind((addr, 0))
        return s.getsockname()[1]


def worker_env(rank: int, nproc: int, master_addr: str, master_port: int, cpu: bool) -> dict:
    env = dict(os.environ)
    env.update(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc),
               MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), PYTHONUNBUFFERED="1")
    if cpu and "OMP_NUM_THREADS" not in os.environ:
        # N workers each using every core would oversubscribe the CPU many times over.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    return env


def combine_exit_codes(codes: List[int], requeue_code: int) -> int:
    """0 if all succeeded; the requeue code if every non-zero one is it; else the first real failure."""
    failures = [c for c in codes if c != 0]
    if not failures:
        return 0
    real = [c for c in failures if c != requeue_code]
    return real[0] if real else requeue_code


def run_workers(module: str, argv: List[str], nproc: int, master_addr: str = "127.0.0.1",
                master_port: Optional[int] = None, cpu: bool = False, grace_s: float = 30.0) -> int:
    from megatron_llm.exit_codes import EXIT_CODE_CONFIG, EXIT_CODE_REQUEUE

    port = master_port or free_port(master_addr)
    envs = [worker_env(r, nproc, master_addr, port, cpu) for r in range(nproc)]
    rank_module = forked_rank.preloaded(module, argv) if cpu else None
    if rank_module is not None:
        procs = [forked_rank.ForkedRank(rank_module, argv, env) for env in envs]
    else:
        procs = [subprocess.Popen([sys.executable, "-m", module, *argv], env=env) for env in envs]

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
    try:
        failed_at = None
        stopped = set()  # ranks we stopped: their status (killed by us) is not the job's
        while any(p.poll() is None for p in procs):
            codes = [p.poll() for p in procs]
            if failed_at is None and any(c not in (None, 0, EXIT_CODE_REQUEUE) for c in codes):
                failed_at = time.monotonic()
                bad = [r for r, c in enumerate(codes) if c not in (None, 0, EXIT_CODE_REQUEUE)]
                if codes[bad[0]] != EXIT_CODE_CONFIG:  # a configuration error was reported by the rank itself
                    print(f"[megatron-llm] rank {bad[0]} exited with {codes[bad[0]]}; stopping the other ranks",
                          file=sys.stderr, flush=True)
                for r, p in enumerate(procs):
                    if p.poll() is None:
                        stopped.add(r)
                        p.terminate()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.2)
        return combine_exit_codes([p.returncode for r, p in enumerate(procs) if r not in stopped],
                                  EXIT_CODE_REQUEUE)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
