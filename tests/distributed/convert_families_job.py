"""One process, several families: `python convert_families_job.py ROOT NAME...`. For each ROOT/NAME/hf: convert to
megatron (ROOT/NAME/mg, TP2 target), logits of ROOT/tokens.pt on one process (ROOT/NAME/logits.pt), convert back
(ROOT/NAME/back). One interpreter for all, because start-up dominates on small models."""

import sys
from pathlib import Path

import torch


def main() -> int:
    from megatron_llm.convert import to_hf, to_megatron
    from megatron_llm.inference.forward import checkpoint_logits

    root = Path(sys.argv[1])
    tokens = torch.load(root / "tokens.pt")
    for name in sys.argv[2:]:
        d = root / name
        to_megatron.convert(str(d / "hf"), str(d / "mg"), tp=2, pp=1)
        torch.save(checkpoint_logits(str(d / "mg"), tokens), d / "logits.pt")
        to_hf.convert(str(d / "mg"), str(d / "back"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
