"""micro_batches with DataLoader workers yields exactly the batches (and order) of the in-process read."""

import itertools

import numpy as np
import torch

from megatron_llm.data.gpt_datasets import micro_batches


class _Samples:
    """A GPTDataset-shaped dataset: index -> dict of numpy arrays (and a None field, as megatron-core returns)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return {"tokens": np.arange(i, i + 4, dtype=np.int64), "loss_mask": np.full(4, i % 3, dtype=np.float32),
                "attention_mask": None}


def _take(stream, k):
    return [{key: v.clone() for key, v in b.items()} for b in itertools.islice(stream, k)]


def test_workers_yield_the_same_batches_in_order():
    ds = _Samples(23)  # not a multiple of the step: the stream wraps around
    for rank in (0, 1):
        ref = _take(micro_batches(ds, 5, 3, rank, 2), 10)
        got = _take(micro_batches(ds, 5, 3, rank, 2, num_workers=2), 10)
        assert len(got) == len(ref) == 10
        for a, b in zip(got, ref):
            assert a.keys() == b.keys() == {"tokens", "loss_mask", "sample_position"}
            assert all(torch.equal(a[k], b[k]) for k in a)
    # independent expectation: rank 1's first micro-batch starts at consumed + rank x MBS = 8
    first = _take(micro_batches(ds, 5, 3, 1, 2), 1)[0]
    assert first["tokens"][:, 0].tolist() == [8, 9, 10]
    assert first["sample_position"].tolist() == [8, 9, 10]
    second = _take(micro_batches(ds, 5, 3, 1, 2), 2)[1]
    assert second["tokens"][:, 0].tolist() == [14, 15, 16]
    # positions keep counting past the end of the dataset (23 samples); the samples wrap around
    late = _take(micro_batches(ds, 20, 3, 1, 2), 1)[0]
    assert late["sample_position"].tolist() == [23, 24, 25] and late["tokens"][:, 0].tolist() == [0, 1, 2]


def test_no_dataset_is_an_empty_stream():
    assert list(micro_batches(None, 0, 2, 0, 1)) == []
