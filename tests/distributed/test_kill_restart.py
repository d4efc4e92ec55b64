"""kill -9 at random moments, half of them inside a checkpoint save, each followed by a restart with --load:
every restart resumes from the newest complete checkpoint (a partial one is removed, never loaded), and the run
that finally completes logged every iteration once with the losses of an uninterrupted run.

MEGATRON_LLM_KILL_TRIALS sets the number of kills (default 20).

The uninterrupted reference and the final restart that completes the chain are `megatron-llm train` runs as a user
starts them. The killed runs are the same command run as one rank the way torchrun or srun start it (RANK,
WORLD_SIZE, MASTER_* set: `megatron-llm train` is then the rank itself, no launcher process). Every run is forked
from the tests' warm interpreter (warm_launch.py), which has already imported torch and megatron-core: a restart
then costs the trainer's own start-up (process group, dataset, model, checkpoint load), not ~4 s of imports, and the
random kill moments fall on training and saving rather than on imports, where nothing is written. The child is a
fresh process for everything under test (nothing is initialised before the fork) and is killed with SIGKILL as a
whole process group.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import time

import warm_launch
from trainrun import check, losses, make_dataset, train, train_args

TRIALS = int(os.environ.get("MEGATRON_LLM_KILL_TRIALS", "20"))
ITERS, SAVE_EVERY = 12, 2
FLAGS = ["--save-interval", str(SAVE_EVERY)]
KW = dict(iters=ITERS, gbs=4, mbs=2)

def _start_rank(argv, log_path):
    """`megatron-llm train argv` as one rank the way torchrun starts it, forked from the warm interpreter; a
    Popen-like handle (pid: its process group)."""
    from megatron_llm.launch.local import free_port, worker_env

    env = dict(worker_env(0, 1, "127.0.0.1", free_port(), cpu=True), PYTHONWARNINGS="ignore")
    return warm_launch.server().start("megatron_llm.cli", ["train", *argv], env, str(log_path))


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
    warm_launch.server()  # started before the reference is timed: its duration spans the kill moments
    t0 = time.monotonic()
    ref_dir = tmp_path / "reference"
    check(train(ref_dir, data, 1, FLAGS + ["--save", str(ref_dir / "ckpt")], **KW))
    run_s = time.monotonic() - t0
    reference = losses(ref_dir)
    assert sorted(reference) == list(range(1, ITERS + 1))

    _kill_trials(tmp_path, data, reference, t0, run_s)


def _kill_trials(tmp_path, data, reference, t0, run_s):
    # Kill moments span a run, first the reference's duration, then the measured duration of the latest killed-run
    # command that went from scratch to the end.
    fork_s = max(1.5, run_s)
    rng = random.Random(11)
    run = tmp_path / "run"
    ckpt = run / "ckpt"
    failures, in_save, finished, chains, resumed_from = [], 0, 0, 1, []
    for trial in range(TRIALS):
        before, had_partial = _tracker(ckpt), bool(_partials(ckpt))
        log_path = tmp_path / f"trial{trial}.log"
        started = time.monotonic()
        proc = _start_rank(_run_args(run, data), log_path)
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
          f"(reference {run_s:.1f} s)")
    for f in failures:
        print("  " + f)
    assert not failures, failures
    assert len(records) == ITERS, "every iteration logged once"
    assert got == reference, {k: (got.get(k), reference[k]) for k in reference if got.get(k) != reference[k]}
    assert not _partials(ckpt)
