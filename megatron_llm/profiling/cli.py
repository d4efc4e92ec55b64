"""`megatron-llm profile <train flags> [--warmup-iters N] [--profile-iters M] [--report-dir D] [--trace-iters A:B]`

Runs the training configuration given by the usual `train` flags for N warm-up + M measured iterations (no
evaluation, no checkpoint saving) with the ProfilerCallback on every rank, and writes D/report.md with
throughput, MFU/HFU, the per-step time breakdown, GPU telemetry and (with --trace-iters) a torch.profiler trace.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

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
    """(args, cfg, trace_window): the run configuration with the profile's overrides; ConfigError if invalid."""
    from megatron_llm.config.arguments import ConfigError, build_config, parse_run_args, validate
    from megatron_llm.launch.local import launched_externally
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
    world = int(os.environ["WORLD_SIZE"]) if launched_externally() else cfg.launch.nproc_per_node
    validate(cfg, world)
    return args, cfg, window


def main(argv: Optional[List[str]] = None) -> int:
    from megatron_llm.config.arguments import ConfigError, list_recipes
    from megatron_llm.launch.local import launched_externally, run_workers

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, cfg, _ = profile_config(argv)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if cfg is None:
        print("\n".join(list_recipes()))
        return 0
    if launched_externally():  # torchrun / srun made this process one rank
        from megatron_llm.profiling import worker

        return worker.main(argv)
    device = cfg.launch.device or ("cuda" if _cuda_available() else "cpu")
    code = run_workers("megatron_llm.profiling.worker", argv, cfg.launch.nproc_per_node, cfg.launch.master_addr,
                       cfg.launch.master_port, cpu=device == "cpu")
    report = os.path.join(args.report_dir, "report.md")
    if code == 0 and os.path.exists(report):
        print(f"[megatron-llm profile] report: {os.path.abspath(report)}", flush=True)
    return code


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
