"""kill -9 at random moments, half of them inside a checkpoint save, each followed by a restart with --load:
every restart resumes from the newest complete checkpoint (a partial one is removed, never loaded), and the run
that finally completes logged every iteration once with the losses of an uninterrupted run.

MEGATRON_LLM_KILL_TRIALS sets the number of kills (default 20).

The uninterrupted reference and the final restart that completes the chain are `megatron-llm train` runs as a user
starts them. The killed runs are the same command run as one rank the way torchrun or srun start it (RANK,
WORLD_SIZE, MASTER_* set: `megatron-llm train` is then the rank itself, no launcher process), each forked from a
server process that has already imported torch and megatron-core: a restart then costs the trainer's own start-up
(process group, dataset, model, checkpoint load), not ~4 s of imports, and the random kill moments fall on
training and saving rather than on imports, where nothing is written. The child is a fresh process for everything
under test (nothing is initialised before the fork) and is killed with SIGKILL as a whole process group.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from trainrun import check, losses, make_dataset, train, train_args

TRIALS = int(os.environ.get("MEGATRON_LLM_KILL_TRIALS", "20"))
ITERS, SAVE_EVERY = 12, 2
FLAGS = ["--save-interval", str(SAVE_EVERY)]
KW = dict(iters=ITERS, gbs=4, mbs=2)

# The fork server: imports what a training rank imports, then for every job line on stdin forks a child that runs
# `megatron-llm train <argv>` (cli.train.main) with stdout/stderr in the job's log file, in its own process group;
# reports {"pid"} after the fork and {"exit"} (Popen's convention: -N for signal N) when the child ended.
FORK_SERVER = r"""
import json, os, sys, time
t0 = time.monotonic()
from megatron_llm.parallel import cpu_emulation
cpu_emulation.eager_jit_fusions()  # as a CPU rank does before importing megatron-core (training/worker.py)
import torch, torch.distributed.checkpoint, torch.utils.tensorboard
import megatron.core.models.gpt, megatron.core.dist_checkpointing, megatron.core.datasets.gpt_dataset
import megatron.core.optimizer, megatron.core.pipeline_parallel
import megatron_llm.cli.train, megatron_llm.cli.checks, megatron_llm.training.worker, megatron_llm.training.pretrain
import megatron_llm.training.checkpointing, megatron_llm.training.optimizer, megatron_llm.training.initialize
import megatron_llm.training.metrics, megatron_llm.training.health, megatron_llm.models.llama
import megatron_llm.models.build, megatron_llm.data.gpt_datasets
print(json.dumps({"ready_s": time.monotonic() - t0}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    # opened before the fork: the log exists even when the child is killed at once
    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.environ.update(job["env"])
        sys.argv = ["megatron-llm"] + job["argv"]
        code = 1
        try:
            code = megatron_llm.cli.train.main(job["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
        # the interpreter's normal exit, as a rank's: its atexit handlers stop the processes the run started (the
        # checkpoint writer); os._exit would leave them running
        sys.exit(int(code or 0))
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
        from megatron_llm.launch.local import worker_env

        # the environment `megatron-llm train --nproc-per-node 1` gives its rank (OMP_NUM_THREADS included)
        env = worker_env(0, 1, "127.0.0.1", 0, cpu=True)
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(k)
        env["PYTHONWARNINGS"] = "ignore"
        self.proc = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready_s = self._next(300)["ready_s"]

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def _next(self, timeout):
        msg = self.lines.get(timeout=timeout)
        assert msg is not None, "the fork server died"
        return msg

    def start(self, argv, log_path):
        """A rank of `megatron-llm train argv` as torchrun starts it; returns a Popen-like handle."""
        from megatron_llm.launch.local import free_port

        env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log_path), "env": env}) + "\n")
        self.proc.stdin.flush()
        return _Forked(self, self._next(60)["pid"])

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


class _Forked:
    def __init__(self, server, pid):
        self.server, self.pid, self.returncode = server, pid, None

    def poll(self):
        if self.returncode is None:
            try:
                self.returncode = self.server.lines.get_nowait()["exit"]
            except queue.Empty:
                pass
        return self.returncode

    def wait(self, timeout=300):
        if self.returncode is None:
            self.returncode = self.server._next(timeout)["exit"]
        return self.returncode


def _tracker(ckpt):
    path = ckpt / "latest_checkpointed_iteration.txt"
    return int(path.read_text()) if path.exists() else None


def _partials(ckpt) -> set:
    """The iter_N.tmp directories of saves in progress (or cut short by a kill)."""
    try:
        return {n for n in os.listdir(ckpt) if n.endswith(".tmp")}
    except FileNotFoundError:
        return set()


def _assert_complete_on_disk(ckpt):
    """What a kill leaves: the tracker (if any) names a renamed, complete directory."""
    it = _tracker(ckpt)
    if it is not None:
        d = ckpt / f"iter_{it:07d}"
        assert d.is_dir() and (d / "metadata.json").exists() and (d / "common.pt").exists(), sorted(os.listdir(ckpt))


def _run_args(run, data):
    """The restartable run's `megatron-llm train` arguments (after the program name)."""
    args = train_args(run, data, 1, FLAGS + ["--save", str(run / "ckpt"), "--load", str(run / "ckpt")], **KW)
    return args[args.index("train") + 1:]


def _kill_when(proc, ckpt, inside_save: int, at_s: float, rng) -> str:
    """SIGKILL the whole process group: inside the inside_save-th save of this process (shortly after its
    iter_N.tmp appears), or at at_s when inside_save is 0."""
    t0 = time.monotonic()
    seen, was_saving = 0, False
    left_over = _partials(ckpt)  # a partial save of the previous kill: not this process saving
    while proc.poll() is None:
        if inside_save:
            now = _partials(ckpt)
            left_over &= now  # once removed (the restart's load does), a same-named one is this process's
            saving = bool(now - left_over)
            seen += int(saving and not was_saving)
            was_saving = saving
            if saving and seen == inside_save:
                time.sleep(rng.uniform(0.0, 0.03))
                break
        elif time.monotonic() - t0 >= at_s:
            break
        if time.monotonic() - t0 > 240:
            break
        time.sleep(0.002)
    if proc.poll() is not None:
        return "finished"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return "killed"


def test_kill_9_anywhere_then_resume(tmp_path):
    data = make_dataset(str(tmp_path / "zipf"))
    t0 = time.monotonic()
    ref_dir = tmp_path / "reference"
    check(train(ref_dir, data, 1, FLAGS + ["--save", str(ref_dir / "ckpt")], **KW))
    run_s = time.monotonic() - t0
    reference = losses(ref_dir)
    assert sorted(reference) == list(range(1, ITERS + 1))

    server = ForkServer()
    try:
        _kill_trials(tmp_path, data, server, reference, t0, run_s)
    finally:
        server.close()


def _kill_trials(tmp_path, data, server, reference, t0, run_s):
    # A forked run skips the imports of the reference's launcher and rank: kill moments span what remains, first
    # estimated, then the measured duration of the latest forked run that went from scratch to the end.
    fork_s = max(1.5, run_s - server.ready_s)
    rng = random.Random(11)
    run = tmp_path / "run"
    ckpt = run / "ckpt"
    failures, in_save, finished, chains, resumed_from = [], 0, 0, 1, []
    for trial in range(TRIALS):
        before, had_partial = _tracker(ckpt), bool(_partials(ckpt))
        log_path = tmp_path / f"trial{trial}.log"
        started = time.monotonic()
        proc = server.start(_run_args(run, data), log_path)
        # odd trials: inside this process's 1st, 2nd or 3rd save; even ones at a random moment, start-up
        # included (later saves and moments let the chain advance past its first checkpoints)
        inside = rng.choice((1, 2, 3)) if trial % 2 else 0
        outcome = _kill_when(proc, ckpt, inside, rng.uniform(0.5, 1.3 * fork_s), rng)
        out = log_path.read_text()
        loaded = re.search(r"loaded checkpoint \S*iter_(\d+)", out)
        if loaded:
            resumed_from.append(int(loaded.group(1)))
        if loaded and int(loaded.group(1)) != before:
            failures.append(f"trial {trial}: loaded iteration {int(loaded.group(1))}, newest complete was {before}")
        if loaded is None and "starting from scratch" in out and before is not None:
            failures.append(f"trial {trial}: started from scratch although iteration {before} was saved")
        if had_partial and "training" in out and "loaded checkpoint" in out and "removed partial" not in out:
            failures.append(f"trial {trial}: a partial checkpoint was left in place")
        try:
            _assert_complete_on_disk(ckpt)
        except AssertionError as e:
            failures.append(f"trial {trial}: after the kill: {e}")
        if outcome == "finished":  # the run completed before the kill: check it, start a new chain
            finished += 1
            if before is None:
                fork_s = time.monotonic() - started
            if proc.returncode != 0 or losses(run) != reference:
                failures.append(f"trial {trial}: completed run exit {proc.returncode}, losses differ")
            shutil.rmtree(run)
            chains += 1
        else:
            in_save += int(bool(inside))
    # the last restart is `megatron-llm train --load` as a user runs it
    proc = train(run, data, 1, FLAGS + ["--save", str(ckpt), "--load", str(ckpt)], **KW)
    check(proc)
    got = losses(run)
    records = [l for l in (run / "tb" / "metrics.jsonl").read_text().splitlines() if '"lm_loss"' in l]
    print(f"\nkill trials: {TRIALS} ({in_save} inside a save), resumed from iterations {resumed_from}, "
          f"runs completed between kills: {finished}, "
          f"chains: {chains}, failures: {len(failures)}; {time.monotonic() - t0:.0f} s "
          f"(reference {run_s:.1f} s, fork server imports {server.ready_s:.1f} s)")
    for f in failures:
        print("  " + f)
    assert not failures, failures
    assert len(records) == ITERS, "every iteration logged once"
    assert got == reference, {k: (got.get(k), reference[k]) for k in reference if got.get(k) != reference[k]}
    assert not _partials(ckpt)
