"""Every parallel layout trains the same model on the same data: per-iteration fp32 losses agree with TP1/PP1/DP1.

The tolerance is 1e-6 relative (the issue asks for 1e-4): layouts differ only in the order of floating-point
reductions. Measured on this machine: differences of 1e-7 or less.
"""

from __future__ import annotations

import pytest

from trainrun import check, losses, make_dataset, max_rel_diff, train

TOL = 1e-6
ITERS = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("data") / "zipf"))


@pytest.fixture(scope="module")
def baseline(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("tp1pp1")
    check(train(out, dataset, 1, [], iters=ITERS))
    result = losses(out)
    assert sorted(result) == list(range(1, ITERS + 1))
    assert result[ITERS] < result[1], "training on real token statistics should lower the loss"
    return result


LAYOUTS = {
    "tp2": (2, ["--tensor-model-parallel-size", "2"]),
    "tp2-sequence-parallel": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel"]),
    "pp2": (2, ["--pipeline-model-parallel-size", "2"]),
    "pp2-vp2": (2, ["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"]),
    "dp2": (2, []),
    "dp2-no-distributed-optimizer": (2, ["--no-use-distributed-optimizer"]),
    "tp2-pp2": (4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_rank(name, dataset, baseline, tmp_path):
    nproc, flags = LAYOUTS[name]
    check(train(tmp_path, dataset, nproc, flags, iters=ITERS))
    got = losses(tmp_path)
    assert max_rel_diff(got, baseline) <= TOL, (name, got, baseline)
