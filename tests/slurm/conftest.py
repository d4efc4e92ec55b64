"""A one-machine Slurm cluster (two emulated nodes) for the Slurm tests, started once and torn down by PID."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "distributed"))  # trainrun: tiny model flags, datasets

from cluster import LocalSlurmCluster, missing_binaries  # noqa: E402


# module scope: the daemons stop when the Slurm tests are done, not at the end of the whole suite
@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = missing_binaries()
    if missing:
        # CI installs Slurm (scripts/setup_slurm.sh, run by scripts/test.sh): a missing binary is a setup failure.
        pytest.fail(f"Slurm is not installed ({', '.join(missing)}): run `bash scripts/setup_slurm.sh` as root")
    cluster = LocalSlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm_env(slurm, tmp_path, monkeypatch):
    """Environment for a `megatron-llm submit` subprocess against the test cluster, with its own runs registry."""
    env = dict(slurm.env, MEGATRON_LLM_HOME=str(tmp_path / "home"), PYTHONWARNINGS="ignore")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env
