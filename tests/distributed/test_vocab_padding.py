"""The padded vocabulary depends on TP; its rows never take part in the softmax, so TP1 -> TP2 -> TP4 resumes
exactly."""

from __future__ import annotations

import pytest
import torch

from trainrun import check, copy_metrics, losses, max_rel_diff, snapshot, train

TOL = 1e-6  # what layouts otherwise agree within (test_parallel_equivalence.py)
ITERS = 3


def test_padded_vocab_size_follows_megatron_lm():
    from megatron_llm.models.llama import padded_vocab_size

    # --make-vocab-size-divisible-by (128) times TP, as Megatron-LM pads
    assert [padded_vocab_size(64798, tp) for tp in (1, 2, 4)] == [64896, 65024, 65024]
    assert [padded_vocab_size(32000, tp) for tp in (1, 2, 4)] == [32000, 32000, 32256]
    assert padded_vocab_size(105789, 1, divisible_by=64) == 105792


def test_mask_padded_logits_on_every_shard():
    from megatron_llm.models.llama import mask_padded_logits

    vocab, padded, tp = 10, 16, 4
    full = torch.randn(2, 3, padded)
    expected = full.clone()
    expected[..., vocab:] = float("-inf")
    shards = [mask_padded_logits(s, vocab, r * (padded // tp)) for r, s in enumerate(full.chunk(tp, dim=-1))]
    assert torch.equal(torch.cat(shards, dim=-1), expected)
    assert torch.equal(mask_padded_logits(full, vocab), expected)  # gathered logits
    assert shards[0].data_ptr() == full.chunk(tp, dim=-1)[0].data_ptr()  # no padding in it: untouched, no copy
    # softmax over the masked logits is the softmax over the real vocabulary
    assert torch.allclose(torch.softmax(expected, -1)[..., :vocab], torch.softmax(full[..., :vocab], -1))


@pytest.mark.parametrize("vocab", [32000, 64798, 105789])
def test_tp1_tp2_tp4_resume_matches_uninterrupted(vocab, dataset, tmp_path):
    """TP1 saves iteration 1, TP2 resumes from it and saves iteration 2, TP4 resumes from that and trains iteration 3:
    the chained losses match the uninterrupted run's within TOL. The TP1 leg runs through to ITERS and is that
    uninterrupted run (it saves every iteration; the checkpoint of iteration 1 is the chain's first link)."""
    v = ["--vocab-size", str(vocab), "--num-query-groups", "4"]  # 4 KV heads: TP4 divides them
    tp1 = tmp_path / "tp1"
    check(train(tp1, dataset, 1, v + ["--save", str(tp1 / "ckpt"), "--save-interval", "1"], iters=ITERS, gbs=4))
    ckpt = snapshot(tp1 / "ckpt", 1, tmp_path / "ckpt")
    chained = tmp_path / "chained"
    copy_metrics(tp1, chained)  # iteration 1 is the TP1 leg's; the TP2 and TP4 legs log 2 and 3 again
    for it, tp in ((2, 2), (3, 4)):
        save = ["--save", ckpt, "--exit-interval", str(it)] if it < ITERS else []
        check(train(chained, dataset, tp, v + ["--tensor-model-parallel-size", str(tp), "--load", ckpt] + save,
                    iters=ITERS, gbs=4))
    straight, got = losses(tp1), losses(chained)
    assert sorted(straight) == sorted(got) == list(range(1, ITERS + 1))
    assert max_rel_diff(got, straight) <= TOL, (got, straight)
