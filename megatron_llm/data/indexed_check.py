"""Refuse a ``.bin/.idx`` pair that does not match, before training starts.

megatron-core's reader only asserts on the magic and version and otherwise memory-maps whatever is there: a
truncated .bin or an .idx from another run surfaces as garbage tokens or an index error deep inside training.
``verify_indexed_dataset`` checks everything that can be checked in O(size of .idx) and raises a ``ValueError`` that
names the file, what is wrong and what to do.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from megatron_llm.data import indexed_format as fmt

_REDO = "re-run `megatron-llm preprocess` for this dataset (or fix --data-path)"
_CHUNK = 1 << 22


def verify_indexed_dataset(prefix: str, vocab_size: Optional[int] = None) -> fmt.IdxHeader:
    """Check that ``prefix.idx`` and ``prefix.bin`` form a complete, consistent megatron-core dataset.

    With ``vocab_size``, also check that the token dtype can hold the vocabulary (a uint16 dataset cannot come from
    a tokenizer with more than 65,536 ids). Returns the parsed header.
    """
    idx, binf = fmt.idx_path(prefix), fmt.bin_path(prefix)
    for path, what in ((idx, "index"), (binf, "data")):
        if not os.path.isfile(path):
            raise ValueError(f"{path}: {what} file missing for dataset prefix {prefix!r}; pass the prefix without "
                             f".bin/.idx (e.g. out/corpus_text_document) and {_REDO}")
    h = fmt.read_header(idx)
    if h.version != fmt.VERSION:
        raise ValueError(f"{idx}: index version {h.version}, this reader understands version {fmt.VERSION} "
                         f"(megatron-core MMIDIDX); {_REDO}")
    if h.dtype_code not in fmt.DTYPE_CODES:
        raise ValueError(f"{idx}: unknown token dtype code {h.dtype_code} in the header (file corrupt?); {_REDO}")
    n, d = h.sequence_count, h.document_count
    expected = fmt.HEADER_SIZE + 12 * n + 8 * d
    if h.file_size not in (expected, expected + n):  # + n: the optional int8 modes of multimodal datasets
        raise ValueError(f"{idx}: index file is {h.file_size} bytes but its header ({n} sequences, {d} documents) "
                         f"needs {expected}; it is truncated or from another run - {_REDO}")
    dtype = np.dtype(h.dtype)
    bin_size = os.path.getsize(binf)
    mm = np.memmap(idx, mode="r", dtype=np.uint8)
    lengths = np.frombuffer(mm, dtype=np.int32, count=n, offset=h.lengths_offset)
    pointers = np.frombuffer(mm, dtype=np.int64, count=n, offset=h.pointers_offset)
    docs = np.frombuffer(mm, dtype=np.int64, count=d, offset=h.documents_offset)
    total = 0
    for i in range(0, n, _CHUNK):  # chunked so a billion-document index does not need GBs of temporaries
        ln = lengths[i:i + _CHUNK].astype(np.int64)
        if (ln < 0).any():
            raise ValueError(f"{idx}: negative sequence length in the index (file corrupt); {_REDO}")
        expect_ptr = np.empty_like(ln)
        expect_ptr[0] = total
        np.cumsum(ln[:-1] * dtype.itemsize, out=expect_ptr[1:])
        expect_ptr[1:] += total
        if not np.array_equal(expect_ptr, pointers[i:i + _CHUNK]):
            raise ValueError(f"{idx}: sequence offsets do not match the lengths for {dtype} tokens - the index was "
                             f"written with another dtype or is corrupt; {_REDO}")
        total += int(ln.sum()) * dtype.itemsize
    if bin_size != total:
        what = "truncated" if bin_size < total else "longer than its index says"
        raise ValueError(f"{binf}: {bin_size} bytes, but {idx} describes {total} bytes of {dtype} tokens - the data "
                         f"file is {what} (interrupted copy, or .bin and .idx from different runs); {_REDO}")
    if d == 0 or docs[0] != 0 or docs[-1] != n or (d > 1 and (np.diff(docs) < 0).any()):
        raise ValueError(f"{idx}: document indices are not an increasing list from 0 to {n} (file corrupt); {_REDO}")
    too_small = dtype.kind in "iu" and vocab_size is not None and np.iinfo(dtype).max < int(vocab_size) - 1
    if too_small:
        raise ValueError(f"{idx}: tokens are stored as {dtype}, which cannot hold ids of a {vocab_size}-token "
                         "vocabulary: this dataset was made with a different tokenizer; re-preprocess it with the "
                         "tokenizer you train with")
    del lengths, pointers, docs, mm
    return h
