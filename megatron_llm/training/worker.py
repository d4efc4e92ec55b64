"""One training rank: `python -m megatron_llm.training.worker <train flags>` (started by launch/local.py)."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    from megatron_llm.training import signals

    signals.install()  # first: a stop signal during start-up must not kill the rank (see signals.py)
    from megatron_llm.config.arguments import build_config, parse_run_args
    from megatron_llm.training.pretrain import pretrain

    from megatron_llm.config.arguments import ConfigError
    from megatron_llm.exit_codes import EXIT_CODE_CONFIG

    args, values = parse_run_args(sys.argv[1:] if argv is None else argv)
    cfg = build_config(values, args.recipe)
    try:
        return int(pretrain(cfg)["exit_code"])
    except (RuntimeError, TimeoutError) as e:  # torch.distributed reports timeouts and lost peers so
        from megatron_llm.training.health import describe_failure

        print(f"[megatron-llm] ERROR: {describe_failure(e, cfg)}", file=sys.stderr, flush=True)
        raise
    except ConfigError as e:
        # Raised alike on every rank (it comes from the configuration and the checkpoint, which all ranks read):
        # one line from rank 0, no traceback per rank.
        import os

        if os.environ.get("RANK", "0") == "0":
            print(f"megatron-llm train: error: {e}", file=sys.stderr, flush=True)
        return EXIT_CODE_CONFIG


if __name__ == "__main__":
    sys.exit(main())
