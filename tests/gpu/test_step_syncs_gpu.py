"""On a GPU, between log boundaries, the fused path's training step synchronises with the host once: the gradient
norm's read (clipping and the NaN check share it). Every stream, event and device synchronisation the training
thread waits on is recorded with the code that asked for it (torch's CUDA trace, tests/distributed/
step_reads_worker.py), so a failure names the call to remove. The CPU counterpart, host reads and collectives at
TP2 x PP2: tests/distributed/test_step_host_reads.py. Skipped without CUDA."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests" / "distributed"))

from step_reads_worker import GRAD_NORM_READ  # noqa: E402

from megatron_llm.launch.local import run_workers  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ITERS, LOG_INTERVAL = 10, 5


def test_fused_step_synchronises_once_between_log_boundaries(tmp_path, monkeypatch):
    argv = ["--device", "cuda", "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "1024",
            "--num-layers", "2", "--hidden-size", "128", "--num-attention-heads", "4", "--num-query-groups", "2",
            "--seq-length", "128", "--max-position-embeddings", "128", "--micro-batch-size", "2",
            "--global-batch-size", "4", "--train-iters", str(ITERS), "--log-interval", str(LOG_INTERVAL),
            "--eval-interval", "0", "--bf16", "--transformer-impl", "fused", "--cross-entropy-loss-fusion",
            "--tensorboard-dir", str(tmp_path / "tb")]
    monkeypatch.setenv("STEP_READS_OUT", str(tmp_path))
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    # what is already there too: on the device, the carried megatron-core (gpu_checks.sh)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests" / "distributed"),
                                                                    os.environ.get("PYTHONPATH")])))
    assert run_workers("step_reads_worker", argv, 1) == 0

    syncs = {int(i): sites for i, sites in json.loads((tmp_path / "rank0.json").read_text())["syncs"].items()}
    print({i: syncs.get(i, []) for i in range(1, ITERS + 1)})  # the whole picture in the log, boundaries included
    for i in range(2, ITERS + 1):  # iteration 1 also sets things up (cuDNN plans, allocator, workers)
        if i % LOG_INTERVAL:
            assert syncs.get(i, []) == [GRAD_NORM_READ], (i, syncs.get(i))
