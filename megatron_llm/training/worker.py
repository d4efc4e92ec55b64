"""One training rank: `python -m megatron_llm.training.worker <train flags>` (started by launch/local.py)."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    from megatron_llm.training import signals

    signals.install()  # first: a stop signal during start-up must not kill the rank (see signals.py)
    from megatron_llm.config.arguments import build_config, parse_run_args
    from megatron_llm.training.pretrain import pretrain

    args, values = parse_run_args(sys.argv[1:] if argv is None else argv)
    cfg = build_config(values, args.recipe)
    try:
        return int(pretrain(cfg)["exit_code"])
    except (RuntimeError, TimeoutError) as e:  # torch.distributed reports timeouts and lost peers so
        from megatron_llm.training.health import describe_failure

        print(f"[megatron-llm] ERROR: {describe_failure(e, cfg)}", file=sys.stderr, flush=True)
        raise


if __name__ == "__main__":
    sys.exit(main())
