"""Next-token choice: top-k / top-p against hand-computed cases and transformers' own warpers, temperature
sampling frequencies against the softmax, seeds."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_llm.inference.sampling import Sampling, filter_logits, next_token


def test_top_k_keeps_the_k_largest():
    out = filter_logits(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), top_k=2, top_p=1.0)
    assert torch.isinf(out[0, [0, 3]]).all() and out[0, 1] == 3.0 and out[0, 2] == 2.0


def test_top_p_hand_computed():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    keep = lambda p: (~torch.isinf(filter_logits(logits, 0, p))).view(-1).tolist()  # noqa: E731
    assert keep(0.4) == [True, False, False]  # the most likely token always stays
    assert keep(0.7) == [True, True, False]  # 0.5 < 0.7: the second is needed; 0.8 >= 0.7: the third is not
    assert keep(0.9) == [True, True, True]


def test_filters_agree_with_transformers():
    tf = pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g) * 3
    for k, p in ((5, 1.0), (0, 0.8), (10, 0.5)):
        ref = logits.clone()
        if k:
            ref = tf.TopKLogitsWarper(k)(None, ref)
        if p < 1.0:
            ref = tf.TopPLogitsWarper(p)(None, ref)
        ours = filter_logits(logits, k, p)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref)), (k, p)


def test_temperature_sampling_follows_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    s = Sampling(temperature=0.7, seed=3)
    gen = torch.Generator().manual_seed(s.seed)
    n = 20000
    counts = torch.bincount(torch.cat([next_token(logits, s, gen) for _ in range(n)]), minlength=4).double()
    expected = torch.softmax(logits[0] / 0.7, dim=-1).double() * n
    # every count within 4 standard deviations of its binomial expectation
    sd = torch.sqrt(expected * (1 - expected / n))
    assert ((counts - expected).abs() < 4 * sd).all(), (counts, expected)


def test_greedy_and_seeds():
    logits = torch.tensor([[0.1, 5.0, 0.2], [3.0, 0.0, 0.0]])
    assert next_token(logits, Sampling(), None).tolist() == [1, 0]
    s = Sampling(temperature=1.0, top_k=3, seed=7)
    draw = lambda: [int(next_token(torch.zeros(1, 100), s, g)) for _ in range(20)]  # noqa: E731
    g = torch.Generator().manual_seed(7)
    first = draw()
    g = torch.Generator().manual_seed(7)
    assert draw() == first
    assert len(set(first)) > 1 and max(first) < 100 and not math.isnan(float(first[0]))


@pytest.mark.parametrize("kw", [{"temperature": -1.0}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_bad_sampling_flags_are_named(kw):
    with pytest.raises(ValueError, match="--" + next(iter(kw)).replace("_", "-")):
        Sampling(**kw)
