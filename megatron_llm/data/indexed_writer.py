"""Streaming, crash-safe writer of megatron-core ``.bin/.idx`` pairs.

Byte-for-byte the layout megatron-core's ``IndexedDatasetBuilder`` writes, with two differences that matter at scale:
- per-sequence lengths and document boundaries are spilled to temporary files instead of Python lists, so memory
  stays flat however many documents the corpus has (the builder keeps ~100 bytes of list per document);
- everything is written under temporary names, fsynced, and renamed only once complete. The old .idx (if any) is
  removed before the new .bin takes its place, and the new .idx is renamed last, so an interrupted run never leaves a
  pair that looks complete.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from megatron_llm.data import indexed_format as fmt

_CHUNK = 1 << 20  # elements per pass when streaming the spilled arrays into the .idx


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class IndexedWriter:
    """Write one dataset ``<prefix>.bin/.idx``. Use as a context manager: an exception removes the temporaries."""

    def __init__(self, prefix: str, dtype) -> None:
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        if self.dtype not in fmt.CODE_OF:
            raise ValueError(f"{prefix}: unsupported token dtype {self.dtype}")
        parent = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(parent, exist_ok=True)
        tag = f".tmp.{os.getpid()}"
        self._bin_tmp = fmt.bin_path(prefix) + tag
        self._idx_tmp = fmt.idx_path(prefix) + tag
        self._len_tmp = prefix + ".lengths" + tag
        self._doc_tmp = prefix + ".docs" + tag
        self._bin = open(self._bin_tmp, "wb")
        self._lengths = open(self._len_tmp, "wb")
        self._docs = open(self._doc_tmp, "wb")
        self.sequence_count = 0
        self.document_count = 0  # documents written (the .idx stores one more entry: the leading 0)
        self.token_count = 0
        self._closed = False

    # -- appending ----------------------------------------------------------------------------------------------
    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray, doc_sequences=None) -> None:
        """Append documents: ``tokens`` back to back, ``lengths`` per sequence. A document is one sequence, or
        ``doc_sequences[i]`` sequences (sentences, --split-sentences)."""
        if len(lengths) == 0:
            return
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        lengths = np.ascontiguousarray(lengths, dtype=np.int32)
        self._bin.write(memoryview(tokens).cast("B"))
        self._lengths.write(memoryview(lengths).cast("B"))
        if doc_sequences is None:
            ends = np.arange(self.sequence_count + 1, self.sequence_count + len(lengths) + 1, dtype=np.int64)
        else:
            ends = self.sequence_count + np.cumsum(np.asarray(doc_sequences, dtype=np.int64))
            if len(ends) == 0 or ends[-1] != self.sequence_count + len(lengths):
                raise ValueError("doc_sequences must add up to the number of sequences")
        self._docs.write(memoryview(ends).cast("B"))
        self.sequence_count += len(lengths)
        self.document_count += len(ends)
        self.token_count += int(tokens.size)

    def add_dataset(self, prefix: str, progress=None) -> None:
        """Append a whole existing dataset (documents may span several sequences) without re-tokenising.
        ``progress(bin_bytes, documents, tokens)`` is called as the .bin is copied (increments)."""
        from megatron_llm.data.indexed_check import verify_indexed_dataset

        header = verify_indexed_dataset(prefix)
        if np.dtype(header.dtype) != self.dtype:
            raise ValueError(f"{fmt.idx_path(prefix)}: token dtype {np.dtype(header.dtype)} differs from "
                             f"{self.dtype} of the datasets before it; merge only datasets made with the same "
                             "tokenizer (or re-preprocess this one)")
        mm = np.memmap(header.path, mode="r", dtype=np.uint8)
        n, d = header.sequence_count, header.document_count
        lengths = np.frombuffer(mm, dtype=np.int32, count=n, offset=header.lengths_offset)
        docs = np.frombuffer(mm, dtype=np.int64, count=d, offset=header.documents_offset)
        for i in range(0, n, _CHUNK):
            self._lengths.write(memoryview(np.ascontiguousarray(lengths[i:i + _CHUNK])).cast("B"))
        # the leading 0 of each dataset is the previous dataset's end: skip it, shift the rest
        for i in range(1, d, _CHUNK):
            self._docs.write(memoryview(docs[i:i + _CHUNK] + self.sequence_count).cast("B"))
        with open(fmt.bin_path(prefix), "rb") as src:
            while True:
                block = src.read(16 << 20)
                if not block:
                    break
                self._bin.write(block)
                if progress is not None:
                    progress(len(block), 0, len(block) // self.dtype.itemsize)
        if progress is not None:
            progress(0, max(d - 1, 0), 0)
        self.token_count += int(os.path.getsize(fmt.bin_path(prefix)) // self.dtype.itemsize)
        self.sequence_count += n
        self.document_count += max(d - 1, 0)
        del lengths, docs, mm

    # -- finishing ----------------------------------------------------------------------------------------------
    def finalize(self) -> None:
        """Write the .idx, fsync both files, then rename them into place (.idx last)."""
        for f in (self._bin, self._lengths, self._docs):
            f.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        self._lengths.close()
        self._docs.close()
        n, d = self.sequence_count, self.document_count + 1
        itemsize = self.dtype.itemsize
        with open(self._idx_tmp, "wb") as idx:
            idx.write(fmt.header_bytes(self.dtype, n, d))
            with open(self._len_tmp, "rb") as src:
                shutil.copyfileobj(src, idx, 16 << 20)
            lengths = np.memmap(self._len_tmp, mode="r", dtype=np.int32) if n else np.zeros(0, np.int32)
            start = 0
            for i in range(0, n, _CHUNK):
                # byte offset of each sequence = running sum of the previous lengths x itemsize
                sizes = lengths[i:i + _CHUNK].astype(np.int64) * itemsize
                ptr = np.empty_like(sizes)
                ptr[0] = start
                np.cumsum(sizes[:-1], out=ptr[1:])
                ptr[1:] += start
                start += int(sizes.sum())
                idx.write(memoryview(ptr).cast("B"))
            del lengths
            idx.write(memoryview(np.zeros(1, np.int64)).cast("B"))
            with open(self._doc_tmp, "rb") as src:
                shutil.copyfileobj(src, idx, 16 << 20)
            idx.flush()
            os.fsync(idx.fileno())
        final_bin, final_idx = fmt.bin_path(self.prefix), fmt.idx_path(self.prefix)
        if os.path.exists(final_idx):
            os.remove(final_idx)  # never let an old .idx pair with the new .bin
        os.replace(self._bin_tmp, final_bin)
        os.replace(self._idx_tmp, final_idx)
        _fsync_dir(final_idx)
        self._cleanup()
        self._closed = True

    def abort(self) -> None:
        for f in (self._bin, self._lengths, self._docs):
            if not f.closed:
                f.close()
        for p in (self._bin_tmp, self._idx_tmp):
            if os.path.exists(p):
                os.remove(p)
        self._cleanup()
        self._closed = True

    def _cleanup(self) -> None:
        for p in (self._len_tmp, self._doc_tmp):
            if os.path.exists(p):
                os.remove(p)

    def __enter__(self) -> "IndexedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._closed:
            if exc_type is None:
                self.finalize()
            else:
                self.abort()
