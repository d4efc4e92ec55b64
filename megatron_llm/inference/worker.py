"""Logits of a checkpoint at several parallel layouts, one launch:
`python -m megatron_llm.inference.worker --load CKPT --tokens T.pt --layouts 3x1,1x2,3x2 --out DIR --nproc N`.

Spawns N ranks (or is one, under torchrun/srun); for each TPxPP layout (TP*PP dividing N, the rest data-parallel
replicas) the model is rebuilt at that layout, the weights loaded (dist_checkpointing reshards) and the logits of
the [batch, seq] tokens in T.pt written by one rank of the last stage to DIR/logits_tp{T}_pp{P}.pt (fp32, the
real vocabulary only). A tool to check that a checkpoint means the same model at every layout.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m megatron_llm.inference.worker", allow_abbrev=False)
    ap.add_argument("--load", required=True)
    ap.add_argument("--tokens", required=True, help="torch.save'd [batch, seq] int64 tensor")
    ap.add_argument("--layouts", required=True, help="comma-separated TPxPP, e.g. 1x1,3x1,1x2,3x2")
    ap.add_argument("--out", required=True)
    ap.add_argument("--nproc", type=int, default=1)
    return ap


def _layouts(text: str):
    out = []
    for item in text.split(","):
        tp, pp = item.lower().split("x")
        out.append((int(tp), int(pp)))
    return out


def run(args) -> int:
    import torch
    from megatron.core import parallel_state as ps

    from megatron_llm.inference import session
    from megatron_llm.inference.forward import forward_logits
    from megatron_llm.training.initialize import initialize, shutdown

    info = session.checkpoint_info(args.load)
    tokens = torch.load(args.tokens)
    world = int(os.environ["WORLD_SIZE"])
    for tp, pp in _layouts(args.layouts):
        if world % (tp * pp):
            raise SystemExit(f"layout {tp}x{pp} does not divide the world size {world}")
        cfg = session.run_config(info.model, tp=tp, pp=pp, dtype=info.dtype, load=os.path.dirname(info.path))
        initialize(cfg)
        chunks = session.build_model(cfg, info.vocab_rows, "cpu", info.vocab_size)
        session.load_weights(cfg, chunks)
        logits = forward_logits(chunks, tokens)
        if logits is not None and ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0:
            os.makedirs(args.out, exist_ok=True)
            torch.save(logits[..., : info.vocab_size].float().contiguous(),
                       os.path.join(args.out, f"logits_tp{tp}_pp{pp}.pt"))
        del chunks
    shutdown()
    return 0


def preload(argv: List[str]) -> None:
    """The imports every rank makes, done once by a launcher that forks CPU ranks (launch/forked_rank.py)."""
    import megatron_llm.inference.forward  # noqa: F401  (torch, megatron-core)
    import megatron_llm.inference.session  # noqa: F401
    import megatron_llm.training.initialize  # noqa: F401


def main(argv: List[str] | None = None) -> int:
    from megatron_llm.launch.local import launched_externally, run_workers

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if launched_externally():
        return run(args)
    return run_workers("megatron_llm.inference.worker", argv, args.nproc, cpu=True)


if __name__ == "__main__":
    sys.exit(main())
