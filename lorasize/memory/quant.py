"""Bytes of bitsandbytes-quantized weights and their quantization constants.

4-bit (NF4/FP4), Dettmers et al. 2023, "QLoRA", section 3 and bitsandbytes
``functional.quantize_4bit`` (0.50): weights pack two per byte (uint8 storage); each block of
64 weights has an absmax scale. Without double quantization the absmax is fp32: 4 B per 64
weights (0.5 bit per weight). With double quantization (``compress_statistics``) the absmaxes
are themselves quantized blockwise to uint8 in blocks of 256, with one fp32 absmax per block,
a 256-value fp32 code table and the mean subtracted (``offset``): 1 B per 64 weights + 4 B per 64*256 weights
(8/64 + 32/(64*256) = 0.127 bit per weight). Each layer also holds its 16-value 4-bit code
table (fp32).

8-bit (LLM.int8, Dettmers et al. 2022): int8 weights plus one fp32 scale per output row (``SCB``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .allocator import block

BLOCKSIZE_4BIT = 64  # bnb.nn.Linear4bit default blocksize
BLOCKSIZE_DOUBLE_QUANT = 256  # quantize_blockwise(absmax, blocksize=256) in quantize_4bit
CODE_4BIT_VALUES = 16  # get_4bit_type(): 16 fp32 values per quantized layer
CODE_DYNAMIC_VALUES = 256  # create_dynamic_map(): the 8-bit code of the double-quantized absmax
FP32_BYTES = 4

QUANT_TYPES = ("nf4", "fp4", "int8")
# bitsandbytes before 0.47 set a 4-bit layer's compute dtype from its first input when that is
# fp32 or bf16, whatever compute dtype the layer was given: ``Linear4bit.__init__`` set
# ``compute_type_is_set = False`` and ``forward`` then ran ``set_compute_type(x)`` ("the input is
# in a dtype that is safe to compute in, we switch to this type", bitsandbytes 0.45.0 and 0.46.1
# wheels, ``nn/modules.py``). 0.47.0 (wheel built 2025-08-11) keeps a given compute dtype
# (``compute_type_is_set = False if compute_dtype is None else True``; bitsandbytes PR #1623).
# So before 0.47 an fp32 input (kbit preparation without autocast) dequantizes each weight to
# fp32 and multiplies in fp32 (``MatMul4Bit.forward``: ``dequantize_4bit(B).to(A.dtype)``).
BNB_COMPUTE_DTYPE_KEPT = "0.47"


def computes_in_input_dtype(bnb_release: str) -> bool:
    """Whether bitsandbytes at ``bnb_release`` (empty: the current one) computes a 4-bit layer
    in its input's dtype (fp32 or bf16) rather than the compute dtype it was given."""
    from .stacks import release_tuple

    return bool(bnb_release) and release_tuple(bnb_release) < release_tuple(BNB_COMPUTE_DTYPE_KEPT)


@dataclass(frozen=True)
class QuantizedBytes:
    """Allocator bytes of one quantized weight: the packed data and its constants."""

    weight: int
    constants: int


def quantized_bytes(numel: int, out_features: int, quant: str, double_quant: bool) -> QuantizedBytes:
    """Bytes of one weight matrix of ``numel`` elements quantized with ``quant``.

    Each tensor is rounded to the allocator's 512-byte blocks, as ``max_memory_allocated`` sees it.
    """
    if quant == "int8":
        return QuantizedBytes(block(numel), block(FP32_BYTES * out_features))
    if quant not in ("nf4", "fp4"):
        raise ValueError(f"unknown quantization {quant!r}")
    blocks = math.ceil(numel / BLOCKSIZE_4BIT)
    code = block(FP32_BYTES * CODE_4BIT_VALUES)
    if double_quant:
        blocks2 = math.ceil(blocks / BLOCKSIZE_DOUBLE_QUANT)
        # uint8 absmax, fp32 second-level absmax and its 8-bit code table, fp32 offset (a
        # scalar), the 4-bit code table; each layer holds its own copies.
        constants = (block(blocks) + block(FP32_BYTES * blocks2) + block(FP32_BYTES * CODE_DYNAMIC_VALUES)
                     + block(FP32_BYTES) + code)
    else:
        constants = block(FP32_BYTES * blocks) + code
    return QuantizedBytes(block(math.ceil(numel / 2)), constants)


def bits_per_weight(quant: str, double_quant: bool) -> float:
    """Average storage bits per weight including constants, ignoring rounding (for docs)."""
    if quant == "int8":
        return 8.0
    extra = 8 / 64 + 32 / (64 * 256) if double_quant else 32 / 64
    return 4 + extra
