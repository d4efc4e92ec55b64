"""Resume and reshard through dist_checkpointing, compared iteration by iteration with an uninterrupted run."""

from __future__ import annotations

import os

import pytest

from trainrun import check, copy_metrics, losses, max_rel_diff, snapshot, train

TP2PP2 = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]
TOTAL, STOP = 20, 10


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    # The uninterrupted run of --train-iters 20 saves at 10 (--save-interval: the save an --exit-interval 10 stop
    # makes) and at 20; the resumed run loads that checkpoint of iteration 10 and trains 11..20 of the same schedule.
    straight = tmp_path_factory.mktemp("straight")
    check(train(straight, dataset, 4, TP2PP2 + ["--save", str(straight / "ckpt"), "--save-interval", str(STOP)],
                iters=TOTAL))
    resumed = tmp_path_factory.mktemp("resumed")
    ckpt = snapshot(straight / "ckpt", STOP, resumed / "ckpt")
    snap = snapshot(straight / "ckpt", STOP, resumed / "ckpt-at-10")  # the resumed run adds iteration 20 to ckpt
    copy_metrics(straight, resumed)  # as the stopped run left it, plus records after 10 that the resume must drop
    second = train(resumed, dataset, 4, TP2PP2 + ["--save", ckpt, "--load", ckpt], iters=TOTAL)
    check(second)
    return {"data": dataset, "straight": losses(straight), "resumed": losses(resumed), "snapshot": snap,
            "straight_ckpt": str(straight / "ckpt"), "ckpt": ckpt, "second_stdout": second.stdout}


def test_resume_is_bitwise_identical(runs):
    straight, resumed = runs["straight"], runs["resumed"]
    assert sorted(straight) == list(range(1, TOTAL + 1))
    assert sorted(resumed) == list(range(1, TOTAL + 1))  # metrics.jsonl continued across the restart, no repeats
    for it in range(1, TOTAL + 1):
        assert resumed[it] == straight[it], (it, resumed[it], straight[it])
    assert "loaded checkpoint" in runs["second_stdout"]


def test_checkpoint_layout_on_disk(runs):
    # the uninterrupted run's (--save-interval 10, final save at 20) and the resumed run's (10 loaded, 20 saved)
    for ckpt in (runs["straight_ckpt"], runs["ckpt"]):
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
