"""`megatron-llm tokenizer train|stats`: train a Baichuan-style SentencePiece BPE tokenizer; report its metrics."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import List

from megatron_llm.data.tokenizers import TOKENIZER_TYPES


def _input_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--input", nargs="+", required=True,
                    help="corpus: files, directories or globs of .jsonl(.zst/.gz), .txt, .parquet")
    ap.add_argument("--json-keys", nargs="+", default=["text"], help="keys/columns holding the text")
    ap.add_argument("--txt-per-line", action="store_true", help=".txt: one document per line")
    ap.add_argument("--max-documents", type=int, default=None, help="read at most this many documents")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="megatron-llm tokenizer")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a SentencePiece BPE tokenizer (Baichuan-7B recipe)")
    _input_args(t)
    t.add_argument("--output-prefix", required=True, help="writes <prefix>.model and <prefix>.vocab")
    t.add_argument("--vocab-size", type=int, default=64000)
    t.add_argument("--character-coverage", type=float, default=0.9999)
    t.add_argument("--user-defined-symbols", nargs="*", default=[],
                   help="pieces always kept whole (e.g. <|im_start|> <|im_end|>)")
    t.add_argument("--input-sentence-size", type=int, default=2_000_000,
                   help="lines sampled (uniformly, reservoir) from a large corpus for training; 0 = all")
    t.add_argument("--normalization", default="identity", choices=["identity", "nmt_nfkc", "nfkc"],
                   help="identity (Baichuan: text kept as written) or NFKC")
    t.add_argument("--no-split-digits", action="store_true", help="allow multi-digit pieces")
    t.add_argument("--no-byte-fallback", action="store_true", help="unseen characters become <unk>")
    t.add_argument("--num-threads", type=int, default=None)
    t.add_argument("--seed", type=int, default=1234)
    t.add_argument("--log-interval", type=int, default=10000,
                   help="documents between progress lines on stderr while reading (when it is not a terminal)")
    t.add_argument("--quiet", action="store_true", help="no progress line")
    s = sub.add_parser("stats", help="bytes/token, compression vs a reference, Chinese character coverage")
    _input_args(s)
    s.add_argument("--tokenizer-type", default="SentencePieceTokenizer", choices=TOKENIZER_TYPES)
    s.add_argument("--tokenizer-model", required=True)
    s.add_argument("--reference-tokenizer-type", default="SentencePieceTokenizer", choices=TOKENIZER_TYPES)
    s.add_argument("--reference-tokenizer-model", default=None, help="compare against this tokenizer")
    s.add_argument("--json", action="store_true", help="print the figures as JSON")
    return ap


def _train(args) -> int:
    from megatron_llm.data.tokenizer_train import TrainConfig, train_tokenizer
    from megatron_llm.data.tokenizers import build_tokenizer

    cfg = TrainConfig(inputs=args.input, output_prefix=args.output_prefix, vocab_size=args.vocab_size,
                      json_keys=args.json_keys, txt_mode="line" if args.txt_per_line else "doc",
                      character_coverage=args.character_coverage, user_defined_symbols=args.user_defined_symbols,
                      input_sentence_size=args.input_sentence_size, normalization_rule_name=args.normalization,
                      split_digits=not args.no_split_digits, byte_fallback=not args.no_byte_fallback,
                      seed=args.seed, max_documents=args.max_documents, progress=not args.quiet,
                      log_interval=max(1, args.log_interval))
    if args.num_threads:
        cfg.num_threads = args.num_threads
    start = time.perf_counter()
    problems = train_tokenizer(cfg)
    tok = build_tokenizer("SentencePieceTokenizer", args.output_prefix + ".model")
    print(f"trained {args.output_prefix}.model: {tok.vocab_size:,} pieces in {time.perf_counter() - start:.1f} s "
          f"(split digits: {cfg.split_digits}, byte fallback: {cfg.byte_fallback}, "
          f"normalization: {cfg.normalization_rule_name})")
    if problems.total:
        print(f"skipped {problems.total} bad input records: " + ", ".join(
            f"{k} {n} (first: {problems.examples[k][0][0]})" for k, n in sorted(problems.counts.items())))
    return 0


def _stats(args) -> int:
    from megatron_llm.data.tokenizer_stats import corpus_stats, render
    from megatron_llm.data.tokenizers import build_tokenizer

    import os

    name = os.path.basename(args.tokenizer_model.rstrip("/"))
    toks = {name: build_tokenizer(args.tokenizer_type, args.tokenizer_model)}
    ref = None
    if args.reference_tokenizer_model:
        ref = "ref:" + os.path.basename(args.reference_tokenizer_model.rstrip("/"))
        toks[ref] = build_tokenizer(args.reference_tokenizer_type, args.reference_tokenizer_model)
    stats = corpus_stats(toks, args.input, args.json_keys, "line" if args.txt_per_line else "doc",
                         args.max_documents)
    if args.json:
        out = {name: s.as_dict() for name, s in stats.items()}
        if ref:
            mine = stats[name]
            out[name]["compression_vs_reference"] = stats[ref].tokens / max(mine.tokens, 1)
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(render(stats, ref))
    return 0


def main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    from megatron_llm.data.corpus import InputError
    from megatron_llm.data.tokenizers import TokenizerError

    try:
        return _train(args) if args.command == "train" else _stats(args)
    except (InputError, TokenizerError, ValueError, OSError) as exc:
        print(f"megatron-llm tokenizer {args.command}: error: {exc}", file=sys.stderr)
        return 2
