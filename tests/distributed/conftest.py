"""Fixtures shared by the multi-process tests."""

from __future__ import annotations

import pytest

from trainrun import make_dataset


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
