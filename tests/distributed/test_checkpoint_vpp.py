"""Save, resume and reshard with virtual pipeline stages (the interleaved schedule), including > 10 chunks per rank."""

from __future__ import annotations

import shutil

import pytest

from trainrun import check, losses, max_rel_diff, train

PP2VP2 = ["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"]
TOTAL, STOP = 6, 3


def resumed_run(out, dataset, nproc, flags, stop, total, **kw):
    """Train to `stop` (saving there), snapshot the checkpoint, resume to `total`. Returns the snapshot path."""
    ckpt = str(out / "ckpt")
    check(train(out, dataset, nproc, flags + ["--save", ckpt, "--exit-interval", str(stop)], iters=total, **kw))
    snapshot = str(out / f"ckpt-at-{stop}")
    shutil.copytree(ckpt, snapshot)
    proc = train(out, dataset, nproc, flags + ["--save", ckpt, "--load", ckpt], iters=total, **kw)
    check(proc)
    assert "loaded checkpoint" in proc.stdout
    return snapshot


@pytest.fixture(scope="module")
def vpp(dataset, tmp_path_factory):
    straight = tmp_path_factory.mktemp("straight")
    check(train(straight, dataset, 2, PP2VP2, iters=TOTAL))
    resumed = tmp_path_factory.mktemp("resumed")
    snapshot = resumed_run(resumed, dataset, 2, PP2VP2, STOP, TOTAL)
    return {"straight": losses(straight), "resumed": losses(resumed), "snapshot": snapshot}


def test_vpp_resume_is_bitwise_identical(vpp):
    assert sorted(vpp["resumed"]) == list(range(1, TOTAL + 1))
    assert vpp["resumed"] == vpp["straight"]


def test_vpp_checkpoint_reshards_to_pp1(vpp, dataset, tmp_path):
    proc = train(tmp_path, dataset, 1, ["--load", vpp["snapshot"], "--exit-interval", str(STOP + 1)], iters=TOTAL)
    check(proc)
    assert "resharded from TP1 x PP2" in proc.stdout
    got = losses(tmp_path)
    assert sorted(got) == [STOP + 1]
    assert max_rel_diff(got, {STOP + 1: vpp["straight"][STOP + 1]}) <= 1e-5


def test_tp_pp_vpp_checkpoint_resumes_at_another_dp(vpp, dataset, tmp_path):
    """TP2 x PP2 x VPP2 saves; PP2 x VPP2 x DP2 resumes: same model, same samples, so the same losses."""
    ckpt = str(tmp_path / "ckpt")
    check(train(tmp_path / "a", dataset, 4, ["--tensor-model-parallel-size", "2", *PP2VP2, "--save", ckpt,
                                          "--exit-interval", str(STOP)], iters=TOTAL))
    assert max_rel_diff(losses(tmp_path / "a"), {k: vpp["straight"][k] for k in range(1, STOP + 1)}) <= 1e-5
    proc = train(tmp_path / "b", dataset, 4, PP2VP2 + ["--load", ckpt, "--exit-interval", str(STOP + 1)], iters=TOTAL)
    check(proc)
    assert "resharded from TP2 x PP2" in proc.stdout
    assert max_rel_diff(losses(tmp_path / "b"), {STOP + 1: vpp["straight"][STOP + 1]}) <= 1e-5


def test_model_keys_are_in_chunk_order():
    from megatron_llm.training.checkpointing import model_keys

    assert model_keys(1) == ["model"]
    assert model_keys(11) == [f"model{i}" for i in range(11)]  # model10 last, not third as sorted() puts it


def test_eleven_chunks_per_rank_resume_exactly(dataset, tmp_path):
    """22 layers on PP2 with one layer per virtual stage: 11 chunks per rank, model10 must load into chunk 10."""
    flags = ["--num-layers", "22", *PP2VP2]
    check(train(tmp_path / "straight", dataset, 2, flags, iters=4))
    resumed_run(tmp_path / "resumed", dataset, 2, flags, 2, 4)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
