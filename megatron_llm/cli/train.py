"""`megatron-llm train`: validate the configuration and the input files, then spawn --nproc-per-node ranks (or be
one, under torchrun/srun)."""

from __future__ import annotations

import sys
from typing import List

PROG = "megatron-llm train"


def main(argv: List[str]) -> int:
    from megatron_llm.launch.local import launched_externally, run_workers

    external = launched_externally()
    if external:
        from megatron_llm.training import signals

        signals.install()  # this process is a rank: from now on a stop signal is kept, not fatal (signals.py)
    from megatron_llm.cli.checks import check_job
    from megatron_llm.config.arguments import ConfigError, build_config, list_recipes, parse_run_args
    from megatron_llm.parallel.device import resolve_device

    args, values = parse_run_args(argv, prog=PROG)
    if args.list_recipes:
        print("\n".join(list_recipes()))
        return 0
    try:
        cfg = build_config(values, args.recipe)
        check_job(cfg)
        device = resolve_device(cfg.launch.device)
    except (ConfigError, RuntimeError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if external:
        from megatron_llm.training import worker

        return worker.main(argv)
    if device == "cuda":  # this node's NCCL / CUDA variables, decided once, inherited by the ranks
        from megatron_llm.parallel.comm_env import export_node_env
        from megatron_llm.parallel.comm_tuning import report

        print(report(export_node_env(cfg, cfg.launch.nproc_per_node, device, cfg.launch.nproc_per_node)),
              flush=True)
    return run_workers("megatron_llm.training.worker", argv, cfg.launch.nproc_per_node, cfg.launch.master_addr,
                       cfg.launch.master_port, cpu=device == "cpu")
