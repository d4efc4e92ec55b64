"""Tokenizer quality on a corpus: bytes per token, compression against a reference tokenizer, and coverage of the
three levels of the Table of General Standard Chinese Characters (a character counts as covered when it is a piece
of its own - with or without the leading '▁' - rather than reached only through byte fallback or <unk>)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from megatron_llm.data.corpus import expand_inputs, iter_chunks
from megatron_llm.data.encode import Problems, iter_texts
from megatron_llm.data.tgh import LEVEL_SIZES, tgh_levels


@dataclass
class TokenizerStats:
    name: str
    vocab_size: int
    documents: int = 0
    text_bytes: int = 0
    characters: int = 0
    tokens: int = 0
    tgh_covered: Dict[int, int] = field(default_factory=dict)

    @property
    def bytes_per_token(self) -> float:
        return self.text_bytes / self.tokens if self.tokens else 0.0

    @property
    def chars_per_token(self) -> float:
        return self.characters / self.tokens if self.tokens else 0.0

    def as_dict(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "documents": self.documents,
                "text_bytes": self.text_bytes, "characters": self.characters, "tokens": self.tokens,
                "bytes_per_token": self.bytes_per_token, "chars_per_token": self.chars_per_token,
                "tgh_coverage": {f"level{k}": {"covered": v, "of": LEVEL_SIZES[k]}
                                 for k, v in self.tgh_covered.items()}}


def single_piece_vocabulary(tokenizer) -> set:
    """Strings that are one whole piece of the tokenizer (with '▁'/'Ġ' word markers removed)."""
    pieces = set()
    sp = getattr(tokenizer, "processor", None)
    if sp is not None:
        for i in range(sp.get_piece_size()):
            if sp.is_byte(i) or sp.is_unknown(i) or sp.is_control(i):
                continue
            pieces.add(sp.id_to_piece(i).lstrip("\u2581"))
        return pieces
    vocab = getattr(getattr(tokenizer, "_tok", None), "get_vocab", None)
    if vocab is not None:
        return {p.lstrip("\u2581Ġ") for p in vocab(with_added_tokens=True)}
    return pieces


def tgh_coverage(tokenizer) -> Dict[int, int]:
    pieces = single_piece_vocabulary(tokenizer)
    return {level: sum(ch in pieces for ch in chars) for level, chars in tgh_levels().items()}


def corpus_stats(tokenizers: Dict[str, object], inputs: List[str], json_keys: List[str], txt_mode: str = "doc",
                 max_documents: Optional[int] = None, batch: int = 512) -> Dict[str, TokenizerStats]:
    stats = {name: TokenizerStats(name, int(t.vocab_size)) for name, t in tokenizers.items()}
    problems = Problems()
    texts: List[str] = []

    def flush():
        nbytes = sum(len(t.encode("utf-8")) for t in texts)
        nchars = sum(len(t) for t in texts)
        for name, tok in tokenizers.items():
            s = stats[name]
            s.documents += len(texts)
            s.text_bytes += nbytes
            s.characters += nchars
            s.tokens += sum(len(ids) for ids in tok.tokenize_batch(texts))
        texts.clear()

    seen = 0
    for chunk in iter_chunks(expand_inputs(inputs), list(json_keys), txt_mode):
        for _, _, text in iter_texts(chunk, tuple(json_keys), problems):
            texts.append(text)
            seen += 1
            if len(texts) >= batch:
                flush()
            if max_documents and seen >= max_documents:
                break
        if max_documents and seen >= max_documents:
            break
    if texts:
        flush()
    for name, tok in tokenizers.items():
        stats[name].tgh_covered = tgh_coverage(tok)
    return stats


def render(stats: Dict[str, TokenizerStats], reference: Optional[str]) -> str:
    lines = [f"{'tokenizer':<28} {'vocab':>8} {'tokens':>12} {'bytes/token':>12} {'chars/token':>12}"
             + (f" {'vs ' + reference:>14}" if reference else "")
             + "   TGH level 1 / 2 / 3 single-piece coverage"]
    ref = stats.get(reference) if reference else None
    for s in stats.values():
        rel = f" {ref.tokens / s.tokens:>13.3f}x" if ref and s.tokens else ""
        cov = " / ".join(f"{s.tgh_covered.get(k, 0)}/{n} ({100 * s.tgh_covered.get(k, 0) / n:.1f}%)"
                         for k, n in LEVEL_SIZES.items())
        lines.append(f"{s.name:<28} {s.vocab_size:>8,} {s.tokens:>12,} {s.bytes_per_token:>12.3f} "
                     f"{s.chars_per_token:>12.3f}{rel}   {cov}")
    if ref:
        lines.append(f"(vs {reference}: reference tokens / tokenizer tokens on the same text; > 1 = fewer tokens)")
    return "\n".join(lines)
