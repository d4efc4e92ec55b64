"""Reading and writing HuggingFace checkpoint directories, one tensor at a time.

A HF directory holds config.json and weights as one file or shards listed in an index
(model.safetensors[.index.json] or pytorch_model[.bin.index.json]). Tensors are read lazily (safetensors: only the
requested tensor's bytes, with plain reads; .bin: torch.load with mmap), so a conversion never holds the source
model in memory. (Reading safetensors through a memory map would leave every page read resident in this process
until the file is closed: a second copy of the model in its RSS.)
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from typing import Dict, Iterable, List, Optional, Tuple

import torch

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


class ConversionError(RuntimeError):
    """A bad conversion input; the message names the file or tensor and what to do."""


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConversionError(f"{path}: missing; a HF checkpoint directory needs it") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


_SAFE_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}


class SafetensorsFile:
    """One .safetensors file: the header is read and checked against the file size at open (a truncated file is
    named then), each tensor is read on request into its own buffer."""

    def __init__(self, path: str) -> None:
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            if n is None or 8 + n > size:
                raise ConversionError(f"{path}: truncated (the safetensors header runs past the end of the "
                                      f"file); copy it again")
            try:
                header = json.loads(f.read(n))
            except ValueError as e:
                raise ConversionError(f"{path}: not a safetensors file (bad header: {e})") from None
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.header = header
        for name, info in header.items():
            if self.base + info["data_offsets"][1] > size:
                raise ConversionError(f"{path}: truncated: tensor {name} ends at byte "
                                      f"{self.base + info['data_offsets'][1]} of a {size}-byte file; copy it again")

    def keys(self):
        return self.header.keys()

    def get_tensor(self, name: str) -> torch.Tensor:
        info = self.header[name]
        dtype = _SAFE_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConversionError(f"{self.path}: tensor {name} has dtype {info['dtype']}, which is not supported")
        start, end = info["data_offsets"]
        if end == start:
            return torch.empty(info["shape"], dtype=dtype)
        buf = bytearray(end - start)
        with open(self.path, "rb") as f:
            f.seek(self.base + start)
            if f.readinto(buf) != len(buf):
                raise ConversionError(f"{self.path}: truncated while reading tensor {name}")
        return torch.frombuffer(buf, dtype=dtype).reshape(info["shape"])


class HFReader:
    """Lazy access to the tensors of a HF checkpoint directory."""

    def __init__(self, directory: str) -> None:
        if not os.path.isdir(directory):
            raise ConversionError(f"{directory}: not a directory (expected a HF checkpoint directory)")
        self.directory = directory
        self.config = read_json(os.path.join(directory, "config.json"))
        self._open: Dict[str, object] = {}
        self.weight_map = self._weight_map()
        missing = sorted({f for f in self.weight_map.values() if not os.path.isfile(os.path.join(directory, f))})
        if missing:
            raise ConversionError(f"{directory}: shard(s) {', '.join(missing)} listed in the index are missing; "
                                  f"copy the complete checkpoint")

    def _weight_map(self) -> Dict[str, str]:
        d = self.directory
        for index in (SAFE_INDEX, BIN_INDEX):
            path = os.path.join(d, index)
            if os.path.isfile(path):
                wm = read_json(path).get("weight_map")
                if not isinstance(wm, dict) or not wm:
                    raise ConversionError(f"{path}: no weight_map")
                return dict(wm)
        for single in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(d, single)):
                return {name: single for name in self._names_in(single)}
        raise ConversionError(f"{d}: no weights (model.safetensors, pytorch_model.bin or their .index.json)")

    def _names_in(self, file: str) -> Iterable[str]:
        return list(self._handle(file).keys())

    def _handle(self, file: str):
        """An open safetensors file, or the mmap-loaded state dict of a .bin."""
        if file not in self._open:
            path = os.path.join(self.directory, file)
            try:
                if file.endswith(".safetensors"):
                    self._open[file] = SafetensorsFile(path)
                else:
                    self._open[file] = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except ConversionError:
                raise
            except Exception as e:  # truncated or corrupt file: name it
                raise ConversionError(f"{path}: cannot read it ({type(e).__name__}: {e}); the file is truncated "
                                      f"or corrupt, copy it again") from None
        return self._open[file]

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        file = self.weight_map.get(name)
        if file is None:
            raise ConversionError(f"{self.directory}: tensor {name} is missing from the checkpoint")
        h = self._handle(file)
        try:
            t = h.get_tensor(name) if hasattr(h, "get_tensor") else h[name]
        except Exception as e:
            raise ConversionError(f"{os.path.join(self.directory, file)}: cannot read tensor {name} "
                                  f"({type(e).__name__}: {e}); the file is truncated or corrupt") from None
        return t

    def dtype(self) -> torch.dtype:
        return self.get(next(iter(self.weight_map))).dtype


def copy_tokenizer(src: str, dst: str) -> List[str]:
    """Copy the tokenizer files found in `src` into `dst`; returns their names."""
    names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src, n))]
    if names:
        os.makedirs(dst, exist_ok=True)
        for n in names:
            shutil.copy2(os.path.join(src, n), os.path.join(dst, n))
    return names


class ShardWriter:
    """Writes tensors into model-0000i-of-0000n.safetensors shards of at most `max_shard_bytes` as they come, then
    the index. Tensors are held only until their shard is full."""

    def __init__(self, directory: str, max_shard_bytes: int) -> None:
        self.directory = directory
        self.max = max_shard_bytes
        self.pending: Dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: List[Tuple[str, List[str]]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += nbytes
        self.total += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        tmp_name = f"shard-{len(self.files):05d}.safetensors"
        save_file(self.pending, os.path.join(self.directory, tmp_name), metadata={"format": "pt"})
        self.files.append((tmp_name, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.pending:
            self._flush()
        n = len(self.files)
        weight_map = {}
        for i, (tmp_name, names) in enumerate(self.files):
            final = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(os.path.join(self.directory, tmp_name), os.path.join(self.directory, final))
            weight_map.update({k: final for k in names})
        if n > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
            write_json(os.path.join(self.directory, SAFE_INDEX), index)


def write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def parse_size(text: Optional[str]) -> int:
    """'5GB', '500MB', '1000000' -> bytes."""
    if text is None:
        return 5 * 10 ** 9
    t = text.strip().upper()
    for suffix, mult in (("GB", 10 ** 9), ("MB", 10 ** 6), ("KB", 10 ** 3), ("B", 1)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)
