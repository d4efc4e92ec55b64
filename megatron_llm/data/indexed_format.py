"""The megatron-core ``.idx`` layout (MMIDIDX version 1), shared by the writer, the merger and the checker.

.idx: b"MMIDIDX\\x00\\x00" | <Q version=1 | <B dtype code | <Q sequence count N | <Q document count D
      | int32[N] sequence lengths | int64[N] byte offsets into .bin | int64[D] document indices (0, ..., N)
      [| int8[N] modes, multimodal datasets only]
.bin: the tokens of all sequences back to back, in the dtype named by the header.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = len(MAGIC) + 8 + 1 + 8 + 8  # 34 bytes

# megatron.core.datasets.indexed_dataset.DType codes
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
               8: np.uint16}
CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


def header_bytes(dtype, sequence_count: int, document_count: int) -> bytes:
    return (MAGIC + struct.pack("<Q", VERSION) + struct.pack("<B", CODE_OF[np.dtype(dtype)])
            + struct.pack("<Q", sequence_count) + struct.pack("<Q", document_count))


def idx_path(prefix: str) -> str:
    return prefix + ".idx"


def bin_path(prefix: str) -> str:
    return prefix + ".bin"


@dataclass(frozen=True)
class IdxHeader:
    path: str
    version: int
    dtype_code: int
    sequence_count: int
    document_count: int
    file_size: int

    @property
    def dtype(self):
        return DTYPE_CODES[self.dtype_code]

    @property
    def lengths_offset(self) -> int:
        return HEADER_SIZE

    @property
    def pointers_offset(self) -> int:
        return HEADER_SIZE + 4 * self.sequence_count

    @property
    def documents_offset(self) -> int:
        return HEADER_SIZE + 12 * self.sequence_count


def read_header(path: str) -> IdxHeader:
    """Parse an .idx header. Raises ValueError naming the file for anything that is not MMIDIDX."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        raise ValueError(f"{path}: index file is truncated ({size} bytes, the header alone is {HEADER_SIZE}); "
                         "it was not written completely - re-run `megatron-llm preprocess` for this dataset")
    if raw[:9] != MAGIC:
        raise ValueError(f"{path}: not a megatron-core index file (bad magic {raw[:9]!r}, expected {MAGIC!r}); "
                         "pass the prefix of a dataset written by `megatron-llm preprocess`")
    version = struct.unpack_from("<Q", raw, 9)[0]
    code = raw[17]
    seqs, docs = struct.unpack_from("<QQ", raw, 18)
    return IdxHeader(path, version, code, seqs, docs, size)
