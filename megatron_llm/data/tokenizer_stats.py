"""Tokenizer quality on a corpus: bytes per token, compression against a reference tokenizer, and coverage of the
three levels of the Table of General Standard Chinese Characters (a character counts as covered when the tokenizer
encodes it, alone, to one token - not counting a lone SentencePiece word-start piece '▁' - that is not <unk>; byte
fallback needs several tokens for a CJK character). Encoding, rather than looking the character up among the
vocabulary strings, is what makes byte-level BPE vocabularies (GPT-2 style: Llama 3, Qwen, DeepSeek) count: they
store pieces byte-mapped ('的' is 'çļĦ'), so a string lookup finds none of them."""

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


WORD_START = "\u2581"  # SentencePiece's (and Metaspace pre-tokenizers') word-start marker


def _piece_of(tokenizer):
    """id -> piece string, or None when the tokenizer has no pieces (bytes, pre-tokenised ids)."""
    sp = getattr(tokenizer, "processor", None)
    if sp is not None:
        return sp.id_to_piece
    hf = getattr(tokenizer, "_tok", None)
    return hf.id_to_token if hf is not None else None


def _unknown_ids(tokenizer) -> set:
    sp = getattr(tokenizer, "processor", None)
    if sp is not None:
        return {int(sp.unk_id())} if sp.unk_id() >= 0 else set()
    hf = getattr(tokenizer, "_tok", None)
    unk = getattr(getattr(hf, "model", None), "unk_token", None) if hf is not None else None
    uid = hf.token_to_id(unk) if isinstance(unk, str) else None
    return {int(uid)} if uid is not None else set()


def single_token_characters(tokenizer, chars: str) -> set:
    """The characters of ``chars`` that encode, each on its own, to exactly one token (a lone '▁' before it
    ignored) other than <unk>."""
    piece = _piece_of(tokenizer)
    if piece is None:
        return set()
    unknown = _unknown_ids(tokenizer)
    out = set()
    for ch, ids in zip(chars, tokenizer.tokenize_batch(list(chars))):
        ids = [i for i in ids if piece(int(i)) != WORD_START]
        if len(ids) == 1 and int(ids[0]) not in unknown:
            out.add(ch)
    return out


def tgh_coverage(tokenizer) -> Dict[int, int]:
    levels = tgh_levels()
    covered = single_token_characters(tokenizer, "".join(levels.values()))
    return {level: sum(ch in covered for ch in chars) for level, chars in levels.items()}


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
             + "   TGH level 1 / 2 / 3 single-token coverage"]
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
