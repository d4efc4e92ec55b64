"""`megatron-llm topo [--json]`: what this node (and, under Slurm, the allocation) is made of.

GPUs and their NVLink/NVSwitch or PCIe connectivity (NVML, `nvidia-smi topo -m` as fallback), NUMA affinity,
InfiniBand/RoCE HCAs and link rates (/sys/class/infiniband), network interfaces, and inside a Slurm job the node
list and switch tree (`scontrol show topology` / topology.conf). Under `srun --ntasks-per-node=1` every node
prints its own report (one JSON object per line with --json); the first task adds the allocation. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

PROG = "megatron-llm topo"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object (per node) instead of text")
    p.add_argument("--nvidia-smi-topo", default=None, metavar="FILE",
                   help="read this saved `nvidia-smi topo -m` output instead of running nvidia-smi")
    p.add_argument("--sysfs-infiniband", default="/sys/class/infiniband", metavar="DIR",
                   help="where HCAs are read from (default /sys/class/infiniband)")
    g = p.add_argument_group("preview the communication settings a GPU run would get on this node")
    g.add_argument("--world-size", type=int, default=None, help="ranks of the run (enables the preview)")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None)
    g.add_argument("--gpus-per-node", type=int, default=8)
    return p


def _preview(args, node) -> list:
    from megatron_llm.parallel import comm_tuning as ct

    shape = ct.RunShape("cuda", args.world_size, args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                        args.num_layers_per_virtual_pipeline_stage, True, args.gpus_per_node)
    return ct.decide_flags(shape, {}) + ct.decide_env(shape, node, os.environ)


def _text(node, alloc) -> str:
    lines = [f"node {node.hostname} (read: {', '.join(node.sources) or 'sysfs only'})"]
    if node.gpus:
        lines.append(f"  GPUs: {len(node.gpus)}, {node.gpu_connectivity}, NVLink domain of "
                     f"{node.nvlink_domain_size}")
        for g in node.gpus:
            bits = [g.name]
            if g.memory_gb:
                bits.append(f"{g.memory_gb:g} GiB")
            if g.nvlinks_active is not None:
                bits.append(f"{g.nvlinks_active} NVLinks up")
            if g.numa is not None:
                bits.append(f"NUMA {g.numa}")
            if g.cpu_affinity:
                bits.append(f"CPUs {g.cpu_affinity}")
            if g.nearest_hca:
                bits.append(f"nearest HCA {g.nearest_hca}")
            lines.append(f"    GPU{g.index}: " + ", ".join(bits))
    else:
        lines.append("  GPUs: none found (no NVML, no nvidia-smi)")
    if node.hcas:
        lines.append(f"  HCAs: {len(node.hcas)} ports")
        for h in node.hcas:
            rate = f"{h.rate_gbps:g} Gb/s" if h.rate_gbps else "rate ?"
            lines.append(f"    {h.name}:{h.port} {h.state} {rate} {h.link_layer}")
    else:
        lines.append("  HCAs: none (/sys/class/infiniband absent or empty)")
    lines.append("  interfaces: " + ", ".join(
        f"{i.name} ({i.kind}, {i.operstate}{', %d Mb/s' % i.speed_mbps if i.speed_mbps else ''})"
        for i in node.interfaces) + (f"; default route via {node.default_interface}" if node.default_interface else ""))
    lines.append("  NUMA nodes: " + (", ".join(f"{k}: CPUs {v}" for k, v in node.numa_nodes.items()) or "none"))
    if alloc is not None:
        lines.append(f"allocation: {len(alloc.nodes)} nodes: {' '.join(alloc.nodes)}")
        if alloc.switches:
            lines.append(f"  switch tree ({alloc.source}):")
            for sw in sorted(alloc.switches, key=lambda s: -s.level):
                below = sw.switches or sw.nodes
                lines.append(f"    level {sw.level} {sw.name}: {' '.join(below)}")
        else:
            lines.append("  switch tree: none known (no topology plugin / topology.conf)")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    from megatron_llm.parallel.topology import discover_allocation, discover_node

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    topo_text = None
    if args.nvidia_smi_topo:
        try:
            with open(args.nvidia_smi_topo) as f:
                topo_text = f.read()
        except OSError as e:
            print(f"{PROG}: error: --nvidia-smi-topo {args.nvidia_smi_topo}: {e.strerror}", file=sys.stderr)
            return 2
    try:
        node = discover_node(topo_text=topo_text, ib_root=args.sysfs_infiniband)
    except ValueError as e:
        print(f"{PROG}: error: {args.nvidia_smi_topo or 'nvidia-smi topo -m'}: {e}", file=sys.stderr)
        return 2
    first_task = os.environ.get("SLURM_PROCID", "0") == "0"
    alloc = discover_allocation() if first_task else None
    decisions = _preview(args, node) if args.world_size else []
    if args.json:
        out = {"node": node.as_dict()}
        if alloc is not None:
            out["allocation"] = alloc.as_dict()
        if decisions:
            out["comm_decisions"] = [{"name": d.name, "value": d.value, "reason": d.reason, "source": d.source}
                                     for d in decisions]
        print(json.dumps(out))
    else:
        print(_text(node, alloc))
        if decisions:
            from megatron_llm.parallel.comm_tuning import report

            print("communication settings a GPU run of this layout would get here:")
            print(report(decisions, prefix=" "))
    return 0
