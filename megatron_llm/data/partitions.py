"""--partitions N: the inputs are cut into N contiguous groups of about equal size, each group is preprocessed by its
own process tree (reading and decompression then run in parallel, not only tokenisation), and the shards are merged
in order, so the result is byte-identical to an unpartitioned run. With fewer files than partitions, uncompressed
JSON-lines (and per-line .txt) files are first cut into byte ranges of whole lines (corpus.split_file), so one big
file is processed in parallel too; document order is kept (Megatron-LM instead deals lines out round-robin)."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from dataclasses import replace
from typing import List

from megatron_llm.data.corpus import InputFile, split_file, splittable
from megatron_llm.data.merge import merge_datasets


def split_units(inputs: List[InputFile], n: int, txt_mode: str) -> List[InputFile]:
    """The inputs, with big splittable files cut into ranges so that there are about ``n`` units of work (a file
    gets a share of the ``n`` parts proportional to its size)."""
    if len(inputs) >= n:
        return inputs
    total = sum(max(i.size, 1) for i in inputs)
    out: List[InputFile] = []
    for inp in inputs:
        ok = splittable(inp) and (inp.format == "jsonl" or txt_mode == "line")
        parts = max(1, round(n * max(inp.size, 1) / total)) if ok else 1
        out.extend(split_file(inp, parts))
    return out


def split_groups(inputs: List[InputFile], n: int) -> List[List[InputFile]]:
    """Contiguous groups (order kept) with roughly equal bytes; never an empty group."""
    n = max(1, min(n, len(inputs)))
    total = sum(max(i.size, 1) for i in inputs)
    groups: List[List[InputFile]] = [[]]
    acc = 0
    for idx, inp in enumerate(inputs):
        remaining_files = len(inputs) - idx
        need_groups = n - len(groups)
        if groups[-1] and need_groups > 0 and (acc >= total * len(groups) / n or remaining_files <= need_groups):
            groups.append([])
        groups[-1].append(inp)
        acc += max(inp.size, 1)
    return groups


def _child(cfg, group, prefix, position, queue) -> None:
    from megatron_llm.data.preprocess import run_files
    from megatron_llm.data.tokenizers import build_tokenizer

    try:
        tok = build_tokenizer(cfg.tokenizer_type, cfg.tokenizer_model, cfg.vocab_size)
        queue.put((position, run_files(cfg, group, tok, prefix, position=position), None))
    except BaseException as exc:  # report, the parent raises
        queue.put((position, None, f"{type(exc).__name__}: {exc}"))


def run_partitioned(cfg, inputs: List[InputFile], tokenizer):
    from megatron_llm.data.preprocess import Summary, output_prefix_for

    import time

    start = time.perf_counter()
    groups = split_groups(inputs, cfg.partitions)
    out_dir = os.path.dirname(os.path.abspath(cfg.output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    # shards live in a hidden temp directory: they never carry the final names, and are removed afterwards
    work = os.path.join(out_dir, f".{os.path.basename(cfg.output_prefix)}.partitions.tmp.{os.getpid()}")
    os.makedirs(work, exist_ok=True)
    sub = replace(cfg, workers=max(1, cfg.workers // len(groups)) if cfg.workers > 0 else 0)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    queue = ctx.Queue()
    procs = []
    try:
        for i, g in enumerate(groups):
            p = ctx.Process(target=_child, args=(sub, g, os.path.join(work, f"part{i:04d}"), i, queue))
            p.start()
            procs.append(p)
        results = {}
        for _ in procs:
            pos, summ, err = queue.get()
            if err:
                raise RuntimeError(f"partition {pos} failed: {err}")
            results[pos] = summ
        for p in procs:
            p.join()
        total = Summary()
        for i in range(len(groups)):
            s = results[i]
            total.documents += s.documents
            total.sequences += s.sequences
            total.splitter = s.splitter
            total.records += s.records
            total.tokens += s.tokens
            total.text_bytes += s.text_bytes
            total.disk_bytes += s.disk_bytes
            total.problems.merge(s.problems)
        for k in cfg.json_keys:
            shards = [output_prefix_for(os.path.join(work, f"part{i:04d}"), k) for i in range(len(groups))]
            merge_datasets(shards, output_prefix_for(cfg.output_prefix, k))
            total.outputs.append(output_prefix_for(cfg.output_prefix, k))
        total.seconds = time.perf_counter() - start
        return total
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
        shutil.rmtree(work, ignore_errors=True)
