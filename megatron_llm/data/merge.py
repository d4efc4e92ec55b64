"""Merge several ``.bin/.idx`` datasets into one without re-tokenising (streamed: flat memory, .bin copied as-is)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List

from megatron_llm.data import indexed_format as fmt
from megatron_llm.data.indexed_check import verify_indexed_dataset
from megatron_llm.data.indexed_writer import IndexedWriter


def find_prefixes(inputs: List[str]) -> List[str]:
    """Dataset prefixes from --input: a directory (every complete .bin/.idx pair in it, sorted) or prefixes."""
    out: List[str] = []
    for spec in inputs:
        if os.path.isdir(spec):
            found = sorted(os.path.join(spec, f[:-4]) for f in os.listdir(spec)
                           if f.endswith(".idx") and os.path.isfile(os.path.join(spec, f[:-4] + ".bin")))
            if not found:
                raise ValueError(f"--input {spec}: no .bin/.idx pairs in this directory")
            out.extend(found)
        else:
            p = spec[:-4] if spec.endswith((".bin", ".idx")) else spec
            if not os.path.isfile(fmt.idx_path(p)):
                raise ValueError(f"--input {spec}: no {fmt.idx_path(p)}; pass a dataset prefix or a directory")
            out.append(p)
    return out


def merge_datasets(prefixes: List[str], output_prefix: str) -> IndexedWriter:
    """Concatenate ``prefixes`` in order into ``output_prefix``; every input is verified first."""
    if not prefixes:
        raise ValueError("nothing to merge")
    headers = [verify_indexed_dataset(p) for p in prefixes]
    dtypes = {str(h.dtype.__name__) for h in headers}
    if len(dtypes) > 1:
        listing = ", ".join(f"{p} ({h.dtype.__name__})" for p, h in zip(prefixes, headers))
        raise ValueError(f"datasets have different token dtypes: {listing}; merge only datasets made with the "
                         "same tokenizer")
    if os.path.abspath(output_prefix) in {os.path.abspath(p) for p in prefixes}:
        raise ValueError(f"--output-prefix {output_prefix} is also an input; choose another name")
    writer = IndexedWriter(output_prefix, headers[0].dtype)
    with writer:
        for p in prefixes:
            writer.add_dataset(p)
    return writer


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(prog="merge_datasets.py", description=__doc__)
    ap.add_argument("--input", nargs="+", required=True,
                    help="a directory of .bin/.idx pairs (merged in sorted order) or dataset prefixes, in order")
    ap.add_argument("--output-prefix", required=True, help="prefix of the merged .bin/.idx")
    args = ap.parse_args(argv)
    try:
        prefixes = find_prefixes(args.input)
        w = merge_datasets(prefixes, args.output_prefix)
    except ValueError as exc:
        print(f"merge_datasets: error: {exc}", file=sys.stderr)
        return 2
    print(f"merged {len(prefixes)} datasets: {w.document_count:,} documents, {w.sequence_count:,} sequences, "
          f"{w.token_count:,} tokens -> {args.output_prefix}.bin / .idx")
    return 0
