"""Fixtures shared by the multi-process tests."""

from __future__ import annotations

import pytest

from trainrun import PP2_VP2, check, make_dataset, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The tests' Zipf token corpus as a .bin/.idx prefix, written once per test module."""
    return make_dataset(str(tmp_path_factory.mktemp("data") / "zipf"))


@pytest.fixture(scope="session")
def smollm2_hf(tmp_path_factory):
    """SmolLM2-135M-Instruct's real weights as a fp32 HF directory, dequantised from the GGUF once per session
    for every test that needs them (hf_reference.save_smollm2)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from hf_reference import save_smollm2

    return save_smollm2(tmp_path_factory.mktemp("smollm2-hf") / "hf")


@pytest.fixture(scope="session")
def pp2_vp2_run(tmp_path_factory):
    """One uninterrupted PP2 x VPP2 run of trainrun's tiny model (6 iterations, default batch) saving every 3
    iterations, trained once per session: it is test_parallel_equivalence.py's pp2-vp2 layout and
    test_checkpoint_vpp.py's reference and checkpoint (saving does not change training: the resumes assert it).
    Returns {"data": its dataset prefix, "out": its output directory (tb/, ckpt/)}."""
    data = make_dataset(str(tmp_path_factory.mktemp("pp2vp2-data") / "zipf"))
    out = tmp_path_factory.mktemp("pp2vp2")
    check(train(out, data, 2, PP2_VP2 + ["--save", str(out / "ckpt"), "--save-interval", "3"], iters=6))
    return {"data": data, "out": out}


@pytest.fixture(scope="session")
def csrc_extension():
    """The csrc extension built (or found) once in the pytest process, so the ranks of a test load the cached module
    instead of taking turns building it inside a timed launch. Returns build.load()'s reason."""
    from megatron_llm.ops import build

    return build.load()[1]
