"""Do the job's input files exist and agree? Asked once per job, by the process the user runs (the verb) or,
under srun/torchrun, by rank 0 alone, before any process group exists.

No torch and no megatron-core here: `megatron-llm submit` runs these checks on a login node.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional, Tuple

from megatron_llm.config.arguments import ConfigError, data_prefixes
from megatron_llm.config.training import RunConfig
from megatron_llm.data.indexed_check import verify_indexed_dataset
from megatron_llm.data.indexed_format import read_header

SPLIT_NAMES = ("train", "valid", "test")


def split_bounds(split: str) -> List[Optional[Tuple[float, float]]]:
    """'969,30,1' -> [(0, .969), (.969, .999), (.999, 1)]: each split's share of a dataset's documents as
    megatron-core's builder computes it (None for an empty share)."""
    try:
        parts = [float(x) for x in re.findall(r"[.0-9]+", split)]
    except ValueError:
        raise ConfigError(f"--split {split}: expected up to three numbers like 969,30,1") from None
    if not parts or len(parts) > len(SPLIT_NAMES) or sum(parts) <= 0:
        raise ConfigError(f"--split {split}: expected up to three non-negative numbers with a positive sum")
    parts += [0.0] * (len(SPLIT_NAMES) - len(parts))
    total = sum(parts)
    bounds, start = [], 0.0
    for p in parts:
        end = start + p / total
        bounds.append((start, end) if end > start else None)
        start = end
    return bounds


def dataset_sizes(cfg: RunConfig, global_batch_size: int) -> List[int]:
    """Samples needed per split: training, and one fixed validation set of --eval-iters batches (evaluated at
    every --eval-interval). The test split is not read during training, so nothing is drawn from it."""
    t = cfg.train
    train = t.train_iters * global_batch_size
    valid = t.eval_iters * global_batch_size if t.eval_interval else 0
    return [train, valid, 0]


def check_splits(cfg: RunConfig, global_batch_size: int) -> None:
    """Refuse a --split that leaves a needed split without documents: megatron-core would loop forever looking
    for enough epochs to fill it."""
    bounds = split_bounds(cfg.data.split)
    sizes = dataset_sizes(cfg, global_batch_size)
    for prefix in data_prefixes(cfg.data.data_path):
        docs = read_header(prefix + ".idx").document_count
        for name, part, size in zip(SPLIT_NAMES, bounds, sizes):
            if size and (part is None or int(round(part[1] * docs)) - int(round(part[0] * docs)) == 0):
                raise ConfigError(f"--split {cfg.data.split}: the {name} split of {prefix} gets no documents "
                                  f"({docs} in all) but {size} samples are needed; give it a larger share"
                                  + (" or set --eval-interval 0" if name == "valid" else ""))


def check_input_files(cfg: RunConfig, world_size: int) -> None:
    """Datasets complete and consistent, splits non-empty, tokenizer file present, --load a directory.
    Raises ConfigError naming the flag."""
    d = cfg.data
    if not d.mock_data and d.data_path:
        for prefix in data_prefixes(d.data_path):
            try:  # a truncated or mismatched .bin/.idx pair is refused here, not deep inside training
                verify_indexed_dataset(prefix)
            except ValueError as e:
                raise ConfigError(f"--data-path: {e}") from None
        check_splits(cfg, cfg.global_batch_size(cfg.data_parallel_size(world_size)))
    if d.tokenizer_model and d.tokenizer_type in ("SentencePieceTokenizer", "HuggingFaceTokenizer") \
            and not os.path.exists(d.tokenizer_model):
        raise ConfigError(f"--tokenizer-model {d.tokenizer_model} does not exist")
    load = cfg.checkpoint.load
    if load and not os.path.isdir(load) and load != cfg.checkpoint.save:
        raise ConfigError(f"--load {load} is not a directory")
