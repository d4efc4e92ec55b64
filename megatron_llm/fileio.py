"""Crash-safe small-file writes: a reader sees the old content or the new, never a torn file."""

from __future__ import annotations

import os


def atomic_write_text(path: str, text: str) -> None:
    """Write to a temporary name, fsync, rename over `path`, fsync the directory (so the rename survives a crash)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
