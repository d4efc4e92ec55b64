"""`megatron-llm ops [--device cpu|cuda] [--build]`: each fused op, the implementation it runs with on that device
(CUDA kernel, C++ CPU kernel or torch reference) and why; --build builds the csrc/ extension first (JIT, cached)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="megatron-llm ops", description=__doc__)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="device whose implementation to report (default: cuda when available, else cpu)")
    parser.add_argument("--build", action="store_true",
                        help="build (or load) the extension now; exit 1 when it cannot be built")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from megatron_llm.ops import build, status

    if args.build:
        ext, why = build.load()
        print(f"extension: {'ready' if ext is not None else 'not available'} ({why})")
        if ext is None:
            return 1
    rows = status(args.device)
    width = max(len(op) for op, _, _ in rows)
    impl_width = max(len(impl) for _, impl, _ in rows)
    print(f"{'op':<{width}}  {'implementation':<{impl_width}}  why")
    for op, impl, why in rows:
        print(f"{op:<{width}}  {impl:<{impl_width}}  {why}")
    return 0
