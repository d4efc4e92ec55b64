"""TransNormerLLM trains like one process under every parallel layout, and resumes / reshards from a checkpoint.

Same method and tolerance as test_parallel_equivalence.py (Llama): fp32 losses per iteration within 1e-6 relative.
"""

from __future__ import annotations

import pytest

from trainrun import check, losses, max_rel_diff, rewind, train

TOL = 1e-6
ITERS = 6
# 4 layers, 4 heads of 16 (no grouped KV), LRPE in layers 0 and 2 (one on each pipeline stage).
TRANSNORMER = ["--architecture", "transnormer", "--num-query-groups", "4", "--lrpe-layers", "0", "2",
               "--no-untie-embeddings-and-output-weights"]


@pytest.fixture(scope="module")
def baseline(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("tn-tp1pp1")
    check(train(out, dataset, 1, TRANSNORMER, iters=ITERS))
    result = losses(out)
    assert sorted(result) == list(range(1, ITERS + 1))
    assert result[ITERS] < result[1]
    return result


LAYOUTS = {
    "tp2-sequence-parallel": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel"]),
    "pp2-vp2": (2, ["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"]),
    "dp2-distributed-optimizer": (2, ["--use-distributed-optimizer"]),
    # tp2-pp2: test_tp2_pp2_matches_single_rank_then_resumes_at_tp1 below (the same run also saves)
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_rank(name, dataset, baseline, tmp_path):
    nproc, flags = LAYOUTS[name]
    check(train(tmp_path, dataset, nproc, TRANSNORMER + flags, iters=ITERS))
    got = losses(tmp_path)
    assert max_rel_diff(got, baseline) <= TOL, (name, got, baseline)


def test_tp2_pp2_matches_single_rank_then_resumes_at_tp1(dataset, baseline, tmp_path):
    """TP2 x PP2 trains like one process (all 6 iterations within TOL of the baseline); the same run saves at
    iteration 3 (--save-interval 3), and that checkpoint resumed on one process gives iterations 4..6 of the same
    run (tied embeddings, LRPE angles on both stages: the preset's configuration). One 4-rank launch serves both
    checks: the iteration-3 checkpoint is the one a run stopped there (--exit-interval 3) writes, and the run going
    on to iteration 6 is the straight TP2 x PP2 run the layout check needs."""
    ckpt = tmp_path / "ckpt"
    tp2pp2 = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]
    check(train(tmp_path / "first", dataset, 4, TRANSNORMER + tp2pp2 + ["--save", str(ckpt), "--save-interval", "3"],
                iters=ITERS))
    got = losses(tmp_path / "first")
    assert max_rel_diff(got, baseline) <= TOL, ("tp2-pp2", got, baseline)

    # resume from iteration 3: drop the final checkpoint so that the tracker names iteration 3 as the newest
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    rewind(ckpt, 3)
    second = train(tmp_path / "second", dataset, 1, TRANSNORMER + ["--load", str(ckpt)], iters=ITERS)
    check(second)
    assert "resharded from TP2 x PP2" in second.stdout
    got = losses(tmp_path / "second")
    assert sorted(got) == [4, 5, 6]
    assert max_rel_diff(got, {i: baseline[i] for i in (4, 5, 6)}) <= 1e-5
