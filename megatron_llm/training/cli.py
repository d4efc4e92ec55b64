"""`megatron-llm train`: validate the configuration, then spawn --nproc-per-node ranks (or be one, under
torchrun/srun)."""

from __future__ import annotations

import os
import sys
from typing import List


def check_config(argv: List[str], prog: str):
    """Parse and validate without touching torch.distributed; exits 2 with the flag named on a bad config."""
    from megatron_llm.config.arguments import ConfigError, build_config, list_recipes, parse_run_args, validate
    from megatron_llm.launch.local import launched_externally

    args, values = parse_run_args(argv, prog=prog)
    if args.list_recipes:
        print("\n".join(list_recipes()))
        raise SystemExit(0)
    try:
        cfg = build_config(values, args.recipe)
        world = int(os.environ["WORLD_SIZE"]) if launched_externally() else cfg.launch.nproc_per_node
        validate(cfg, world)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    return cfg


def main(argv: List[str], worker_module: str = "megatron_llm.training.worker",
         prog: str = "megatron-llm train") -> int:
    from megatron_llm.launch.local import launched_externally, run_workers

    if launched_externally():
        from megatron_llm.training import signals

        signals.install()  # this process is a rank: from now on a stop signal is kept, not fatal (signals.py)
    cfg = check_config(argv, prog)
    if launched_externally():
        import importlib

        return importlib.import_module(worker_module).main(argv)
    device = cfg.launch.device or ("cuda" if _cuda_available() else "cpu")
    return run_workers(worker_module, argv, cfg.launch.nproc_per_node, cfg.launch.master_addr,
                       cfg.launch.master_port, cpu=device == "cpu")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
