"""`megatron-llm preprocess`: a corpus to megatron-core .bin/.idx datasets (Megatron-LM's preprocess_data.py flags)."""

from __future__ import annotations

import argparse
import sys
from typing import List

from megatron_llm.data.tokenizers import TOKENIZER_TYPES, TokenizerError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="megatron-llm preprocess",
        description="Tokenise a corpus into <output-prefix>_<key>_document.bin/.idx for megatron-core's "
                    "IndexedDataset. Inputs: .jsonl, .jsonl.zst, .jsonl.gz, .txt, .parquet.")
    g = ap.add_argument_group("input data")
    g.add_argument("--input", nargs="+", required=True,
                   help="file(s), directories (searched recursively) or globs (quote them)")
    g.add_argument("--json-keys", nargs="+", default=["text"],
                   help="keys (jsonl) / columns (parquet) to tokenise; one output per key (default: text)")
    g.add_argument("--txt-per-line", action="store_true",
                   help=".txt inputs: one document per line (default: one document per file)")
    g = ap.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    g.add_argument("--tokenizer-model", default=None,
                   help="SentencePiece .model, or tokenizer.json (or its directory) for HuggingFaceTokenizer")
    g.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer only: ids are < vocab size")
    g.add_argument("--split-sentences", action="store_true",
                   help="one sequence per sentence inside each document (NLTK punkt as Megatron-LM when nltk and "
                        "its punkt data are installed, else a built-in English+Chinese splitter; the summary says "
                        "which ran)")
    g.add_argument("--keep-newlines", action="store_true",
                   help="--split-sentences: keep the newline that ends a sentence")
    g.add_argument("--lang", default="english", help="--split-sentences: punkt language (default: english)")
    g.add_argument("--append-eod", action="store_true", help="append the end-of-document token to every document")
    g = ap.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="path prefix of the outputs, without suffix")
    g = ap.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1,
                   help="tokenizer processes (0: tokenise in the reading process). A good value: CPU cores - 1")
    g.add_argument("--partitions", type=int, default=1,
                   help="split the inputs into this many parts processed concurrently, then merged in document "
                        "order (byte-identical to --partitions 1); with fewer files than parts, uncompressed .jsonl "
                        "(and --txt-per-line .txt) files are cut at line boundaries; --workers is shared among them")
    g.add_argument("--log-interval", type=int, default=1000,
                   help="documents between progress lines when stderr is not a terminal")
    g.add_argument("--strict", action="store_true", help="exit non-zero if any input record was bad")
    g.add_argument("--no-progress-bar", action="store_true", help="log lines instead of a bar even on a terminal")
    g.add_argument("--quiet", action="store_true", help="print only the final summary")
    return ap


def main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    from megatron_llm.data.corpus import InputError
    from megatron_llm.data.preprocess import PreprocessConfig, run_preprocess

    if args.workers < 0 or args.partitions < 1 or args.log_interval < 1:
        print("megatron-llm preprocess: error: --workers must be >= 0, --partitions and --log-interval >= 1",
              file=sys.stderr)
        return 2
    cfg = PreprocessConfig(
        inputs=args.input, output_prefix=args.output_prefix, tokenizer_type=args.tokenizer_type,
        tokenizer_model=args.tokenizer_model, vocab_size=args.vocab_size, json_keys=args.json_keys,
        append_eod=args.append_eod, workers=args.workers, partitions=args.partitions,
        log_interval=args.log_interval, strict=args.strict, txt_mode="line" if args.txt_per_line else "doc",
        progress=False if args.no_progress_bar else None, quiet=args.quiet, split_sentences=args.split_sentences,
        lang=args.lang, keep_newlines=args.keep_newlines)
    try:
        summary = run_preprocess(cfg)
    except (InputError, TokenizerError, ValueError, OSError) as exc:
        print(f"megatron-llm preprocess: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("megatron-llm preprocess: interrupted; no output was finalised", file=sys.stderr)
        return 130
    print(summary.render())
    if summary.problems.total and args.strict:
        print(f"megatron-llm preprocess: --strict: {summary.problems.total} bad records (outputs kept)",
              file=sys.stderr)
        return 1
    return 0
