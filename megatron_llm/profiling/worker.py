"""One profiling rank: `python -m megatron_llm.profiling.worker <profile flags>` (started by cli/profile.py)."""

from __future__ import annotations

import sys


def preload(argv) -> None:
    """The imports every profiling rank makes, done once by a launcher that forks CPU ranks (launch/forked_rank.py)."""
    from megatron_llm.profiling.options import profile_config
    from megatron_llm.training import worker

    worker.preload_for(profile_config(argv)[1])
    import megatron_llm.profiling.callback  # noqa: F401


def main(argv=None) -> int:
    from megatron_llm.profiling.options import profile_config
    from megatron_llm.training import worker

    args, cfg, window = profile_config(sys.argv[1:] if argv is None else argv)
    worker.before_megatron_imports(cfg)
    from megatron_llm.profiling.callback import ProfilerCallback
    from megatron_llm.training.pretrain import pretrain

    cb = ProfilerCallback(args.report_dir, args.warmup_iters, args.profile_iters, trace_iters=window,
                          sample_interval_s=args.sample_interval, attention=args.attention_flops,
                          breakdown=args.breakdown)
    return worker.finished(int(pretrain(cfg, [cb])["exit_code"]))


if __name__ == "__main__":
    sys.exit(main())
