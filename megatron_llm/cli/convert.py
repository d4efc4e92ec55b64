"""`megatron-llm convert`: HF checkpoint <-> megatron_llm distributed checkpoint."""

from __future__ import annotations

import argparse
import sys
from typing import List

PROG = "megatron-llm convert"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,
        description="--from hf --to megatron: a HF directory (config.json + safetensors/.bin, sharded or not) into a "
                    "checkpoint that `megatron-llm train --recipe OUT/recipe.yaml --data-path ...` continues "
                    "(weights only, --finetune). --from megatron --to hf: a checkpoint of any layout into a "
                    "directory transformers' AutoModelForCausalLM.from_pretrained loads.")
    ap.add_argument("input", help="source directory")
    ap.add_argument("output", help="output directory (must not exist; appears only when complete)")
    ap.add_argument("--from", dest="src", required=True, choices=("hf", "megatron"))
    ap.add_argument("--to", dest="dst", required=True, choices=("hf", "megatron"))
    ap.add_argument("--tensor-model-parallel-size", type=int, default=1, help="to megatron: target TP")
    ap.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="to megatron: target PP")
    ap.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None,
                    help="to megatron: target virtual stages (interleaved schedule)")
    ap.add_argument("--tokenizer-model", default=None,
                    help="directory with the tokenizer files to ship (default: the input's own)")
    ap.add_argument("--max-shard-size", default="5GB", help="to hf: largest safetensors shard (default 5GB)")
    return ap


def main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    if {args.src, args.dst} != {"hf", "megatron"}:
        print(f"{PROG}: error: --from and --to must be hf and megatron (one each)", file=sys.stderr)
        return 2
    if args.tensor_model_parallel_size < 1 or args.pipeline_model_parallel_size < 1:
        print(f"{PROG}: error: parallel sizes must be >= 1", file=sys.stderr)
        return 2
    from megatron_llm.convert.hf_io import ConversionError, parse_size

    try:
        if args.dst == "megatron":
            from megatron_llm.convert.to_megatron import convert

            convert(args.input, args.output, args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                    args.num_layers_per_virtual_pipeline_stage, tokenizer=args.tokenizer_model)
        else:
            from megatron_llm.convert.to_hf import convert

            convert(args.input, args.output, tokenizer=args.tokenizer_model,
                    max_shard_bytes=parse_size(args.max_shard_size))
    except (ConversionError, RuntimeError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    return 0
