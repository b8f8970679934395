"""The analytic estimate: trainable parameters, adapter file size, training memory as a
breakdown, and serving capacity. Torch-free; every number is a sum of named components.

Peak of a training step (steady state, the second step, optimizer state present). Autograd frees
activations as backward walks down the layers while gradients appear, so the peak of allocated
bytes is the largest of these moments:

1. the loss's backward (``log_softmax_backward``): static tensors, every saved activation, and
   the fp32 log-softmax output with its two gradients;
2. a layer's backward: static tensors, what is saved (with gradient checkpointing: every layer's
   input and one recomputed layer), and the larger of its gradient transients and, in QLoRA, one
   dequantized weight (they do not coexist: the weight is dequantized inside one matmul);
3. the optimizer step: static tensors, every gradient, and the step's temporaries;
4. litgpt QLoRA on bitsandbytes <= 0.43.1, unless the peak micro-batch is the run's first: the
   end of the next forward, with every saved activation, the previous micro-batch's
   quantized-linear inputs (``MatMul4Bit`` keeps them on its ``ctx``, which outlives backward
   while litgpt still references the previous logits) and both micro-batches' logits.

Then ``reserved = allocated + allocator reserve`` (``max_memory_reserved``) and the device total
adds the CUDA context and paged optimizer state (what nvidia-smi shows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .memory import activations as act
from .memory.allocator import SMALL_SEGMENT_BYTES, block, cublas_workspace_bytes
from .errors import LorasizeError
from .gpu import PRE_AMPERE, GpuSpec
from .arch.layout import block_linears, copy_layers, head_linear, module_path, top_params
from .arch.lora import (LoraSpec, Target, delta_weight_transient_bytes, dora_forward_transient, first_adapted_layer,
                        input_grad_saved_bytes, resolve_targets, shared_tensors)
from .arch.model import ModelSpec
from .memory.optimizers import step_temporary_bytes
from .arch.safetensors_format import DTYPE_TO_SAFETENSORS, PEFT_METADATA, file_bytes
from .memory.calibrated import Calibration, default_calibration
from .memory.sharding import ShardSpec, shard_notes, shard_static
from .memory.init_programs import applies, build_replay, training_reserved
from .memory.stacks import (EXPERT_MODULE_MODEL_TYPES, as_built, builds_on_device,
                            expands_gqa_for_attention, stack_rules)
from .specs import ServeSpec, TrainSpec
from .units import DTYPE_BYTES, format_bytes, round_up
from .memory.weights import StaticBytes, static_bytes

BREAKDOWN_KEYS = (
    "weights", "quant_constants", "adapter", "gradients", "optimizer", "activations", "logits",
    "temporaries", "communication", "allocator", "cuda_context", "paged_optimizer",
)
ALLOCATED_KEYS = BREAKDOWN_KEYS[:9]


@dataclass(frozen=True)
class Estimate:
    """Everything ``lorasize estimate`` reports. Byte counts are integers.

    ``breakdown`` holds the components at the peak, in :data:`BREAKDOWN_KEYS` order; they sum to
    ``peak_bytes``, the first nine to ``allocated_bytes``. With a :class:`ShardSpec` every byte
    count is one GPU's, and ``host_breakdown`` holds what is offloaded to the CPU per GPU.
    """

    model: ModelSpec
    lora: LoraSpec
    train: TrainSpec
    targets: tuple[Target, ...]
    base_params: int
    trainable_params: int
    adapter_file_bytes: int
    breakdown: dict[str, int]
    allocated_bytes: int
    reserved_bytes: int
    peak_bytes: int
    peak_moment: str
    phase_peaks: dict[str, int]
    gpu: GpuSpec | None = None
    serve: ServeSpec | None = None
    adapters_fit: int | None = None
    adapter_serve_bytes: int = 0
    serve_base_bytes: int = 0
    serving: object | None = None  # lorasize.serving.serve.ServingCapacity
    dynamic_bytes: int = 0  # memory that comes and goes within the step (for calibration)
    calibration: Calibration | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    shard: ShardSpec = field(default_factory=ShardSpec)
    host_breakdown: dict[str, int] = field(default_factory=dict)

    @property
    def host_bytes(self) -> int:
        """Bytes offloaded to host (CPU) memory per GPU process."""
        return sum(self.host_breakdown.values())

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / max(self.base_params, 1)

    @property
    def fits(self) -> bool | None:
        return None if self.gpu is None else self.peak_bytes <= self.gpu.memory_bytes

    @property
    def headroom_bytes(self) -> int | None:
        return None if self.gpu is None else self.gpu.memory_bytes - self.peak_bytes

    def to_dict(self) -> dict:
        """The JSON object of ``estimate --json`` (keys per DESIGN.md)."""
        return {
            "model": self.model.name,
            "model_source": self.model.source,
            "method": self.train.method,
            "quant": self.train.quant_type,
            "r": self.lora.r if self.train.method != "full" else None,
            "targets": sorted({t.linear.name for t in self.targets}),
            "stack": self.train.stack,
            "stack_release": self.train.stack_release or None,
            "bnb_release": self.train.bnb_release or None,
            "padded": self.train.padded,
            "trainable_params": self.trainable_params,
            "base_params": self.base_params,
            "trainable_percent": round(self.trainable_percent, 4),
            "adapter_file_bytes": self.adapter_file_bytes,
            "train_allocated_bytes": self.allocated_bytes,
            "train_reserved_bytes": self.reserved_bytes,
            "train_peak_bytes": self.peak_bytes,
            "train_breakdown": dict(self.breakdown),
            "peak_moment": self.peak_moment,
            "phase_peaks": dict(self.phase_peaks),
            "gpu": self.gpu.name if self.gpu else None,
            "gpu_memory_bytes": self.gpu.memory_bytes if self.gpu else None,
            "fits": self.fits,
            "headroom_bytes": self.headroom_bytes,
            "adapters_fit": self.adapters_fit,
            "adapter_serve_bytes": self.adapter_serve_bytes,
            "gpus": self.shard.gpus,
            "sharding": self.shard.sharding,
            "offload": self.shard.offload,
            "host_offload_bytes": self.host_bytes,
            "host_breakdown": dict(self.host_breakdown),
            "notes": list(self.notes),
        }


def adapter_file_bytes(model: ModelSpec, targets: tuple[Target, ...], dtype: str = "fp32",
                       dora: bool = False, head_dtype: str = "bf16") -> int:
    """Bytes of ``adapter_model.safetensors`` as PEFT's ``save_pretrained`` writes it.

    PEFT names each tensor ``base_model.model.<module path>.lora_A.weight`` (the adapter name is
    dropped) and saves in the dtype the weights have (fp32 unless cast). When ``lm_head`` is a
    target, PEFT also saves the whole output embedding (``save_embedding_layers="auto"`` in
    ``get_peft_model_state_dict``), in the base model's dtype ``head_dtype``.
    """
    st_dtype = DTYPE_TO_SAFETENSORS[dtype]
    tensors = []
    if any(target.linear.group == "head" for target in targets):
        tensors.append(("base_model.model.lm_head.base_layer.weight",
                        DTYPE_TO_SAFETENSORS[head_dtype], (model.vocab_size, model.hidden_size)))
    for target in targets:
        for layer in copy_layers(target.linear, target.copies):
            path = module_path(model, target.linear, layer)
            for name, shape in target.tensors(dora):
                suffix = target.saved_key(name)
                if suffix is not None:
                    tensors.append((f"base_model.model.{path}.{suffix}", st_dtype, shape))
    # VeRA's shared projections (save_projection=True, PEFT's default) sit at the top.
    tensors += [(f"base_model.{name}", st_dtype, shape) for name, shape in shared_tensors(targets)]
    return file_bytes(tensors, PEFT_METADATA)


def _activation_moments(model: ModelSpec, targets: tuple[Target, ...], lora: LoraSpec,
                        train: TrainSpec, static: StaticBytes,
                        measured: dict | None = None) -> dict[str, dict[str, int]]:
    """The candidate peaks, each as activations / logits / temporaries bytes. ``measured``:
    bytes one layer of a card's kind keeps, from the layer probe, for kinds without a formula."""
    measured = measured or {"kinds": {}, "tokens": 0}
    d = int(DTYPE_BYTES[train.dtype])
    # prepare_model_for_kbit_training makes embeddings, norms and head fp32: the residual stream
    # is fp32, and bitsandbytes returns its matmuls in the input's dtype, so every activation is.
    dt = act.Dtypes(compute=act.FP32, residual=act.FP32, norm_out=act.FP32, adapter=act.FP32) \
        if train.upcasts_to_fp32 else act.Dtypes(compute=d, residual=d, norm_out=d,
                                                 adapter=int(DTYPE_BYTES[train.adapter_dtype]))
    full = train.method == "full"
    tokens = train.tokens
    dropout = lora.dropout > 0 and not full
    dora = lora.dora and not full
    # One term per kind of decoder layer (one for the hand-written families, whose layers are
    # all alike): bytes one layer saves, per token and whatever the token count.
    views = act.kind_views(model, targets)
    # what one layer of each kind saves, by part
    parts = [act.layer_bytes_per_token(view.spec, view.targets, dt, seq_len=train.seq_len,
                                       attn=train.attn, full=full, dropout=dropout,
                                       stack=train.stack, quantized=train.quantized, dora=dora,
                                       release=train.stack_release, autocast=train.autocast,
                                       padded=train.padded)
             for view in views]
    kinds = [(_layers_needing_grad(model, view, targets, full),
              *_probed_bytes(measured, view, dt, tokens))
             if _kind_name(view) in measured["kinds"] else
             (view.layers, layer.total, act.layer_constant_bytes(view.spec, view.targets, dt))
             for view, layer in zip(views, parts)]
    mask = act.attention_mask_bytes(model, dt, train.batch_size, train.seq_len, train.attn,
                                    train.padded, train.stack, train.stack_release)
    # LoHa/LoKr delta weights (AdaLoRA's A * E) kept for the input's gradient (lora.py).
    delta = input_grad_saved_bytes(model, targets, dt.adapter, dora_dropout=dora and dropout)
    all_layers = sum(n * (layer * tokens + constant) for n, layer, constant in kinds) \
        + delta.per_layer * model.num_layers
    one_layer = max(layer * tokens + constant for _, layer, constant in kinds) + delta.per_layer
    head = next((t for t in targets if t.linear.group == "head"), None)
    top = act.top_bytes_per_token(model, dt, full, head, stack=train.stack,
                                  quantized=train.quantized, dropout=dropout) * tokens
    logits = act.logits_peak_bytes_per_token(model, train.stack, dt.compute,
                                             train.stack_release) * tokens \
        + act.loss_chunk_bytes(model, train.stack, dt.compute, train.batch_size, train.seq_len)
    if "loss_saved_per_token" in measured:
        # the compiled loss: what Inductor's partitioner saves for every chunk, and the gradient
        # of one chunk (lorasize.trace.compiled)
        chunk = math.ceil(tokens * measured["loss_chunk_tokens"] / measured["tokens"])
        logits = measured["loss_saved_per_token"] * tokens \
            + measured["loss_gradient_per_token"] * chunk
    transient = max(act.layer_backward_transient_per_token(view.spec, dt) for view in views) * tokens
    if not full and not dropout and dt.adapter == dt.compute and len(views) == 1:
        # An adapter on the MLP's output projection that saves its input as is (no dropout, no
        # cast) has freed it by the time the MLP's own gradients are made.
        transient -= act.saved_output_projection_input_per_token(views[0].spec, views[0].targets,
                                                                 dt) * tokens
    # bitsandbytes' MatMul4Bit dequantizes one weight to the compute dtype inside each matmul
    # (the input is cast to it first, the output back afterwards). A quantized head is
    # dequantized in its backward, right after the loss's, with every activation alive.
    dequant = static.dequant_bytes
    if dequant and stack_rules(train.stack).matmul_copies and len(views) == 1:
        dequant = _dequant_matmul_bytes(model, dt, d, static, tokens, parts[0].mlp * tokens,
                                        adapted={t.linear.path for t in targets},
                                        dropout=dropout, checkpointing=train.checkpointing)
    # PEFT's ParamWrapper differentiates W + BA as a whole: backward makes a gradient the size of
    # a stacked expert weight before reducing it onto A and B. The first one backward meets, while
    # every activation is still alive, is the last expert matrix of the forward.
    last_expert = next((t for t in reversed(targets) if t.linear.experts
                        and not model.expert_modules), None)
    expert_gradient = d * last_expert.linear.weight_numel if last_expert else 0
    temporaries = max(transient, dequant, expert_gradient,
                      delta_weight_transient_bytes(targets, dt.adapter))
    attention_transient = act.attention_backward_transient(
        model, dt, train.batch_size, train.seq_len, train.attn,
        expands_gqa_for_attention(train.stack, train.stack_release), train.autocast) \
        if model.card is None else 0
    if attention_transient:
        up_to_attention = _layer_up_to(views, None, dt, train, dropout, dora) * tokens
        one_layer_total = sum(layer * tokens for _, layer, _ in kinds[:1])
    # DoRA's weight norm runs in every forward, the recompute's included.
    dora_norm, dora_at = dora_forward_transient(
        targets, dt.adapter, 0 if train.quantized else int(DTYPE_BYTES[train.dtype])) \
        if dora else (0, None)
    layer_grads, head_grads, mlp_out_grads = _backward_gradient_bytes(model, targets, lora, train,
                                                                      static.gradients)
    # The MLP's gradient transients exist once its output projection has run backward, and so
    # does that projection's adapter gradient.
    partial = mlp_out_grads if temporaries == transient else 0
    if train.checkpointing:
        checkpoint = act.checkpoint_bytes_per_token(model, dt) * tokens
        kept = checkpoint * model.num_layers + top + delta.head
        if train.upcasts_to_fp32 and train.recast_embeddings:
            # the first layer's input is the recast embeddings' 16-bit output; the fp32 norms'
            # outputs make the residual stream fp32 from its first addition on
            kept -= (dt.residual - d) * model.hidden_size * tokens
        recompute = one_layer + mask \
            - min(act.input_norm_alias_bytes_per_token(view.spec, dt) for view in views) * tokens
        moments = {
            # the attention mask the forward built lives until the last layer's backward (the
            # checkpointed layers hold it as an input)
            "loss backward": {"activations": kept + mask, "logits": logits, "temporaries": 0},
            # the head's and the final norm's saved tensors are freed before any layer's backward
            "layer backward (recompute)": {
                "activations": kept - top - delta.head + recompute, "logits": 0,
                "temporaries": temporaries,
                "gradients": head_grads + partial},
            # The first layer, last in backward: one checkpoint left, every other layer's
            # adapter gradients already accumulated.
            "first layer backward (recompute)": {
                "activations": checkpoint + recompute, "logits": 0, "temporaries": temporaries,
                "gradients": head_grads + layer_grads * (model.num_layers - 1) + partial},
        }
        if attention_transient:
            # a layer's attention backward (the last layer's, first in backward): the MLP's
            # saved tensors and gradients already freed, the s x s gradients made
            moments["attention backward (recompute)"] = {
                "activations": kept - top - delta.head + mask + up_to_attention, "logits": 0,
                "temporaries": attention_transient, "gradients": head_grads}
        if dora_norm:
            # the last layer's recompute at its largest DoRA matrix: what the layer saves
            # before that matrix is made again
            before = _layer_up_to(views, dora_at, dt, train, dropout, True) * tokens
            moments["recompute (DoRA weight norm)"] = {
                "activations": kept + mask + before, "logits": 0, "temporaries": dora_norm,
                "gradients": head_grads}
    else:
        saved = all_layers + top + mask
        saved += delta.head - delta.first_layer_unsaved
        if not full:
            # The first layer's input does not require grad (frozen embeddings): the norms that
            # read it save nothing, nor does a parallel block's MLP without an adapter.
            saved -= act.first_layer_unsaved_bytes_per_token(views[0].spec, views[0].targets,
                                                             dt, parts[0]) * tokens
        moments = {
            "loss backward": {"activations": saved, "logits": logits, "temporaries": 0},
            "layer backward": {"activations": saved, "logits": 0, "temporaries": temporaries,
                               "gradients": head_grads + partial},
        }
        if attention_transient:
            # the last layer's attention backward: its MLP part already freed
            moments["attention backward"] = {
                "activations": saved - (one_layer_total - up_to_attention), "logits": 0,
                "temporaries": attention_transient, "gradients": head_grads}
        if dora_norm:
            # the last layer's weight norm, every earlier layer's activations saved (and the
            # last layer's, an upper bound)
            moments["forward (DoRA weight norm)"] = {"activations": saved, "logits": 0,
                                                     "temporaries": dora_norm}
        if train.quantized and not full and not train.first_micro_batch:
            # litgpt + bitsandbytes <= 0.43.1: the previous micro-batch's quantized-linear inputs
            # (kept on MatMul4Bit's ctx) and logits live until the next forward returns
            # (StackRules.previous_inputs_alive); the micro-batch before the peak one is taken to
            # be as long.
            # Two moments: the head's last chunk (its weight dequantized, the new logits still
            # 16-bit) and the cast of the new logits (both dtypes alive).
            previous = act.previous_inputs_bytes_per_token(model, dt, train.stack) * tokens
            if previous:
                moments["next forward, head"] = {
                    "activations": saved + previous,
                    "temporaries": static.head_dequant_bytes or dequant,
                    "logits": act.next_forward_logits_bytes_per_token(
                        model, train.stack, dt.compute, converting=False) * tokens}
                moments["next forward end"] = {
                    "activations": saved + previous, "temporaries": 0,
                    "logits": act.next_forward_logits_bytes_per_token(
                        model, train.stack, dt.compute) * tokens}
    loss_forward = act.loss_forward_bytes_per_token(
        model, train.stack, int(DTYPE_BYTES[train.head_dtype]), train.stack_release) * tokens
    if loss_forward and "loss_saved_per_token" not in measured:
        # transformers 4's loss keeps more alive in its forward than in its backward
        moments["loss forward"] = dict(moments["loss backward"], logits=loss_forward)
    held = act.held_logits_bytes_per_token(model, train.stack, train.stack_release) * tokens
    for moment in moments.values():
        moment["logits"] = max(moment["logits"], held)
    grads_and_step = static.gradients + step_temporary_bytes(train.optimizer, static.optimizer)
    if static.head_dequant_bytes:
        # A quantized head (litgpt) is dequantized in its backward, after the loss's: every
        # activation is still alive, and so are the logits and their 16-bit gradients.
        moments["head backward"] = dict(
            moments["loss backward"], temporaries=static.head_dequant_bytes,
            logits=act.head_backward_logits_bytes_per_token(model, train.stack, dt.compute) * tokens)
    if full:
        moments["embedding backward"] = _embedding_backward_moment(model, train, static.gradients)
    moments["optimizer step"] = {"activations": 0, "logits": 0, "temporaries": grads_and_step}
    return moments


def _dequant_matmul_bytes(model: ModelSpec, dt: act.Dtypes, compute: int, static: StaticBytes,
                          tokens: int, mlp_saved: int, *, adapted: set[str], dropout: bool,
                          checkpointing: bool) -> int:
    """The temporaries of a layer's 4-bit matmuls at their largest, beside what the layer saves
    (:attr:`StackRules.matmul_copies`): the weight one dequantizes, its input and product, and
    their casts between fp32 activations (kbit preparation) and the compute dtype.

    - The MLP's output projection runs last in a layer's forward and recompute, and first in
      its backward: every saved tensor is alive. Forward it
      holds its input (unless saved anyway), the input's cast and the product; backward the
      incoming gradient, its cast and the input's gradient. The recompute stops once every saved
      tensor is made again (``torch.utils.checkpoint``'s early stop), so it runs an output
      projection without an adapter only in backward.
    - A larger matrix that feeds the MLP (Phi-3's fused ``gate_up_proj``) runs before the MLP's
      intermediates exist (forward, recompute) and after they are freed (backward), less them
      (``mlp_saved``): forward its input (unless saved), cast and product; backward its
      output's gradient and cast, the input's gradient and the residual stream's gradient."""
    quantized = [m for m in block_linears(model) if m.quantizable and not m.experts]
    if not quantized or not static.largest_quantized:
        return static.dequant_bytes
    per_element = static.dequant_bytes / static.largest_quantized
    cast = dt.compute != compute
    incoming = dt.residual * model.hidden_size  # the gradient of the layer's output

    def forward(m, input_saved: bool) -> int:
        return compute * (m.out_features + (m.in_features if cast else 0)) \
            + (0 if input_saved else dt.compute * m.in_features)

    out = act.mlp_output_projection(model)
    if out is None or not out.quantizable:  # experts instead of a dense MLP: its widest input
        out = max(quantized, key=lambda m: (m.in_features, m.weight_numel))
    own_input = out.path in adapted and not dropout  # its adapter saves the input as is
    backward = compute * (out.in_features + (out.out_features if cast else 0)) + incoming
    if checkpointing:
        copies = max(backward, forward(out, own_input) + incoming if out.path in adapted else 0)
    else:
        copies = max(backward, forward(out, own_input))
    moments = [math.ceil(per_element * out.weight_numel) + copies * tokens]
    largest = max(quantized, key=lambda m: m.weight_numel)
    if largest.weight_numel > out.weight_numel:
        saves_input = largest.path in adapted and not dropout
        ahead = forward(largest, saves_input) + (incoming if checkpointing else 0)
        # backward: its output's gradient and that gradient's cast, the input's gradient, and
        # the residual stream's gradient waiting for the MLP's
        behind = (dt.compute + (compute if cast else 0)) * largest.out_features \
            + compute * largest.in_features + incoming
        if saves_input:
            behind -= dt.compute * largest.in_features  # its adapter ran first and freed it
        # the output projection's adapter input is one of the MLP's intermediates too
        later = dt.compute * out.in_features if own_input else 0
        moments.append(math.ceil(per_element * largest.weight_numel)
                       + (max(ahead, behind) - later) * tokens - mlp_saved)
    return max(moments)


def _layer_up_to(views, at: Target | None, dt, train: TrainSpec, dropout: bool,
                 dora: bool) -> int:
    """Bytes per token one layer has saved up to its attention (``at`` None, or an attention
    matrix): the input norm, attention and the attention adapters; up to an MLP matrix: all
    but the MLP's own. The recompute makes them again in that order, and backward frees the
    MLP's before it reaches attention."""
    view = next((v for v in views if at is not None and at in v.targets), views[0])

    def saved(targets):
        return act.layer_bytes_per_token(view.spec, targets, dt, seq_len=train.seq_len,
                                         attn=train.attn, full=train.method == "full",
                                         dropout=dropout, stack=train.stack,
                                         quantized=train.quantized, dora=dora,
                                         release=train.stack_release, autocast=train.autocast,
                                         padded=train.padded)

    layer = saved(view.targets)
    if at is None or at.linear.group == "attn":
        attn = tuple(t for t in view.targets if t.linear.group == "attn")
        return layer.norms // 2 + layer.attention + saved(attn).lora
    return layer.total - layer.mlp


def _backward_gradient_bytes(model: ModelSpec, targets: tuple[Target, ...], lora: LoraSpec,
                             train: TrainSpec, gradients: int) -> tuple[int, int, int]:
    """Gradient bytes that backward accumulates: per decoder layer, on the head (made first, by
    the loss's backward), and on one layer's MLP output projection (the first module a layer's
    backward meets). ``gradients``: the whole model's (full fine-tuning).

    Full fine-tuning: the head's weight gradient exists from the loss's backward on (tied to the
    embeddings, it waits in the autograd engine's input buffer for the embedding's share, the
    same bytes), every layer's once its backward has run (the mean layer's share of what the
    blocks hold)."""
    if train.method == "full":
        d = int(DTYPE_BYTES[train.dtype])
        head = _head_gradient_bytes(model, d)
        blocks = gradients - _top_gradient_bytes(model, d)
        mlp_out = max((block(t.weight_numel * d) for t in block_linears(model)
                       if t.group == "mlp" and not t.experts
                       and t.out_features == model.hidden_size), default=0)
        return blocks // model.num_layers, head, mlp_out
    param_bytes = int(DTYPE_BYTES[train.adapter_dtype])
    dora = lora.dora

    def grads(target: Target) -> int:
        return sum(block(math.prod(shape) * param_bytes)
                   for name, shape in target.tensors(dora) if target.trainable(name))

    per_layer = sum(grads(t) for t in targets if t.linear.group != "head")
    if model.card is not None:  # layers differ: the mean layer's (vision adapters get none)
        per_layer = sum(grads(t) * t.copies for t in targets
                        if t.linear.group not in ("head", "vision")) // model.num_layers
    head = sum(grads(t) for t in targets if t.linear.group == "head")
    mlp_out = sum(grads(t) for t in targets if t.linear.group == "mlp" and not t.linear.experts
                  and t.linear.out_features == model.hidden_size)
    return per_layer, head, mlp_out


def _head_gradient_bytes(model: ModelSpec, param_bytes: int) -> int:
    """The output head's weight gradient (and its bias's)."""
    head = head_linear(model)
    return block(head.weight_numel * param_bytes) + (
        block(head.out_features * param_bytes) if head.bias else 0)


def _top_gradient_bytes(model: ModelSpec, param_bytes: int) -> int:
    """Gradients of the parameters outside the blocks: embeddings, final norm and an untied
    head (a tied head is the embedding, counted once, as the model's gradients count it)."""
    top = sum(block(p.numel * param_bytes) * (p.count or 1) for p in top_params(model))
    return top + (0 if model.tie_embeddings else _head_gradient_bytes(model, param_bytes))


def _embedding_backward_moment(model: ModelSpec, train: TrainSpec, gradients: int) -> dict:
    """Full fine-tuning's last backward op, the embedding's: every other gradient made, the
    embedding's made too, and the gradient of the embedding output still alive. A tied head's
    share waits in the engine's input buffer until the embedding's arrives; the engine adds
    them in place (``accumulate`` in torch/csrc/autograd/input_buffer.cpp: ``old_var.add_(var)``
    when ``can_accumulate_inplace``), so the two shares are one weight gradient more than the
    model's."""
    d = int(DTYPE_BYTES[train.dtype])
    extra = _head_gradient_bytes(model, d) if model.tie_embeddings else 0
    return {"activations": train.tokens * model.hidden_size * d, "logits": 0, "temporaries": 0,
            "gradients": gradients + extra}


def _step_tensors(model: ModelSpec, train: TrainSpec, activations: int, logits: int,
                  temporaries: int) -> list[int]:
    """The step's tensors at its peak as the allocator meets them: activations in blocks of one
    layer input (a checkpoint), logits in blocks of one fp32 vocabulary-wide tensor, the
    temporaries as one block."""
    tensors = []
    for total, size in ((activations, train.tokens * model.hidden_size * int(DTYPE_BYTES[train.dtype])),
                        (logits, train.tokens * model.vocab_size * 4)):
        whole, rest = divmod(int(total), int(size))
        tensors += [int(size)] * whole + ([rest] if rest else [])
    return tensors + ([int(temporaries)] if temporaries else [])


def estimate(model: ModelSpec, lora: LoraSpec | None = None, train: TrainSpec | None = None,
             gpu: GpuSpec | None = None, serve: ServeSpec | None = None,
             adapter_dtype: str = "fp32", calibration: Calibration | None = None,
             shard: ShardSpec | None = None) -> Estimate:
    """Estimate parameters, adapter size, training memory and serving capacity.

    Args:
        model: the architecture.
        lora: the adapter (ignored for ``method="full"``); defaults to r=8 on q and v.
        train: the training step; defaults to bf16 LoRA, batch 1, 512 tokens.
        gpu: the GPU to check the fit against, if any.
        serve: serving settings for ``adapters_fit`` (needs ``gpu``).
        adapter_dtype: dtype the adapter is saved in.
        calibration: overhead terms; built-in defaults if None.
        shard: GPUs, sharding and offload (:mod:`lorasize.memory.sharding`); one GPU if None. Every
            byte count is then one GPU's.

    Raises:
        LorasizeError: a target the model lacks, r too large, inconsistent settings.
    """
    lora = lora or LoraSpec()
    train = train or TrainSpec()
    attention_note: tuple[str, ...] = ()
    runs = act.runs_attention(model, train.attn, train.stack, train.stack_release)
    if runs != train.attn:
        train = replace(train, attn=runs)
        attention_note = (f"{model.name}: transformers has no SDPA path for this model "
                          f"(Gemma 2's soft-capping, gpt-oss's attention sinks), so it runs eager "
                          f"attention: estimated with --attn eager (flash-attn 2 supports it: "
                          f"--attn flash)",)
    if calibration is None:
        calibration = default_calibration()
    model = as_built(model, train)
    targets = () if train.method == "full" else resolve_targets(model, lora, train.stack)
    dora = lora.dora and train.method != "full"
    shard = shard or ShardSpec()
    sharded = shard_static(model, train, static_bytes(model, targets, train, dora), shard)
    static = sharded.static
    measured, probe_note = _probe_layers(model, lora, train)
    moments = _activation_moments(model, targets, lora, train, static, measured)
    for name, parts in moments.items():
        # Gathered parameters and accumulated unsharded gradients exist in forward and
        # backward, not at the optimizer step.
        parts["communication"] = 0 if name == "optimizer step" else sharded.gathered
        if name != "optimizer step" and sharded.held_gradients:
            parts["gradients"] = parts.get("gradients", 0) + sharded.held_gradients
        if name != "optimizer step" and train.grad_accum > 1:
            # Micro-batches after the first run forward and backward with every gradient of the
            # earlier ones alive (AccumulateGrad adds into .grad in place): no more activations.
            parts["gradients"] = max(parts.get("gradients", 0), static.gradients)
    resident = {"weights": static.weights, "quant_constants": static.quant_constants,
                "adapter": static.adapter, "optimizer": static.optimizer,
                "communication": sharded.communication}
    workspace = cublas_workspace_bytes(gpu.arch if gpu else None)
    phase_peaks = {}
    for name, parts in moments.items():
        phase_peaks[name] = sum(resident.values()) + sum(parts.values()) + workspace
    peak_moment = max(phase_peaks, key=phase_peaks.get)
    parts = moments[peak_moment]
    gradients = parts.get("gradients", 0)
    temporaries = parts["temporaries"] + workspace
    if peak_moment == "optimizer step":
        gradients = static.gradients
        temporaries -= static.gradients
    breakdown = dict.fromkeys(BREAKDOWN_KEYS, 0)
    breakdown.update(resident)
    breakdown.update(gradients=gradients, activations=parts["activations"],
                     logits=parts["logits"], temporaries=temporaries,
                     communication=resident["communication"] + parts["communication"])
    allocated = sum(breakdown[k] for k in ALLOCATED_KEYS)
    dynamic = max(sum(p.values()) for p in moments.values())
    reserved = round_up(allocated + int(calibration.reserve_fraction * dynamic), SMALL_SEGMENT_BYTES)
    build_note: tuple[str, ...] = ()
    if builds_on_device(train.stack, train.stack_release):
        if shard.gpus == 1 and applies(model, targets, train):
            # torchtune 0.1 builds the model on the GPU: what its build reserved stays reserved
            adapter_tensors = [block(math.prod(shape) * int(DTYPE_BYTES[train.adapter_dtype]))
                               for t in targets for name, shape in t.tensors(dora)
                               if t.trainable(name) for _ in range(t.copies)]
            step = _step_tensors(model, train, parts["activations"], parts["logits"],
                                 parts["temporaries"])
            after_build = build_replay(model, targets, train)
            built = after_build.reserved
            replayed = training_reserved(after_build, adapter_tensors, step) + workspace
            if replayed > reserved:
                how = "builds the model on the GPU and quantizes it there" if train.quantized \
                    else "builds the model on the GPU, a layer more than it keeps"
                build_note = (f"torchtune {train.stack_release} {how}: the segments its build "
                              f"reserved stay reserved (replayed through the caching allocator: "
                              f"{format_bytes(built)} after the build)",)
                reserved = replayed
        else:
            build_note = (f"torchtune {train.stack_release}'s model build is replayed for LoRA "
                          f"and QLoRA of Llama-type models (no q/k/v bias, no experts) in bf16 on "
                          f"one GPU: this reserve is the formula's",)
    breakdown["allocator"] = reserved - allocated
    breakdown["cuda_context"] = calibration.cuda_context_bytes
    breakdown["paged_optimizer"] = static.optimizer_paged
    peak = sum(breakdown.values())
    head_dtype = "fp32" if train.upcasts_to_fp32 else train.dtype
    file_size = adapter_file_bytes(model, targets, adapter_dtype, dora, head_dtype) if targets else 0
    notes = (attention_note + _notes(model, lora, train, targets) + probe_note + build_note
             + shard_notes(train, shard) + hardware_notes(train, gpu))
    result = Estimate(
        model=model, lora=lora, train=train, targets=targets, base_params=static.base_params,
        trainable_params=static.trainable_params, adapter_file_bytes=file_size,
        breakdown=breakdown, allocated_bytes=allocated, reserved_bytes=reserved, peak_bytes=peak,
        peak_moment=peak_moment, phase_peaks=phase_peaks, gpu=gpu, serve=serve, notes=notes,
        dynamic_bytes=dynamic, calibration=calibration, shard=shard, host_breakdown=sharded.host,
    )
    if gpu is not None and targets:
        from .serving.serve import serving_capacity

        capacity = serving_capacity(model, targets, train, gpu, serve or ServeSpec(), dora,
                                    calibration.cuda_context_bytes)
        result = _with_serving(result, capacity)
    return result


def _with_serving(result: Estimate, capacity) -> Estimate:
    from dataclasses import replace

    return replace(result, adapters_fit=capacity.adapters, adapter_serve_bytes=capacity.adapter_bytes,
                   serve_base_bytes=capacity.base_bytes, serving=capacity)


def _kind_name(view) -> str:
    """The probe's name for a view's layers: its card kind, or ``layer`` where all are alike."""
    return view.spec.kind.name if view.spec.kind is not None else "layer"


def _layers_needing_grad(model: ModelSpec, view, targets: tuple[Target, ...], full: bool) -> int:
    """Layers of a probed kind that keep anything for backward: those that hold an adapter or
    come after the first layer that does (before it nothing upstream needs a gradient)."""
    if full:
        return view.layers
    first = first_adapted_layer(model, targets)
    first = model.num_layers if first is None else first
    if view.spec.kind is None:
        return model.num_layers - first
    own = {i for t in view.targets for i in (t.linear.layer_ids or view.spec.kind.layers)}
    return sum(1 for i in view.spec.kind.layers if i > first or i in own)


def _probed_bytes(measured: dict, view, dt, tokens: int) -> tuple[int, int]:
    """(bytes per token, bytes whatever the tokens) of one probed layer. The probe ran at
    ``measured["tokens"]``; what the layer keeps whatever the token count (PEFT's ``W + BA`` of
    adapted experts) is the formula's, the rest scales with the tokens (the torch paths of
    Mamba, gated delta nets, short convolutions and MLA's memory-efficient attention are linear
    in them), so a solve over batch or sequence needs one probe, not one per step."""
    constant = act.layer_constant_bytes(view.spec, view.targets, dt)
    per_layer = measured["kinds"][_kind_name(view)]
    probe_tokens = measured["tokens"]
    if tokens == probe_tokens:
        return 0, per_layer
    return max(per_layer - constant, 0) // probe_tokens, constant


_PROBED: dict[tuple, dict] = {}  # per model, adapter and step but its token count
NO_PROBE_ENV = "LORASIZE_NO_PROBE"  # set: never run the layer probe (kinds without a formula unmeasured)


def _probe_layers(model: ModelSpec, lora: LoraSpec,
                  train: TrainSpec) -> tuple[dict[str, int], tuple[str, ...]]:
    """Bytes per layer of the card's kinds that have no activation formula (Mamba, gated delta
    nets, short convolutions, MLA), measured by the layer probe when torch is installed (once
    per model and setting in a process), and the note that says so."""
    import importlib.util
    import os

    if train.kernels == "compile":
        return _compiled_layers(model, lora, train)
    if model.card is None:
        return {}, ()
    unmodelled = [k for k in model.card.kinds if not k.analytic]
    if not unmodelled:
        return {}, ()
    names = ", ".join(f"{len(k.layers)} x {k.traits.get('mixer_class') or k.name}"
                      for k in unmodelled)
    if os.environ.get(NO_PROBE_ENV) or importlib.util.find_spec("torch") is None:
        why = f"{NO_PROBE_ENV} is set" if os.environ.get(NO_PROBE_ENV) else \
            'measuring them needs pip install "lorasize[torch]"'
        return {}, (f"activations of {names} layers are not modelled: only their MLP, norms and "
                    f"adapters are counted ({why})",)
    def layer_probe() -> dict:
        from .trace import probe

        return {"kinds": probe(model, lora, train)}

    measured, where = _cached_probe("layers", layer_probe, model, lora, train)
    return measured, (f"activations of {names} layers measured by the layer probe (the real "
                      f"layer code under fake tensors{where}; torch fallbacks of optional CUDA "
                      f"kernels: an upper bound where mamba-ssm or fla kernels run)",)


def _cached_probe(kind: str, run, model: ModelSpec, lora: LoraSpec,
                  train: TrainSpec) -> tuple[dict, str]:
    """A probe's figures, run once per model, adapter and setting but the token count in a
    process (they scale with the tokens), and the words saying at which size they were taken."""
    key = (kind, model.name, repr(sorted(model.hf_config.items())), lora,
           replace(train, grad_checkpointing=False, batch_size=1, seq_len=1))
    if key not in _PROBED:
        _PROBED[key] = {**run(), "tokens": train.tokens, "batch": train.batch_size,
                        "seq": train.seq_len}
    measured = _PROBED[key]
    where = "" if measured["tokens"] == train.tokens else \
        f", at {measured['batch']} x {measured['seq']} tokens and scaled with the tokens"
    return measured, where


def _compiled_layers(model: ModelSpec, lora: LoraSpec,
                     train: TrainSpec) -> tuple[dict, tuple[str, ...]]:
    """What each kind of layer and the loss keep for backward under torch.compile, from
    Inductor's partitioner run on the real layer under fake tensors (once per model and setting
    in a process), and the note that says so."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise LorasizeError('what torch.compile saves is measured with torch: pip install '
                            '"lorasize[torch]", or estimate with --kernels fused (eager ops\' '
                            'memory)', source="--kernels compile")
    def partition_probe() -> dict:
        from .trace import compiled_probe

        return compiled_probe(model, lora, train)

    measured, where = _cached_probe("compile", partition_probe, model, lora, train)
    return measured, (f"torch.compile: what each layer and the loss save for backward is what "
                      f"Inductor's partitioner keeps (the real layer compiled on fake tensors"
                      f"{where})",)



def hardware_notes(train: TrainSpec, gpu: GpuSpec | None) -> tuple[str, ...]:
    """Settings the GPU cannot run as asked."""
    if gpu is None or gpu.arch not in PRE_AMPERE:
        return ()
    notes = []
    if train.dtype == "bf16":
        notes.append(f"{gpu.name} ({gpu.arch}) has no bf16 tensor cores: bf16 runs emulated "
                     f"and slowly; train with --dtype fp16 on this GPU")
    if train.attn == "flash":
        notes.append(f"flash-attn 2 needs an Ampere or newer GPU; {gpu.name} ({gpu.arch}) "
                     f"cannot run it: use --attn sdpa (PyTorch's memory-efficient kernel)")
    return tuple(notes)


def _notes(model: ModelSpec, lora: LoraSpec, train: TrainSpec,
           targets: tuple[Target, ...]) -> tuple[str, ...]:
    notes = []
    if model.derived:
        card = model.card
        notes.append(f"architecture derived from transformers {card.derived_with.get('transformers')}"
                     f" ({card.model_class} on the meta device): model_type '{model.model_type}' "
                     f"is not in lorasize's catalog")
    quant = model.hf_config.get("quantization_config") if model.card is not None else None
    if isinstance(quant, dict):
        method = quant.get("quant_method", "its own")
        notes.append(f"the checkpoint ships {method}-quantized weights; sized as loaded "
                     f"dequantized to {train.dtype} for training (as fine-tuning recipes do, e.g. "
                     f"gpt-oss with Mxfp4Config(dequantize=True)); --method qlora quantizes "
                     f"with bitsandbytes instead")
    if model.card is not None and model.card.multimodal:
        notes.append(f"{model.card.model_class} is modelled (the whole checkpoint, its frozen "
                     f"vision tower included; training is text-only, so the tower never runs)")
    if model.card is not None and train.method != "full" and "all" in lora.targets:
        notes += [n for n in model.card.notes if not n.startswith("peft-")]
    if model.max_positions and train.seq_len > model.max_positions:
        scaled = " (its config's rope_scaling may stretch that)" if model.hf_config.get(
            "rope_scaling") else ""
        notes.append(f"{train.seq_len:,} tokens is beyond the {model.max_positions:,} positions "
                     f"{model.name} was trained for (max_position_embeddings){scaled}")
    if train.upcasts_to_fp32:
        notes.append("prepare_model_for_kbit_training upcasts embeddings, norms and lm_head to "
                     "fp32 (--no-kbit-prep to skip it)")
    if train.quantized and model.expert_modules:
        notes.append(f"transformers {train.stack_release} (--stack-release) builds each expert "
                     f"as an nn.Linear: bitsandbytes quantizes the experts, and the step loops "
                     f"over them")
    elif train.quantized and model.num_experts and train.stack == "hf-peft":
        before = (" (transformers 4 built them as nn.Linear modules, which it quantized: "
                  "--stack-release 4.46)" if model.model_type in EXPERT_MODULE_MODEL_TYPES else "")
        notes.append(f"bitsandbytes quantizes only nn.Linear modules: transformers 5 keeps the "
                     f"fused expert weights of MoE layers in the compute dtype{before}")
        if train.upcasts_to_fp32:
            notes.append("prepare_model_for_kbit_training makes the fused experts fp32, which "
                         "transformers 5's grouped-mm expert kernel refuses: the real step "
                         "fails (the trace shows it); train with --no-kbit-prep")
    if train.method != "full" and lora.targets and "qv" in lora.targets and any(
            t.linear.name in ("qkv_proj", "query_key_value", "c_attn") for t in targets):
        notes.append("q and v are fused with k in this architecture: qv adapts the whole "
                     "fused projection")
    if any(t.linear.group == "head" for t in targets):
        notes.append("with lm_head as a target PEFT also saves the whole output embedding in the "
                     "adapter file")
    from .perf.work import attention_kernel  # the kernel step time and memory both read

    if attention_kernel(model, train) == "math":
        notes.append("attention runs on PyTorch's math kernel (fp32 activations with grouped-query "
                     "heads suit neither flash nor memory-efficient attention): it keeps the "
                     "seq x seq probabilities of every layer and runs them off the tensor cores; "
                     "autocast (the Trainer's bf16=True) or --attn flash runs flash attention")
    if train.dequantizes_to_fp32:
        notes.append(f"bitsandbytes {train.bnb_release} computes each 4-bit layer in its input's "
                     f"dtype, fp32 after kbit preparation: every weight is dequantized to fp32"
                     + ("" if train.autocast else " and multiplied off the tensor cores")
                     + "; bitsandbytes 0.47 or later keeps bnb_4bit_compute_dtype")
    if train.padded and train.attn == "sdpa":
        notes.append("padded batches: SDPA gets a mask in every layer, so it runs the "
                     "memory-efficient kernel over the whole seq x seq (no causal skipping) and "
                     "keeps a float copy of the mask per layer; packing (or --attn flash, which "
                     "unpads) avoids both")
    if any(t.linear.experts for t in targets) and not model.expert_modules:
        notes.append("PEFT adapts MoE experts by building W + BA for every expert on each forward "
                     "and keeping it for backward: a copy of the expert weights per layer "
                     "(and, for fp32 adapters, copies of A and B in the weights' dtype)")
    if train.optimizer.startswith("paged-"):
        notes.append("paged optimizer state lives in CUDA unified memory: nvidia-smi shows it, "
                     "torch.cuda.max_memory_allocated does not")
    notes += _variant_notes(lora, train, targets)
    return tuple(notes)


def _variant_notes(lora: LoraSpec, train: TrainSpec, targets: tuple[Target, ...]) -> list[str]:
    """What gradient accumulation and the LoRA-family methods change (lorasize/arch/lora.py)."""
    notes = []
    if train.grad_accum > 1:
        notes.append(f"gradient accumulation: {train.grad_accum} micro-batches of "
                     f"{train.batch_size} per optimizer step (effective batch "
                     f"{train.effective_batch_size}); activations stay those of one micro-batch, "
                     "only the gradients are held between micro-batches")
    if train.method == "full":
        return notes
    if lora.variant == "loraplus":
        notes.append("LoRA+ changes only B's learning rate: memory is LoRA's")
    if lora.variant == "ia3":
        notes.append("IA3 trains one vector per matrix (--r does not apply); the MLP's output "
                     "projections are its feedforward_modules (input scaled), the others have "
                     "their output scaled")
    if lora.variant in ("loha", "lokr") and targets:
        notes.append(f"PEFT's {lora.variant} builds each adapted matrix's whole delta weight on every "
                     f"forward and keeps it for backward ({train.adapter_dtype}, one per adapted "
                     "matrix and layer): gradient checkpointing keeps only one layer's")
    if lora.variant == "adalora":
        notes.append("AdaLoRA: memory follows init_r (--r); ranks are masked, not shrunk, while "
                     "training. update_and_allocate keeps 3 importance tensors per lora_A/E/B "
                     "(counted with the optimizer); the saved file shrinks to the allocated "
                     "ranks (target_r on average) once budgeting has run")
    return notes
