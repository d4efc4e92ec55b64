"""`megatron-llm` entry point: one verb per job.

Each verb lives in its own module exposing ``main(argv) -> int``; the module is imported only when its verb is
used, so `megatron-llm preprocess` never imports torch's distributed stack and `submit` and `jobs` never import
torch at all. The verbs that cross layers (train and profile: parse, check inputs, spawn ranks) live here, on top;
a verb that belongs to one layer lives in it (data/preprocess_cli.py, launch/submit_cli.py).
"""

from __future__ import annotations

import importlib
import sys

VERBS = {
    "train": ("megatron_llm.cli.train", "pretrain a model (spawns --nproc-per-node workers)"),
    "preprocess": ("megatron_llm.data.preprocess_cli", "turn a corpus into .bin/.idx indexed datasets"),
    "tokenizer": ("megatron_llm.data.tokenizer_cli", "train a SentencePiece tokenizer / report tokenizer stats"),
    "profile": ("megatron_llm.cli.profile", "measure throughput, MFU and GPU telemetry of a training config"),
    "submit": ("megatron_llm.launch.submit_cli", "write and submit a Slurm batch job for a training run"),
    "jobs": ("megatron_llm.launch.jobs_cli", "list this user's Slurm runs and their state"),
    "ops": ("megatron_llm.cli.ops", "list the fused ops, the implementation each runs with and why"),
    "plan": ("megatron_llm.cli.plan", "predict memory, step time and MFU of parallel layouts; rank them"),
    "topo": ("megatron_llm.cli.topo", "show this node's GPUs, NVLink/PCIe, NUMA, HCAs, interfaces (and the allocation)"),
    "convert": ("megatron_llm.cli.convert", "convert HF checkpoints to megatron_llm checkpoints and back"),
    "generate": ("megatron_llm.cli.generate", "generate text from a checkpoint (KV cache, greedy or sampling)"),
}


def _usage() -> str:
    lines = ["usage: megatron-llm <verb> [flags]   (megatron-llm <verb> --help for a verb's flags)", "", "verbs:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"megatron-llm: unknown verb {verb!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(VERBS[verb][0])
    return int(module.main(rest) or 0)


