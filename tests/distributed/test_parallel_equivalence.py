"""Every parallel layout trains the same model on the same data: per-iteration fp32 losses agree with TP1/PP1/DP1.

The tolerance is 1e-6 relative (the issue asks for 1e-4): layouts differ only in the order of floating-point
reductions. Measured on this machine: differences of 1e-7 or less.
"""

from __future__ import annotations

import pytest

from trainrun import check, losses, max_rel_diff, train

TOL = 1e-6
ITERS = 6


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
    "pp2-vp2": None,  # the session's PP2 x VPP2 run (conftest.py: pp2_vp2_run), shared with test_checkpoint_vpp.py
    "dp2": (2, []),
    "dp2-no-distributed-optimizer": (2, ["--no-use-distributed-optimizer"]),
    "tp2-pp2": (4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_rank(name, dataset, baseline, tmp_path, request):
    if LAYOUTS[name] is None:
        assert ITERS == 6  # what pp2_vp2_run trains (with the same defaults as train() here)
        got = losses(request.getfixturevalue("pp2_vp2_run")["out"])
    else:
        nproc, flags = LAYOUTS[name]
        check(train(tmp_path, dataset, nproc, flags, iters=ITERS))
        got = losses(tmp_path)
    assert max_rel_diff(got, baseline) <= TOL, (name, got, baseline)


def test_tied_embeddings_across_pipeline_stages(dataset, tmp_path):
    # With tied embeddings the first and last pipeline stages each hold a copy of the word embeddings, kept equal by
    # megatron-core's embedding-group gradient all-reduce: PP2 must train exactly like one rank.
    tied = ["--no-untie-embeddings-and-output-weights"]
    check(train(tmp_path / "one", dataset, 1, tied, iters=ITERS))
    check(train(tmp_path / "pp2", dataset, 2, tied + ["--pipeline-model-parallel-size", "2"], iters=ITERS))
    assert max_rel_diff(losses(tmp_path / "pp2"), losses(tmp_path / "one")) <= TOL


def scalar_series(out, key):
    import json

    return {r["iteration"]: r[key] for r in map(json.loads, (out / "tb" / "metrics.jsonl").read_text().splitlines())
            if r.get(key) is not None}


def test_mixed_precision_layouts(dataset, baseline, tmp_path):
    # bf16 keeps fp32 main weights and grads, so layouts still agree closely (measured: 2e-5); fp16 runs with a dynamic
    # loss scale; both stay within a few percent of the fp32 run on the same data.
    check(train(tmp_path / "bf16", dataset, 1, ["--bf16"], iters=ITERS))
    check(train(tmp_path / "bf16-tp2-pp2", dataset, 4,
                ["--bf16", "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], iters=ITERS))
    check(train(tmp_path / "fp16", dataset, 1, ["--fp16"], iters=ITERS))
    bf16, bf16_tp2pp2, fp16 = (losses(tmp_path / n) for n in ("bf16", "bf16-tp2-pp2", "fp16"))
    assert max_rel_diff(bf16_tp2pp2, bf16) <= 1e-3
    assert max_rel_diff(fp16, bf16) <= 1e-2
    assert max_rel_diff(bf16, baseline) <= 5e-2
    assert set(scalar_series(tmp_path / "bf16", "loss_scale").values()) == {1.0}
    assert min(scalar_series(tmp_path / "fp16", "loss_scale").values()) > 1.0
