"""Save, resume and reshard with virtual pipeline stages (the interleaved schedule), including > 10 chunks per rank.

Each uninterrupted reference run also saves at the iteration the resumes start from (a --save-interval save is the
save an --exit-interval stop makes); the resumed runs start from a copy of that checkpoint."""

from __future__ import annotations

import pytest

from trainrun import PP2_VP2 as PP2VP2, check, losses, max_rel_diff, resume, train

TOTAL, STOP = 6, 3


@pytest.fixture(scope="module")
def vpp(pp2_vp2_run, tmp_path_factory):
    """The session's PP2 x VPP2 run (TOTAL iterations, saved every STOP: conftest.py) and its resume from STOP."""
    straight, data = pp2_vp2_run["out"], pp2_vp2_run["data"]
    out = tmp_path_factory.mktemp("resumed")
    resumed = resume(straight, data, 2, PP2VP2, STOP, TOTAL, out)
    return {"data": data, "straight": losses(straight), "resumed": resumed, "snapshot": str(out / "ckpt")}


def test_vpp_resume_is_bitwise_identical(vpp):
    assert sorted(vpp["straight"]) == list(range(1, TOTAL + 1))
    assert sorted(vpp["resumed"]) == list(range(1, TOTAL + 1))  # records after STOP dropped and logged once again
    assert vpp["resumed"] == vpp["straight"]


def test_vpp_checkpoint_reshards_to_pp1(vpp, tmp_path):
    proc = train(tmp_path, vpp["data"], 1, ["--load", vpp["snapshot"], "--exit-interval", str(STOP + 1)],
                 iters=TOTAL)
    check(proc)
    assert "resharded from TP1 x PP2" in proc.stdout
    got = losses(tmp_path)
    assert sorted(got) == [STOP + 1]
    assert max_rel_diff(got, {STOP + 1: vpp["straight"][STOP + 1]}) <= 1e-5


def test_tp_pp_vpp_checkpoint_resumes_at_another_dp(vpp, tmp_path):
    """TP2 x PP2 x VPP2 saves; PP2 x VPP2 x DP2 resumes: same model, same samples, so the same losses."""
    ckpt = str(tmp_path / "ckpt")
    check(train(tmp_path / "a", vpp["data"], 4, ["--tensor-model-parallel-size", "2", *PP2VP2, "--save", ckpt,
                                               "--exit-interval", str(STOP)], iters=TOTAL))
    assert max_rel_diff(losses(tmp_path / "a"), {k: vpp["straight"][k] for k in range(1, STOP + 1)}) <= 1e-5
    proc = train(tmp_path / "b", vpp["data"], 4, PP2VP2 + ["--load", ckpt, "--exit-interval", str(STOP + 1)],
                 iters=TOTAL)
    check(proc)
    assert "resharded from TP2 x PP2" in proc.stdout
    assert max_rel_diff(losses(tmp_path / "b"), {STOP + 1: vpp["straight"][STOP + 1]}) <= 1e-5


def test_model_keys_are_in_chunk_order():
    from megatron_llm.training.checkpointing import model_keys

    assert model_keys(1) == ["model"]
    assert model_keys(11) == [f"model{i}" for i in range(11)]  # model10 last, not third as sorted() puts it


def test_eleven_chunks_per_rank_resume_exactly(dataset, tmp_path):
    """22 layers on PP2 with one layer per virtual stage: 11 chunks per rank, model10 must load into chunk 10.
    The uninterrupted 4-iteration run saves at 2; resumed from there, iterations 3 and 4 are bitwise the same."""
    flags = ["--num-layers", "22", *PP2VP2]
    straight = tmp_path / "straight"
    check(train(straight, dataset, 2, flags + ["--save", str(straight / "ckpt"), "--save-interval", "2"], iters=4))
    resumed = resume(straight, dataset, 2, flags, 2, 4, tmp_path / "resumed")
    assert sorted(resumed) == [1, 2, 3, 4]
    assert resumed == losses(straight)
