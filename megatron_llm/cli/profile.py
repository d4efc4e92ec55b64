"""`megatron-llm profile <train flags> [--warmup-iters N] [--profile-iters M] [--report-dir D] [--trace-iters A:B]`

Runs the training configuration given by the usual `train` flags for N warm-up + M measured iterations (no
evaluation, no checkpoint saving) with the ProfilerCallback on every rank, and writes D/report.md with
throughput, MFU/HFU, the per-step time breakdown, GPU telemetry and (with --trace-iters) a torch.profiler trace.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

from megatron_llm.profiling.options import PROG


def main(argv: Optional[List[str]] = None) -> int:
    from megatron_llm.cli.checks import check_job
    from megatron_llm.config.arguments import ConfigError, list_recipes
    from megatron_llm.launch.local import launched_externally, run_workers
    from megatron_llm.parallel.device import resolve_device
    from megatron_llm.profiling.options import profile_config

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, cfg, _ = profile_config(argv)
        if cfg is not None:
            check_job(cfg)
            device = resolve_device(cfg.launch.device)
    except (ConfigError, RuntimeError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if cfg is None:
        print("\n".join(list_recipes()))
        return 0
    if launched_externally():  # torchrun / srun made this process one rank
        from megatron_llm.profiling import worker

        return worker.main(argv)
    code = run_workers("megatron_llm.profiling.worker", argv, cfg.launch.nproc_per_node, cfg.launch.master_addr,
                       cfg.launch.master_port, cpu=device == "cpu")
    report = os.path.join(args.report_dir, "report.md")
    if code == 0 and os.path.exists(report):
        print(f"[megatron-llm profile] report: {os.path.abspath(report)}", flush=True)
    return code
