"""Merge several ``.bin/.idx`` datasets into one without re-tokenising (streamed: flat memory, .bin copied as-is)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List

from megatron_llm.data import indexed_format as fmt
from megatron_llm.data.indexed_check import verify_indexed_dataset
from megatron_llm.data.indexed_writer import IndexedWriter
from megatron_llm.data.progress import Progress


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


def merge_datasets(prefixes: List[str], output_prefix: str, show_progress: bool = False,
                   log_interval: int = 100_000) -> IndexedWriter:
    """Concatenate ``prefixes`` in order into ``output_prefix``; every input is verified first. With
    ``show_progress``, a progress line (documents, tokens/s, ETA) on stderr."""
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
    progress = None
    if show_progress:
        total = sum(os.path.getsize(fmt.bin_path(p)) for p in prefixes)
        progress = Progress(total, show_bar=sys.stderr.isatty(), log_interval=log_interval, desc="merge")
    counts = {"docs": 0, "tokens": 0}

    def step(nbytes: int, docs: int, tokens: int) -> None:
        counts["docs"] += docs
        counts["tokens"] += tokens
        progress.update(nbytes, docs, counts["tokens"], counts["docs"])

    try:
        with writer:
            for p in prefixes:
                writer.add_dataset(p, step if progress is not None else None)
    finally:
        if progress is not None:
            progress.close()
    return writer


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(prog="merge_datasets.py", description=__doc__)
    ap.add_argument("--input", nargs="+", required=True,
                    help="a directory of .bin/.idx pairs (merged in sorted order) or dataset prefixes, in order")
    ap.add_argument("--output-prefix", required=True, help="prefix of the merged .bin/.idx")
    ap.add_argument("--log-interval", type=int, default=100_000,
                    help="documents between progress lines on stderr when it is not a terminal")
    ap.add_argument("--quiet", action="store_true", help="no progress line, only the final summary")
    args = ap.parse_args(argv)
    try:
        prefixes = find_prefixes(args.input)
        w = merge_datasets(prefixes, args.output_prefix, show_progress=not args.quiet,
                           log_interval=max(1, args.log_interval))
    except ValueError as exc:
        print(f"merge_datasets: error: {exc}", file=sys.stderr)
        return 2
    print(f"merged {len(prefixes)} datasets: {w.document_count:,} documents, {w.sequence_count:,} sequences, "
          f"{w.token_count:,} tokens -> {args.output_prefix}.bin / .idx")
    return 0
