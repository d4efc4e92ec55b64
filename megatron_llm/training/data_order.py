"""The training sample order across a resume: megatron-core's GPTDataset shuffles documents and samples over as many
epochs as the requested sample count needs, so building it for another count (a larger --train-iters) gives another
order and silently repeats or skips samples. A resumed run therefore builds the index for the count its checkpoint
was trained with, and refuses to go past the samples that index holds."""

from __future__ import annotations

from typing import Dict, Optional

from megatron_llm.config.arguments import ConfigError
from megatron_llm.config.training import RunConfig
from megatron_llm.data.input_checks import dataset_sizes


def train_samples_to_build(cfg: RunConfig, global_batch_size: int, stored: Optional[Dict[str, int]]) -> int:
    """The sample count to build the training index for: the checkpoint's, else this run's."""
    if stored and stored.get("train_samples"):
        return int(stored["train_samples"])
    return dataset_sizes(cfg, global_batch_size)[0]


def check_enough_samples(cfg: RunConfig, global_batch_size: int, built_for: int, available: int,
                         load_dir: Optional[str]) -> None:
    """Refuse a resumed run that needs more samples than the kept order holds (the index would wrap around)."""
    needed = cfg.train.train_iters * global_batch_size
    if needed <= available:
        return
    raise ConfigError(
        f"--train-iters {cfg.train.train_iters} needs {needed} training samples, but the checkpoint in --load "
        f"{load_dir} was trained on a data order built for {built_for} samples (--train-iters "
        f"{built_for // global_batch_size} x global batch {global_batch_size}), which holds {available}. "
        f"Rebuilding it for more samples reshuffles megatron-core's epochs, so samples would repeat or be "
        f"skipped. Resume with --train-iters <= {available // global_batch_size}, or start the longer run from "
        f"these weights with --finetune (new data order, iteration 0)")


def data_state(built_for: int) -> Dict[str, int]:
    """Stored in each checkpoint."""
    return {"train_samples": int(built_for)}
