"""The gradient is that of the token-weighted mean loss over the whole global batch (the loss the log reports),
not a mean of per-micro-batch means: checked against a one-process plain-autograd reference with uneven masks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from trainrun import MODEL, VOCAB, check, train


def make_eod_dataset(prefix: str, num_docs: int = 600, seed: int = 3) -> str:
    """Short documents each ending with the NullTokenizer's eod (VOCAB - 1): with --eod-mask-loss every sequence
    masks a different number of tokens."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for _ in range(num_docs):
        # runs of very short documents between long ones: some micro-batches mask far more tokens than others
        n = int(rng.integers(1, 4)) if (_ // 20) % 2 else int(rng.integers(60, 200))
        ids = np.append(np.minimum(rng.zipf(1.3, size=n), VOCAB - 2), VOCAB - 1).astype(np.int64)
        builder.add_document(torch.from_numpy(ids), [n + 1])
    builder.finalize(prefix + ".idx")
    return prefix


def test_gradient_is_token_weighted_over_the_global_batch(tmp_path):
    data = make_eod_dataset(str(tmp_path / "eod"))
    flags = ["--eod-mask-loss", "--clip-grad", "0"]
    # DP2, 2 micro-batches per rank; iteration 1 of 2 (warm-up needs a longer schedule)
    check(train(tmp_path / "dp2", data, 2, flags + ["--exit-interval", "1"], iters=2, gbs=8, mbs=2))
    rec = json.loads((tmp_path / "dp2" / "tb" / "metrics.jsonl").read_text().splitlines()[0])
    ref_args = [*MODEL, "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB), "--micro-batch-size", "2",
                "--global-batch-size", "8", "--train-iters", "2", "--seed", "1234", "--device", "cpu",
                "--data-path", data, "--split", "98,2,0", *flags]
    ref = subprocess.run([sys.executable, str(Path(__file__).with_name("grad_reference.py")), *ref_args],
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref = json.loads(ref.stdout.strip().splitlines()[-1])
    assert len(set(ref["tokens_per_micro_batch"])) > 1, "masks must differ between micro-batches"
    # the test can tell the two rules apart
    assert abs(ref["grad_norm_mean_of_means"] - ref["grad_norm"]) / ref["grad_norm"] > 1e-4
    assert abs(rec["lm_loss"] - ref["lm_loss"]) / ref["lm_loss"] <= 1e-6
    assert abs(rec["grad_norm"] - ref["grad_norm"]) / ref["grad_norm"] <= 1e-5, (rec, ref)
