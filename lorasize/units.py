"""Byte units, dtype sizes, and the one function that formats bytes for people.

Every byte count in lorasize is an ``int`` in bytes. Binary units (KiB, MiB, GiB) are what
nvidia-smi and ``torch.cuda`` report, so they are what we print; decimal units (GB) are only
parsed, for input such as ``--gpu-mem 24GB``, never printed under a binary name.
"""

from __future__ import annotations

import math
import re

BYTES_PER_KIB = 1024
BYTES_PER_MIB = 1024**2
BYTES_PER_GIB = 1024**3
BYTES_PER_TIB = 1024**4
BYTES_PER_KB = 1000
BYTES_PER_MB = 1000**2
BYTES_PER_GB = 1000**3
BYTES_PER_TB = 1000**4

# Bytes per element of each dtype by the names users and configs use. Torch dtypes are mapped
# to these names only inside the torch tiers.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4,
    "bf16": 2,
    "fp16": 2,
    "int8": 1,
    "uint8": 1,
    "fp8": 1,
    "nf4": 0.5,
    "fp4": 0.5,
}

# Names found in Hugging Face configs (``torch_dtype``/``dtype``) and on our command line.
DTYPE_ALIASES: dict[str, str] = {
    "float32": "fp32",
    "float": "fp32",
    "fp32": "fp32",
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "fp16": "fp16",
    "int8": "int8",
    "uint8": "uint8",
}

_UNITS = {
    "": 1,
    "b": 1,
    "kib": BYTES_PER_KIB,
    "mib": BYTES_PER_MIB,
    "gib": BYTES_PER_GIB,
    "tib": BYTES_PER_TIB,
    "kb": BYTES_PER_KB,
    "mb": BYTES_PER_MB,
    "gb": BYTES_PER_GB,
    "tb": BYTES_PER_TB,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def dtype_name(name: str) -> str:
    """Normalise a dtype name (``bfloat16``, ``bf16`` ...) to lorasize's short name.

    Raises:
        ValueError: the name is not a dtype we know.
    """
    key = str(name).lower().removeprefix("torch.")
    if key not in DTYPE_ALIASES:
        raise ValueError(f"unknown dtype {name!r} (expected one of fp32, bf16, fp16)")
    return DTYPE_ALIASES[key]


def tensor_bytes(numel: int, dtype: str) -> int:
    """Bytes of a dense tensor of ``numel`` elements of ``dtype`` (4-bit dtypes pack two per byte)."""
    return math.ceil(numel * DTYPE_BYTES[dtype])


def round_up(n: int, multiple: int) -> int:
    """Round ``n`` up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def parse_bytes(text: str) -> int:
    """Parse a size such as ``24GiB``, ``24 GB``, ``80000MiB`` or ``1024`` into bytes.

    A bare number is bytes. GB/MB are decimal, GiB/MiB binary, as written.

    Raises:
        ValueError: the text is not a size.
    """
    match = _SIZE_RE.match(str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 24GiB, 40GB, 81559MiB)")
    value, unit = float(match.group(1)), _UNITS[match.group(2).lower()]
    return int(round(value * unit))


def format_bytes(n: int, unit: str | None = None) -> str:
    """Format a byte count for people, in binary units (``12.55 GiB``).

    Args:
        n: bytes (may be negative, for differences).
        unit: force ``"GiB"``, ``"MiB"``, ``"KiB"`` or ``"B"``; by default the largest unit that
            keeps the number at or above 1.
    """
    scales = (("GiB", BYTES_PER_GIB), ("MiB", BYTES_PER_MIB), ("KiB", BYTES_PER_KIB), ("B", 1))
    if unit is None:
        unit = next(name for name, scale in scales if abs(n) >= scale or scale == 1)
    scale = dict(scales)[unit]
    if unit == "B":
        return f"{n:,} B"
    return f"{n / scale:,.2f} {unit}"


def format_count(n: int) -> str:
    """Format a parameter count with thousands separators and a short form (``6.74B``)."""
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= scale:
            return f"{n:,} ({n / scale:.2f}{suffix})"
    return f"{n:,}"
