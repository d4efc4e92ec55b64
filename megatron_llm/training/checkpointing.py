"""Checkpoints through megatron-core dist_checkpointing: layout-independent, so a run can resume at another TP/PP/DP.

On disk:  <save>/iter_0000020/                 a complete dist_checkpointing directory
          <save>/latest_checkpointed_iteration.txt   the newest complete one (written last, atomically)
A save goes to iter_N.tmp and is renamed only after every rank has finished, so a crash mid-save never leaves a
directory that looks complete, and `latest` never names one that is not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import shutil
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from megatron_llm.config.training import RunConfig
from megatron_llm.fileio import atomic_write_text

TRACKER = "latest_checkpointed_iteration.txt"
FORMAT_VERSION = 1
# Optimizer state saved parameter by parameter in model space, so that TP/PP/DP may change on load.
OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "singleton_local_shards": False,
                  "chained_optim_avoid_prefix": True}


def checkpoint_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def latest_iteration(root: str) -> Optional[int]:
    path = os.path.join(root, TRACKER)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    try:
        it = int(text)
    except ValueError:
        raise RuntimeError(f"{path}: expected an iteration number, found {text!r}; "
                           f"fix it or delete it to start from scratch") from None
    if not os.path.isdir(checkpoint_dir(root, it)):
        raise RuntimeError(f"{path} names iteration {it} but {checkpoint_dir(root, it)} is missing")
    return it


def _unwrap(m: torch.nn.Module) -> torch.nn.Module:
    return getattr(m, "module", m)  # the GPTModel inside megatron-core's DDP wrapper


def model_keys(num_chunks: int) -> List[str]:
    """State-dict keys of the model chunks, in chunk order (Megatron-LM's names: 'model', or 'model0'..'model{n-1}').
    Chunks are matched to these by position, never by sorting the names ('model10' sorts before 'model2')."""
    return ["model"] if num_chunks == 1 else [f"model{i}" for i in range(num_chunks)]


def _model_sharded_state_dict(model: List[torch.nn.Module]) -> Dict[str, Any]:
    return {key: _unwrap(m).sharded_state_dict() for key, m in zip(model_keys(len(model)), model)}


def _layout() -> Dict[str, int]:
    from megatron.core import parallel_state as ps

    return {"tp": ps.get_tensor_model_parallel_world_size(), "pp": ps.get_pipeline_model_parallel_world_size(),
            "dp": ps.get_data_parallel_world_size()}


def _vocab(model) -> Dict[str, int]:
    """The real vocabulary and this layout's padding of it (TP-dependent; the padded rows are masked and zero, so
    a checkpoint loads at any TP: megatron-core fills or drops the difference in padded rows)."""
    m = _unwrap(model[0])
    return {"vocab_size": int(getattr(m, "real_vocab_size", m.vocab_size)), "padded_vocab_size": int(m.vocab_size)}


def _check_vocab(path: str, stored: Optional[Dict[str, int]], model) -> None:
    here = _vocab(model)["vocab_size"]
    if stored is not None and stored["vocab_size"] != here:
        from megatron_llm.config.arguments import ConfigError

        raise ConfigError(f"--load {path}: the checkpoint's vocabulary has {stored['vocab_size']} entries, this "
                          f"run's {here}; use the tokenizer and --vocab-size it was trained with")


def _rng_sharded_object(is_loading: bool):
    """RNG state of this rank, keyed by its (pp, tp) position; restored only into the same layout."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    state = None
    if not is_loading:
        state = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized()
            else None,
            "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
        }
    pp, tp = ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()
    return ShardedObject("rng_state", state, (pp, tp),
                         (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
                         replica_id=ps.get_data_parallel_rank())


def _ensure_optimizer_state(optimizer) -> None:
    """A fresh optimizer has no state (no Adam moments, no step) to load into; megatron-core's torch fallback
    (no apex/TE) also needs the per-parameter 'step'. Create placeholder state, overwritten by the load."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is not None and len(inner.state) == 0 and hasattr(opt, "_init_optimizer_states_with_dummy_values"):
            opt._init_optimizer_states_with_dummy_values()


def _distributed_optimizers(optimizer) -> List[Any]:
    return [o for o in getattr(optimizer, "chained_optimizers", [optimizer])
            if hasattr(o, "model_param_group_index_map")]


def _in_buffer_coordinates(opt, state):
    """Fix for megatron-core 0.16's fully-reshardable save with several DDP buckets (--overlap-grad-reduce):
    get_parameter_state_dp_zero concatenates the buckets without the padding at each bucket's end, but
    sharded_param_state_fully_reshardable slices that by param_index_map, whose offsets count the padding, so every
    parameter after the first bucket was saved shifted (a resume then drifted). Put the padding back."""
    if state is None:
        return state
    for gbuf_idx, buffer in enumerate(opt.buffers):
        for world in state[gbuf_idx].values():
            for key, flat in list(world.items()):
                if not isinstance(flat, torch.Tensor):
                    continue
                padded = torch.zeros(buffer.numel, dtype=flat.dtype, device=flat.device)
                src = 0
                for bucket in buffer.buckets:
                    padded[bucket.offset:bucket.offset + bucket.numel_unpadded] = flat[src:src + bucket.numel_unpadded]
                    src += bucket.numel_unpadded
                world[key] = padded
    return state


def _optimizer_sharded_state_dict(optimizer, model_sd, is_loading: bool):
    subs = _distributed_optimizers(optimizer)
    for opt in subs:
        opt.get_parameter_state_dp_zero = (
            lambda *a, _opt=opt, _orig=opt.get_parameter_state_dp_zero, **kw: _in_buffer_coordinates(
                _opt, _orig(*a, **kw)))
    try:
        return optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=OPTIM_METADATA)
    finally:
        for opt in subs:
            del opt.get_parameter_state_dp_zero  # back to the class method


def _load_optimizer_state(optimizer, state) -> None:
    """optimizer.load_state_dict, with two fixes for megatron-core 0.16's torch-Adam path (no apex/TE):
    its fully-reshardable load copies every per-parameter state key but the checkpoint keeps Adam's 'step' in the
    param groups only (KeyError 'step'), and it restores one shared 'step' tensor into every parameter's state,
    which torch's foreach Adam would then increment once per parameter."""
    subs = _distributed_optimizers(optimizer)
    for opt in subs:
        def copy_states(model_param, tensors, _opt=opt, _orig=opt._set_main_param_and_optimizer_states):
            group, order = _opt.model_param_group_index_map[model_param]
            current = _opt.optimizer.state[_opt.optimizer.param_groups[group]["params"][order]]
            if "step" in current and "step" not in tensors:
                tensors = {**tensors, "step": current["step"]}
            return _orig(model_param, tensors)
        opt._set_main_param_and_optimizer_states = copy_states
    try:
        optimizer.load_state_dict(state)
    finally:
        for opt in subs:
            del opt._set_main_param_and_optimizer_states  # back to the class method
    for opt in subs:
        for st in opt.optimizer.state.values():
            if isinstance(st.get("step"), torch.Tensor):
                st["step"] = st["step"].clone()


def _state_dict(cfg: RunConfig, model, optimizer, scheduler, is_loading: bool, with_optim: bool,
                with_rng: bool, iteration: int = 0, consumed: int = 0) -> Dict[str, Any]:
    sd = _model_sharded_state_dict(model)
    if with_optim:
        if is_loading:
            _ensure_optimizer_state(optimizer)
        # The chunks' state dicts stay nested per chunk: their local keys repeat across chunks (each chunk has its
        # own 'decoder.layers.0...'), so merging them into one dict dropped all but the last chunk's parameters and
        # the optimizer's lookup by parameter failed with virtual stages (Megatron-LM passes the nested dict too).
        model_sd = {k: sd[k] for k in model_keys(len(model))}
        sd["optimizer"] = _optimizer_sharded_state_dict(optimizer, model_sd, is_loading)
        sd["opt_param_scheduler"] = scheduler.state_dict()
    if with_rng:
        sd["rng_state"] = _rng_sharded_object(is_loading)
    sd["iteration"] = iteration
    sd["consumed_samples"] = consumed
    sd["layout"] = _layout()
    sd["vocab"] = _vocab(model)
    sd["model_config"] = dataclasses.asdict(cfg.model)  # the shape, for tools that rebuild the model (convert)
    sd["format_version"] = FORMAT_VERSION
    return sd


def save(cfg: RunConfig, model, optimizer, scheduler, iteration: int, consumed: int,
         data_state: Optional[Dict[str, int]] = None, async_queue=None) -> str:
    """A training checkpoint in --save. data_state: what the training data order was built with (data_order.py),
    restored by load(). async_queue: --async-save (see write)."""
    sd = _state_dict(cfg, model, optimizer, scheduler, is_loading=False, with_optim=True, with_rng=True,
                     iteration=iteration, consumed=consumed)
    sd["data"] = dict(data_state or {})
    return write(cfg.checkpoint.save, iteration, sd, keep=cfg.checkpoint.keep_last, async_queue=async_queue)


def save_weights(cfg: RunConfig, model, root: str, iteration: int = 0,
                 extra: Optional[Dict[str, Any]] = None) -> str:
    """A weights-only checkpoint (no optimizer, no RNG) that `--load ROOT --finetune` continues from; `extra`
    goes into the common state (read back with dist_checkpointing.load_common_state_dict)."""
    sd = _state_dict(cfg, model, None, None, is_loading=False, with_optim=False, with_rng=False,
                     iteration=iteration)
    sd.update(extra or {})
    return write(root, iteration, sd)


def write(root: str, iteration: int, sd: Dict[str, Any], keep: Optional[int] = None, async_queue=None) -> str:
    """Save a sharded state dict as <root>/iter_N: written to iter_N.tmp, then published (all ranks). With
    `async_queue` (a megatron-core AsyncCallsQueue) the shards are written in the background and publishing is the
    request's finalize step, run on every rank once every rank's writer is done (training/async_checkpoint.py)."""
    from megatron.core import dist_checkpointing

    final = checkpoint_dir(root, iteration)
    tmp = final + ".tmp"
    rank = dist.get_rank()
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crashed save
        os.makedirs(tmp)
    dist.barrier()
    if async_queue is None:
        with _in_process_write_results():
            dist_checkpointing.save(sd, tmp, content_metadata=OPTIM_METADATA)
        publish(root, iteration, keep)
    else:
        request = dist_checkpointing.save(sd, tmp, content_metadata=OPTIM_METADATA, async_sharded_save=True)
        request.add_finalize_fn(lambda: publish(root, iteration, keep))
        async_queue.schedule_async_request(request)
    return final


@contextlib.contextmanager
def _in_process_write_results():
    """A synchronous save collects its writers' results in this process: megatron-core 0.16 passes them through a
    queue served by a spawned manager process, which imports torch to unpickle the first result (the first save
    took 2.45 s instead of 0.09 s, measured on CPU) and lives on. Give that save a plain queue; an async save (its
    writer is a forked process) keeps megatron-core's."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if not hasattr(filesystem_async, "_results_queue"):  # another megatron-core: leave its own queue
        yield
        return
    kept = filesystem_async._results_queue
    filesystem_async._results_queue = queue.Queue()
    try:
        yield
    finally:
        filesystem_async._results_queue = kept


def publish(root: str, iteration: int, keep: Optional[int] = None) -> None:
    """Every rank's shard of iter_N.tmp is written: rename it to iter_N, point the tracker at it, keep the newest
    `keep` (--keep-last). A collective."""
    from megatron_llm.training.checkpoint_files import keep_last

    final = checkpoint_dir(root, iteration)
    dist.barrier()
    if dist.get_rank() == 0:
        if os.path.isdir(final):
            shutil.rmtree(final)  # re-saving the same iteration (e.g. after a restart): replace it whole
        os.replace(final + ".tmp", final)
        atomic_write_text(os.path.join(root, TRACKER), f"{iteration}\n")
        print(f"[megatron-llm] saved checkpoint at iteration {iteration} to {final}", flush=True)
        if keep:
            keep_last(root, keep, iteration)
    dist.barrier()


def load(cfg: RunConfig, model, optimizer, scheduler) -> Optional[Dict[str, int]]:
    """Resume from the latest complete checkpoint in --load. None when there is none (fresh start)."""
    from megatron.core import dist_checkpointing

    root = cfg.checkpoint.load
    it = latest_iteration(root) if os.path.isdir(root) else None
    if it is None:
        if dist.get_rank() == 0:
            print(f"[megatron-llm] no checkpoint in {root}; starting from scratch", flush=True)
        return None
    path = checkpoint_dir(root, it)
    common = dist_checkpointing.load_common_state_dict(path)
    if common.get("format_version") != FORMAT_VERSION:
        raise RuntimeError(f"{path}: checkpoint format {common.get('format_version')} is not "
                           f"{FORMAT_VERSION}; it was not written by this version of megatron-llm")
    _check_vocab(path, common.get("vocab"), model)
    same_layout = {k: common["layout"][k] for k in ("tp", "pp")} == {k: _layout()[k] for k in ("tp", "pp")}
    with_optim = not (cfg.checkpoint.no_load_optim or cfg.checkpoint.finetune)
    with_rng = same_layout and not (cfg.checkpoint.no_load_rng or cfg.checkpoint.finetune)
    sd = _state_dict(cfg, model, optimizer, scheduler, is_loading=True, with_optim=with_optim, with_rng=with_rng)
    loaded = dist_checkpointing.load(sd, path)
    for key, m in zip(model_keys(len(model)), model):
        _unwrap(m).load_state_dict(loaded[key])
    if with_optim:
        _load_optimizer_state(optimizer, loaded["optimizer"])
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    elif optimizer is not None:
        optimizer.reload_model_params()  # fp32 main copies of bf16/fp16 weights were made from the initial ones
    if with_rng:
        from megatron.core import tensor_parallel

        rng = loaded["rng_state"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.set_rng_state(rng["cuda"])
        tensor_parallel.get_cuda_rng_tracker().set_states(rng["tracker"])
    if dist.get_rank() == 0:
        note = "" if same_layout else f" (resharded from TP{common['layout']['tp']} x PP{common['layout']['pp']})"
        print(f"[megatron-llm] loaded checkpoint {path}{note}", flush=True)
    if cfg.checkpoint.finetune:
        return {"iteration": 0, "consumed_samples": 0, "data": {}}
    return {"iteration": int(common["iteration"]), "consumed_samples": int(common["consumed_samples"]),
            "data": dict(common.get("data") or {})}
