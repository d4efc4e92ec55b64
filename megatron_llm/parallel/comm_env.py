"""The node-dependent half of communication tuning, run where the job runs (torch-free).

`python -m megatron_llm.parallel.comm_env --tp 2 --pp 4 --world-size 64 --gpus-per-node 8` discovers this node
(parallel/topology.py), decides the environment (comm_tuning.decide_env) and prints `export NAME=value` lines with
their reasons as comments, for the Slurm script to eval (<run>/comm_env.sh, written by `submit`). Variables
already set in the environment are the user's and are not printed. `train` calls export_node_env() before it
spawns its local ranks.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import List, Optional

from megatron_llm.parallel import comm_tuning
from megatron_llm.parallel.topology import discover_node


def env_decisions(shape: comm_tuning.RunShape, environ=None, node=None):
    environ = os.environ if environ is None else environ
    if node is None and shape.device == "cuda":
        node = discover_node()
    return comm_tuning.decide_env(shape, node, environ)


def shell_lines(decisions) -> List[str]:
    out = []
    for d in decisions:
        out.append(f"# {d.line()}")
        if d.source == "auto" and d.value is not None:
            out.append(f"export {d.name}={shlex.quote(str(d.value))}")
    names = [d.name for d in decisions if d.source == "auto" and d.value is not None]
    if names:
        out.append(f"export {comm_tuning.AUTO_ENV_MARK}={','.join(names)}")
    return out


def export_node_env(cfg, world_size: int, device: str, gpus_per_node: int) -> List:
    """Decide and set (in os.environ, inherited by the ranks spawned next) this node's variables."""
    shape = comm_tuning.shape_from_config(cfg, world_size, device, gpus_per_node)
    decisions = env_decisions(shape)
    comm_tuning.apply(cfg, decisions)
    return decisions


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megatron_llm.parallel.comm_env", description=__doc__)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--vp", type=int, default=None, help="layers per virtual pipeline stage")
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--no-distributed-optimizer", action="store_true")
    a = p.parse_args(argv)
    shape = comm_tuning.RunShape(a.device, a.world_size, a.tp, a.pp, a.vp, not a.no_distributed_optimizer,
                                 a.gpus_per_node)
    print("\n".join(shell_lines(env_decisions(shape))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
