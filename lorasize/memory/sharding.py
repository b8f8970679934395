"""Per-GPU memory under data parallelism: DDP, PyTorch FSDP and DeepSpeed ZeRO.

With ``N`` GPUs, ``W`` the stored weights (frozen base, or every weight in full fine-tuning),
``A`` the adapter, ``G`` the gradients and ``O`` the optimizer state of one unsharded model,
each rank holds (Rajbhandari et al. 2020, "ZeRO", section 5; Zhao et al. 2023, "PyTorch FSDP"):

=============  ===========  ======  ======  =========================================
sharding       W, A         G       O       buffers
=============  ===========  ======  ======  =========================================
ddp            whole        whole   whole   gradient buckets, as large as G
zero1          whole        whole   O/N     one reduce bucket
zero2          whole        G/N     O/N     one reduce bucket
zero3          W/N, A/N     G/N     O/N     reduce bucket + the gathered module(s)
fsdp           W/N, A/N     G/N     O/N     root unit + two gathered wrapped units
fsdp-grad-op   W/N + W      G/N     O/N     every unit stays gathered from forward to
                                            the end of backward (SHARD_GRAD_OP)
=============  ===========  ======  ======  =========================================

DeepSpeed trains 16-bit models in mixed precision: its engine casts the module (PEFT's fp32
adapters included) to bf16/fp16 and its ZeRO optimizer keeps an fp32 master copy, fp32
gradients and fp32 optimizer state of the trainable parameters, each a 1/N partition (DeepSpeed
``estimate_zero2_model_states_mem_needs``: "2 = params_16bit, 18 = 2_grads_16bit + 4_grads_32bit
+ 4_params_32bit + 8_optimizer_states_32bit"). FSDP keeps parameters in the dtype they were
loaded in. Frozen base weights under LoRA are plain module parameters: ZeRO-1/2 never partition
them (only the optimizer's parameter groups), ZeRO-3 and FSDP shard every parameter.
Quantization constants (bitsandbytes ``QuantState``) are attributes, not parameters: no
sharding divides them. Activations are per GPU and per micro-batch, unchanged.

Offload moves to host (CPU) memory, reported apart from the device: ``optimizer`` (DeepSpeed
``offload_optimizer``) the fp32 master, gradients and optimizer state; ``params`` (ZeRO-3
``offload_param`` with ``offload_optimizer``, or FSDP ``CPUOffload(offload_params=True)``, which
offloads both) the sharded parameters as well, leaving the gathered units on the GPU.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from ..errors import LorasizeError
from ..arch.layout import block_linears, head_linear, top_params
from ..arch.model import ModelSpec
from ..specs import TrainSpec
from ..units import DTYPE_BYTES
from .weights import StaticBytes

SHARDINGS = ("none", "ddp", "fsdp", "fsdp-grad-op", "zero1", "zero2", "zero3")
OFFLOADS = ("none", "optimizer", "params")
FP32_BYTES = 4
# DeepSpeed 0.19 ZeRO defaults (deepspeed/runtime/zero/config.py, DeepSpeedZeroConfig):
# reduce_bucket_size 5e8 elements; the stage 1/2 optimizer allocates one such buffer (two with
# overlap_comm, default off below stage 3) in the gradient dtype when contiguous_gradients (default
# True) is on (stage_1_and_2.py setup_buckets); stage 3 allocates one per communication dtype
# after the optimizer state (stage3.py, "# IPG").
DEEPSPEED_REDUCE_BUCKET_SIZE = 500_000_000
# stage3_prefetch_bucket_size 5e7 elements: parameters fetched ahead of the module that runs.
DEEPSPEED_PREFETCH_BUCKET_SIZE = 50_000_000
# Defaults not counted: stage3_max_live_parameters (1e9) caps gathered elements rather than
# allocating, and the gathered module and prefetch bucket stay under it for every catalog model;
# stage3_param_persistence_threshold (1e5) keeps smaller parameters whole on every rank (norms,
# biases, small LoRA matrices: a few MiB); allgather_bucket_size (5e8, stage 1/2) gathers the
# updated 16-bit partitions in place, without a buffer of that size.
# FSDP (torch 2.13, FullyShardedDataParallel defaults): backward_prefetch=BACKWARD_PRE gathers the
# next unit while the current one runs backward, limit_all_gathers keeps at most two in flight;
# the root unit is not resharded after forward (_runtime_utils._post_forward_reshard).
FSDP_UNITS_IN_FLIGHT = 2
# torch DDP (torch/nn/parallel/distributed.py): the Reducer allocates flat bucket buffers
# (bucket_cap_mb 25 MiB each) covering every gradient, a second copy of the gradients unless
# gradient_as_bucket_view=True (default False).
# Gradient accumulation under FSDP: micro-batches before the last run under ``no_sync`` (lit-gpt's
# ``fabric.no_backward_sync(model, enabled=is_accumulating)``; accelerate's
# GradientAccumulationPlugin with its default ``sync_each_batch=False``), and FSDP keeps each
# unit's gradient unsharded until the synchronising micro-batch (torch FSDP ``no_sync`` docs: "FSDP
# will accumulate the full model gradients (instead of gradient shards)").
# torchtune's distributed recipes (lora_finetune_distributed.py, full_finetune_distributed.py
# @bd2a0fc7c) never call ``no_sync`` or ``set_requires_gradient_sync``: FSDP2 reduce-scatters every
# micro-batch's gradients and accumulates them sharded.
FSDP_SYNC_EACH_MICRO_BATCH_STACKS = ("torchtune",)
# Stacks whose FSDP units mix frozen and trainable parameters: lit-gpt wraps each ``Block`` (LoRA
# inside) with ``use_orig_params=True``, and then "the gradient memory usage will be higher than
# expected (namely, equivalent to not freezing those parameters)" (torch FullyShardedDataParallel
# docs). PEFT's ``fsdp_auto_wrap_policy`` gives the Hugging Face stack separate LoRA units.
FSDP_FROZEN_GRADIENT_STACKS = ("litgpt",)
# Optimizers whose state follows the parameter's dtype (on DeepSpeed's fp32 master: fp32).
_STATE_IN_PARAM_DTYPE = ("adamw", "adamw-fused", "sgd-momentum", "adafactor")


@dataclass(frozen=True)
class ShardSpec:
    """How ``gpus`` data-parallel ranks share one model.

    Attributes:
        gpus: data-parallel ranks (GPUs), 1 or more.
        sharding: one of :data:`SHARDINGS`; ``fsdp`` is FULL_SHARD, ``fsdp-grad-op``
            SHARD_GRAD_OP, ``zero1``/``zero2``/``zero3`` DeepSpeed ZeRO stages.
        offload: ``none``, ``optimizer`` (DeepSpeed ZeRO) or ``params`` (ZeRO-3 or FSDP;
            parameters, gradients and optimizer state all on the host).

    Raises:
        LorasizeError: a value out of range or a combination no framework offers.
    """

    gpus: int = 1
    sharding: str = "none"
    offload: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 1:
            raise LorasizeError(f"must be a positive integer, got {self.gpus!r}", source="--gpus")
        if self.sharding not in SHARDINGS:
            raise LorasizeError(f"'{self.sharding}' is not one of {', '.join(SHARDINGS)}",
                                source="--sharding")
        if self.offload not in OFFLOADS:
            raise LorasizeError(f"'{self.offload}' is not one of {', '.join(OFFLOADS)}",
                                source="--offload")
        if self.gpus > 1 and self.sharding == "none":
            raise LorasizeError(f"{self.gpus} GPUs need a way to share the model: "
                                "ddp, fsdp, zero1, zero2 or zero3", source="--sharding")
        if self.offload == "optimizer" and not self.deepspeed:
            hint = " (FSDP offloads parameters and optimizer together: --offload params)" \
                if self.fsdp else ""
            raise LorasizeError(f"optimizer offload is DeepSpeed's (zero1, zero2, zero3), not "
                                f"{self.sharding}{hint}", source="--offload")
        if self.offload == "params" and self.sharding not in ("zero3", "fsdp"):
            raise LorasizeError(f"parameter offload needs sharded parameters (zero3 or fsdp), "
                                f"not {self.sharding}", source="--offload")

    @property
    def deepspeed(self) -> bool:
        return self.sharding.startswith("zero")

    @property
    def fsdp(self) -> bool:
        return self.sharding.startswith("fsdp")

    @property
    def stage(self) -> int:
        """The ZeRO stage equivalent: 0 none/ddp, 1, 2 (zero2, fsdp-grad-op), 3 (zero3, fsdp)."""
        return {"zero1": 1, "zero2": 2, "fsdp-grad-op": 2, "zero3": 3, "fsdp": 3}.get(
            self.sharding, 0)

    @property
    def label(self) -> str:
        """``4 x zero3, optimizer offload``-style text."""
        text = f"{self.gpus} x {self.sharding}"
        return text + (f", {self.offload} offload" if self.offload != "none" else "")


@dataclass(frozen=True)
class ShardedBytes:
    """One rank's share of the model's own tensors.

    Attributes:
        static: the per-GPU resident components (gradients as at the optimizer step).
        communication: buffers resident through the step (DDP buckets, the ZeRO reduce bucket).
        gathered: unsharded parameters (and, while their backward runs, gradients) that exist
            during forward and backward only.
        host: offloaded bytes per rank on the CPU, by component.
        held_gradients: gradients held through forward and backward (unsharded accumulation
            under FSDP's no_sync), as opposed to ``static.gradients`` at the optimizer step.
    """

    static: StaticBytes
    communication: int = 0
    gathered: int = 0
    host: dict[str, int] = field(default_factory=dict)
    held_gradients: int = 0

    @property
    def host_bytes(self) -> int:
        return sum(self.host.values())


def _split(nbytes: int, n: int) -> int:
    return math.ceil(nbytes / n)


def unit_bytes(model: ModelSpec, train: TrainSpec, static: StaticBytes) -> tuple[int, int]:
    """(root, layer): bytes of the parameters outside the decoder layers (embeddings, final
    norm, untied head) and of one decoder layer, as stored (FSDP's wrapped units)."""
    other = FP32_BYTES if train.upcasts_to_fp32 else int(DTYPE_BYTES[train.dtype])
    top = sum(p.numel * (p.count or 1) for p in top_params(model))
    head = head_linear(model)
    if not model.tie_embeddings:
        top += head.weight_numel + (head.out_features if head.bias else 0)
    root = top * other
    return root, max(static.weights - root, 0) // model.num_layers


def accumulates_unsharded(train: TrainSpec, shard: ShardSpec) -> bool:
    """Whether FSDP runs the micro-batches before an optimizer step under ``no_sync``: each unit
    keeps its whole gradient and reduce-scatters once per step (every stack but
    :data:`FSDP_SYNC_EACH_MICRO_BATCH_STACKS`, which reduce-scatters every micro-batch)."""
    return (shard.fsdp and train.grad_accum > 1
            and train.stack not in FSDP_SYNC_EACH_MICRO_BATCH_STACKS)


def grads_frozen_weights(train: TrainSpec, shard: ShardSpec) -> bool:
    """Whether FSDP computes gradients for frozen weights: LoRA on a stack of
    :data:`FSDP_FROZEN_GRADIENT_STACKS`, which wraps each block, LoRA inside, under
    ``use_orig_params=True`` (the flat parameter requires a gradient, so every view of it gets
    one; torch ``fsdp/_flat_param.py``, ``_use_unsharded_views``)."""
    return shard.fsdp and train.method != "full" and train.stack in FSDP_FROZEN_GRADIENT_STACKS


def frozen_gradient_bytes(model: ModelSpec, train: TrainSpec, static: StaticBytes,
                          shard: ShardSpec) -> int:
    """Bytes of the gradients FSDP computes for frozen weights (:func:`grads_frozen_weights`):
    every decoder layer's."""
    if not grads_frozen_weights(train, shard):
        return 0
    return unit_bytes(model, train, static)[1] * model.num_layers


def largest_module_params(model: ModelSpec) -> int:
    """Elements of the largest single module (its own parameters, as DeepSpeed's
    ``model_to_params`` counts for ``largest_layer_params``)."""
    linears = [m.weight_numel + (m.out_features * max(m.experts, 1) if m.bias else 0)
               for m in block_linears(model)]
    embeddings = [p.numel for p in top_params(model) if p.kind == "embedding"]
    head = head_linear(model)
    return max(linears + embeddings + [head.weight_numel])


def shard_static(model: ModelSpec, train: TrainSpec, static: StaticBytes,
                 shard: ShardSpec) -> ShardedBytes:
    """One rank's weights, adapter, gradients, optimizer state and buffers under ``shard``.

    Args:
        model: the architecture (for the gathered units).
        train: the training step (dtypes, method, optimizer).
        static: the unsharded :func:`lorasize.memory.weights.static_bytes`.
        shard: GPUs, sharding and offload.

    Returns:
        The per-GPU :class:`ShardedBytes`; ``sharding="none"`` returns ``static`` unchanged.
    """
    if shard.sharding == "none":
        return ShardedBytes(static)
    if shard.sharding == "ddp":
        return ShardedBytes(static, communication=static.gradients)
    if shard.deepspeed:
        return _deepspeed(model, train, static, shard)
    return _fsdp(model, train, static, shard)


def _trainable_param_bytes(train: TrainSpec) -> int:
    return int(DTYPE_BYTES[train.dtype if train.method == "full" else train.adapter_dtype])


def _deepspeed(model: ModelSpec, train: TrainSpec, static: StaticBytes,
               shard: ShardSpec) -> ShardedBytes:
    n, stage = shard.gpus, shard.stage
    d = int(DTYPE_BYTES[train.dtype])
    full = train.method == "full"
    trainable = static.trainable_params
    param_bytes = _trainable_param_bytes(train)
    weights, adapter, optimizer = static.weights, static.adapter, static.optimizer
    if d < FP32_BYTES:
        # bf16/fp16 engine: the module is cast to the compute dtype; the optimizer holds the
        # fp32 master copy, fp32 gradients and fp32 state of its partition.
        if not full:
            adapter = adapter * d // param_bytes
        master, grads16, grads32 = FP32_BYTES * trainable, d * trainable, FP32_BYTES * trainable
        if train.optimizer in _STATE_IN_PARAM_DTYPE:
            optimizer = optimizer * FP32_BYTES // param_bytes
    else:
        master, grads16, grads32 = 0, static.gradients, 0
    master, grads32, optimizer = _split(master, n), _split(grads32, n), _split(optimizer, n)
    if stage >= 2:
        grads16 = _split(grads16, n)
    if stage == 3:
        weights, adapter = _split(weights, n), _split(adapter, n)
    grad_bytes = min(d, FP32_BYTES)
    communication = DEEPSPEED_REDUCE_BUCKET_SIZE * grad_bytes
    gathered = 0
    if stage == 3:
        largest = largest_module_params(model)
        _, layer = unit_bytes(model, train, static)
        gathered = largest * d + min(DEEPSPEED_PREFETCH_BUCKET_SIZE * d, layer)
        if full:
            gathered += largest * grad_bytes  # the module's unpartitioned gradient
    host: dict[str, int] = {}
    if shard.offload in ("optimizer", "params"):
        host = {"gradients": grads16 + grads32, "optimizer": optimizer + master}
        grads16 = grads32 = optimizer = master = 0
    if shard.offload == "params":
        host["weights"], host["adapter"] = weights, adapter
        weights = adapter = 0
    if full:
        weights += master
    else:
        adapter += master
    per_gpu = replace(static, weights=weights, adapter=adapter, gradients=grads16 + grads32,
                      optimizer=optimizer, optimizer_paged=_split(static.optimizer_paged, n))
    return ShardedBytes(per_gpu, communication=communication, gathered=gathered, host=host)


def _fsdp(model: ModelSpec, train: TrainSpec, static: StaticBytes,
          shard: ShardSpec) -> ShardedBytes:
    n = shard.gpus
    root, layer = unit_bytes(model, train, static)
    weights, adapter = _split(static.weights, n), _split(static.adapter, n)
    optimizer = _split(static.optimizer, n)
    if shard.sharding == "fsdp-grad-op":
        # SHARD_GRAD_OP keeps every unit gathered from its forward to the end of backward.
        gathered = static.weights
    else:
        gathered = root + FSDP_UNITS_IN_FLIGHT * layer
    # Gradients of every unit with a trainable parameter, whole; under LoRA on a stack that mixes
    # frozen and trainable parameters in a unit, each decoder layer's (the root unit is frozen).
    frozen = frozen_gradient_bytes(model, train, static, shard)
    unsharded = static.gradients + frozen
    gradients = _split(unsharded, n)
    held = unsharded if accumulates_unsharded(train, shard) else 0
    if not held and (train.method == "full" or frozen):
        # A unit's unsharded gradient lives until its reduce-scatter.
        gathered += layer
    host: dict[str, int] = {}
    if shard.offload == "params":
        host = {"weights": weights, "adapter": adapter, "gradients": gradients,
                "optimizer": optimizer}
        weights = adapter = gradients = optimizer = 0
    per_gpu = replace(static, weights=weights, adapter=adapter, gradients=gradients,
                      optimizer=optimizer, optimizer_paged=_split(static.optimizer_paged, n))
    return ShardedBytes(per_gpu, gathered=gathered, host=host, held_gradients=held)


def shard_notes(train: TrainSpec, shard: ShardSpec) -> tuple[str, ...]:
    """What the user should know about this setup (limits of the model, needed settings)."""
    if shard.sharding == "none":
        return ()
    notes = [f"per GPU, {shard.gpus} GPU(s) with {shard.sharding}; activations are per GPU "
             "micro-batch"]
    if shard.gpus == 1:
        notes.append(f"with one GPU {shard.sharding} divides nothing: it only adds its buffers")
    if shard.sharding == "ddp":
        notes.append("DDP keeps flat gradient buckets as large as the gradients "
                     "(gradient_as_bucket_view=False, its default; True saves them)")
    if shard.deepspeed:
        notes.append(f"DeepSpeed keeps a reduce bucket of reduce_bucket_size "
                     f"({DEEPSPEED_REDUCE_BUCKET_SIZE:.0e} elements by default; HF Trainer's "
                     "'auto' makes it hidden_size^2)")
        if int(DTYPE_BYTES[train.dtype]) < FP32_BYTES:
            notes.append("DeepSpeed casts the model (adapters included) to the compute dtype and "
                         "keeps fp32 master weights, gradients and optimizer state per partition")
    if shard.sharding == "zero3":
        notes.append("ZeRO-3 keeps parameters under stage3_param_persistence_threshold (1e5 "
                     "elements) whole on every GPU: not counted")
    if accumulates_unsharded(train, shard):
        notes.append("gradient accumulation under FSDP no_sync keeps every unit's whole, "
                     "unsharded gradient until the last micro-batch (accelerate's "
                     "sync_each_batch=True trades that memory for communication)")
    elif shard.fsdp and train.grad_accum > 1:
        notes.append(f"{train.stack} reduce-scatters every micro-batch's gradients under FSDP "
                     "and accumulates them sharded (no no_sync)")
    if grads_frozen_weights(train, shard):
        notes.append(f"{train.stack} wraps each block with LoRA inside under use_orig_params=True: "
                     "FSDP computes and keeps gradients for its frozen weights too")
    if train.quantized and shard.stage == 3:
        notes.append("sharding 4-bit weights needs bnb_4bit_quant_storage equal to the compute "
                     "dtype (e.g. torch.bfloat16); quantization constants stay whole on every GPU")
    if shard.offload != "none":
        notes.append(f"offloaded bytes are host (CPU) memory per GPU process; the node needs "
                     f"{shard.gpus} x that")
    return tuple(notes)


# Recipe files a measurement row names (its ``source_locator``) whose global batch the row does
# not state, as the file sets it: litgpt config_hub/finetune/tiny-llama/full.yaml @089fc5c
# (``global_batch_size: 32``, ``micro_batch_size: 4``).
RECIPE_GLOBAL_BATCH = {"config_hub/finetune/tiny-llama/full.yaml": 32}


def grad_accum_from_row(row: dict) -> int:
    """Micro-batches per optimizer step of a measurement CSV row, from its ``notes``: a stated
    "grad accum K", else a "global batch B" over ``batch_size`` x ``num_gpus``, else the global
    batch of the recipe file it names (:data:`RECIPE_GLOBAL_BATCH`), else 1."""
    text = (row.get("notes") or "").lower()
    stated = re.search(r"grad(?:ient)?[ _]accum(?:ulation)?(?:[ _]steps)?\s*[=:]?\s*(\d+)", text)
    if stated:
        return max(int(stated.group(1)), 1)
    total = re.search(r"global batch(?: size)?\s*[=:]?\s*(\d+)", text)
    batch = (row.get("batch_size") or "").strip()
    gpus = (row.get("num_gpus") or "1").strip() or "1"
    if not (batch.isdigit() and gpus.isdigit()):
        return 1
    if total:
        return max(int(total.group(1)) // (int(batch) * int(gpus)), 1)
    recipe = next((g for path, g in RECIPE_GLOBAL_BATCH.items()
                   if path in (row.get("source_locator") or "")), None)
    if recipe:
        return max(recipe // (int(batch) * int(gpus)), 1)
    return 1


def sharding_from_row(row: dict) -> ShardSpec:
    """The :class:`ShardSpec` of a measurement CSV row (``measurements/README.md`` columns),
    read from ``num_gpus`` and the row's ``notes``/``source_locator`` text.

    Raises:
        LorasizeError: a multi-GPU row whose sharding the text does not name.
    """
    gpus = int((row.get("num_gpus") or "1").strip() or 1)
    if gpus == 1:
        return ShardSpec()
    text = " ".join(row.get(k) or "" for k in ("notes", "source_locator", "optimizer_precision",
                                               "base_precision", "grad_checkpointing")).lower()
    offload = "params" if ("offload of params" in text or "offload_params true" in text
                           or "fsdp_offload_params" in text) else "none"
    if "zero-3" in text or "zero3" in text:
        return ShardSpec(gpus, "zero3", offload)
    if "zero-2" in text or "zero2" in text:
        return ShardSpec(gpus, "zero2")
    if "shard_grad_op" in text:
        return ShardSpec(gpus, "fsdp-grad-op")
    if "fsdp" in text or "full shard" in text or "full_shard" in text or "full-shard" in text:
        return ShardSpec(gpus, "fsdp", offload)
    if "ddp" in text:
        return ShardSpec(gpus, "ddp")
    raise LorasizeError(f"{gpus} GPUs without a named sharding", source="num_gpus")


def launch_commands(shard: ShardSpec, train: TrainSpec, script: str = "train.py") -> dict[str, str]:
    """Command lines that start ``shard``'s setup: ``accelerate`` (whose flags choose the
    sharding) and ``torchrun`` (the script then wraps the model itself: FSDP or
    ``deepspeed.initialize``)."""
    n = shard.gpus
    precision = {"bf16": "bf16", "fp16": "fp16"}.get(train.dtype, "no")
    if shard.deepspeed:
        flags = f"--use_deepspeed --zero_stage {shard.stage}"
        if shard.offload in ("optimizer", "params"):
            flags += " --offload_optimizer_device cpu"
        if shard.offload == "params":
            flags += " --offload_param_device cpu"
    elif shard.fsdp:
        strategy = "FULL_SHARD" if shard.sharding == "fsdp" else "SHARD_GRAD_OP"
        flags = (f"--use_fsdp --fsdp_sharding_strategy {strategy} "
                 "--fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP")
        if shard.offload == "params":
            flags += " --fsdp_offload_params true"
    else:
        flags = "--multi_gpu" if n > 1 else ""
    accelerate = " ".join(part for part in (
        f"accelerate launch --num_processes {n}", flags, f"--mixed_precision {precision}", script)
        if part)
    return {"accelerate": accelerate, "torchrun": f"torchrun --nproc-per-node {n} {script}"}
