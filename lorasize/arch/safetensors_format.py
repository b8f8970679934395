"""The ``.safetensors`` file format, read and sized without torch.

Layout (https://github.com/huggingface/safetensors, README "Format"): 8 bytes little-endian
header length N, N bytes of JSON header, then the tensor data. The header maps each tensor name
to ``{"dtype", "shape", "data_offsets"}`` plus an optional ``"__metadata__"`` string map; the
Rust writer (``safetensors/src/tensor.rs``, ``prepare``) orders tensors by dtype alignment then
name, serialises the JSON without spaces and pads it with spaces to a multiple of 8 bytes.
PEFT saves adapters with ``metadata={"format": "pt"}``.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import LorasizeError

HEADER_LENGTH_BYTES = 8
HEADER_ALIGNMENT = 8
MAX_HEADER_BYTES = 100_000_000  # safetensors refuses larger headers (N_MAX)
SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}
DTYPE_TO_SAFETENSORS = {"fp32": "F32", "bf16": "BF16", "fp16": "F16"}
PEFT_METADATA = {"format": "pt"}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def header_json(tensors: list[tuple[str, str, tuple[int, ...]]],
                metadata: dict[str, str] | None = None) -> bytes:
    """The padded JSON header the safetensors writer produces for these tensors.

    Args:
        tensors: ``(name, safetensors dtype, shape)`` for each tensor.
        metadata: the ``__metadata__`` map, if any.
    """
    ordered = sorted(tensors, key=lambda t: (-SAFETENSORS_DTYPE_BYTES[t[1]], t[0]))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in ordered:
        size = math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    padding = -len(raw) % HEADER_ALIGNMENT
    return raw + b" " * padding


def file_bytes(tensors: list[tuple[str, str, tuple[int, ...]]],
               metadata: dict[str, str] | None = None) -> int:
    """Size on disk of a safetensors file holding these tensors."""
    data = sum(math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype] for _, dtype, shape in tensors)
    return HEADER_LENGTH_BYTES + len(header_json(tensors, metadata)) + data


def read_header(path: str | Path) -> tuple[list[TensorInfo], dict[str, str]]:
    """Read the tensors and metadata of a safetensors file, without loading data.

    Raises:
        LorasizeError: the file is missing, truncated or not safetensors.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            prefix = handle.read(HEADER_LENGTH_BYTES)
            if len(prefix) < HEADER_LENGTH_BYTES:
                raise LorasizeError("too short to be a safetensors file", source=str(path))
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise LorasizeError("not a safetensors file (header length is implausible)",
                                    source=str(path))
            raw = handle.read(length)
    except OSError as exc:
        raise LorasizeError(f"cannot read ({exc.strerror})", source=str(path)) from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LorasizeError("not a safetensors file (header is not JSON)", source=str(path)) from None
    if not isinstance(header, dict):
        raise LorasizeError("not a safetensors file (header is not an object)", source=str(path))
    metadata = header.pop("__metadata__", None) or {}
    tensors = []
    for name, info in header.items():
        try:
            start, end = info["data_offsets"]
            tensors.append(TensorInfo(name, info["dtype"], tuple(info["shape"]), end - start))
        except (KeyError, TypeError, ValueError):
            raise LorasizeError(f"malformed entry for tensor '{name}'", source=str(path)) from None
    return tensors, metadata
