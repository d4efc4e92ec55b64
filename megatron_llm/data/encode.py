"""Encoder side of preprocessing: a raw ``Chunk`` in, token arrays per key plus bad-record counts out.

Runs in worker processes (or in-process with --workers 0). The result carries numpy arrays, not lists of Python
ints, so sending it back to the writer costs one memcpy instead of pickling every token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import chain
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from megatron_llm.data.corpus import Chunk

try:  # ~5x faster than json.loads on real jsonl; any line it refuses is re-read by json (same results, see below)
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency; stay correct without it
    _fast_loads = None

MAX_LOCATIONS = 5  # first few locations kept per kind of problem

BAD_KINDS = ("malformed_json", "not_a_json_object", "invalid_utf8", "missing_key", "non_string_value",
             "empty_document", "tokenizer_error", "truncated_input", "unreadable_file")


@dataclass(frozen=True)
class EncodeConfig:
    json_keys: Tuple[str, ...]
    append_eod: bool
    dtype: str  # numpy dtype name of the tokens
    split_sentences: bool = False  # one sequence per sentence (sentences.py); else one per document
    lang: str = "english"
    keep_newlines: bool = False


@dataclass
class Problems:
    """Bad records by kind: a count and the first few (location, detail) pairs."""

    counts: Dict[str, int] = field(default_factory=dict)
    examples: Dict[str, List[Tuple[str, str]]] = field(default_factory=dict)

    def add(self, kind: str, location: str, detail: str = "") -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < MAX_LOCATIONS:
            ex.append((location, detail))

    def merge(self, other: "Problems") -> None:
        for kind, n in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + n
            ex = self.examples.setdefault(kind, [])
            ex.extend(other.examples.get(kind, [])[:MAX_LOCATIONS - len(ex)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Encoded:
    """Output of one chunk: per key, the tokens of its good documents back to back and one length per document."""

    tokens: Dict[str, np.ndarray]
    lengths: Dict[str, np.ndarray]  # per sequence: a document, or a sentence under --split-sentences
    records: int  # input records (lines, rows, files) seen
    text_bytes: int  # UTF-8 bytes of the documents' text
    disk_bytes: int
    problems: Problems
    doc_sequences: Optional[Dict[str, np.ndarray]] = None  # --split-sentences: sequences of each document

    def documents(self, key: str) -> int:
        return len(self.lengths[key]) if self.doc_sequences is None else len(self.doc_sequences[key])


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:160]


def iter_texts(chunk: Chunk, keys: Tuple[str, ...], problems: Problems) -> Iterator[Tuple[str, int, str]]:
    """(key, line, text) for every good text of a chunk, in order; bad records go to ``problems``."""
    for kind, loc, detail in chunk.problems:
        problems.add(kind, loc, detail)
    path = chunk.path
    line = chunk.first_line - 1
    for item in chunk.items:
        line += 1
        checked = False  # the strings are known to be valid Unicode (orjson refuses lone surrogates)
        if chunk.kind == "records":
            record = item
        else:
            if chunk.kind == "jsonl" and not item.strip():
                continue  # blank lines between JSON records are layout, not documents
            record = None
            if chunk.kind == "jsonl" and _fast_loads is not None:
                # orjson takes the bytes as they are (validating UTF-8 itself) and accepts a subset of what
                # json.loads does, with the same values; a line it refuses (bad UTF-8, NaN, a lone-surrogate escape,
                # huge numbers) goes through the json path below, so results and problem kinds do not change.
                try:
                    record = _fast_loads(item)
                    checked = True
                except ValueError:
                    record = None
            if record is None:
                try:
                    s = item.decode("utf-8")
                except UnicodeDecodeError as exc:
                    problems.add("invalid_utf8", f"{path}:{line}", _short(exc))
                    continue
                if chunk.kind == "jsonl":
                    try:
                        record = json.loads(s)
                    except ValueError as exc:
                        problems.add("malformed_json", f"{path}:{line}", _short(exc))
                        continue
                else:
                    if chunk.kind == "line" and s.endswith("\r"):
                        s = s[:-1]
                    record = {k: s for k in keys}
            if chunk.kind == "jsonl" and not isinstance(record, dict):
                problems.add("not_a_json_object", f"{path}:{line}", f"got {type(record).__name__}")
                continue
        for k in keys:
            if k not in record:
                problems.add("missing_key", f"{path}:{line}", f"no key {k!r}")
                continue
            v = record[k]
            if not isinstance(v, str):
                problems.add("non_string_value", f"{path}:{line}", f"key {k!r} is {type(v).__name__}")
                continue
            if not checked and not v.isascii():
                try:  # a JSON \ud800 escape decodes to a lone surrogate, which is not valid Unicode text
                    v.encode("utf-8")
                except UnicodeEncodeError as exc:
                    problems.add("invalid_utf8", f"{path}:{line}", _short(exc))
                    continue
            yield k, line, v


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def encode_chunk(chunk: Chunk, cfg: EncodeConfig, tokenizer, splitter=None) -> Encoded:
    problems = Problems()
    keys = cfg.json_keys
    texts: Dict[str, List[str]] = {k: [] for k in keys}
    where: Dict[str, List[int]] = {k: [] for k in keys}  # line number of each text, for later problems
    text_bytes = 0
    path = chunk.path
    for k, line, v in iter_texts(chunk, keys, problems):
        texts[k].append(v)
        where[k].append(line)
        text_bytes += _utf8_len(v)

    dtype = np.dtype(cfg.dtype)
    tokens: Dict[str, np.ndarray] = {}
    lengths: Dict[str, np.ndarray] = {}
    doc_sequences: Optional[Dict[str, np.ndarray]] = {} if splitter is not None else None
    for k in keys:
        if splitter is not None:
            tokens[k], lengths[k], doc_sequences[k] = _encode_sentences(
                tokenizer, splitter, texts[k], where[k], path, problems, k, cfg.append_eod, dtype)
            continue
        ids = _tokenize_all(tokenizer, texts[k], where[k], path, problems)
        kept = []
        for doc, ln in zip(ids, where[k]):
            if doc is None:
                continue
            if not doc:
                problems.add("empty_document", f"{path}:{ln}", f"key {k!r} has no tokens")
                continue
            if cfg.append_eod:
                doc.append(tokenizer.eod)
            kept.append(doc)
        lens = np.fromiter(map(len, kept), dtype=np.int32, count=len(kept))
        tokens[k] = np.fromiter(chain.from_iterable(kept), dtype=dtype, count=int(lens.sum()))
        lengths[k] = lens
    return Encoded(tokens, lengths, len(chunk.items), text_bytes, chunk.disk_bytes, problems, doc_sequences)


def _encode_sentences(tokenizer, splitter, texts: List[str], lines: List[int], path: str, problems: Problems,
                      key: str, append_eod: bool, dtype) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Megatron-LM's --split-sentences encoding: every sentence tokenised on its own, sentences without tokens
    dropped, the eod appended to the document's last sentence."""
    sentences: List[str] = []
    owner: List[int] = []  # index into texts of each sentence
    for i, t in enumerate(texts):
        parts = splitter(t)
        sentences.extend(parts)
        owner.extend([i] * len(parts))
    ids = _tokenize_all(tokenizer, sentences, [lines[i] for i in owner], path, problems)
    per_doc: List[List[List[int]]] = [[] for _ in texts]
    failed = set()
    for i, s_ids in zip(owner, ids):
        if s_ids is None:
            failed.add(i)
        elif s_ids:
            per_doc[i].append(s_ids)
    kept, counts = [], []
    for i, sents in enumerate(per_doc):
        if i in failed:
            continue
        if not sents:
            problems.add("empty_document", f"{path}:{lines[i]}", f"key {key!r} has no tokens")
            continue
        if append_eod:
            sents[-1].append(tokenizer.eod)
        kept.extend(sents)
        counts.append(len(sents))
    lens = np.fromiter(map(len, kept), dtype=np.int32, count=len(kept))
    toks = np.fromiter(chain.from_iterable(kept), dtype=dtype, count=int(lens.sum()))
    return toks, lens, np.asarray(counts, dtype=np.int64)


def _tokenize_all(tokenizer, texts: List[str], lines: List[int], path: str,
                  problems: Problems) -> List[Optional[List[int]]]:
    try:
        return tokenizer.tokenize_batch(texts)
    except Exception:
        # one bad document must not cost the chunk: redo one by one to find it
        out: List[Optional[List[int]]] = []
        for t, ln in zip(texts, lines):
            try:
                out.append(tokenizer.tokenize(t))
            except Exception as exc:
                problems.add("tokenizer_error", f"{path}:{ln}", _short(exc))
                out.append(None)
        return out


# ----------------------------------------------------------------------------------------------------------------
# worker-process plumbing: the tokenizer is built once per process by the pool initializer
# ----------------------------------------------------------------------------------------------------------------

_STATE: dict = {}


def init_worker(tokenizer_args: dict, cfg: EncodeConfig) -> None:
    from megatron_llm.data.tokenizers import build_tokenizer

    _STATE["tokenizer"] = build_tokenizer(**tokenizer_args)
    _STATE["cfg"] = cfg
    _STATE["splitter"] = build_sentence_splitter(cfg)[0]


def build_sentence_splitter(cfg: EncodeConfig):
    """(splitter or None, description) for an EncodeConfig."""
    if not cfg.split_sentences:
        return None, ""
    from megatron_llm.data.sentences import build_splitter

    return build_splitter(cfg.lang, cfg.keep_newlines)


def encode_in_worker(chunk: Chunk) -> Encoded:
    return encode_chunk(chunk, _STATE["cfg"], _STATE["tokenizer"], _STATE["splitter"])
