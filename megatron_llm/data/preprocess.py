"""Corpus -> ``<prefix>_<key>_document.bin/.idx``: reader -> encoder processes -> streaming writers.

The reader (this process) cuts inputs into ~1 MiB chunks, at most ``2 * workers + 2`` of them are in flight, and
results come back in input order, so memory is flat in corpus size and the output is deterministic (the same bytes
for any worker count). Every key's output is finalised, and only when the whole run succeeded.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import numpy as np

from megatron_llm.data.corpus import InputFile, expand_inputs, iter_chunks
from megatron_llm.data.encode import (EncodeConfig, Encoded, Problems, build_sentence_splitter, encode_chunk,
                                     encode_in_worker, init_worker)
from megatron_llm.data.indexed_writer import IndexedWriter
from megatron_llm.data.progress import Progress
from megatron_llm.data.tokenizers import build_tokenizer, token_dtype


@dataclass
class PreprocessConfig:
    inputs: List[str]
    output_prefix: str
    tokenizer_type: str
    tokenizer_model: Optional[str] = None
    vocab_size: Optional[int] = None
    json_keys: List[str] = field(default_factory=lambda: ["text"])
    append_eod: bool = False
    workers: int = 1  # encoder processes; 0 = encode in this process
    partitions: int = 1  # inputs split into this many groups, processed concurrently, then merged
    log_interval: int = 1000  # documents between log lines when stderr is not a terminal
    strict: bool = False
    txt_mode: str = "doc"  # .txt: "doc" = one document per file, "line" = one per line
    chunk_bytes: int = 1 << 20
    progress: Optional[bool] = None  # None: a tqdm bar on a terminal, log lines otherwise
    quiet: bool = False
    split_sentences: bool = False  # one sequence per sentence (data/sentences.py says which splitter runs)
    lang: str = "english"  # punkt language for --split-sentences
    keep_newlines: bool = False  # --split-sentences: keep the newline that ends a sentence


@dataclass
class Summary:
    documents: int = 0  # good documents written (summed over keys)
    records: int = 0
    tokens: int = 0
    text_bytes: int = 0
    disk_bytes: int = 0
    seconds: float = 0.0
    problems: Problems = field(default_factory=Problems)
    outputs: List[str] = field(default_factory=list)
    sequences: int = 0
    splitter: str = ""  # --split-sentences: which sentence splitter ran

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.disk_bytes / 1e6 / self.seconds if self.seconds else 0.0

    def render(self) -> str:
        lines = [
            f"documents {self.documents:,}   tokens {self.tokens:,}   input {self.disk_bytes / 1e6:,.1f} MB "
            f"(text {self.text_bytes / 1e6:,.1f} MB)   time {self.seconds:,.1f} s",
            f"throughput {self.documents / max(self.seconds, 1e-9):,.0f} docs/s   {self.mb_per_s:,.1f} MB/s   "
            f"{self.tokens_per_s:,.0f} tokens/s",
        ]
        if self.splitter:
            lines.append(f"sentences: {self.sequences:,} sequences, split by {self.splitter}")
        if self.problems.total:
            lines.append(f"bad records: {self.problems.total:,}")
            for kind, n in sorted(self.problems.counts.items()):
                locs = ", ".join(loc + (f" ({d})" if d else "") for loc, d in self.problems.examples.get(kind, []))
                lines.append(f"  {kind:<18} {n:>8,}   first: {locs}")
        else:
            lines.append("bad records: none")
        lines += [f"wrote {p}.bin / .idx" for p in self.outputs]
        return "\n".join(lines)


def output_prefix_for(prefix: str, key: str) -> str:
    return f"{prefix}_{key}_document"


def _tokenizer_args(cfg: PreprocessConfig) -> dict:
    return {"tokenizer_type": cfg.tokenizer_type, "tokenizer_model": cfg.tokenizer_model,
            "vocab_size": cfg.vocab_size}


def _results(cfg: PreprocessConfig, enc_cfg: EncodeConfig, tokenizer, chunks, splitter=None) -> Iterator[Encoded]:
    """Encoded chunks in input order, with a bounded number in flight."""
    if cfg.workers <= 0:
        for ch in chunks:
            yield encode_chunk(ch, enc_cfg, tokenizer, splitter)
        return
    # fork: workers start in milliseconds and inherit imports; the tokenizer is rebuilt in each by the initializer
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = ctx.Pool(cfg.workers, initializer=init_worker, initargs=(_tokenizer_args(cfg), enc_cfg))
    pending: deque = deque()
    limit = 2 * cfg.workers + 2
    finished = False
    try:
        for ch in chunks:
            pending.append(pool.apply_async(encode_in_worker, (ch,)))
            if len(pending) >= limit:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
        finished = True
    finally:
        if finished:
            pool.join()
        else:
            _terminate(pool)


def _terminate(pool, timeout_s: float = 10.0) -> None:
    """Stop a pool on an error or interrupt without hanging. CPython's Pool.terminate() drains the task pipe once,
    then joins its task thread; a thread still writing a large chunk to a worker that was just killed blocks that
    join forever (seen here under load). The workers are signalled before that join, so a bounded wait in a daemon
    thread stops them and never hangs the caller."""
    stopper = threading.Thread(target=pool.terminate, name="preprocess-pool-terminate", daemon=True)
    stopper.start()
    stopper.join(timeout_s)


def run_preprocess(cfg: PreprocessConfig) -> Summary:
    """Run a whole preprocessing job; returns its summary. Raises ValueError for bad arguments (before any output)."""
    if not cfg.json_keys:
        raise ValueError("--json-keys: give at least one key")
    if cfg.txt_mode not in ("doc", "line"):
        raise ValueError(f"txt mode {cfg.txt_mode!r}: use 'doc' or 'line'")
    inputs = expand_inputs(cfg.inputs)
    tokenizer = build_tokenizer(**_tokenizer_args(cfg))
    if cfg.partitions > 1:
        from megatron_llm.data.partitions import run_partitioned, split_units

        units = split_units(inputs, cfg.partitions, cfg.txt_mode)
        if len(units) > 1:
            return run_partitioned(cfg, units, tokenizer)
    return run_files(cfg, inputs, tokenizer, cfg.output_prefix)


def run_files(cfg: PreprocessConfig, inputs: List[InputFile], tokenizer, prefix: str,
              position: int = 0) -> Summary:
    dtype = token_dtype(tokenizer.vocab_size)
    enc_cfg = EncodeConfig(tuple(cfg.json_keys), cfg.append_eod, np.dtype(dtype).name, cfg.split_sentences,
                           cfg.lang, cfg.keep_newlines)
    splitter, summary_splitter = build_sentence_splitter(enc_cfg)
    total = sum(i.size for i in inputs)
    summary = Summary(splitter=summary_splitter)
    writers: Dict[str, IndexedWriter] = {}
    show_bar = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    progress = Progress(total, show_bar=show_bar and not cfg.quiet, log_interval=cfg.log_interval,
                        quiet=cfg.quiet, position=position)
    start = time.perf_counter()
    try:
        for k in cfg.json_keys:
            writers[k] = IndexedWriter(output_prefix_for(prefix, k), dtype)
        chunks = iter_chunks(inputs, list(cfg.json_keys), cfg.txt_mode, cfg.chunk_bytes)
        for res in _results(cfg, enc_cfg, tokenizer, chunks, splitter):
            docs = 0
            for k in cfg.json_keys:
                seqs = res.doc_sequences[k] if res.doc_sequences is not None else None
                writers[k].add_documents(res.tokens[k], res.lengths[k], seqs)
                docs += res.documents(k)
                summary.sequences += len(res.lengths[k])
                summary.tokens += int(res.tokens[k].size)
            summary.documents += docs
            summary.records += res.records
            summary.text_bytes += res.text_bytes
            summary.disk_bytes += res.disk_bytes
            summary.problems.merge(res.problems)
            progress.update(res.disk_bytes, docs, summary.tokens, summary.documents)
        for k in cfg.json_keys:  # every key, not just the last (Megatron-LM's bug)
            writers[k].finalize()
            summary.outputs.append(output_prefix_for(prefix, k))
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        progress.close()
    summary.seconds = time.perf_counter() - start
    return summary
