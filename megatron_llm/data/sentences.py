"""--split-sentences: cut a document into sentences, each stored as its own sequence (Megatron-LM's flag).

Where NLTK and its punkt data are installed, the split is Megatron-LM's own: ``nltk.load`` of
``tokenizers/punkt/<lang>.pickle`` (``$NLTK_DATA`` respected), with Megatron-LM's newline-keeping variant under
--keep-newlines, applied to 1,000,000-character pieces of the text as it does. Otherwise (no nltk, or no punkt data:
it is not on PyPI, and nothing is downloaded at run time) a built-in splitter for English and Chinese runs:

- Chinese: a sentence ends after 。！？ (full-width ！？ too) or …… / ⋯⋯, together with any closing quotes or
  brackets right after it (”’」』）》); no space is needed after it.
- English (and other space-separated text): a sentence ends after . ! ? (plus closing quotes/brackets) when
  whitespace and then a character that is not a lower-case letter follow, unless the word ending in '.' is a common
  abbreviation (Mr. Dr. e.g. ...) or a single letter (an initial: "J. R. R. Tolkien").
- Whitespace between sentences is dropped, as punkt drops it; with --keep-newlines a newline stays at the end of
  the sentence before it.

``build_splitter`` returns the splitter and a description of which one runs (printed in the summary).
"""

from __future__ import annotations

import os
import re
from typing import Callable, List, Tuple

MEGATRON_MAX_LEN = 1_000_000  # Megatron-LM hands punkt the text in pieces of this many characters

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e cf al fig no vol pp ed eds inc ltd co corp jan feb mar apr jun jul "
    "aug sep sept oct nov dec gen col lt sgt capt rev mt ave dept est approx".split())
_CLOSERS = "\"'”’」』）)》]"
# Chinese enders split at once; English enders only before whitespace + a non-lower-case character
_ZH_END = re.compile(r"(?:[。！？!?]|……|⋯⋯)[" + re.escape(_CLOSERS) + r"]*")
_EN_END = re.compile(r"[.!?]+[" + re.escape(_CLOSERS) + r"]*(?=(\s+)(?![a-z]))")


def _builtin_boundaries(text: str) -> List[int]:
    """End offsets (exclusive) of sentences, before the whitespace that follows them."""
    ends = set()
    for m in _ZH_END.finditer(text):
        if m.group(0)[0] in "!?" and not _is_cjk(text[m.start() - 1:m.start()]):
            continue  # ASCII ! ? after Latin text: the English rule decides
        ends.add(m.end())
    for m in _EN_END.finditer(text):
        if text[m.start()] == ".":
            word = re.search(r"(\S+)$", text[:m.start()])
            w = word.group(1).lower().lstrip("(\"'“‘") if word else ""
            if w in _ABBREVIATIONS or (len(w) == 1 and w.isalpha()):
                continue
        ends.add(m.end())
    return sorted(ends)


def _is_cjk(ch: str) -> bool:
    return bool(ch) and ("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\u3000" <= ch <= "\u303f"
                         or "\uff00" <= ch <= "\uffef")


def builtin_split(text: str, keep_newlines: bool = False) -> List[str]:
    out: List[str] = []
    start = 0
    for end in _builtin_boundaries(text) + [len(text)]:
        if end <= start:
            continue
        gap = re.match(r"\s*", text[end:]).group(0)  # whitespace after the sentence
        sentence = text[start:end].strip()
        if keep_newlines and "\n" in gap:
            sentence += "\n"
        if sentence.strip():
            out.append(sentence)
        start = end + len(gap)
    return out


def _nltk_splitter(lang: str, keep_newlines: bool):
    """Megatron-LM's punkt setup, or None when nltk or its punkt data is missing."""
    try:
        import nltk
        from nltk.tokenize.punkt import PunktLanguageVars, PunktSentenceTokenizer
    except ImportError:
        return None, "nltk is not installed"
    if os.environ.get("NLTK_DATA"):
        url = "file:" + os.path.join(os.environ["NLTK_DATA"], "tokenizers", "punkt", f"{lang}.pickle")
    else:
        url = f"nltk:tokenizers/punkt/{lang}.pickle"
    try:
        splitter = nltk.load(url)
    except Exception as exc:  # LookupError when absent; newer nltk may refuse pickles: fall back, say why
        return None, f"nltk's punkt data for {lang!r} is not loadable ({type(exc).__name__})"
    if keep_newlines:
        class CustomLanguageVars(PunktLanguageVars):  # Megatron-LM's: keep the newline after a sentence
            _period_context_fmt = r"""
        \S*                          # some word material
        %(SentEndChars)s             # a potential sentence ending
        \s*                       #  <-- THIS is what I changed
        (?=(?P<after_tok>
            %(NonWord)s              # either other punctuation
            |
            (?P<next_tok>\S+)     #  <-- Normally you would have \s+ here
        ))"""

        splitter = PunktSentenceTokenizer(train_text=splitter._params, lang_vars=CustomLanguageVars())
    return splitter, f"nltk punkt ({lang})"


def build_splitter(lang: str = "english", keep_newlines: bool = False,
                   prefer_nltk: bool = True) -> Tuple[Callable[[str], List[str]], str]:
    """(text -> sentences, description of the splitter that runs)."""
    if prefer_nltk:
        splitter, why = _nltk_splitter(lang, keep_newlines)
        if splitter is not None:
            def split(text: str) -> List[str]:
                return [s for i in range(0, len(text), MEGATRON_MAX_LEN)
                        for s in splitter.tokenize(text[i:i + MEGATRON_MAX_LEN])]

            return split, why
    else:
        why = "built-in requested"
    return (lambda text: builtin_split(text, keep_newlines),
            f"built-in English+Chinese splitter ({why}; see megatron_llm/data/sentences.py)")
