"""The padded vocabulary depends on TP; its rows never take part in the softmax, so TP1 -> TP2 -> TP4 resumes
exactly."""

from __future__ import annotations

import pytest
import torch

from trainrun import check, losses, max_rel_diff, train

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
    v = ["--vocab-size", str(vocab), "--num-query-groups", "4"]  # 4 KV heads: TP4 divides them
    check(train(tmp_path / "straight", dataset, 1, v, iters=ITERS, gbs=4))
    ckpt = str(tmp_path / "ckpt")
    chained = tmp_path / "chained"
    for it, tp in enumerate((1, 2, 4), start=1):
        load = ["--load", ckpt] if it > 1 else []
        proc = train(chained, dataset, tp, v + ["--tensor-model-parallel-size", str(tp), "--save", ckpt,
                                            "--exit-interval", str(it)] + load, iters=ITERS, gbs=4)
        check(proc)
    straight, got = losses(tmp_path / "straight"), losses(chained)
    assert sorted(got) == list(range(1, ITERS + 1))
    assert max_rel_diff(got, straight) <= TOL, (got, straight)
