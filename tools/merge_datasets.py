#!/usr/bin/env python
"""Merge .bin/.idx shards into one dataset without re-tokenising (Megatron-LM's tools/merge_datasets.py flags)."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.path.pardir)))

from megatron_llm.data.merge import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
