"""A megatron-core model in this process: one-rank process groups, a model rebuilt from a checkpoint's config,
its weights loaded from any saved layout (dist_checkpointing reshards on load)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from megatron_llm.config.training import RunConfig

EMBEDDING_KEY = "embedding.word_embeddings.weight"


def run_config(model_fields: Dict[str, Any], tp: int = 1, pp: int = 1, vp: Optional[int] = None,
               dtype: torch.dtype = torch.float32, load: Optional[str] = None,
               device: Optional[str] = "cpu") -> RunConfig:
    """The RunConfig of a model with `model_fields` (ModelConfig field names) at a layout, for weights only."""
    from megatron_llm.config.arguments import build_config

    values = dict(model_fields)
    values.update(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                  num_layers_per_virtual_pipeline_stage=vp, bf16=dtype == torch.bfloat16,
                  fp16=dtype == torch.float16, load=load, finetune=True, mock_data=True, device=device)
    return build_config(values)


@contextlib.contextmanager
def single_process(cfg: RunConfig):
    """torch.distributed and megatron-core parallel state for a world of one (gloo on a free local port)."""
    from megatron_llm.launch.local import LAUNCHER_VARS, free_port
    from megatron_llm.training.initialize import initialize, shutdown

    saved = {k: os.environ.get(k) for k in LAUNCHER_VARS}
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    try:
        yield initialize(cfg)
    finally:
        shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def process_group(cfg: RunConfig, launched: bool):
    """The ranks of torchrun/srun (or of launch.local) when `launched`, else a world of one."""
    if not launched:
        with single_process(cfg) as info:
            yield info
        return
    from megatron_llm.training.initialize import initialize, shutdown

    try:
        yield initialize(cfg)
    finally:
        shutdown()


def build_model(cfg: RunConfig, vocab_rows: int, device: str, vocab_size: int) -> List[torch.nn.Module]:
    """The model chunks this rank holds, weights uninitialised (they are loaded or converted into).
    `vocab_rows`: the padded embedding table; `vocab_size`: the real vocabulary (padded logits are masked)."""
    from megatron_llm.models.build import build_model_chunks, transformer_config  # the --architecture's family

    chunks = build_model_chunks(cfg, transformer_config(cfg, device), vocab_rows, real_vocab_size=vocab_size)
    if device == "cuda":
        chunks = [c.cuda(torch.cuda.current_device()) for c in chunks]
    for c in chunks:
        c.eval()
    return chunks


@dataclass
class CheckpointInfo:
    path: str  # the iter_N directory
    common: Dict[str, Any]  # its common (non-sharded) state
    model: Dict[str, Any]  # ModelConfig fields it was saved with
    vocab_rows: int  # rows of the (padded) embedding table
    vocab_size: int  # real vocabulary (rows past it are padding)
    dtype: torch.dtype


def checkpoint_info(root: str) -> CheckpointInfo:
    """What a checkpoint directory (a --save root or one iter_N directory) holds, read without loading it."""
    from megatron.core import dist_checkpointing

    from megatron_llm.training.checkpointing import checkpoint_dir, latest_iteration

    if os.path.isfile(os.path.join(root, "common.pt")):
        path = root
    else:
        it = latest_iteration(root) if os.path.isdir(root) else None
        if it is None:
            raise RuntimeError(f"{root}: no checkpoint there (no latest_checkpointed_iteration.txt); pass a "
                               f"--save directory of megatron-llm train or the output of convert --to megatron")
        path = checkpoint_dir(root, it)
    common = dist_checkpointing.load_common_state_dict(path)
    if "model_config" not in common:
        raise RuntimeError(f"{path}: the checkpoint does not record its model shape (saved by an older "
                           f"megatron-llm); it cannot be rebuilt here")
    meta = dist_checkpointing.load_tensors_metadata(path)
    emb = meta[EMBEDDING_KEY]
    model = dict(common["model_config"])
    vocab = int((common.get("vocab") or {}).get("vocab_size") or model.get("vocab_size") or emb.global_shape[0])
    return CheckpointInfo(path=path, common=common, model=model, vocab_rows=int(emb.global_shape[0]),
                          vocab_size=vocab, dtype=emb.dtype)


def load_weights(cfg: RunConfig, chunks: List[torch.nn.Module]) -> None:
    """Weights only from cfg.checkpoint.load, into chunks built at the current layout."""
    from megatron_llm.training import checkpointing

    if checkpointing.load(cfg, chunks, None, None) is None:
        raise RuntimeError(f"{cfg.checkpoint.load}: no checkpoint found")
