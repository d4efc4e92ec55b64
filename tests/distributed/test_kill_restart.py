"""kill -9 at random moments, half of them inside a checkpoint save, each followed by a restart with --load:
every restart resumes from the newest complete checkpoint (a partial one is removed, never loaded), and the run
that finally completes logged every iteration once with the losses of an uninterrupted run.

MEGATRON_LLM_KILL_TRIALS sets the number of kills (default 20; each costs one start-up of a training process).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import time

from trainrun import check, losses, make_dataset, train, train_args

TRIALS = int(os.environ.get("MEGATRON_LLM_KILL_TRIALS", "20"))
ITERS, SAVE_EVERY = 12, 2
FLAGS = ["--save-interval", str(SAVE_EVERY)]
KW = dict(iters=ITERS, gbs=4, mbs=2)


def _tracker(ckpt):
    path = ckpt / "latest_checkpointed_iteration.txt"
    return int(path.read_text()) if path.exists() else None


def _assert_complete_on_disk(ckpt):
    """What a kill leaves: the tracker (if any) names a renamed, complete directory."""
    it = _tracker(ckpt)
    if it is not None:
        d = ckpt / f"iter_{it:07d}"
        assert d.is_dir() and (d / "metadata.json").exists() and (d / "common.pt").exists(), sorted(os.listdir(ckpt))


def _start(run, data, log):
    args = train_args(run, data, 1, FLAGS + ["--save", str(run / "ckpt"), "--load", str(run / "ckpt")], **KW)
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))


def _kill_when(proc, ckpt, inside_save: int, at_s: float, rng) -> str:
    """SIGKILL the whole process group: inside the inside_save-th save of this process (shortly after its
    iter_N.tmp appears), or at at_s when inside_save is 0."""
    t0 = time.monotonic()
    seen, was_saving = 0, False
    while proc.poll() is None:
        if inside_save:
            saving = ckpt.is_dir() and any(n.endswith(".tmp") for n in os.listdir(ckpt))
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

    rng = random.Random(11)
    run = tmp_path / "run"
    ckpt = run / "ckpt"
    failures, in_save, finished, chains = [], 0, 0, 1
    for trial in range(TRIALS):
        before, had_partial = _tracker(ckpt), ckpt.is_dir() and any(n.endswith(".tmp") for n in os.listdir(ckpt))
        log_path = tmp_path / f"trial{trial}.log"
        with open(log_path, "w") as log:
            proc = _start(run, data, log)
            inside = rng.choice((1, 2)) if trial % 2 else 0  # odd trials: in this process's 1st or 2nd save
            outcome = _kill_when(proc, ckpt, inside, rng.uniform(0.5, run_s), rng)
        out = log_path.read_text()
        loaded = re.search(r"loaded checkpoint \S*iter_(\d+)", out)
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
            if proc.returncode != 0 or losses(run) != reference:
                failures.append(f"trial {trial}: completed run exit {proc.returncode}, losses differ")
            shutil.rmtree(run)
            chains += 1
        else:
            in_save += int(bool(inside))
    final = tmp_path / "final.log"
    with open(final, "w") as log:
        proc = _start(run, data, log)
        proc.wait(timeout=300)
    text = final.read_text()
    assert proc.returncode == 0, text[-3000:]
    got = losses(run)
    records = [l for l in (run / "tb" / "metrics.jsonl").read_text().splitlines() if '"lm_loss"' in l]
    print(f"\nkill trials: {TRIALS} ({in_save} inside a save), runs completed between kills: {finished}, "
          f"chains: {chains}, failures: {len(failures)}; {time.monotonic() - t0:.0f} s")
    for f in failures:
        print("  " + f)
    assert not failures, failures
    assert len(records) == ITERS, "every iteration logged once"
    assert got == reference, {k: (got.get(k), reference[k]) for k in reference if got.get(k) != reference[k]}
    assert not [n for n in os.listdir(ckpt) if n.endswith(".tmp")]
