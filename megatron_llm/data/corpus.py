"""Corpus readers: turn --input (file, directory or glob) into a stream of small raw chunks for the encoders.

Readers never parse JSON or decode text - that happens in the worker processes - they only cut each input into
chunks of whole lines (or whole files / parquet row batches) of about ``chunk_bytes``, so memory use is bounded by
the chunk size times the number of chunks in flight, whatever the corpus size. Read-level problems (a file that
cannot be opened, a truncated .zst/.gz) are reported in the chunk's ``problems`` and reading moves on.
"""

from __future__ import annotations

import glob
import gzip
import os
import zlib
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt",)
PARQUET_SUFFIXES = (".parquet",)
COMPRESSION_SUFFIXES = {".zst": "zst", ".zstd": "zst", ".gz": "gz"}
_READ_BLOCK = 1 << 20


class InputError(ValueError):
    """--input names nothing readable; the message says what was looked for."""


@dataclass(frozen=True)
class InputFile:
    path: str
    format: str  # "jsonl" | "txt" | "parquet"
    compression: Optional[str]  # None | "zst" | "gz"
    size: int  # bytes on disk (progress and ETA are measured in these); of the range when ``end`` is set
    start: int = 0  # a byte range of the file (--partitions cutting one big file): whole lines from ``start``
    end: Optional[int] = None  # ... up to ``end`` (exclusive); None = to the end of the file
    first_line: int = 1  # line number of the line at ``start``, for messages


@dataclass
class Chunk:
    """A unit of work for an encoder: records of one file, in order.

    ``kind``: "jsonl" (items: raw lines, bytes), "line" (raw text lines, bytes: one document each), "doc" (one item:
    a whole text file, bytes) or "records" (items: dicts of key -> value from parquet).
    """

    path: str
    kind: str
    first_line: int  # 1-based line (or row) number of items[0]
    items: list
    disk_bytes: int = 0  # on-disk bytes consumed by this chunk, for progress
    problems: List[Tuple[str, str, str]] = field(default_factory=list)  # (kind, location, detail)


def classify(path: str) -> Optional[Tuple[str, Optional[str]]]:
    """(format, compression) from the file name, or None if it is not a corpus file."""
    name = path.lower()
    base, ext = os.path.splitext(name)
    compression = COMPRESSION_SUFFIXES.get(ext)
    if compression:
        name = base
    for suffixes, fmt_ in ((JSONL_SUFFIXES, "jsonl"), (TEXT_SUFFIXES, "txt"), (PARQUET_SUFFIXES, "parquet")):
        if name.endswith(suffixes):
            if fmt_ == "parquet" and compression:
                return None
            return fmt_, compression
    if compression:  # e.g. shard-0001.zst: the usual container of jsonl
        return "jsonl", compression
    return None


def expand_inputs(specs: List[str]) -> List[InputFile]:
    """Files named by --input: each spec is a file, a directory (searched recursively) or a glob. Sorted, so the
    output order does not depend on the file system."""
    out: List[InputFile] = []
    seen = set()
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(os.path.join(root, f) for root, _, files in os.walk(spec) for f in files)
            found = [p for p in found if classify(p)]
            if not found:
                raise InputError(f"--input {spec}: directory holds no .jsonl/.jsonl.zst/.jsonl.gz/.txt/.parquet files")
        elif os.path.exists(spec) or os.path.islink(spec):
            found = [spec]
        else:
            found = sorted(glob.glob(spec, recursive=True))
            found = [p for p in found if not os.path.isdir(p)]
            if not found:
                raise InputError(f"--input {spec}: no such file, directory, or matching glob")
        for p in found:
            kind = classify(p)
            if kind is None:
                raise InputError(f"--input {p}: unknown format; name it .jsonl, .jsonl.zst, .jsonl.gz, .txt or "
                                 ".parquet")
            if p not in seen:
                seen.add(p)
                try:
                    size = os.path.getsize(p)
                except OSError:
                    size = 0  # reported as unreadable when it is opened
                out.append(InputFile(p, kind[0], kind[1], size))
    return out


# ------------------------------------------------------------------------------------------------------------------
# byte streams
# ------------------------------------------------------------------------------------------------------------------

class TruncatedInput(Exception):
    pass


def _raw_blocks(f) -> Iterator[bytes]:
    while True:
        b = f.read(_READ_BLOCK)
        if not b:
            return
        yield b


def _zst_blocks(f) -> Iterator[bytes]:
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    dobj = dctx.decompressobj()
    fed = False  # input given to the current frame
    for raw in _raw_blocks(f):
        while raw:
            try:
                out = dobj.decompress(raw)
            except zstandard.ZstdError as exc:
                raise TruncatedInput(f"corrupt zstd data ({exc})") from None
            fed = True
            if out:
                yield out
            raw = b""
            if dobj.eof:  # a frame ended; the rest of the input (if any) is the next frame
                raw = dobj.unused_data
                dobj = dctx.decompressobj()
                fed = False
    if fed:
        raise TruncatedInput("zstd stream ends inside a frame (file truncated)")


def _gz_blocks(f) -> Iterator[bytes]:
    g = gzip.GzipFile(fileobj=f, mode="rb")
    try:
        while True:
            b = g.read(_READ_BLOCK)
            if not b:
                return
            yield b
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise TruncatedInput(f"gzip stream ends early or is corrupt ({exc})") from None


# ------------------------------------------------------------------------------------------------------------------
# chunking
# ------------------------------------------------------------------------------------------------------------------

def iter_chunks(inputs: List[InputFile], json_keys: List[str], txt_mode: str = "doc",
                chunk_bytes: int = 1 << 20) -> Iterator[Chunk]:
    """All chunks of all inputs, in order. ``txt_mode`` is "doc" (a .txt file is one document) or "line"."""
    for inp in inputs:
        if inp.format == "parquet":
            yield from _parquet_chunks(inp, json_keys, chunk_bytes)
        elif inp.format == "txt" and txt_mode == "doc":
            yield from _whole_file_chunk(inp)
        else:
            yield from _line_chunks(inp, "jsonl" if inp.format == "jsonl" else "line", chunk_bytes)


def _open(inp: InputFile):
    f = open(inp.path, "rb")
    if inp.start:
        f.seek(inp.start)
    return f


def _range_blocks(f, nbytes: int) -> Iterator[bytes]:
    while nbytes > 0:
        b = f.read(min(_READ_BLOCK, nbytes))
        if not b:
            return
        nbytes -= len(b)
        yield b


def splittable(inp: InputFile) -> bool:
    """Whether a file can be cut into byte ranges of whole lines: uncompressed JSON lines (or .txt read per line)."""
    return inp.compression is None and inp.format in ("jsonl", "txt")


def split_file(inp: InputFile, parts: int) -> List[InputFile]:
    """Cut a splittable file into up to ``parts`` contiguous ranges of whole lines, of about equal size, in order.
    Each range starts right after a newline; one streaming pass counts lines so messages keep file line numbers."""
    if parts <= 1 or inp.size <= 0:
        return [inp]
    bounds = [0]
    with open(inp.path, "rb") as f:
        for k in range(1, parts):
            target = max(inp.size * k // parts, bounds[-1])
            f.seek(target)
            pos = target
            while True:  # the first line start at or after the target
                b = f.read(1 << 16)
                if not b:
                    pos = inp.size
                    break
                i = b.find(b"\n")
                if i >= 0:
                    pos += i + 1
                    break
                pos += len(b)
            if bounds[-1] < pos < inp.size:
                bounds.append(pos)
        bounds.append(inp.size)
        lines = [1]
        f.seek(0)
        at, count = 0, 0
        for end in bounds[1:-1]:
            for b in _range_blocks(f, end - at):
                count += b.count(b"\n")
            at = end
            lines.append(count + 1)
    return [InputFile(inp.path, inp.format, inp.compression, hi - lo, lo, hi, ln)
            for lo, hi, ln in zip(bounds[:-1], bounds[1:], lines)]


def _unreadable(inp: InputFile, exc: BaseException) -> Chunk:
    return Chunk(inp.path, "jsonl", 1, [], inp.size,
                 [("unreadable_file", inp.path, f"{type(exc).__name__}: {exc}".strip())])


def _line_chunks(inp: InputFile, kind: str, chunk_bytes: int) -> Iterator[Chunk]:
    try:
        f = _open(inp)
    except OSError as exc:
        yield _unreadable(inp, exc)
        return
    with f:
        if inp.end is not None:
            blocks = _range_blocks(f, inp.end - inp.start)
        else:
            blocks = {"zst": _zst_blocks, "gz": _gz_blocks}.get(inp.compression, _raw_blocks)(f)
        line_no = inp.first_line
        tail = b""
        items: List[bytes] = []
        size = 0
        reported = 0  # disk bytes already attributed to earlier chunks
        try:
            for block in blocks:
                lines = (tail + block).split(b"\n")
                tail = lines.pop()
                items.extend(lines)
                size += len(block)
                if size >= chunk_bytes:
                    pos = f.tell() - inp.start
                    yield Chunk(inp.path, kind, line_no, items, pos - reported)
                    reported = pos
                    line_no += len(items)
                    items, size = [], 0
        except TruncatedInput as exc:
            # keep every complete line; the partial last line is part of the damage, not a document
            items_end = line_no + len(items)
            yield Chunk(inp.path, kind, line_no, items, inp.size - reported,
                        [("truncated_input", f"{inp.path}:{items_end}", str(exc))])
            return
        except OSError as exc:
            yield Chunk(inp.path, kind, line_no, items, inp.size - reported,
                        [("unreadable_file", f"{inp.path}:{line_no + len(items)}", f"{type(exc).__name__}: {exc}")])
            return
        if tail:
            items.append(tail)
        if items or reported < inp.size:
            yield Chunk(inp.path, kind, line_no, items, max(inp.size - reported, 0))


def _whole_file_chunk(inp: InputFile) -> Iterator[Chunk]:
    try:
        with _open(inp) as f:
            blocks = {"zst": _zst_blocks, "gz": _gz_blocks}.get(inp.compression, _raw_blocks)(f)
            parts = []
            try:
                for b in blocks:
                    parts.append(b)
            except TruncatedInput as exc:
                yield Chunk(inp.path, "doc", 1, [], inp.size, [("truncated_input", inp.path, str(exc))])
                return
    except OSError as exc:
        yield _unreadable(inp, exc)
        return
    yield Chunk(inp.path, "doc", 1, [b"".join(parts)], inp.size)


def _parquet_chunks(inp: InputFile, json_keys: List[str], chunk_bytes: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(inp.path)
    except Exception as exc:  # OSError, ArrowInvalid for a non-parquet file
        yield _unreadable(inp, exc)
        return
    names = set(pf.schema_arrow.names)
    present = [k for k in json_keys if k in names]
    rows = max(pf.metadata.num_rows, 1)
    row = 1
    reported = 0
    # batch size from the average row size so a batch is about chunk_bytes of text
    batch = max(64, min(65536, int(chunk_bytes * rows / max(inp.size, 1))))
    try:
        for rb in pf.iter_batches(batch_size=batch, columns=present or pf.schema_arrow.names[:1]):
            cols = {k: rb.column(k).to_pylist() for k in present}
            recs = [{k: cols[k][i] for k in present} for i in range(rb.num_rows)]
            done = int(inp.size * (row - 1 + rb.num_rows) / rows)
            yield Chunk(inp.path, "records", row, recs, done - reported)
            reported = done
            row += rb.num_rows
    except Exception as exc:
        yield Chunk(inp.path, "records", row, [], inp.size - reported,
                    [("truncated_input", f"{inp.path}:{row}", f"{type(exc).__name__}: {exc}")])
