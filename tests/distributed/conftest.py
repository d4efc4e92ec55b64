"""Fixtures shared by the multi-process tests."""

from __future__ import annotations

import pytest

from trainrun import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The tests' Zipf token corpus as a .bin/.idx prefix, written once per test module."""
    return make_dataset(str(tmp_path_factory.mktemp("data") / "zipf"))
