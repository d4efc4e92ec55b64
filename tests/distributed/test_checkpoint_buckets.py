"""Resume with the distributed optimizer when the gradients span several DDP buckets (--overlap-grad-reduce with
a small --ddp-bucket-size): bitwise the uninterrupted run. megatron-core 0.16 saved every parameter after the first
bucket shifted by the bucket padding (training/checkpointing.py: _in_buffer_coordinates)."""

from __future__ import annotations

from trainrun import MODEL, VOCAB, check, losses, make_dataset, train

BUCKET = 20000
FLAGS = ["--overlap-grad-reduce", "--ddp-bucket-size", str(BUCKET)]


def test_multi_bucket_resume_is_bitwise_identical(tmp_path):
    from megatron_llm.config.arguments import build_config, parse_run_args

    cfg = build_config(parse_run_args(MODEL + ["--vocab-size", str(VOCAB)])[1])
    assert cfg.model.num_parameters(VOCAB) > 5 * BUCKET  # the premise: several buckets
    data = make_dataset(str(tmp_path / "zipf"))
    check(train(tmp_path / "straight", data, 2, FLAGS, iters=4))
    ckpt = str(tmp_path / "ckpt")
    check(train(tmp_path / "resumed", data, 2, FLAGS + ["--save", ckpt, "--exit-interval", "2"], iters=4))
    check(train(tmp_path / "resumed", data, 2, FLAGS + ["--load", ckpt], iters=4))
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
