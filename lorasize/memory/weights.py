"""Bytes of the model's own tensors: frozen base weights, quantization constants, trainable
weights, their gradients and optimizer state, each tensor rounded as the allocator rounds it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .allocator import block
from ..arch.layout import block_linears, block_params, copies, extra_linears, head_linear, top_params
from ..arch.lora import Target, importance_state_shapes, shared_tensors
from ..arch.model import ModelSpec
from .optimizers import OptimizerBytes, state_bytes
from .quant import quantized_bytes
from ..specs import TrainSpec
from .stacks import StackRules, builds_on_device, quantizes_only_targets, stack_rules
from ..arch.parts import base_path
from ..units import DTYPE_BYTES


@dataclass(frozen=True)
class StaticBytes:
    """Memory that lives through the whole step."""

    weights: int
    quant_constants: int
    adapter: int
    gradients: int
    optimizer: int
    optimizer_paged: int
    largest_quantized: int  # elements of the largest quantized matrix (dequantized in forward)
    base_params: int
    trainable_params: int
    # Bytes a dequantized weight takes while it exists: the largest quantized block matrix, and
    # the output head when the stack quantizes it (dequantized in the head's backward, right
    # after the loss's).
    dequant_bytes: int = 0
    head_dequant_bytes: int = 0


def _frozen_dtype_bytes(train: TrainSpec) -> int:
    """Bytes per element of the parameters that stay unquantized."""
    return DTYPE_BYTES["fp32"] if train.upcasts_to_fp32 else int(DTYPE_BYTES[train.dtype])


def _tensors(spec: ModelSpec, only: frozenset[str] | None = None,
             rules: StackRules = StackRules()):
    """(shape, out_features, quantizable, count) for every base tensor; weight and bias apart,
    the head last. ``only``: when given, the module paths that may be quantized (torchtune's
    rule); ``rules``: the stack's head rules (quantized, untied)."""
    for linear in block_linears(spec) + extra_linears(spec):
        experts = (linear.experts,) if linear.experts else ()
        quantizable = linear.quantizable and (only is None or linear.path in only)
        count = copies(spec, linear)
        if experts and quantizable:  # transformers 4: an nn.Linear per expert
            yield (linear.out_features, linear.in_features), linear.out_features, True, \
                count * linear.experts
            continue
        yield (*experts, linear.out_features, linear.in_features), linear.out_features, \
            quantizable, count
        if linear.bias:
            yield (*experts, linear.out_features), 0, False, count
    for param in block_params(spec):
        yield (param.numel,), 0, False, param.count or spec.num_layers
    for param in top_params(spec):
        yield (param.numel,), 0, False, param.count or 1
    head = head_linear(spec)
    if not spec.tie_embeddings or rules.untied_head:
        yield (head.out_features, head.in_features), head.out_features, rules.quantize_head, 1
    if head.bias:
        yield (head.out_features,), 0, False, 1


def static_bytes(spec: ModelSpec, targets: tuple[Target, ...], train: TrainSpec,
                 dora: bool = False) -> StaticBytes:
    """Weights, constants, trainable weights, gradients and optimizer state of one model."""
    weights = constants = base_params = largest = head_quantized = 0
    other = _frozen_dtype_bytes(train)
    rules = stack_rules(train.stack)
    # (a part adapted apart, torchtune's q_proj of Phi-3, quantizes the fused module holding it)
    only = (frozenset(base_path(t.linear) for t in targets)
            if quantizes_only_targets(train.stack, train.stack_release) else None)
    head = head_linear(spec)
    head_shape = (head.out_features, head.in_features)
    # the embeddings and the head (recast to the compute dtype after kbit preparation)
    embedding_shapes = {head_shape, (spec.vocab_size * spec.hidden_size,)}
    head_bytes = int(DTYPE_BYTES[train.head_dtype])
    for shape, out_features, quantizable, count in _tensors(spec, only, rules):
        numel = _numel(shape)
        base_params += numel * count
        if train.quantized and quantizable:
            q = quantized_bytes(numel, out_features, train.quant_type, train.double_quant)
            weights += q.weight * count
            constants += q.constants * count
            if count == 1 and shape == head_shape and rules.quantize_head:
                head_quantized = numel
            else:
                largest = max(largest, numel)
        else:
            width = head_bytes if shape in embedding_shapes and not quantizable else other
            weights += block(numel * width) * count
    if train.method == "full":
        shapes = [(shape, count) for shape, _, _, count in _tensors(spec, None, rules)]
        param_bytes = int(DTYPE_BYTES[train.dtype])
        trainable = base_params
        adapter = 0
        gradients = weights
    else:
        # A vision tower's adapters (PEFT's all-linear on a multimodal checkpoint) train in
        # name only: text-only steps never run the tower, so they get no gradient and torch's
        # optimizers make no state for them.
        resident = [(shape, target.copies, target.trainable(name)
                     and target.linear.group != "vision")
                    for target in targets for name, shape in target.tensors(dora)]
        resident += [(shape, 1, False) for _, shape in shared_tensors(targets)]
        param_bytes = int(DTYPE_BYTES[train.adapter_dtype])
        shapes = [(shape, count) for shape, count, trains in resident if trains]
        trainable = sum(_numel(shape) * target.copies for target in targets
                        for name, shape in target.tensors(dora) if target.trainable(name))
        adapter = sum(block(_numel(shape) * param_bytes) * count for shape, count, _ in resident)
        gradients = sum(block(_numel(shape) * param_bytes) * count for shape, count in shapes)
    optimizer = OptimizerBytes()
    for shape, count in shapes:
        one = state_bytes(train.optimizer, shape, param_bytes)
        optimizer += OptimizerBytes(one.device * count, one.paged * count)
    if train.method != "full":  # AdaLoRA's importance scores (lora.importance_state_shapes)
        optimizer += OptimizerBytes(sum(block(_numel(shape) * param_bytes) * count
                                        for shape, count in importance_state_shapes(targets)))
    dequant_per_element = int(DTYPE_BYTES[train.dtype]) + rules.dequant_bytes_extra
    if train.dequantizes_to_fp32:  # bitsandbytes before 0.47: the 16-bit weight's fp32 copy
        dequant_per_element += int(DTYPE_BYTES["fp32"])
    if builds_on_device(train.stack, train.stack_release):
        from .init_programs import dequant_peak_per_element  # torchao 0.1's dequantization

        dequant_per_element = dequant_peak_per_element()
    return StaticBytes(weights=weights, quant_constants=constants, adapter=adapter,
                       gradients=gradients, optimizer=optimizer.device,
                       optimizer_paged=optimizer.paged, largest_quantized=largest,
                       base_params=base_params, trainable_params=trainable,
                       dequant_bytes=math.ceil(dequant_per_element * largest),
                       head_dequant_bytes=math.ceil(dequant_per_element * head_quantized))


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total
