"""What the benchmarks share: the `megatron-llm train` command line they measure (one rank, mock data,
NullTokenizer, no evaluation, no learning-rate warm-up) and the per-iteration figures it logs (metrics.jsonl)."""

from __future__ import annotations

import json
import os
from typing import List


def mock_train_args(device: str, shape: List[str], mbs: int, gbs: int, iters: int, tb_dir: str) -> List[str]:
    """`train` and its flags (after the program name); shape: the model's flags (a --recipe or the sizes)."""
    return ["train", "--device", device, "--nproc-per-node", "1", *shape, "--mock-data", "--tokenizer-type",
            "NullTokenizer", "--eval-interval", "0", "--lr-warmup-iters", "0", "--micro-batch-size", str(mbs),
            "--global-batch-size", str(gbs), "--train-iters", str(iters), "--tensorboard-dir", tb_dir]


def metrics(tb_dir: str) -> List[dict]:
    """The run's metrics.jsonl records, in order."""
    with open(os.path.join(tb_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
