"""A NaN gradient injected into one rank at iteration 5 (MEGATRON_LLM_TEST_NAN_GRAD): each --nan-policy does what
it says, the report names iteration, rank and parameter, and no checkpoint ever holds a NaN. Without the check
(--no-check-for-nan-in-loss-and-grad) the NaN reaches the weights and the checkpoint: the guard is what stops it."""

from __future__ import annotations

import os

import pytest

from trainrun import check, checkpoint_tensors, losses, make_dataset, train

ITERS, SAVE_EVERY, BAD, BAD_RANK = 8, 3, 5, 1
POISON = {"MEGATRON_LLM_TEST_NAN_GRAD": f"{BAD}:{BAD_RANK}"}
FIRST_PARAM = "embedding.word_embeddings.weight"


def _run(tmp, data, flags):
    ckpt = tmp / "ckpt"
    proc = train(tmp, data, 2, ["--save", str(ckpt), "--save-interval", str(SAVE_EVERY)] + flags,
                 iters=ITERS, gbs=4, mbs=2, env=POISON)
    return proc, ckpt


def _saved(ckpt):
    return sorted(int(n[5:]) for n in os.listdir(ckpt) if n.startswith("iter_") and not n.endswith(".tmp"))


def _nonfinite(ckpt, it):
    import torch

    return [k for k, t in checkpoint_tensors(str(ckpt / f"iter_{it:07d}")).items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    data = make_dataset(str(tmp_path_factory.mktemp("data") / "zipf"))
    out = {}
    for name, flags in [("unchecked", ["--no-check-for-nan-in-loss-and-grad"]), ("skip", []),
                        ("rollback", ["--nan-policy", "rollback"]), ("stop", ["--nan-policy", "stop"])]:
        tmp = tmp_path_factory.mktemp(name)
        proc, ckpt = _run(tmp, data, flags)
        out[name] = {"proc": proc, "ckpt": ckpt, "losses": losses(tmp) if (tmp / "tb").exists() else {}}
    return out


def test_unchecked_nan_reaches_the_checkpoint(runs):
    """The control: the hook really poisons the update when nothing guards it."""
    r = runs["unchecked"]
    check(r["proc"])
    assert _nonfinite(r["ckpt"], 3) == []
    assert _nonfinite(r["ckpt"], 6), "the injected NaN should have reached the weights"


def test_skip_withholds_the_update_and_reports_rank_and_parameter(runs):
    r, ref = runs["skip"], runs["unchecked"]["losses"]
    check(r["proc"])
    log = r["proc"].stdout + r["proc"].stderr
    assert f"iteration {BAD}: gradient norm is nan" in log, log[-3000:]
    assert f"rank {BAD_RANK} (" in log and FIRST_PARAM in log, log[-3000:]
    assert "update skipped (--nan-policy skip)" in log
    assert "number of skipped iterations:   1" in log
    got = r["losses"]
    assert sorted(got) == list(range(1, ITERS + 1))
    for it in range(1, BAD + 1):  # up to and including the bad iteration's forward pass: as the unguarded run
        assert got[it] == ref[it], it
    assert got[BAD + 1] != ref[BAD + 1]  # the weights differ from then on: the update of iteration 5 was not applied
    assert _saved(r["ckpt"]) == [3, 6, 8]
    for it in _saved(r["ckpt"]):
        assert _nonfinite(r["ckpt"], it) == [], it


def test_rollback_replays_from_the_checkpoint_and_skips_the_batch(runs):
    r, skip, ref = runs["rollback"], runs["skip"]["losses"], runs["unchecked"]["losses"]
    check(r["proc"])
    log = r["proc"].stdout + r["proc"].stderr
    assert f"rolled back to iteration {SAVE_EVERY}, the batch of iteration {BAD} will be skipped" in log, log[-3000:]
    assert f"iteration {BAD}: batch skipped" in log
    got = r["losses"]
    assert sorted(got) == [it for it in range(1, ITERS + 1) if it != BAD]  # the bad batch is never trained on
    for it in range(1, BAD):  # iteration 4 was replayed from checkpoint 3: exactly as first time
        assert got[it] == ref[it], it
    # Weights after 4, then the batches 6.. : what skipping the update of 5 gives too.
    for it in range(BAD + 1, ITERS + 1):
        assert got[it] == pytest.approx(skip[it], rel=1e-6), it
    for it in _saved(r["ckpt"]):
        assert _nonfinite(r["ckpt"], it) == [], it


def test_stop_exits_without_saving_the_poisoned_state(runs):
    from megatron_llm.exit_codes import EXIT_CODE_NAN

    r = runs["stop"]
    assert r["proc"].returncode == EXIT_CODE_NAN, r["proc"].stderr[-3000:]
    assert "--nan-policy stop: exiting without saving" in r["proc"].stderr
    assert _saved(r["ckpt"]) == [3]
    assert (r["ckpt"] / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert max(r["losses"]) == BAD  # the interval's losses are still logged
