"""Resume and reshard through dist_checkpointing, compared iteration by iteration with an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from trainrun import check, losses, make_dataset, max_rel_diff, train

TP2PP2 = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]
TOTAL, STOP = 20, 10


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    data = make_dataset(str(tmp_path_factory.mktemp("data") / "zipf"))
    straight = tmp_path_factory.mktemp("straight")
    check(train(straight, data, 4, TP2PP2, iters=TOTAL))
    # Same schedule (--train-iters 20) stopped after 10 by --exit-interval, then resumed from the checkpoint.
    resumed = tmp_path_factory.mktemp("resumed")
    ckpt = str(resumed / "ckpt")
    first = train(resumed, data, 4, TP2PP2 + ["--save", ckpt, "--exit-interval", str(STOP)], iters=TOTAL)
    check(first)
    snapshot = str(resumed / "ckpt-at-10")
    shutil.copytree(ckpt, snapshot)
    second = train(resumed, data, 4, TP2PP2 + ["--save", ckpt, "--load", ckpt], iters=TOTAL)
    check(second)
    return {"data": data, "straight": losses(straight), "resumed": losses(resumed), "snapshot": snapshot,
            "ckpt": ckpt, "second_stdout": second.stdout}


def test_resume_is_bitwise_identical(runs):
    straight, resumed = runs["straight"], runs["resumed"]
    assert sorted(resumed) == list(range(1, TOTAL + 1))  # metrics.jsonl appended across the restart, no repeats
    for it in range(1, TOTAL + 1):
        assert resumed[it] == straight[it], (it, resumed[it], straight[it])
    assert "loaded checkpoint" in runs["second_stdout"]


def test_checkpoint_layout_on_disk(runs):
    ckpt = runs["ckpt"]
    assert open(os.path.join(ckpt, "latest_checkpointed_iteration.txt")).read().strip() == str(TOTAL)
    names = sorted(os.listdir(ckpt))
    assert "iter_0000010" in names and "iter_0000020" in names
    assert not [n for n in names if n.endswith(".tmp")]  # no half-written checkpoint left behind


@pytest.mark.parametrize("name,nproc,flags", [
    ("tp1-pp1", 1, []),
    ("pp4", 4, ["--pipeline-model-parallel-size", "4"]),
    ("dp2-tp2", 4, ["--tensor-model-parallel-size", "2"]),
])
def test_reshard_continues_the_same_run(runs, name, nproc, flags, tmp_path):
    """Load the TP2 x PP2 checkpoint of iteration 10 into another layout: iteration 11 matches the original run."""
    proc = train(tmp_path, runs["data"], nproc, flags + ["--load", runs["snapshot"], "--exit-interval", str(STOP + 1)],
                 iters=TOTAL)
    check(proc)
    assert "resharded from TP2 x PP2" in proc.stdout
    got = losses(tmp_path)
    assert sorted(got) == [STOP + 1]
    assert max_rel_diff(got, {STOP + 1: runs["straight"][STOP + 1]}) <= 1e-5
