"""Where `megatron-llm submit` records the runs it submitted, for `megatron-llm jobs`.

One JSON line per submission in $MEGATRON_LLM_HOME/runs.jsonl (default ~/.megatron_llm). Lines are appended in one
write each (well under PIPE_BUF), so concurrent submissions do not interleave; the run directory's own job.json is
the full record.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List


def registry_path() -> str:
    home = os.environ.get("MEGATRON_LLM_HOME") or os.path.join(os.path.expanduser("~"), ".megatron_llm")
    return os.path.join(home, "runs.jsonl")


def register(record: Dict) -> None:
    path = registry_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    line = json.dumps({k: record[k] for k in ("job_id", "job_name", "run_dir", "submitted")}) + "\n"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # end a line torn by a crash, or this record would be lost with it
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def load() -> List[Dict]:
    path = registry_path()
    if not os.path.exists(path):
        return []
    runs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError:
                # a torn last line after a crash must not hide every other run
                print(f"[megatron-llm jobs] {path}:{lineno}: unreadable line skipped")
    return runs
