"""--async-save writes in the background and still saves the state of its iteration (a resume from it continues
the run exactly); --keep-last keeps the newest N; --save-interval-minutes saves at log boundaries once due."""

from __future__ import annotations

import os
import shutil

import pytest

from trainrun import check, losses, rewind, train

ITERS = 6


def _saved(ckpt):
    return sorted(int(n[5:]) for n in os.listdir(ckpt) if n.startswith("iter_"))


def test_async_save_keep_last_and_resume(dataset, tmp_path):
    ckpt = tmp_path / "ckpt"
    run = tmp_path / "run"
    proc = train(run, dataset, 2, ["--save", str(ckpt), "--save-interval", "2", "--async-save", "--keep-last", "2"],
                 iters=ITERS, gbs=4, mbs=2)
    check(proc)
    assert _saved(ckpt) == [4, 6]  # 2 was deleted once 6 was durable
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    assert "--keep-last 2: deleted checkpoints of iteration(s) 2" in proc.stdout
    straight = losses(run)
    # The checkpoint of iteration 4 was written while iteration 5 trained: it still holds iteration 4's state.
    snap = tmp_path / "snap"
    shutil.copytree(ckpt, snap)
    rewind(snap, 4)
    resumed = tmp_path / "resumed"
    proc = train(resumed, dataset, 2, ["--load", str(snap)], iters=ITERS, gbs=4, mbs=2)
    check(proc)
    got = losses(resumed)
    assert sorted(got) == [5, 6]
    assert got == {k: straight[k] for k in (5, 6)}


@pytest.fixture(scope="module")
def one_rank(dataset, tmp_path_factory):
    """An uninterrupted one-rank run of ITERS iterations saving by --save-interval-minutes and recording the samples
    it draws (MEGATRON_LLM_TEST_SAMPLE_LOG): test_save_interval_minutes checks its saves and log records,
    test_exactly_once_samples_across_restart_and_dp_change uses its samples as the reference order (saving and the
    log interval do not change which samples are drawn)."""
    out = tmp_path_factory.mktemp("one-rank")
    # 0.0001 minutes: due at every log boundary (2, 4, 6); without it only the final save (6) would happen
    flags = ["--save", str(out / "ckpt"), "--save-interval-minutes", "0.0001", "--log-interval", "2"]
    check(train(out, dataset, 1, flags, iters=ITERS, gbs=4, mbs=2,
                env={"MEGATRON_LLM_TEST_SAMPLE_LOG": str(out / "samples")}))
    return out


def test_save_interval_minutes(one_rank):
    assert _saved(one_rank / "ckpt") == [2, 4, 6]
    rec = [r for r in losses(one_rank)]
    assert rec == [2, 4, 6]  # one metrics.jsonl record per log interval


def _samples(prefix_dir):
    out = []
    for f in sorted(prefix_dir.glob("samples.*")):
        out += [tuple(map(int, l.split())) for l in f.read_text().splitlines()]
    return out


def test_exactly_once_samples_across_restart_and_dp_change(dataset, one_rank, tmp_path):
    """Stopped at iteration 3 at DP2 and resumed at DP1: the samples trained on are those of an uninterrupted run,
    each once (MEGATRON_LLM_TEST_SAMPLE_LOG records position and token checksum of every sample drawn)."""
    ref, run = one_rank, tmp_path / "run"  # ref: the uninterrupted one-rank run
    run.mkdir()
    ckpt = str(run / "ckpt")
    env = {"MEGATRON_LLM_TEST_SAMPLE_LOG": str(run / "samples")}
    check(train(run, dataset, 2, ["--save", ckpt, "--exit-interval", "3"], iters=ITERS, gbs=4, mbs=2, env=env))
    check(train(run, dataset, 1, ["--load", ckpt], iters=ITERS, gbs=4, mbs=2, env=env))
    expected = sorted(_samples(ref))
    got = sorted(_samples(run))
    assert [p for p, _ in expected] == list(range(ITERS * 4))
    assert got == expected
