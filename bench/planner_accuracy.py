"""Planner predictions beside published measurements (the tables in docs/planner.md).

    python bench/planner_accuracy.py [--data-dir tests/data/planner]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_llm.planner import published  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "planner"))
    a = p.parse_args()
    print("## Narayanan et al. 2021, Table 1 (A100; hardware TFLOP/s, eq. 3: recomputation counted)\n")
    print(published.markdown(published.narayanan2021(os.path.join(a.data_dir, "narayanan2021_table1_a100.csv"))))
    print("\n## Megatron-LM README, Megatron-Core r0.8.0 weak scaling (H100; model TFLOP/s, full attention)\n")
    print(published.markdown(published.megatron_h100(
        os.path.join(a.data_dir, "megatronlm_h100_weak_scaling_core_v0.8.0.csv"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
