"""`submit` and `jobs` run on login nodes, where torch (and so megatron-core) may not be installed: both verbs,
a real submit included (whose data checks read .bin/.idx), must work with torch unimportable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from megatron_llm.data.indexed_writer import IndexedWriter

REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, bin_dir: Path) -> dict:
    blocker = tmp_path / "blocker"
    for name in ("torch", "megatron"):
        (blocker / name).mkdir(parents=True, exist_ok=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this login node')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(REPO)])
    env["PATH"] = os.pathsep.join([str(bin_dir), env["PATH"]])
    env["MEGATRON_LLM_HOME"] = str(tmp_path / "home")
    return env


def _stub_slurm(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 4321\n")
    (bin_dir / "sinfo").write_text("#!/bin/sh\necho 'cpu*'\n")
    (bin_dir / "squeue").write_text("#!/bin/sh\necho '4321|RUNNING'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)


def _run(env, *args):
    return subprocess.run([sys.executable, "-m", "megatron_llm.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=str(REPO))


def test_the_blocker_really_blocks_torch(tmp_path):
    env = _env(tmp_path, tmp_path / "bin")
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "not installed on this login node" in proc.stderr


def test_submit_dry_run_real_submit_and_jobs_without_torch(tmp_path):
    bin_dir = tmp_path / "bin"
    _stub_slurm(bin_dir)
    env = _env(tmp_path, bin_dir)
    prefix = str(tmp_path / "corpus_text_document")
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 200, size=400)
    with IndexedWriter(prefix, np.uint16) as w:
        w.add_documents(rng.integers(0, 1000, size=int(lengths.sum())).astype(np.uint16), lengths)
    train = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
             "--max-position-embeddings", "64", "--micro-batch-size", "1", "--tokenizer-type", "NullTokenizer",
             "--vocab-size", "1024", "--data-path", prefix, "--train-iters", "10"]
    alloc = ["--nodes", "1", "--gpus-per-node", "2", "--partition", "cpu", "--time", "00:10:00"]

    dry = _run(env, "submit", *alloc, "--run-dir", str(tmp_path / "dry"), "--dry-run", *train)
    assert dry.returncode == 0, dry.stderr
    assert (tmp_path / "dry" / "submit.sbatch").is_file()

    real = _run(env, "submit", *alloc, "--run-dir", str(tmp_path / "real"), *train)
    assert real.returncode == 0, real.stderr
    assert "submitted job 4321" in real.stdout
    assert json.loads((tmp_path / "real" / "job.json").read_text())["job_id"] == "4321"

    # the file checks did run: a missing dataset is refused, naming the flag
    bad = _run(env, "submit", *alloc, "--run-dir", str(tmp_path / "bad"), *train[:-4], "--data-path",
               str(tmp_path / "nothing_here"), "--train-iters", "10")
    assert bad.returncode == 2 and "--data-path" in bad.stderr and "not installed" not in bad.stderr

    jobs = _run(env, "jobs", "--json")
    assert jobs.returncode == 0, jobs.stderr
    rows = [json.loads(line) for line in jobs.stdout.splitlines()]
    assert [r["job_id"] for r in rows] == ["4321"]
