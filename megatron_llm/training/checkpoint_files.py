"""Checkpoint directories on disk: which are complete, what a killed save left behind, what --keep-last removes.

A checkpoint is complete when `latest_checkpointed_iteration.txt` names it or an older one was named after it
existed (the save renames iter_N.tmp to iter_N only after every rank's shard is on disk, then writes the tracker).
Anything else a kill can leave is partial: iter_N.tmp directories, the tracker's own temporary file. They are
removed (by rank 0, before anything is loaded) with a message, never loaded.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import List

ITER_DIR = re.compile(r"^iter_(\d{7})$")
PARTIAL = re.compile(r"^(iter_\d{7}\.tmp|latest_checkpointed_iteration\.txt\.tmp\.\d+)$")


def complete_iterations(root: str) -> List[int]:
    """Iterations with a renamed (complete) checkpoint directory, oldest first."""
    if not os.path.isdir(root):
        return []
    return sorted(int(m.group(1)) for m in map(ITER_DIR.match, os.listdir(root)) if m)


def remove_partial(root: str, log=print) -> List[str]:
    """Delete what an interrupted save left in `root`; returns the names removed."""
    if not os.path.isdir(root):
        return []
    removed = []
    for name in sorted(os.listdir(root)):
        if PARTIAL.match(name):
            path = os.path.join(root, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
            removed.append(name)
    if removed:
        log(f"[megatron-llm] removed partial checkpoint files left by an interrupted save in {root}: "
            f"{', '.join(removed)}")
    return removed


def keep_last(root: str, n: int, latest: int, log=print) -> List[int]:
    """Delete complete checkpoints older than the newest `n` (never `latest`, which the tracker names)."""
    if not n or n < 1:
        return []
    iters = [i for i in complete_iterations(root) if i <= latest]
    doomed = iters[:-n] if len(iters) > n else []
    for it in doomed:
        path = os.path.join(root, f"iter_{it:07d}")
        # Rename first so a kill mid-delete leaves a .tmp name (cleaned as partial), never a torn iter_N.
        tmp = path + ".tmp"
        os.replace(path, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    if doomed:
        log(f"[megatron-llm] --keep-last {n}: deleted checkpoints of iteration(s) {', '.join(map(str, doomed))}")
    return doomed
