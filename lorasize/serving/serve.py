"""How many adapters fit resident on one GPU next to the base model, per serving engine.

The base is held as trained: 16-bit, or quantized for a quantized base (no fp32 upcast, a
training-only step). The KV cache holds ``2 * layers * kv_heads * head_dim`` values per token
(keys and values; Pope et al. 2022, "Efficiently Scaling Transformer Inference", section 2) for
``concurrency x max_seq_len`` tokens. Each engine holds adapters its own way:

- ``peft`` (``PeftModel.load_adapter``): each adapter at its own size, in fp32 by default
  (``autocast_adapter_dtype=True``). The first load leaves one adapter-sized block in the caching
  allocator (TrueFoundry's measurement: the first r=64 adapter took about 500 MB, each next one
  about 250 MB), so one adapter's bytes are set aside.
- ``vllm`` (``--enable-lora``; vllm/lora/layers ``create_lora_weights``, docs "LoRA Adapters"):
  ``max_loras`` GPU slots are preallocated at ``max_lora_rank`` for every LoRA-capable linear of
  every layer, in the model dtype, whatever the adapters target; smaller ranks are padded. The
  instance uses ``gpu_memory_utilization`` (default 0.9) of the GPU; ``max_cpu_loras`` more
  adapters wait in host memory.
- ``sglang`` (``--max-loras-per-batch``, ``--max-lora-rank``, ``--lora-target-modules``;
  sglang/srt/lora/mem_pool.py): the same kind of preallocated pool at the largest rank, for the
  target modules only.
- ``lorax`` (``--adapter-memory-fraction``, default 0.1): a fixed fraction of GPU memory holds
  adapters at their own size in the model dtype, where the base, the KV cache and the context
  leave room for it (none when they do not fit); the rest are offloaded to host memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..memory.allocator import block, cublas_workspace_bytes
from ..gpu import GpuSpec
from ..arch.layout import block_linears, copies
from ..arch.lora import Target
from ..arch.model import ModelSpec
from ..specs import ServeSpec, TrainSpec
from ..units import DTYPE_BYTES
from ..memory.weights import static_bytes

# vLLM accepts these max_lora_rank values (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vllm EngineArgs.gpu_memory_utilization
LORAX_DEFAULT_ADAPTER_MEMORY_FRACTION = 0.1  # lorax-launcher --adapter-memory-fraction


@dataclass(frozen=True)
class ServingCapacity:
    """Resident adapters on one GPU, with the terms that decide it.

    Attributes:
        adapters: adapters resident on the GPU at once.
        adapter_bytes: one adapter (or one engine slot) as the engine holds it.
        base_bytes: base weights and quantization constants.
        kv_cache_bytes: KV cache for the concurrency and sequence length asked for.
        free_bytes: memory left for adapters.
        engine: the engine whose rules apply.
        engine_flags: flags to set on that engine.
    """

    adapters: int
    adapter_bytes: int
    base_bytes: int
    kv_cache_bytes: int
    free_bytes: int
    engine: str = "peft"
    engine_flags: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"engine": self.engine, "adapters_fit": self.adapters,
                "adapter_bytes": self.adapter_bytes, "base_bytes": self.base_bytes,
                "kv_cache_bytes": self.kv_cache_bytes, "free_bytes": self.free_bytes,
                "engine_flags": list(self.engine_flags)}


def adapter_resident_bytes(targets: tuple[Target, ...], dtype: str, dora: bool = False) -> int:
    """Device bytes of one loaded adapter, each tensor rounded by the allocator."""
    size = int(DTYPE_BYTES[dtype])
    total = 0
    for target in targets:
        for _, shape in target.tensors(dora):
            total += block(math.prod(shape) * size) * target.copies
    return total


def kv_cache_bytes(model: ModelSpec, tokens: int, dtype: str) -> int:
    """KV-cache bytes for ``tokens`` tokens."""
    return 2 * model.num_layers * model.kv_dim * int(DTYPE_BYTES[dtype]) * tokens


def vllm_rank(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds rank ``r``."""
    return next((rank for rank in VLLM_LORA_RANKS if rank >= r), r)


def slot_bytes(model: ModelSpec, linears, rank: int, dtype: str) -> int:
    """One preallocated engine slot: A (rank x in) and B (out x rank) for each linear, per layer."""
    total = sum(rank * max(m.experts, 1) * (m.in_features + m.out_features) * copies(model, m)
                for m in linears)  # every copy of each linear (layer kinds may differ)
    return total * int(DTYPE_BYTES[dtype])


def serving_capacity(model: ModelSpec, targets: tuple[Target, ...], train: TrainSpec,
                     gpu: GpuSpec, serve: ServeSpec, dora: bool, context_bytes: int) -> ServingCapacity:
    """Adapters of this shape that fit on ``gpu`` next to the base model, per ``serve.engine``."""
    inference = replace(train, method="qlora" if train.quantized else "lora", kbit_prep=False)
    base = static_bytes(model, targets, inference)  # (torchtune <= 0.2 quantized only its targets)
    base_bytes = base.weights + base.quant_constants
    kv = kv_cache_bytes(model, serve.kv_tokens, train.dtype)
    workspace = cublas_workspace_bytes(gpu.arch)
    r = max((t.rank for t in targets), default=0)
    engine = serve.engine
    if engine == "lorax":
        one = adapter_resident_bytes(targets, train.dtype, dora)
        # its adapter pool, where the base, the KV cache and the context leave room for it
        rest = gpu.memory_bytes - context_bytes - base_bytes - kv - workspace
        free = max(0, min(int(serve.adapter_memory_fraction * gpu.memory_bytes), rest))
        flags = (f"--adapter-memory-fraction {serve.adapter_memory_fraction:g}",)
        return ServingCapacity(free // one if one else 0, one, base_bytes, kv, free, engine, flags)
    if engine in ("vllm", "sglang"):
        rank = serve.max_lora_rank or (vllm_rank(r) if engine == "vllm" else r)
        linears = block_linears(model) if engine == "vllm" else tuple(
            dict.fromkeys(t.linear for t in targets if t.linear.group != "head"))
        one = slot_bytes(model, linears, rank, train.dtype)
        budget = int(serve.gpu_memory_utilization * gpu.memory_bytes)
        free = budget - context_bytes - base_bytes - kv - workspace
        slots = max(free, 0) // one if one else 0
        if engine == "vllm":
            flags = ("--enable-lora", f"--max-loras {max(slots, 1)}", f"--max-lora-rank {rank}",
                     f"--max-cpu-loras {max(slots, 1) * 4}",
                     f"--gpu-memory-utilization {serve.gpu_memory_utilization:g}")
        else:
            names = ",".join(dict.fromkeys(m.name for m in linears))
            flags = (f"--max-loras-per-batch {max(slots, 1)}", f"--max-lora-rank {rank}",
                     f"--lora-target-modules {names}",
                     f"--mem-fraction-static {serve.gpu_memory_utilization:g}")
        return ServingCapacity(slots, one, base_bytes, kv, free, engine, flags)
    dtype = serve.dtype or "fp32"
    one = adapter_resident_bytes(targets, dtype, dora)
    # The first load leaves one adapter-sized block cached by the allocator (see module docstring).
    free = gpu.memory_bytes - context_bytes - base_bytes - kv - workspace - one
    adapters = max(free, 0) // one if one else 0
    return ServingCapacity(adapters, one, base_bytes, kv, free, engine,
                           (f"load_adapter(..., autocast_adapter_dtype={dtype == 'fp32'})",))
