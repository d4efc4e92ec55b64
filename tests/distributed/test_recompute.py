"""Activation recompute changes memory, not numbers: fp32 losses with selective, full-uniform and full-block
recompute are identical to a run without recompute (the recomputed forward repeats the same operations)."""

from __future__ import annotations

import pytest

from trainrun import check, losses, train

ITERS = 4
pytestmark = pytest.mark.usefixtures("csrc_extension")  # the fused variant: built once, not inside a timed launch

VARIANTS = {
    "selective": ["--recompute-granularity", "selective"],
    "full-uniform": ["--recompute-granularity", "full", "--recompute-method", "uniform",
                     "--recompute-num-layers", "2"],
    "full-block-pp2": ["--recompute-granularity", "full", "--recompute-method", "block",
                       "--recompute-num-layers", "1"],
    # the fused spec's layer keeps the pre-MLP norm its fused residual add made; recompute runs that forward twice
    "full-uniform-fused": ["--recompute-granularity", "full", "--recompute-method", "uniform",
                           "--recompute-num-layers", "2", "--transformer-impl", "fused"],
}
BASELINES = {(1, "local"): [], (2, "local"): ["--pipeline-model-parallel-size", "2"],
             (1, "fused"): ["--transformer-impl", "fused"]}


@pytest.fixture(scope="module")
def baselines(dataset, tmp_path_factory):
    out = {}
    for (nproc, impl), flags in BASELINES.items():
        d = tmp_path_factory.mktemp(f"norecompute{nproc}{impl}")
        check(train(d, dataset, nproc, flags, iters=ITERS))
        out[nproc, impl] = losses(d)
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_recompute_gives_identical_losses(name, dataset, baselines, tmp_path):
    pp2 = name.endswith("pp2")
    nproc = 2 if pp2 else 1
    flags = VARIANTS[name] + (["--pipeline-model-parallel-size", "2"] if pp2 else [])
    proc = train(tmp_path, dataset, nproc, flags, iters=ITERS)
    check(proc)
    assert "recompute: " + name.split("-")[0] in proc.stdout  # the start-up line says what runs
    got = losses(tmp_path)
    assert sorted(got) == list(range(1, ITERS + 1))
    want = baselines[nproc, "fused" if name.endswith("fused") else "local"]
    assert got == want, (name, got, want)


def test_bad_recompute_flags_are_refused(tmp_path):
    proc = train(tmp_path, None, 1, ["--recompute-granularity", "full"], iters=1)
    assert proc.returncode != 0
    assert "--recompute-granularity full needs --recompute-method" in proc.stderr + proc.stdout
