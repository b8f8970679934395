"""What a CUDA GPU would do, emulated on fake CPU tensors (torch 2.13, sm80 or later).

A CPU build of torch cannot run autograd on fake "cuda" tensors, so the trace runs on fake CPU
tensors and this layer makes the CPU take the decisions a GPU takes:

- ``scaled_dot_product_attention`` calls the kernel the CUDA dispatcher would pick
  (``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp``): flash for 16-bit inputs with
  head_dim <= 256 and no mask (grouped-query heads allowed), memory-efficient for fp32 or masks
  without grouped-query heads, the math kernel otherwise. Their meta kernels give the shapes
  of what each saves (log-sum-exp, not the seq x seq matrix). Same rule as
  :func:`lorasize.memory.activations.sdpa_backend`.
- ``dropout`` goes through ``torch.native_dropout``, CUDA's fused kernel, which saves a bool mask
  (the CPU path saves an fp32 noise tensor).
- transformers treats fake tensors as "tracing" and then cannot tell that position ids are not
  packed; our synthetic batch is unpacked and unpadded, which is what a real run computes.
- ``workspace``: transient bytes a CUDA kernel allocates inside one op that fake kernels do not
  show: flash-attention backward's fp32 ``dq_accum`` and the dequantized weight of bitsandbytes'
  ``gemm_4bit`` fallback.
- ``host_state``: optimizer state CUDA keeps on the host (AdamW's ``step`` scalars), not counted.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .result import EMULATION_VERSION  # noqa: F401  (bump it when a rule here changes)

FLASH_MAX_HEAD_DIM = 256  # sdp_utils.cpp check_head_dim_size_flash (sm80+)


def sdpa_kernel(compute_bytes: int, head_dim: int, grouped: bool, masked: bool) -> str:
    """The kernel CUDA's SDPA dispatcher picks (``flash``, ``efficient`` or ``math``).

    Flash takes 16-bit inputs with head_dim <= 256 and no explicit mask (causal masking is a flag),
    grouped-query heads included; memory-efficient takes fp32 and masks but not grouped-query
    heads (``check_batch_size_and_num_heads_dense<false>``); math takes the rest. The unmasked
    case is :func:`lorasize.memory.activations.sdpa_backend`'s rule (a test holds them together).
    """
    if not masked and compute_bytes == 2 and head_dim <= FLASH_MAX_HEAD_DIM:
        return "flash"
    if not grouped:
        return "efficient"
    return "math"


def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
          enable_gqa=False):
    grouped = key.size(-3) != query.size(-3)
    kernel = sdpa_kernel(query.element_size(), query.size(-1), grouped, attn_mask is not None)
    if kernel == "flash" and value.size(-1) != query.size(-1):
        # Flash needs one head width for q, k and v; MLA's values are narrower (DeepSeek: 192
        # vs 128): CUDA takes the memory-efficient kernel (sdp_utils.cpp check_head_dim_size_flash).
        kernel = "efficient" if not grouped else "math"
    if kernel == "flash":  # grouped-query k and v go in un-repeated
        return torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, dropout_p, is_causal, False, scale=scale)[0]
    if kernel == "efficient":
        bias = attn_mask
        if bias is not None and bias.dtype == torch.bool:
            bias = torch.zeros(bias.shape, dtype=query.dtype).masked_fill_(~bias, float("-inf"))
        needs_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, bias, needs_lse, dropout_p, is_causal, scale=scale)[0]
    return torch.ops.aten._scaled_dot_product_attention_math(
        query, key, value, attn_mask, dropout_p, is_causal, None, scale=scale,
        enable_gqa=enable_gqa or grouped)[0]


def _dropout(input, p=0.5, training=True, inplace=False):
    if training and 0 < p < 1:
        return torch.native_dropout(input, p, training)[0]
    return input


def workspace(func, args, kwargs, out) -> int:
    """Bytes a CUDA kernel allocates and frees inside this op (0 for most ops)."""
    name = str(func)
    if name.startswith("aten._scaled_dot_product_flash_attention_backward"):
        batch, heads, seq, dim = args[1].shape  # query
        rounded = -(-seq // 128) * 128
        return batch * rounded * heads * dim * 4 + batch * heads * rounded * 4
    if name.startswith("bitsandbytes.gemm_4bit"):
        shape = args[2]
        return int(shape[0]) * int(shape[1]) * args[0].element_size()
    return 0


def host_state(optimizer) -> list:
    """Optimizer state CUDA keeps in host memory: torch's Adam/AdamW/SGD keep the ``step`` count
    as a CPU scalar unless ``capturable`` or ``fused`` (``torch/optim/adam.py``
    ``_init_group``), so ``max_memory_allocated`` never sees it."""
    tensors = []
    for group in optimizer.param_groups:
        if group.get("capturable") or group.get("fused"):
            continue
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if isinstance(step, torch.Tensor) and step.dim() == 0:
                tensors.append(step)
    return tensors


@contextlib.contextmanager
def fake_tensor_fixes():
    """What makes a fake run take the branches a real one takes (always applied)."""
    import transformers.masking_utils as masking

    saved = masking.find_packed_sequence_indices
    masking.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking.find_packed_sequence_indices = saved


@contextlib.contextmanager
def cuda_emulation():
    """Patch the kernels above for the duration of a trace (traces run in a subprocess)."""
    saved = (F.scaled_dot_product_attention, F.dropout)
    F.scaled_dot_product_attention = _sdpa
    F.dropout = _dropout
    try:
        with fake_tensor_fixes():
            yield
    finally:
        F.scaled_dot_product_attention, F.dropout = saved
