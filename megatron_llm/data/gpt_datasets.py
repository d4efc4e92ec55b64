"""Train/valid/test GPT datasets from .bin/.idx through megatron-core's builders, and the per-rank batch stream.

Sample order is global and fixed: iteration i consumes samples [i*GBS, (i+1)*GBS) of the training dataset, micro-
batch m of data-parallel rank r reading a fixed slice of them. Resuming therefore only needs ``consumed_samples``,
and a different DP size (same global batch) sees the same samples per iteration.
"""

from __future__ import annotations

import os
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from megatron_llm.config.arguments import data_prefixes
from megatron_llm.config.training import RunConfig
from megatron_llm.data.input_checks import dataset_sizes


def parse_blend(data_path: List[str]) -> Tuple[List[str], Optional[List[float]]]:
    """Megatron's 'W1 P1 W2 P2' syntax -> (prefixes, weights); a single prefix has no weights."""
    prefixes = data_prefixes(data_path)
    if len(data_path) == 1:
        return prefixes, None
    return prefixes, [float(w) for w in data_path[0::2]]


class DatasetTokenizerView:
    """What megatron-core's GPTDataset reads from a tokenizer (eod, pad, vocab size, and an identity for its
    index-cache hashes), for any of our tokenizers."""

    def __init__(self, tokenizer) -> None:
        self.vocab_size = int(tokenizer.vocab_size)
        self.eod = int(tokenizer.eod)
        self.pad = int(getattr(tokenizer, "pad", None) if getattr(tokenizer, "pad", None) is not None
                       else tokenizer.eod)
        self.unique_identifiers = {"class": type(tokenizer).__name__, "vocab_size": self.vocab_size,
                                   "eod": self.eod}


def build_datasets(cfg: RunConfig, tokenizer, global_batch_size: int, train_samples: Optional[int] = None):
    """train_samples: build the training index for this many samples instead of --train-iters x GBS (a resumed
    run keeps the sample order its checkpoint was trained with; megatron-core's shuffle depends on the count)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    d = cfg.data
    blend = None if d.mock_data else parse_blend(d.data_path)
    cache = d.data_cache_path
    if cache is None and blend is not None:
        cache = os.path.join(os.path.dirname(os.path.abspath(blend[0][0])), "index-cache")
    config = GPTDatasetConfig(
        random_seed=cfg.train.seed,
        sequence_length=d.seq_length,
        blend=blend,
        split=d.split,
        path_to_cache=cache,
        tokenizer=DatasetTokenizerView(tokenizer),
        reset_position_ids=d.reset_position_ids,
        reset_attention_mask=False,
        eod_mask_loss=d.eod_mask_loss,
        create_attention_mask=False,  # causal attention needs no explicit mask
    )
    cls = MockGPTDataset if d.mock_data else GPTDataset
    sizes = dataset_sizes(cfg, global_batch_size)
    if train_samples is not None:
        sizes[0] = train_samples
    if config.split_matrix is not None:
        # Skip the splits nothing is drawn from: megatron-core would otherwise build them, and loops forever on
        # one that has no documents (e.g. the 0.1% test split of a small corpus).
        config.split_matrix = [part if size else None for part, size in zip(config.split_matrix, sizes)]
    # megatron-core builds on rank 0 first (writing the index caches), then on the others from the cache.
    return BlendedMegatronDatasetBuilder(cls, sizes, lambda: True, config).build()


class _MicroBatchIndices:
    """Endless batch sampler: the global sample positions of this DP rank's micro-batches from
    ``consumed_samples`` on."""

    def __init__(self, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int):
        self.idx, self.mbs, self.rank, self.step = consumed_samples, micro_batch_size, dp_rank, \
            micro_batch_size * dp_size

    def __iter__(self):
        while True:
            start = self.idx + self.rank * self.mbs
            yield list(range(start, start + self.mbs))
            self.idx += self.step


class _Positioned:
    """Sample at a global position (the dataset wraps around), with that position as ``sample_position``: where in
    the global sample stream the batch is (sample accounting across restarts and DP changes)."""

    def __init__(self, dataset) -> None:
        self.dataset, self.n = dataset, len(dataset)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, position: int):
        return {**self.dataset[position % self.n], "sample_position": np.int64(position)}


def micro_batches(dataset, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int,
                  num_workers: int = 0, pin_memory: bool = False) -> Iterator[Dict[str, torch.Tensor]]:
    """Endless stream of this DP rank's micro-batches, starting at ``consumed_samples`` (global sample index).

    With num_workers > 0, DataLoader worker processes read and collate batches ahead of the step (prefetching
    2 each) and pin_memory puts them in page-locked memory, so the step's non_blocking host-to-device copies
    overlap compute. Same batches, same order, whatever the worker count."""
    if dataset is None:
        return iter(())
    from torch.utils.data import DataLoader

    sampler = _MicroBatchIndices(consumed_samples, micro_batch_size, dp_rank, dp_size)
    loader = DataLoader(_Positioned(dataset), batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                        pin_memory=pin_memory, prefetch_factor=2 if num_workers else None)
    return iter(loader)


def collate(samples: List[Dict[str, np.ndarray]]) -> Dict[str, torch.Tensor]:
    out = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if vals[0] is None:
            continue
        out[key] = torch.stack([torch.as_tensor(np.asarray(v)) for v in vals])
    return out
