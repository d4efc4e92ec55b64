"""Flags of `megatron-llm profile` beyond the train flags, and the run configuration a profile uses."""

from __future__ import annotations

import argparse
from typing import List

PROG = "megatron-llm profile"


def add_profile_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("profile")
    g.add_argument("--warmup-iters", type=int, default=3,
                   help="iterations run before measuring (allocator warm-up, cuDNN autotuning) (default: 3)")
    g.add_argument("--profile-iters", type=int, default=10, help="measured iterations (default: 10)")
    g.add_argument("--report-dir", default="profile-report", help="where report.md and the plots go")
    g.add_argument("--trace-iters", default=None,
                   help="FIRST:LAST iterations (inclusive, counted from 1) to record with torch.profiler")
    g.add_argument("--sample-interval", type=float, default=0.1, help="NVML sampling period in seconds")
    g.add_argument("--attention-flops", choices=("full", "causal"), default="full",
                   help="count the full s x s attention (Megatron-LM paper, default) or half of it (causal)")
    g.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True,
                   help="record megatron-core timers for the per-step breakdown (they synchronise the GPU a few "
                        "times per micro-batch; --no-breakdown measures throughput without them)")


def profile_config(argv: List[str]):
    """(args, cfg, trace_window): the run configuration with the profile's overrides; ConfigError if invalid.
    cfg is None for --list-recipes."""
    from megatron_llm.config.arguments import ConfigError, build_config, parse_run_args
    from megatron_llm.profiling.trace import parse_window

    args, values = parse_run_args(argv, prog=PROG, extra=add_profile_args)
    if args.list_recipes:
        return args, None, None
    cfg = build_config(values, args.recipe)
    if args.warmup_iters < 0 or args.profile_iters < 1:
        raise ConfigError("--warmup-iters must be >= 0 and --profile-iters >= 1")
    # A profile measures steps; it must not evaluate (a different code path inside the window) or overwrite
    # checkpoints of a real run. It may --load one, to profile a resumed state.
    cfg.train.train_iters = args.warmup_iters + args.profile_iters
    # The learning rate does not change a step's cost, but a recipe's warm-up (2,000 iterations for the 7B
    # presets) longer than the profile is an impossible schedule: warm up within the profile instead.
    cfg.optim.lr_warmup_iters = min(cfg.optim.lr_warmup_iters, cfg.train.train_iters - 1)
    cfg.train.eval_interval = 0
    cfg.train.exit_interval = None
    cfg.checkpoint.save = None
    cfg.checkpoint.save_interval = None
    try:
        window = parse_window(args.trace_iters)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if window and window[1] > cfg.train.train_iters:
        raise ConfigError(f"--trace-iters {args.trace_iters} ends after the last iteration "
                          f"({cfg.train.train_iters} = --warmup-iters + --profile-iters)")
    return args, cfg, window
