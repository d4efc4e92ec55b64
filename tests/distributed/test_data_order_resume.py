"""Resuming with another --train-iters keeps the checkpoint's sample order, and refuses (one line, exit 2) when that
order holds too few samples, instead of letting megatron-core reshuffle its epochs."""

from __future__ import annotations

import shutil

import pytest

from trainrun import check, losses, make_dataset, snapshot, train

TOTAL, STOP = 4, 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    # ~50 samples of 64 tokens per epoch: 12 iterations of 8 would need a second epoch
    data = make_dataset(str(tmp_path_factory.mktemp("data") / "tiny"), num_docs=30)
    # The uninterrupted run saves at STOP (and at TOTAL); "ckpt" holds its checkpoint of STOP as the latest, as a run
    # stopped there by --exit-interval leaves it.
    straight = tmp_path_factory.mktemp("straight")
    check(train(straight, data, 1, ["--save", str(straight / "ckpt"), "--save-interval", str(STOP)], iters=TOTAL))
    ckpt = snapshot(straight / "ckpt", STOP, tmp_path_factory.mktemp("first") / "ckpt")
    return {"data": data, "straight": losses(straight), "ckpt": ckpt}


def test_more_epochs_than_the_checkpoint_order_is_refused(runs, tmp_path):
    proc = train(tmp_path, runs["data"], 2, ["--load", runs["ckpt"]], iters=12)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]  # one line, not one per rank
    assert "--train-iters 12" in errors[0] and "--train-iters 4" in errors[0], errors[0]
    assert not (tmp_path / "tb" / "metrics.jsonl").exists() or not losses(tmp_path)  # nothing trained


def test_fewer_iterations_continue_the_same_order(runs, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    shutil.copytree(runs["ckpt"], ckpt)
    proc = train(tmp_path, runs["data"], 1, ["--load", ckpt], iters=STOP + 1)
    check(proc)
    # iteration 3's loss is the checkpoint's weights on iteration 3's samples: the same samples as before
    assert losses(tmp_path) == {STOP + 1: runs["straight"][STOP + 1]}
