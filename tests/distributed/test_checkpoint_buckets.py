"""Resume with the distributed optimizer when the gradients span several DDP buckets (--overlap-grad-reduce with
a small --ddp-bucket-size): bitwise the uninterrupted run. megatron-core 0.16 saved every parameter after the first
bucket shifted by the bucket padding (training/checkpointing.py: _in_buffer_coordinates)."""

from __future__ import annotations

from trainrun import MODEL, VOCAB, check, losses, resume, train

BUCKET = 20000
FLAGS = ["--overlap-grad-reduce", "--ddp-bucket-size", str(BUCKET)]


def test_multi_bucket_resume_is_bitwise_identical(dataset, tmp_path):
    """The uninterrupted 4-iteration run saves at 2; resumed from that checkpoint, iterations 3 and 4 are bitwise
    the same (its metrics.jsonl starts as the uninterrupted run's: records after 2 are dropped and logged again)."""
    from megatron_llm.config.arguments import build_config, parse_run_args

    cfg = build_config(parse_run_args(MODEL + ["--vocab-size", str(VOCAB)])[1])
    assert cfg.model.num_parameters(VOCAB) > 5 * BUCKET  # the premise: several buckets
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    check(train(straight, dataset, 2, FLAGS + ["--save", str(straight / "ckpt"), "--save-interval", "2"], iters=4))
    got = resume(straight, dataset, 2, FLAGS, 2, 4, resumed)
    assert sorted(losses(straight)) == [1, 2, 3, 4]
    assert got == losses(straight)
