#!/usr/bin/env python
"""Megatron-LM-style tool script: same as `megatron-llm profile` (see megatron_llm/cli/profile.py).

    python tools/profile_mfu.py --recipe tinyllama-1.1b --mock-data --bf16 --warmup-iters 3 --profile-iters 10 \
        --report-dir profile-report --trace-iters 5:5
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_llm.cli.profile import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
