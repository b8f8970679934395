"""Optimizer state bytes per trainable tensor, as each optimizer allocates it.

- ``adamw``: ``torch.optim.AdamW`` keeps ``exp_avg`` and ``exp_avg_sq`` with the parameter's dtype
  (``torch.zeros_like(p)``, torch/optim/adam.py ``_init_group``); ``step`` is a CPU scalar unless
  the optimizer is fused or capturable. On CUDA torch picks the foreach implementation, whose
  ``_foreach_sqrt`` / ``_foreach_div`` make one temporary the size of all trainable state at a time
  (Loshchilov & Hutter 2019 for the algorithm).
- ``adamw-fused``: ``torch.optim.AdamW(fused=True)`` (transformers' ``adamw_torch_fused``, its
  default from torch 2.8; torchtune's configs since #1575, cca50f02e, 2024-09-14). The same two
  moments, ``step`` a 0-d fp32 tensor on the device (``_init_group``: ``capturable or fused``), and
  ``_fused_adamw_`` updates in place: no temporary.
- ``adamw-8bit`` / ``paged-adamw-8bit``: bitsandbytes ``Optimizer2State.init_state`` (0.50):
  uint8 ``state1``/``state2`` plus fp32 ``absmax1``/``absmax2`` per block of 256 elements;
  tensors under ``min_8bit_size`` = 4096 elements keep fp32 state (Dettmers et al. 2022, "8-bit
  Optimizers via Block-wise Quantization").
- ``paged-adamw``: bitsandbytes 32-bit state (fp32 whatever the parameter dtype). Paged
  variants put buffers of 1e5 elements or more in CUDA unified memory (``get_state_buffer``), which
  ``torch.cuda`` statistics never count but the device does while the pages are resident.
- ``sgd``: ``torch.optim.SGD`` with its default ``momentum=0`` keeps no state;
  ``sgd-momentum`` keeps one ``momentum_buffer`` in the parameter's dtype.
- ``lion`` and variants: bitsandbytes ``Lion`` / ``Lion8bit`` / ``PagedLion`` (``Optimizer1State``,
  Chen et al. 2023): one state buffer, fp32 or blockwise uint8 like the 8-bit AdamW.
- ``adafactor``: ``transformers.optimization.Adafactor`` defaults (``beta1=None``): a matrix keeps
  a row and a column second-moment vector, a vector keeps one the size of itself (Shazeer & Stern
  2018), in the gradient's dtype, plus a 0-d ``RMS`` tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .allocator import block

OPTIMIZERS = ("adamw", "adamw-fused", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "sgd",
              "sgd-momentum",
              "adafactor", "lion", "lion-8bit", "paged-lion", "paged-lion-8bit")
MIN_8BIT_SIZE = 4096  # bitsandbytes Optimizer8bit min_8bit_size default
BLOCKSIZE_8BIT_STATE = 256  # bitsandbytes blockwise optimizer state quantization
MIN_PAGED_NUMEL = 100_000  # bitsandbytes get_state_buffer pages tensors of 1e5 elements or more
FP32_BYTES = 4


@dataclass(frozen=True)
class OptimizerBytes:
    """State bytes of one optimizer: in torch's allocator, and paged (outside it)."""

    device: int = 0
    paged: int = 0

    def __add__(self, other: "OptimizerBytes") -> "OptimizerBytes":
        return OptimizerBytes(self.device + other.device, self.paged + other.paged)


def state_bytes(optimizer: str, shape: tuple[int, ...], param_bytes: int) -> OptimizerBytes:
    """Optimizer state for one trainable tensor.

    Args:
        optimizer: one of :data:`OPTIMIZERS`.
        shape: the parameter's shape.
        param_bytes: bytes per element of the parameter (its dtype).
    """
    numel = math.prod(shape)
    if optimizer == "sgd":
        return OptimizerBytes()
    if optimizer == "sgd-momentum":
        return OptimizerBytes(device=block(numel * param_bytes))
    if optimizer == "adamw":
        return OptimizerBytes(device=2 * block(numel * param_bytes))
    if optimizer == "adamw-fused":
        return OptimizerBytes(device=2 * block(numel * param_bytes) + block(FP32_BYTES))
    if optimizer == "adafactor":
        rms = block(FP32_BYTES)  # state["RMS"], a 0-d tensor
        if len(shape) >= 2:
            rows, cols = math.prod(shape[:-1]), math.prod(shape[:-2] + shape[-1:])
            return OptimizerBytes(device=block(rows * param_bytes) + block(cols * param_bytes) + rms)
        return OptimizerBytes(device=block(numel * param_bytes) + rms)
    paged = optimizer.startswith("paged-")
    eight_bit = optimizer.endswith("-8bit") and numel >= MIN_8BIT_SIZE
    states = 1 if "lion" in optimizer else 2  # Optimizer1State vs Optimizer2State
    if eight_bit:
        buffers = states * block(numel)
        absmax = states * block(FP32_BYTES * math.ceil(numel / BLOCKSIZE_8BIT_STATE))
    else:
        buffers, absmax = states * block(FP32_BYTES * numel), 0
    if paged and numel >= MIN_PAGED_NUMEL:
        return OptimizerBytes(device=absmax, paged=buffers)
    return OptimizerBytes(device=buffers + absmax)


def step_temporary_bytes(optimizer: str, trainable_state_bytes: int) -> int:
    """Transient bytes during ``optimizer.step()`` on top of the state.

    torch's foreach AdamW computes ``exp_avg_sq.sqrt()`` for every tensor at once before dividing,
    a temporary as large as one state buffer. Fused AdamW, bitsandbytes and SGD update in place.
    """
    if optimizer == "adamw":
        return trainable_state_bytes // 2
    return 0
