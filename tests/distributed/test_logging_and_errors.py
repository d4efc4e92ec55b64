"""metrics.jsonl and tensorboard contents; impossible configurations fail fast naming the flag; signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from trainrun import MODEL, VOCAB, check, losses, signal_after, train

JSONL_KEYS = {"iteration", "lm_loss", "lr", "grad_norm", "loss_scale", "tokens_per_s", "flops_per_iteration",
              "tflops", "mfu", "mem_gb"}
TB_TAGS = {"lm loss", "validation loss", "learning-rate", "grad-norm", "loss-scale", "throughput/tokens-per-sec",
           "throughput/tflops-per-gpu", "memory/max-allocated-gb"}


def test_metrics_and_tensorboard(dataset, tmp_path):
    t0 = time.monotonic()
    proc = train(tmp_path, dataset, 2, ["--pipeline-model-parallel-size", "2", "--eval-interval", "2",
                                     "--eval-iters", "1"], iters=4)
    wall = time.monotonic() - t0
    check(proc)
    records = [json.loads(l) for l in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "lm_loss" in r]
    assert [r["iteration"] for r in train_recs] == [1, 2, 3, 4]
    for r in train_recs:
        assert JSONL_KEYS <= set(r)
        assert r["mfu"] is None  # CPU: no peak, no invented MFU
    # model FLOPs of the global batch by DESIGN.md section 4's formula, computed here by hand
    L, h, kv, f, s, V, B = 4, 64, 32, 128, 64, VOCAB, 8
    per_token = 3 * (L * (2 * h * (h + 2 * kv) + 2 * h * h + 6 * h * f + 4 * s * h) + 2 * h * V)
    assert train_recs[0]["flops_per_iteration"] == pytest.approx(per_token * s * B, rel=1e-12)
    for r in train_recs:  # throughput is the global batch's tokens and FLOPs over the step time, per GPU for TFLOP/s
        t = r["iteration_time_s"]
        assert r["tokens_per_s"] == pytest.approx(B * s / t, rel=1e-9)
        assert r["tflops"] == pytest.approx(per_token * s * B / t / 2 / 1e12, rel=1e-9)
    # and the step times are real: together they fit inside the run's wall-clock time
    assert 0 < sum(r["iteration_time_s"] for r in train_recs) < wall
    # --lr 1e-3 --min-lr 1e-4, 1 warm-up iteration, cosine over --train-iters 4; the lr logged at iteration k is the
    # one the scheduler set after step k: warm-up ends at 1e-3, then min + (max - min) * (1 + cos(pi * (k-1)/3)) / 2.
    import math

    expected_lr = [1e-4 + 9e-4 * (1 + math.cos(math.pi * (k - 1) / 3)) / 2 for k in (1, 2, 3, 4)]
    assert [r["lr"] for r in train_recs] == pytest.approx(expected_lr, rel=1e-9)
    vals = [r for r in records if "val_loss" in r]
    assert [r["iteration"] for r in vals] == [2, 4]
    assert "validation loss at iteration 2" in proc.stdout and "iteration        4/       4" in proc.stdout

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert TB_TAGS <= tags, TB_TAGS - tags
    assert [e.step for e in acc.Scalars("lm loss")] == [1, 2, 3, 4]
    assert acc.Scalars("lm loss")[0].value == pytest.approx(train_recs[0]["lm_loss"], rel=1e-6)


BAD = [
    (["--nproc-per-node", "4", "--tensor-model-parallel-size", "3"], "--tensor-model-parallel-size"),
    (["--nproc-per-node", "2", "--tensor-model-parallel-size", "2", "--num-attention-heads", "3",
      "--num-query-groups", "3", "--hidden-size", "66"], "--num-attention-heads"),
    (["--nproc-per-node", "4", "--tensor-model-parallel-size", "4"], "--num-query-groups"),
    (["--nproc-per-node", "3", "--pipeline-model-parallel-size", "3"], "--num-layers"),
    (["--nproc-per-node", "2", "--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage",
      "3"], "--num-layers-per-virtual-pipeline-stage"),
    (["--nproc-per-node", "2", "--global-batch-size", "6", "--micro-batch-size", "2"], "--global-batch-size"),
    (["--data-path", "/nonexistent/corpus_text_document"], "--data-path"),
    (["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", "/nonexistent/tok.model"],
     "--tokenizer-model"),
    (["--tokenizer-type", "SentencePieceTokenizer"], "--tokenizer-model"),
    (["--split", "100,0,0", "--eval-interval", "1"], "--split"),
]


@pytest.mark.parametrize("flags,named", BAD, ids=[n for _, n in BAD])
def test_impossible_configuration_fails_fast(flags, named, dataset):
    """Refused by the launcher itself (exit 2, no rank started), with the offending flag in the message."""
    base = ["--device", "cpu", *MODEL, "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
            "--data-path", dataset, "--train-iters", "1"]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "megatron_llm.cli", "train", *base, *flags],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 30  # no worker spawned, no collective waited on


def test_truncated_dataset_is_refused_before_training(dataset, tmp_path):
    import shutil

    prefix = str(tmp_path / "cut")
    shutil.copy(dataset + ".idx", prefix + ".idx")
    with open(dataset + ".bin", "rb") as src, open(prefix + ".bin", "wb") as dst:
        dst.write(src.read()[:-100])
    proc = train(tmp_path, prefix, 1, [], iters=1)
    assert proc.returncode == 2 and "--data-path" in proc.stderr and "cut.bin" in proc.stderr, proc.stderr


def test_vocab_smaller_than_tokenizer_is_refused(dataset, tmp_path):
    proc = train(tmp_path, dataset, 1, ["--tokenizer-type", "ByteTokenizer", "--vocab-size", "128"], iters=1)
    assert proc.returncode != 0 and "--vocab-size 128" in proc.stderr, proc.stderr[-2000:]


def test_sigusr1_saves_and_exits_for_requeue(dataset, tmp_path):
    """SIGUSR1 to the launcher reaches every rank; they agree on an iteration, save it, and exit 75."""
    from megatron_llm.exit_codes import EXIT_CODE_REQUEUE

    ckpt = tmp_path / "ckpt"
    args = [sys.executable, "-m", "megatron_llm.cli", "train", "--device", "cpu", "--nproc-per-node", "2",
            "--pipeline-model-parallel-size", "2", *MODEL, "--tokenizer-type", "NullTokenizer", "--vocab-size",
            str(VOCAB), "--data-path", dataset, "--train-iters", "3000", "--eval-interval", "0",
            "--micro-batch-size", "2", "--global-batch-size", "4", "--save", str(ckpt),
            "--tensorboard-dir", str(tmp_path / "tb")]
    returncode, out = signal_after(args, tmp_path, 3, signal.SIGUSR1)
    assert returncode == EXIT_CODE_REQUEUE, out[-3000:]
    saved = int((ckpt / "latest_checkpointed_iteration.txt").read_text())
    assert saved == max(losses(tmp_path)), "the checkpoint is the last completed iteration"
    assert "received SIGUSR1" in out
