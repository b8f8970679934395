"""How many adapters fit resident on one GPU next to the base model.

    adapters = (gpu memory - CUDA context - base weights - KV cache - cuBLAS workspace)
               // bytes of one adapter in the serving dtype

The base is held as trained: 16-bit, or quantized for a quantized base (no fp32 upcast, which is
a training-only step). PEFT's ``load_adapter`` keeps adapter weights in fp32 unless told
otherwise (``autocast_adapter_dtype=True``); vLLM casts them to the model dtype. The KV cache
holds ``2 * layers * kv_heads * head_dim`` values per token (keys and values, Pope et al. 2022,
"Efficiently Scaling Transformer Inference", section 2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .allocator import block, cublas_workspace_bytes
from .gpu import GpuSpec
from .lora import Target
from .model import ModelSpec
from .specs import ServeSpec, TrainSpec
from .units import DTYPE_BYTES
from .weights import static_bytes


@dataclass(frozen=True)
class ServingCapacity:
    """Resident adapters on one GPU, with the terms that decide it."""

    adapters: int
    adapter_bytes: int
    base_bytes: int
    kv_cache_bytes: int
    free_bytes: int


def adapter_resident_bytes(targets: tuple[Target, ...], dtype: str, dora: bool = False) -> int:
    """Device bytes of one loaded adapter, each tensor rounded by the allocator."""
    size = int(DTYPE_BYTES[dtype])
    total = 0
    for target in targets:
        for _, shape in target.tensors(dora):
            numel = 1
            for dim in shape:
                numel *= dim
            total += block(numel * size) * target.copies
    return total


def kv_cache_bytes(model: ModelSpec, tokens: int, dtype: str) -> int:
    """KV-cache bytes for ``tokens`` tokens."""
    return 2 * model.num_layers * model.kv_dim * int(DTYPE_BYTES[dtype]) * tokens


def serving_capacity(model: ModelSpec, targets: tuple[Target, ...], train: TrainSpec,
                     gpu: GpuSpec, serve: ServeSpec, dora: bool, context_bytes: int) -> ServingCapacity:
    """Adapters of this shape that fit on ``gpu`` next to the base model."""
    inference = replace(train, method="qlora" if train.quantized else "lora", kbit_prep=False)
    base = static_bytes(model, (), inference)
    base_bytes = base.weights + base.quant_constants
    kv = kv_cache_bytes(model, serve.kv_tokens, train.dtype)
    free = gpu.memory_bytes - context_bytes - base_bytes - kv - cublas_workspace_bytes(gpu.arch)
    one = adapter_resident_bytes(targets, serve.dtype, dora)
    adapters = max(free, 0) // one if one else 0
    return ServingCapacity(adapters=adapters, adapter_bytes=one, base_bytes=base_bytes,
                           kv_cache_bytes=kv, free_bytes=free)
