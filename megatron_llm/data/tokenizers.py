"""Tokenizers for preprocessing and training: one small interface over SentencePiece, HuggingFace `tokenizers`,
pre-tokenised ids (NullTokenizer) and raw UTF-8 bytes.

Every tokenizer has ``vocab_size``, ``eod``, ``tokenize(text)``, ``tokenize_batch(texts)``, ``detokenize(ids)`` and
``normalize(text)`` (what ``detokenize(tokenize(text))`` gives back: the tokenizer's own normalisation).

Why not megatron-core's tokenizer classes directly: importing ``megatron.core`` costs ~3 s and pulls in torch, which
the preprocessing tool must not need (DESIGN.md section 7); its HuggingFace wrapper needs ``transformers`` (not a
dependency; we read ``tokenizer.json`` with the `tokenizers` library); and its per-call SentencePiece wrapper has no
batch path. The semantics are kept identical where they overlap: SentencePiece ids equal megatron-core's
``SentencePieceTokenizer.text_to_ids`` with ``eod = eos_id`` (tested), and NullTokenizer follows Megatron-LM's
current convention ``eod = vocab_size - 1``.
"""

from __future__ import annotations

import json
import os
import re
from itertools import chain
from typing import Dict, List, Optional, Sequence

TOKENIZER_TYPES = ("SentencePieceTokenizer", "HuggingFaceTokenizer", "NullTokenizer", "ByteTokenizer")


class TokenizerError(ValueError):
    """A tokenizer cannot be built from the given arguments/files; the message says which and what to do."""


class BaseTokenizer:
    vocab_size: int
    eod: int
    pad: Optional[int] = None
    bos: Optional[int] = None

    def tokenize(self, text: str) -> List[int]:
        raise NotImplementedError

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [self.tokenize(t) for t in texts]

    def detokenize(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def normalize(self, text: str) -> str:
        """The text as this tokenizer reproduces it after a round trip (identity unless it normalises)."""
        return text

    @property
    def unique_identifiers(self) -> Dict[str, object]:
        # megatron-core hashes this into its dataset index-cache names: different tokenizers must differ.
        return {"class": type(self).__name__, "vocab_size": self.vocab_size, "eod": self.eod}


# --------------------------------------------------------------------------------------------------------------
# SentencePiece
# --------------------------------------------------------------------------------------------------------------

_SP_WORD_CACHE_MAX = 1 << 18  # entries; cleared when full so memory stays bounded on any corpus


class SentencePieceTokenizer(BaseTokenizer):
    """A SentencePiece ``.model``; ``eod`` is the model's ``</s>`` (eos) id, as megatron-core's wrapper uses.

    Speed: for documents where it is provably exact (see ``_word_split_ok``), ids are assembled from a cache of
    per-word encodings, as tiktoken and HF tokenizers do; everything else goes through SentencePiece's batch encoder.
    """

    def __init__(self, model_path: str, num_threads: int = 1) -> None:
        import sentencepiece as spm

        self.model_path = model_path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(model_path)
        except Exception as exc:  # sentencepiece raises OSError/RuntimeError with a terse message
            raise TokenizerError(f"--tokenizer-model {model_path}: not a valid SentencePiece model ({exc}); "
                                 "pass a .model file written by spm_train / `megatron-llm tokenizer train`") from exc
        self.vocab_size = int(self._sp.get_piece_size())
        eos = int(self._sp.eos_id())
        if eos < 0:
            raise TokenizerError(f"--tokenizer-model {model_path}: the model has no </s> (eos) piece, which Megatron "
                                 "uses as end-of-document; retrain it with eos_id >= 0")
        self.eod = eos
        self.bos = int(self._sp.bos_id()) if self._sp.bos_id() >= 0 else None
        self.pad = int(self._sp.pad_id()) if self._sp.pad_id() >= 0 else None
        self.num_threads = max(1, int(num_threads))
        self._cache: Dict[str, List[int]] = {}
        self._fast_ok, self._bad_chars = self._probe_word_split()

    # -- exactness probe ----------------------------------------------------------------------------------------
    def _probe_word_split(self):
        """Decide whether ``encode(text) == concat(encode(w) for w in text.split(' '))`` holds for ASCII text made of
        characters the normaliser leaves alone, with single inner spaces and none at either end.

        It holds when (a) normalisation of such text is exactly '▁' + text with ' ' -> '▁' (probed per character,
        which also covers add_dummy_prefix and whitespace escaping), and (b) no piece can span a '▁' boundary: every
        piece with '▁' past its first character is all-'▁' (can only match '▁▁', which such text never contains).
        Under (a)+(b) BPE merges (and unigram's Viterbi path) never cross words, so per-word encoding is exact.
        """
        sp = self._sp
        try:
            if sp.normalize("x") != "\u2581x" or sp.normalize("x y") != "\u2581x\u2581y":
                return False, None
        except AttributeError:  # sentencepiece < 0.2 has no normalize(); stay on the plain path
            return False, None
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if "\u2581" in piece[1:] and piece.strip("\u2581") != "":
                return False, None
        bad = [chr(c) for c in range(128) if c != 32 and sp.normalize(f"x{chr(c)}x") != f"\u2581x{chr(c)}x"]
        pattern = re.compile("[" + "".join(re.escape(c) for c in bad) + "]") if bad else None
        return True, pattern

    def _word_split_ok(self, text: str) -> bool:
        return (self._fast_ok and text.isascii() and not text.startswith(" ") and not text.endswith(" ")
                and "  " not in text and (self._bad_chars is None or self._bad_chars.search(text) is None))

    # -- encoding -----------------------------------------------------------------------------------------------
    def _encode_plain(self, texts: List[str]) -> List[List[int]]:
        if not texts:
            return []
        return self._sp.encode(texts, out_type=int, num_threads=self.num_threads)

    def tokenize(self, text: str) -> List[int]:
        return self.tokenize_batch([text])[0]

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        out: List[Optional[List[int]]] = [None] * len(texts)
        slow_idx: List[int] = []
        split_docs: List[tuple] = []
        cache = self._cache
        missing = set()
        for i, text in enumerate(texts):
            if text and self._word_split_ok(text):
                words = text.split(" ")
                split_docs.append((i, words))
                missing.update(w for w in words if w not in cache)
            else:
                slow_idx.append(i)
        if missing:
            if len(cache) + len(missing) > _SP_WORD_CACHE_MAX:
                cache.clear()
                missing = {w for _, words in split_docs for w in words}
            miss = list(missing)
            for w, ids in zip(miss, self._encode_plain(miss)):
                cache[w] = ids
        get = cache.__getitem__
        for i, words in split_docs:
            out[i] = list(chain.from_iterable(map(get, words)))
        if slow_idx:
            for i, ids in zip(slow_idx, self._encode_plain([texts[i] for i in slow_idx])):
                out[i] = ids
        return out  # type: ignore[return-value]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def normalize(self, text: str) -> str:
        # decode() turns '▁' back into ' ' and drops the dummy-prefix space at the start.
        norm = self._sp.normalize(text).replace("\u2581", " ")
        return norm[1:] if norm.startswith(" ") and self._sp.normalize("x").startswith("\u2581") else norm

    def piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    @property
    def processor(self):
        return self._sp


# --------------------------------------------------------------------------------------------------------------
# HuggingFace tokenizer.json
# --------------------------------------------------------------------------------------------------------------

_EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eos|>", "<|im_end|>", "[SEP]")


class HuggingFaceTokenizer(BaseTokenizer):
    """A ``tokenizer.json`` (file, or a directory holding one) read with the `tokenizers` library.

    ``eod`` is the ``eos_token`` of a ``tokenizer_config.json`` next to it if there is one, else the first of the
    usual end-of-text tokens present in the vocabulary.
    """

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise TokenizerError(f"--tokenizer-model {path}: no tokenizer.json there; pass the tokenizer.json file "
                                 "or the directory that contains it")
        try:
            self._tok = Tokenizer.from_file(file)
        except Exception as exc:
            raise TokenizerError(f"--tokenizer-model {file}: not a valid HuggingFace tokenizer.json ({exc})") from exc
        self.model_path = file
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        eos_name = self._config_eos(os.path.dirname(file))
        names = ([eos_name] if eos_name else []) + list(_EOS_CANDIDATES)
        eod = next((self._tok.token_to_id(n) for n in names if self._tok.token_to_id(n) is not None), None)
        if eod is None:
            raise TokenizerError(f"--tokenizer-model {file}: cannot find an end-of-text token (looked for "
                                 f"{', '.join(names)}); add eos_token to a tokenizer_config.json beside it")
        self.eod = int(eod)

    @staticmethod
    def _config_eos(directory: str) -> Optional[str]:
        cfg = os.path.join(directory, "tokenizer_config.json")
        if not os.path.isfile(cfg):
            return None
        with open(cfg, encoding="utf-8") as f:
            eos = json.load(f).get("eos_token")
        if isinstance(eos, dict):  # AddedToken serialised as a dict
            eos = eos.get("content")
        return eos if isinstance(eos, str) else None

    def tokenize(self, text: str) -> List[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def normalize(self, text: str) -> str:
        norm = self._tok.normalizer
        return norm.normalize_str(text) if norm is not None else text


# --------------------------------------------------------------------------------------------------------------
# Pre-tokenised ids and raw bytes
# --------------------------------------------------------------------------------------------------------------

class NullTokenizer(BaseTokenizer):
    """Pre-tokenised data: each document is whitespace-separated integer ids. ``eod = vocab_size - 1``, Megatron-LM's
    convention, so ids must lie in [0, vocab_size - 1)."""

    def __init__(self, vocab_size: int) -> None:
        if vocab_size is None or int(vocab_size) < 2:
            raise TokenizerError("NullTokenizer needs --vocab-size (>= 2): ids are taken as given, and "
                                 "eod = vocab_size - 1")
        self.vocab_size = int(vocab_size)
        self.eod = self.vocab_size - 1

    def tokenize(self, text: str) -> List[int]:
        try:
            ids = [int(x) for x in text.split()]
        except ValueError as exc:
            raise ValueError(f"NullTokenizer expects whitespace-separated integer ids ({exc})") from None
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"NullTokenizer: id {i} outside [0, {self.vocab_size}) (--vocab-size)")
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    def normalize(self, text: str) -> str:
        return " ".join(text.split())


class ByteTokenizer(BaseTokenizer):
    """UTF-8 bytes as ids 0..255; eod = 256 (vocab 257). For tests and debugging."""

    vocab_size = 257
    eod = 256

    def tokenize(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

    def detokenize(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------------------------

def build_tokenizer(tokenizer_type: str, tokenizer_model: Optional[str] = None,
                    vocab_size: Optional[int] = None, num_threads: int = 1) -> BaseTokenizer:
    """Build a tokenizer from Megatron-LM-style arguments (--tokenizer-type, --tokenizer-model, --vocab-size)."""
    if tokenizer_type == "NullTokenizer":
        return NullTokenizer(vocab_size)  # type: ignore[arg-type]
    if tokenizer_type == "ByteTokenizer":
        return ByteTokenizer()
    if tokenizer_type not in TOKENIZER_TYPES:
        raise TokenizerError(f"--tokenizer-type {tokenizer_type!r} is not supported; choose one of "
                             f"{', '.join(TOKENIZER_TYPES)}")
    if not tokenizer_model:
        raise TokenizerError(f"--tokenizer-type {tokenizer_type} needs --tokenizer-model "
                             "(a SentencePiece .model, or a tokenizer.json / its directory)")
    if not os.path.exists(tokenizer_model):
        raise TokenizerError(f"--tokenizer-model {tokenizer_model}: no such file or directory")
    if tokenizer_type == "SentencePieceTokenizer":
        if os.path.isdir(tokenizer_model):
            raise TokenizerError(f"--tokenizer-model {tokenizer_model} is a directory; SentencePieceTokenizer "
                                 "needs the .model file itself")
        return SentencePieceTokenizer(tokenizer_model, num_threads=num_threads)
    return HuggingFaceTokenizer(tokenizer_model)


def token_dtype(vocab_size: int):
    """uint16 while every id fits (vocab below 65,536), else int32. (megatron-core's optimal_dtype cuts at 65,500;
    ids up to 65,535 fit uint16 exactly, and readers take the dtype from the .idx header either way.)"""
    import numpy as np

    return np.uint16 if int(vocab_size) < 65536 else np.int32
