"""One training rank: `python -m megatron_llm.training.worker <train flags>` (started by launch/local.py)."""

from __future__ import annotations

import gc
import sys


def before_megatron_imports(cfg) -> None:
    """A CPU rank runs megatron-core's jit-fused functions eagerly (cpu_emulation.eager_jit_fusions says why); it
    must be decided before megatron-core is first imported."""
    from megatron_llm.parallel.device import resolve_device

    if cfg.launch.device != "cuda" and resolve_device(cfg.launch.device) == "cpu":
        from megatron_llm.parallel import cpu_emulation

        cpu_emulation.eager_jit_fusions()


def preload_for(cfg) -> None:
    """The imports a rank of `cfg` makes, done once by a launcher that forks its CPU ranks (launch/forked_rank.py)."""
    before_megatron_imports(cfg)
    import torch._inductor.config  # noqa: F401  (torch.use_deterministic_algorithms imports it: 0.8 s of start-up)

    import megatron_llm.training.pretrain  # noqa: F401  (torch, megatron-core)


def preload(argv) -> None:
    from megatron_llm.config.arguments import build_config, parse_run_args

    args, values = parse_run_args(argv)
    preload_for(build_config(values, args.recipe))


def finished(exit_code: int) -> int:
    """Training is over and everything is closed: spare the interpreter's final garbage collection over the objects
    torch and megatron-core hold (~0.6 s a rank, measured on CPU); atexit handlers and thread joins still run."""
    gc.freeze()
    return exit_code


def main(argv=None) -> int:
    from megatron_llm.training import signals

    signals.install()  # first: a stop signal during start-up must not kill the rank (see signals.py)
    from megatron_llm.config.arguments import ConfigError, build_config, parse_run_args
    from megatron_llm.exit_codes import EXIT_CODE_CONFIG

    args, values = parse_run_args(sys.argv[1:] if argv is None else argv)
    cfg = build_config(values, args.recipe)
    before_megatron_imports(cfg)
    from megatron_llm.training.pretrain import pretrain

    try:
        return finished(int(pretrain(cfg)["exit_code"]))
    except (RuntimeError, TimeoutError) as e:  # torch.distributed reports timeouts and lost peers so
        from megatron_llm.training.health import describe_failure

        print(f"[megatron-llm] ERROR: {describe_failure(e, cfg)}", file=sys.stderr, flush=True)
        raise
    except ConfigError as e:
        # Raised alike on every rank (it comes from the configuration and the checkpoint, which all ranks read):
        # one line from rank 0, no traceback per rank.
        import os

        from megatron_llm.training.initialize import release

        if os.environ.get("RANK", "0") == "0":
            print(f"megatron-llm train: error: {e}", file=sys.stderr, flush=True)
        release()
        return EXIT_CODE_CONFIG


if __name__ == "__main__":
    sys.exit(main())
