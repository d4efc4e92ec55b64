"""Megatron-LM-style flags -> RunConfig.  Precedence: dataclass defaults < YAML recipe < command-line flags.

Flags are generated from the dataclass fields (``num_query_groups`` -> ``--num-query-groups``), so a field added
to a config is a flag at once, and recipe keys are exactly the flag names with underscores.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import yaml

from megatron_llm.config.model import ARCHITECTURES
from megatron_llm.config.training import RunConfig

RECIPE_DIR = Path(__file__).parent / "recipes"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the flag (or file and key) to fix."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _section_classes() -> Dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {s: hints[s] for s in RunConfig.SECTIONS}


def _scalar_type(tp) -> type:
    """int | float | str for Optional[X] / List[X] annotations."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (list, List):
        return _scalar_type(args[0])
    if args:
        return _scalar_type(args[0])
    return tp


def _is_bool(tp) -> bool:
    return _scalar_type(tp) is bool


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every RunConfig field as a flag, defaulting to None so that we can tell what the user set."""
    parser.add_argument("--recipe", default=None,
                        help="model/run preset: a name from `megatron-llm train --list-recipes` or a YAML file")
    for section, cls in _section_classes().items():
        group = parser.add_argument_group(section)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            help_ = f.metadata.get("help", "")
            default = f.default if f.default is not dataclasses.MISSING else None
            help_ = f"{help_} (default: {default})" if help_ else None
            if _is_bool(tp) and (default or f.metadata.get("negatable")):
                # On by default (recipes may rely on it), or decided at launch: --X and --no-X.
                group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                   default=None, help=help_)
            elif _is_bool(tp):
                # Off by default: --X only (no --no-no-load-optim).
                group.add_argument(flag(f.name), dest=f.name, action="store_const", const=True,
                                   default=None, help=help_)
            else:
                kw: Dict[str, Any] = {"dest": f.name, "default": None, "type": _scalar_type(tp), "help": help_}
                if "nargs" in f.metadata:
                    kw["nargs"] = f.metadata["nargs"]
                if "choices" in f.metadata:
                    kw["choices"] = f.metadata["choices"]
                group.add_argument(flag(f.name), **kw)


def list_recipes() -> List[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> Dict[str, Any]:
    """Read a recipe: a flat mapping of flag names (underscored) to values."""
    # A bare name is a shipped preset (names may contain dots: tinyllama-1.1b); anything else is a file path.
    shipped = RECIPE_DIR / f"{name_or_path}.yaml"
    path = shipped if "/" not in name_or_path and shipped.is_file() else Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"--recipe {name_or_path}: no such recipe file {path}; "
                          f"known recipes: {', '.join(list_recipes())}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--recipe {path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"--recipe {path}: expected a mapping of flag names to values, got {type(data).__name__}")
    fields = {f.name: f for cls in _section_classes().values() for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"--recipe {path}: unknown key {key!r} (keys are flag names with underscores, "
                              f"e.g. num_layers for --num-layers)")
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"--recipe {path}: {key}: {value!r} is not one of {', '.join(map(str, choices))}")
    return data


def build_config(values: Dict[str, Any], recipe: Optional[str] = None) -> RunConfig:
    """Assemble a RunConfig from a recipe (optional) overridden by explicitly given values (None = unset)."""
    merged: Dict[str, Any] = dict(load_recipe(recipe)) if recipe else {}
    merged.update({k: v for k, v in values.items() if v is not None})
    sections = {}
    for section, cls in _section_classes().items():
        names = {f.name for f in dataclasses.fields(cls)}
        sections[section] = cls(**{k: v for k, v in merged.items() if k in names})
    return RunConfig(**sections, recipe=recipe)


def parse_run_args(argv: Iterable[str], prog: str = "megatron-llm train",
                   extra: Optional[typing.Callable[[argparse.ArgumentParser], None]] = None) -> tuple:
    parser = argparse.ArgumentParser(prog=prog, allow_abbrev=False)
    add_run_arguments(parser)
    parser.add_argument("--list-recipes", action="store_true", help="print the known recipe names and exit")
    if extra:
        extra(parser)
    args = parser.parse_args(list(argv))
    values = {k: v for k, v in vars(args).items() if k not in ("recipe", "list_recipes")}
    return args, values


def config_to_dict(cfg: RunConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def validate(cfg: RunConfig, world_size: int, schedule: bool = True) -> None:
    """Refuse impossible shapes and layouts before any process group exists (a bad one would hang the workers).
    Shapes only: whether the input files exist and agree is data's question (data/input_checks.py), asked once
    per job by the process the user runs. schedule=False skips the learning-rate schedule (the planner asks
    about layouts, not run lengths)."""
    m, p, d = cfg.model, cfg.parallel, cfg.data
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    if tp < 1 or pp < 1:
        raise ConfigError("--tensor-model-parallel-size and --pipeline-model-parallel-size must be >= 1")
    if world_size % (tp * pp):
        raise ConfigError(f"world size {world_size} (--nproc-per-node x nodes) is not divisible by "
                          f"--tensor-model-parallel-size {tp} x --pipeline-model-parallel-size {pp} = {tp * pp}")
    dp = cfg.data_parallel_size(world_size)
    o = cfg.optim
    decay_iters = o.lr_decay_iters or cfg.train.train_iters
    if schedule and o.lr_warmup_iters >= decay_iters:  # megatron-core's scheduler asserts this without saying which flag
        raise ConfigError(f"--lr-warmup-iters {o.lr_warmup_iters} must be smaller than the decay length "
                          f"({'--lr-decay-iters' if o.lr_decay_iters else '--train-iters'} {decay_iters})")
    if m.num_attention_heads % tp:
        raise ConfigError(f"--num-attention-heads {m.num_attention_heads} is not divisible by "
                          f"--tensor-model-parallel-size {tp}")
    if m.num_query_groups % tp:
        raise ConfigError(f"--num-query-groups {m.num_query_groups} is not divisible by "
                          f"--tensor-model-parallel-size {tp}")
    if m.num_attention_heads % m.num_query_groups:
        raise ConfigError(f"--num-attention-heads {m.num_attention_heads} is not divisible by "
                          f"--num-query-groups {m.num_query_groups}")
    if m.hidden_size % m.num_attention_heads and m.kv_channels is None:
        raise ConfigError(f"--hidden-size {m.hidden_size} is not divisible by --num-attention-heads "
                          f"{m.num_attention_heads}; set --kv-channels")
    if m.ffn_hidden_size % tp:
        raise ConfigError(f"--ffn-hidden-size {m.ffn_hidden_size} is not divisible by "
                          f"--tensor-model-parallel-size {tp}")
    vp = p.num_layers_per_virtual_pipeline_stage
    if vp is not None:
        if pp < 2:
            raise ConfigError("--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size >= 2")
        if m.num_layers % (pp * vp):
            raise ConfigError(f"--num-layers {m.num_layers} is not divisible by --pipeline-model-parallel-size "
                              f"{pp} x --num-layers-per-virtual-pipeline-stage {vp} = {pp * vp}")
    elif m.num_layers % pp:
        raise ConfigError(f"--num-layers {m.num_layers} is not divisible by "
                          f"--pipeline-model-parallel-size {pp}")
    if p.sequence_parallel and tp == 1:
        raise ConfigError("--sequence-parallel needs --tensor-model-parallel-size > 1")
    if d.seq_length > m.max_position_embeddings:
        raise ConfigError(f"--seq-length {d.seq_length} exceeds --max-position-embeddings "
                          f"{m.max_position_embeddings}")
    gbs = cfg.global_batch_size(dp)
    if gbs % (d.micro_batch_size * dp):
        raise ConfigError(f"--global-batch-size {gbs} is not divisible by --micro-batch-size "
                          f"{d.micro_batch_size} x data-parallel size {dp} = {d.micro_batch_size * dp}")
    if vp is not None and (gbs // (d.micro_batch_size * dp)) % pp:
        raise ConfigError(f"the interleaved schedule needs the number of micro-batches "
                          f"({gbs // (d.micro_batch_size * dp)}) to be a multiple of "
                          f"--pipeline-model-parallel-size {pp}; raise --global-batch-size")
    if m.make_vocab_size_divisible_by < 1:
        raise ConfigError(f"--make-vocab-size-divisible-by {m.make_vocab_size_divisible_by} must be >= 1")
    if not cfg.launch.distributed_timeout_minutes > 0:
        raise ConfigError(f"--distributed-timeout-minutes {cfg.launch.distributed_timeout_minutes} must be > 0")
    if cfg.train.nan_policy == "rollback" and not cfg.checkpoint.save:
        raise ConfigError("--nan-policy rollback needs --save (the checkpoints it rolls back to)")
    if cfg.checkpoint.keep_last is not None and cfg.checkpoint.keep_last < 1:
        raise ConfigError(f"--keep-last {cfg.checkpoint.keep_last}: keep at least 1 checkpoint")
    if cfg.optim.bf16 and cfg.optim.fp16:
        raise ConfigError("--bf16 and --fp16 are exclusive")
    validate_recompute(cfg)
    if m.architecture not in ARCHITECTURES:
        raise ConfigError(f"--architecture {m.architecture!r} is not implemented; choose one of "
                          f"{', '.join(ARCHITECTURES)}")
    if m.architecture == "transnormer":
        if m.num_query_groups != m.num_attention_heads:
            raise ConfigError(f"--architecture transnormer has one key/value head per query head: drop "
                              f"--num-query-groups {m.num_query_groups} (or set it to {m.num_attention_heads})")
        bad = [i for i in m.lrpe_layers or [] if not 0 <= i < m.num_layers]
        if bad:
            raise ConfigError(f"--lrpe-layers {' '.join(map(str, bad))}: layers are numbered 0..{m.num_layers - 1}")
    elif m.lrpe_layers:
        raise ConfigError("--lrpe-layers applies to --architecture transnormer only")
    if not d.mock_data:
        if not d.data_path:
            raise ConfigError("--data-path is required (or --mock-data for synthetic tokens)")
        data_prefixes(d.data_path)
    if d.tokenizer_type in ("SentencePieceTokenizer", "HuggingFaceTokenizer"):
        if not d.tokenizer_model:
            raise ConfigError(f"--tokenizer-type {d.tokenizer_type} needs --tokenizer-model")
    elif d.tokenizer_type == "NullTokenizer" and not m.vocab_size:
        raise ConfigError("--tokenizer-type NullTokenizer needs --vocab-size")


def validate_recompute(cfg: RunConfig) -> None:
    """megatron-core's recompute rules, said with our flag names before any process starts."""
    i = cfg.impl
    if i.recompute_granularity is None:
        if i.recompute_method or i.recompute_num_layers is not None:
            raise ConfigError("--recompute-method / --recompute-num-layers need --recompute-granularity full")
    elif i.recompute_granularity == "selective":
        if i.recompute_method or i.recompute_num_layers is not None:
            raise ConfigError("--recompute-granularity selective recomputes the attention core of every layer; "
                              "drop --recompute-method / --recompute-num-layers (they apply to full)")
    elif not i.recompute_method or i.recompute_num_layers is None:
        raise ConfigError("--recompute-granularity full needs --recompute-method uniform|block and "
                          "--recompute-num-layers N")
    elif i.recompute_num_layers < 1:
        raise ConfigError(f"--recompute-num-layers {i.recompute_num_layers} must be >= 1")
    elif i.recompute_method == "block":
        per_stage = cfg.model.num_layers // cfg.parallel.pipeline_model_parallel_size
        if i.recompute_num_layers > per_stage:
            raise ConfigError(f"--recompute-num-layers {i.recompute_num_layers} exceeds the {per_stage} layers "
                              f"of a pipeline stage")


def data_prefixes(data_path: List[str]) -> List[str]:
    """The dataset prefixes of a Megatron data path ('P' or 'W1 P1 W2 P2 ...')."""
    if len(data_path) == 1:
        return list(data_path)
    if len(data_path) % 2:
        raise ConfigError(f"--data-path {' '.join(data_path)}: expected 'weight prefix' pairs")
    for w in data_path[0::2]:
        try:
            float(w)
        except ValueError:
            raise ConfigError(f"--data-path: {w!r} is not a weight; expected 'weight prefix' pairs") from None
    return list(data_path[1::2])
