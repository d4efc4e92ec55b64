#!/usr/bin/env python
"""Megatron-LM-style entry point: same flags as `megatron-llm preprocess` (see --help)."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.path.pardir)))

from megatron_llm.data.preprocess_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
