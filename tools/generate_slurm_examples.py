"""Regenerate the sbatch examples in scripts/slurm/ from scripts/slurm/examples.txt with `megatron-llm submit
--dry-run` (tests/unit/test_slurm_script.py checks they are in sync).

    python tools/generate_slurm_examples.py [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import sys
from typing import Dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "scripts", "slurm", "examples.txt")


def generate(out_dir: str) -> Dict[str, str]:
    """Write every example into out_dir; returns {file name: script text}."""
    from megatron_llm.launch import submit_cli

    written = {}
    with open(EXAMPLES, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.startswith("#"):
                continue
            name, *flags = shlex.split(line)
            target = os.path.join(out_dir, name)
            with contextlib.redirect_stdout(io.StringIO()):
                rc = submit_cli.main(["--dry-run", "--script", target, *flags])
            if rc != 0:
                raise SystemExit(f"{EXAMPLES}:{lineno}: megatron-llm submit failed for {name}")
            with open(target, encoding="utf-8") as g:
                written[name] = g.read()
    return written


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "scripts", "slurm"))
    args = p.parse_args()
    os.chdir(ROOT)
    for name in generate(os.path.abspath(args.out)):
        print(os.path.join(args.out, name))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
