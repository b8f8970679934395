"""What one training micro-batch asks of a GPU: GEMMs by shape, attention, memory-bound bytes,
dequantization, the optimizer step, kernel launches and communication.

Hardware-free counting (no efficiencies here): :mod:`lorasize.perf.steptime` turns a
:class:`StepWork` into seconds on a GPU. Every count below follows the code that runs the step.

GEMMs (Kaplan et al. 2020, section 2.1): a token through a weight (in, out) is a forward GEMM
(tokens, out, in); backward computes the input's gradient (tokens, in, out) always and the
weight's gradient (in, out, tokens) only when the weight trains. A LoRA branch of rank r is six
skinny GEMMs (A and B forward, their input and weight gradients); LoHa/LoKr multiply each token
by their whole delta weight. MoE layers send each token to ``experts_per_token`` experts
(tokens x k / E rows per expert GEMM). Gradient checkpointing runs the forward again in backward.

Attention (Dao 2023, "FlashAttention-2", section 3): causal kernels (flash, memory-efficient)
compute half of the s x s products, 4 s d FLOPs a token a layer forward (QK^T and PV) and 2.5
times that backward (five GEMMs, the scores recomputed); eager attention computes the full s x s
with batched GEMMs and writes the scores and probabilities to memory (read below).

Memory-bound bytes per token are counted from the ops the model code launches
(:data:`EAGER_TOUCHES`, :data:`FUSED_TOUCHES`); backward reads and writes about twice a forward
op's bytes (:data:`BACKWARD_BYTES_RATIO`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch.parts import QKV_PARTS, adapter_modules
from ..arch.layout import (block_linears, block_params, copies, expert_matrix_numel,
                           top_params)
from ..arch.lora import DELTA_WEIGHT_VARIANTS, Target, first_adapted_layer
from ..arch.model import ModelSpec
from ..memory.sharding import ShardSpec, accumulates_unsharded, frozen_gradient_bytes
from ..memory.stacks import as_built, rebuilds_lora_index
from ..memory.weights import static_bytes
from ..specs import TrainSpec
from ..units import DTYPE_BYTES

# Bytes touched per element of each tensor, forward, with the model code's own ops (transformers
# 5 Llama-style modules; the 2-byte compute dtype assumed, fp32 upcasts counted where the code
# makes them):
# - rms norm: LlamaRMSNorm.forward: to(fp32) r2 w4, pow+mean r4, x*rsqrt r4 w4, to(dtype) r4 w2,
#   weight* r2 w2 (28 bytes an element of the hidden size); LayerNorm is one fused torch kernel
#   (r2 w2).
# - residual add: r2 r2 w2 (two a layer).
# - rope: apply_rotary_pos_emb: q*cos r2 w2, rotate_half (slice, neg, cat) r2 w2 r2 w2, *sin r2
#   w2, add r2 r2 w2 (18 bytes an element of q and k).
# - gated MLP: act(gate) r2 w2, *up r2 r2 w2 (10 an element of the intermediate size); GELU MLP:
#   act r2 w2.
# - attention layout: transposes made contiguous for SDPA and back (q, k, v in; the output out).
# - the loss: logits written in bf16, upcast to fp32 (r2 w4), log_softmax r4 w4, its backward
#   r4 w4 and the cast back r4 w2: 36 bytes an element of the vocabulary (once a token, not a
#   layer; backward included).
# - a LoRA branch: dropout when p > 0 (r2 w2 and a 1-byte mask) on the input; scaling r2 w2 and
#   the add r2 r2 w2 on the output (peft/tuners/lora/layer.py, Linear.forward).
# Fused kernels (Liger, fms-acceleration's foak, Transformer Engine, torch.compile): one read and
# one write per norm, rope, activation; the fused linear cross-entropy never writes the logits.
EAGER_TOUCHES = {"rms_norm": 28, "layer_norm": 4, "residual": 6, "rope": 18, "gated_act": 10,
                 "act": 4, "layout": 4, "loss": 36, "lora_dropout": 5, "lora_out": 10}
FUSED_TOUCHES = {"rms_norm": 4, "layer_norm": 4, "residual": 6, "rope": 4, "gated_act": 6,
                 "act": 4, "layout": 0, "loss": 8, "lora_dropout": 5, "lora_out": 10}
BACKWARD_BYTES_RATIO = 2.0
# Eager attention per score element (b x heads x s x s), forward: the scores written (2), the
# mask added (r2 r2 w2), softmax in fp32 (r2 w4, r4 w2: transformers' eager_attention_forward),
# read by PV (2); backward about twice that.
EAGER_SCORE_BYTES = 22
# The same on fp32 scores (eager attention or SDPA's math kernel on fp32 activations): the
# scores written (4), the mask added (r4 r4 w4), softmax with no cast on either side (r4 w4),
# read by PV (4).
FP32_SCORE_BYTES = 28
# Eager attention scales the scores after QK^T (transformers' ``eager_attention_forward``:
# ``matmul(query, key.T) * scaling``: read and write, in element widths), and soft-capping
# attention (Gemma 2's ``attn_logit_softcapping``, litgpt's ``do_softcapping``) runs
# ``tanh(scores / cap) * cap`` on them: three more (the math kernel scales q and k instead and
# never soft-caps). tests/test_step_time.py counts them on transformers 5.23's Llama and Gemma 2.
EAGER_SCALE_WIDTHS = 2
SOFTCAP_WIDTHS = 6
# PyTorch's memory-efficient attention on fp32 inputs, sm80 and later, runs CUTLASS tensor cores
# in 3xTF32 (``OpMultiplyAddFastF32``, three TF32 MMAs a product: aten ``mem_eff_attention/
# gemm_kernel_utils.h`` ``DefaultGemmType<ArchTag, float>``). Its time over the 16-bit kernel's,
# as xformers (the kernel's origin) measured it on an A100: forward 13,158 us against 3,090 us
# at B=64, M=1024, H=16, K=128 (4.3x; facebookresearch/xformers#587), backward 2,335 us against
# 613 us at B=384, M=197, K=88 (3.8x; #467).
FP32_EFFICIENT_SLOWDOWN = 4.0
# Kernels a decoder layer launches forward (counted from the same modules: 7 per rms norm, 4
# projections, 10 for rope, 3 for SDPA's layout and kernel, 2 residual adds, 5 for the MLP), per
# quantized matrix (dequantize; bitsandbytes 4-bit and 8-bit), per layer norm (1). An adapter
# module launches 4 forward (A, B, the scale, the add: PEFT's ``lora.Linear.forward``,
# torchtune's ``LoRALinear.forward``) and 6 backward; PEFT's adapters in another dtype than the
# model's (fp32, its ``autocast_adapter_dtype=True`` default) add the input's cast to theirs and
# the output's back (``_cast_input_dtype``, ``result.to``: 2 forward, 3 backward), and autocast
# then casts A's and B's weights to the compute dtype (2 forward, 1 backward); its dropout 3 more
# forward and 1 backward: counted with a TorchDispatchMode over transformers 5.23 + PEFT 0.21
# (a Llama layer, forward and backward; tests/test_step_time.py recounts them). lit-gpt's
# ``LoRAQKVLinear`` pads B's output into the whole q/k/v width (``zero_pad``): 6 forward and 9
# backward (9 forward with dropout, tests/data/litgpt/kernel_counts.json).
LAYER_KERNELS = {"rms_norm": 7, "layer_norm": 1, "projections": 4, "rope": 10, "attention": 3,
                 "residual": 2, "mlp": 5}
LORA_KERNELS = (4, 6)  # forward, backward
LORA_CAST_KERNELS = (2, 3)
LORA_AUTOCAST_KERNELS = (2, 1)
LITGPT_LORA_KERNELS = (6, 9)
LORA_DROPOUT_KERNELS = (3, 1)
QUANT_KERNELS = 1
# A mixture-of-experts layer launches more kernels than a dense (Llama) layer, counted with a
# TorchDispatchMode over Mixtral's and Llama's forward (3 layers against 2, every expert hit; ops
# that launch nothing left out): transformers 5 routes and runs the experts with grouped GEMMs
# (``_grouped_mm``): 19 more (tests/test_expert_modules.py recounts it); transformers 4.46.3
# loops over the experts (``MixtralSparseMoeBlock.forward``: ``torch.where``, two ``index``,
# three linears, activation, two ``mul``, ``index_add_``: 10 each): 8 + 10 per expert more.
MOE_FUSED_KERNELS = 19
MOE_LOOP_ROUTER_KERNELS = 8
MOE_LOOP_EXPERT_KERNELS = 10
FUSED_LAYER_KERNELS = 16  # norms, rope and the MLP activation one kernel each
# Qwen-1's code under flash-attn (``modeling_qwen.py``, :func:`runs_flash_ops`): ``RMSNorm`` is one
# ``flash_attn.ops.rms_norm`` kernel (r2 w2); ``apply_rotary_pos_emb`` casts q and k to fp32, runs
# flash-attn's rotary kernel on them and casts back (r2 w4, r4 w4, r4 w2: 20 bytes, 3 kernels a
# tensor); ``flash_attn_func`` reads q, k and v as the (batch, seq, heads, dim) views c_attn's
# output splits into (no layout copies, one kernel).
FLASH_OPS_TOUCHES = {"rms_norm": 4, "rope": 20, "layout": 0}
FLASH_OPS_KERNELS = {"rms_norm": 1, "rope": 6, "attention": 1}
# Backward launches about twice the forward's kernels when every weight trains (each op's input
# gradient and each weight's gradient): 76 against 41 for transformers 5.23's Llama layer, 47
# against 24 and 73 against 37 for lit-gpt's phi-1.5 and Llama-2 blocks; 1.6 times when the
# base is frozen (65 against 41: no weight gradients, nor their accumulation).
BACKWARD_KERNELS_RATIO = 1.85
FROZEN_BACKWARD_KERNELS_RATIO = 1.6
# Gradients of frozen weights under FSDP's use_orig_params=True (lit-gpt's LoRA units,
# :func:`lorasize.memory.sharding.frozen_gradient_bytes`): the views' gradients are concatenated
# into the flat parameter's (split's backward: read, write) and accumulated into its ``.grad``
# across micro-batches (read both, write): five touches of each gradient byte a micro-batch.
FROZEN_GRADIENT_TOUCHES = 5


@dataclass(frozen=True)
class Gemm:
    """``count`` GEMMs of one shape: (m x k) @ (k x n), ``what`` they compute."""

    m: float
    n: int
    k: int
    count: float
    what: str  # "base", "adapter", "head", "attention"
    fp32: bool = False  # runs on fp32 tensors (no tensor cores under torch's defaults)
    # a weight's gradient: the reduction runs over the tokens, a strided dimension of both
    # operands, so only m and n are leading dimensions (their alignment is what counts)
    reduces_tokens: bool = False
    # bytes an element of the (k x n) weight is read at, where not the GEMM's own dtype: a 4-bit
    # weight read by bitsandbytes' fused kernel
    weight_bytes: float | None = None

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k * self.count


@dataclass(frozen=True)
class Comm:
    """Bytes one GPU sends per micro-batch in one collective, and what compute can hide it."""

    what: str  # "all-gather", "reduce-scatter", "all-reduce", "offload", "paging"
    bytes: float
    hidden_by: str  # "forward", "backward", "none"
    link: str = "gpu"  # "gpu" (between GPUs), "host" (PCIe to the CPU), "paging" (unified memory)


@dataclass(frozen=True)
class StepWork:
    """One micro-batch's work on one GPU, before any hardware figure."""

    tokens: int
    gemms: tuple[Gemm, ...]
    attention_flops: float  # flash / memory-efficient kernels, forward + backward (+ recompute)
    elementwise_bytes: float
    dequant_weights: float  # quantized weights dequantized per micro-batch (every pass)
    optimizer_bytes: float  # one optimizer step's memory traffic
    grad_accum: int
    kernels: float  # launches per micro-batch
    comms: tuple[Comm, ...]
    gpus: int
    forward_share: float  # share of the GEMM and attention work that runs forward
    quant: str
    gathers: float = 0.0  # FSDP / ZeRO-3 unit gathers per micro-batch
    host_indices: float = 0.0  # Python ints made into a tensor on the CPU per micro-batch
    ampere_attention_flops: float = 0.0  # of attention_flops, run by kernels written for Ampere
    syncs: bool = False  # the CPU waits for the GPU inside every layer's forward
    notes: tuple[str, ...] = ()


# DeepSpeed ZeRO-3 hooks every submodule, with parameters or without (``parameter_offload.py``
# ``_register_hooks_recursively``, unchanged from v0.10.3 to v0.12.6 and since): each call runs its
# fetch and release and wraps its inputs and outputs in autograd functions for the backward's. A
# transformers decoder layer calls, besides its linears and norms, four modules of its own (the
# layer, its attention, its MLP and the MLP's activation), the model six around the layers (the
# causal-LM wrapper, the base model, the embeddings, rotary, the final norm, the head: lorasize's
# top parameters, the head and three containers) and PEFT one more (its LoRA model); PEFT's
# ``lora.Linear`` calls four beyond the linear it wraps (itself, its dropout, ``lora_A``,
# ``lora_B``), six under DoRA. Counted with forward pre-hooks on every module of transformers
# 5.23's Llama, Qwen2, Mistral and Gemma 2 under PEFT 0.21 (tests/test_step_time.py).
ZERO3_LAYER_CONTAINERS = 4
ZERO3_TOP_CONTAINERS = 3
ZERO3_ADAPTER_CALLS = (4, 6)  # LoRA, DoRA


def decoder_linears(model: ModelSpec):
    """Block linears the text step runs (a multimodal card's vision tower is not run)."""
    return [m for m in block_linears(model) if not m.prefix]


def quantized_weights(model: ModelSpec) -> tuple[int, int]:
    """(weights, matrices) of the decoder that bitsandbytes quantizes."""
    quantizable = [m for m in decoder_linears(model) if m.quantizable]
    return (sum(m.weight_numel * copies(model, m) for m in quantizable),
            sum(copies(model, m) * m.weight_numel // expert_matrix_numel(m) for m in quantizable))


def layer_bytes(model: ModelSpec, touches: dict) -> float:
    """Memory-bound bytes one token moves through one decoder layer's forward (norms, residual
    adds, rope, the MLP's activation, attention's layout copies)."""
    t = touches
    h, q, kv, inter = model.hidden_size, model.q_dim, model.kv_dim, model.intermediate_size
    norm = t["rms_norm"] if model.norm == "rms" else t["layer_norm"]
    gated = model.family not in ("gpt2", "gpt_neox", "falcon", "phi", "stablelm")
    return (2 * norm * h + 2 * t["residual"] * h + t["rope"] * (q + kv)
            + (t["gated_act"] if gated else t["act"]) * inter + t["layout"] * (2 * q + 2 * kv))


def runs_flash_ops(model: ModelSpec, train: TrainSpec) -> bool:
    """Whether the model's own code runs flash-attn's fused norm and rotary kernels: a family
    with the ``flash_ops`` trait (Qwen-1) under flash attention, without other fused kernels."""
    from ..memory.activations import calls_flash_attn_ops

    return train.attn == "flash" and not train.fused_kernels and calls_flash_attn_ops(model)


def step_touches(model: ModelSpec, train: TrainSpec) -> dict:
    """Bytes an element each memory-bound op moves (:data:`EAGER_TOUCHES` and its kin)."""
    if train.fused_kernels:
        return FUSED_TOUCHES
    if runs_flash_ops(model, train):
        return {**EAGER_TOUCHES, **FLASH_OPS_TOUCHES}
    return EAGER_TOUCHES


def layer_kernels(model: ModelSpec, fused: bool = False, flash_ops: bool = False) -> int:
    """Kernels one decoder layer's forward launches."""
    if fused:
        return FUSED_LAYER_KERNELS
    k = {**LAYER_KERNELS, **FLASH_OPS_KERNELS} if flash_ops else LAYER_KERNELS
    norm = k["rms_norm"] if model.norm == "rms" else k["layer_norm"]
    return 2 * norm + k["projections"] + k["rope"] + k["attention"] + k["residual"] + k["mlp"]


# Linears that read the same input run side by side (a block's attention input projections; its
# MLP's input projections): one never feeds another.
ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn",
                    "W_pack", "Wqkv", "q_a_proj", "kv_a_proj_with_mqa", "in_proj")
MLP_INPUTS = ("gate_proj", "up_proj", "gate_up_proj", "c_fc", "fc1", "fc_1", "fc_2", "w1", "w3",
              "dense_h_to_4h")


def _siblings(a, b) -> bool:
    return a.name == b.name or any(a.name in group and b.name in group
                                   for group in (ATTENTION_INPUTS, MLP_INPUTS))


def _first_layer_skips(model: ModelSpec, adapted: set[str]) -> set[str]:
    """Linears of the first adapted layer whose input needs no gradient: every one before the
    layer's first adapted linear (in block order) and its side-by-side siblings, since nothing
    upstream of them trains (autograd skips an input gradient nothing asks for)."""
    linears = decoder_linears(model)
    skipped = set()
    for i, m in enumerate(linears):
        if any(p.path in adapted and not _siblings(p, m) for p in linears[:i]):
            break
        skipped.add(m.path)
    return skipped


def _input_gradient_copies(m, n: int, first: int | None, skips: set[str]) -> int:
    """Copies of ``m`` whose input needs a gradient: none before the first adapted layer and,
    in it, none of those upstream of every adapter; all when ``first`` is None."""
    if first is None:
        return n
    layers = list(m.layer_ids) if m.layer_ids else list(range(n))
    skipped = sum(1 for i in layers if i < first)
    if first in layers and m.path in skips:
        skipped += 1
    return n - skipped


def _block_output(model: ModelSpec):
    """The linear that writes a block's output (the MLP's last): checkpointing's recompute
    never runs it, since nothing saved for backward depends on its output (torch's
    non-reentrant checkpoint stops early, torch/utils/checkpoint.py ``_StopRecomputationError``)."""
    mlp = [m for m in decoder_linears(model) if m.group == "mlp"]
    return mlp[-1] if mlp else None


def _linear_gemms(model: ModelSpec, full: bool, tokens: int, passes: int,
                  first: int | None, adapted: set[str], weight_grads: bool,
                  fp32: bool = False) -> list[Gemm]:
    """The base linears' GEMMs; ``weight_grads``: every weight's gradient is computed (full
    fine-tuning, or frozen weights FSDP gives a gradient: ``step_work``); ``fp32``: an fp32
    model without autocast, or a 4-bit base bitsandbytes dequantizes to fp32 with no autocast
    to cast it back (``TrainSpec.dequantizes_to_fp32``)."""
    out = []
    last = _block_output(model)
    skips = _first_layer_skips(model, adapted) if first is not None else set()
    for m in decoder_linears(model):
        n = copies(model, m)
        per_copy = m.experts or 1
        rows = tokens * max(model.experts_per_token, 1) / m.experts if m.experts else tokens
        # the block's output linear is not recomputed unless an adapter reads what it computes
        # first (PEFT runs the base layer before the adapter)
        runs = 1 if last is not None and m.path == last.path and m.path not in adapted else passes
        out.append(Gemm(rows, m.out_features, m.in_features, n * per_copy * runs, "base", fp32))
        graded = n if full else _input_gradient_copies(m, n, first, skips)
        out.append(Gemm(rows, m.in_features, m.out_features, graded * per_copy, "base", fp32))
        if weight_grads:
            out.append(Gemm(m.in_features, m.out_features, rows, n * per_copy, "base", fp32,
                            reduces_tokens=True))
    return out


def _adapter_gemms(model: ModelSpec, targets: tuple[Target, ...], tokens: int, passes: int,
                   fp32: bool, first: int | None) -> list[Gemm]:
    """The adapters' GEMMs; ``fp32``: they run on fp32 weights and inputs (PEFT casts the input
    to the adapter's dtype, ``_cast_input_dtype``, and no autocast brings it back)."""
    out = []
    last = _block_output(model)
    skips = _first_layer_skips(model, {t.linear.path for t in targets}) \
        if first is not None else set()
    for t in targets:
        if t.variant == "ia3" or t.linear.prefix:
            continue
        lin, n = t.linear, t.copies * max(t.linear.experts, 1)
        rows = tokens if not lin.experts else tokens / lin.experts
        if t.variant in DELTA_WEIGHT_VARIANTS:
            # the whole delta weight per token: forward, input and weight gradients
            out.append(Gemm(rows, lin.out_features, lin.in_features, n * (passes + 2), "adapter",
                            fp32))
            continue
        r = t.rank
        # on the block's output linear the recompute stops before B (nothing saved needs its
        # output); A runs again, its output being B's saved input
        b_runs = 1 if last is not None and lin.path == last.path else passes
        first_copies = 1 if first in (lin.layer_ids or range(t.copies)) \
            and lin.path in skips else 0
        out += [Gemm(rows, r, lin.in_features, n * passes, "adapter", fp32),
                Gemm(rows, lin.out_features, r, n * b_runs, "adapter", fp32)]
        out += [Gemm(rows, r, lin.out_features, n, "adapter", fp32),  # B's input gradient
                Gemm(r, lin.out_features, rows, n, "adapter", fp32, True),  # B's weight gradient
                Gemm(rows, lin.in_features, r, n - first_copies * max(lin.experts, 1), "adapter",
                     fp32),  # A's input gradient
                Gemm(lin.in_features, r, rows, n, "adapter", fp32, True)]  # A's weight gradient
    return out


def _elementwise_bytes(model: ModelSpec, targets: tuple[Target, ...], train: TrainSpec,
                       dropout: float, dora: bool, passes: int) -> float:
    """Memory-bound bytes of one micro-batch: norms, residuals, rope, activations, layout
    copies, the adapters' elementwise ops and the loss."""
    t = step_touches(model, train)
    per_layer = layer_bytes(model, t)
    lora = sum(target.copies * (t["lora_dropout"] * target.linear.in_features * (dropout > 0)
                                + t["lora_out"] * target.linear.out_features)
               for target in targets if not target.linear.prefix)
    if dora:
        lora *= 2  # DoRA scales the base output by the magnitude over the weight norm
    forward = per_layer * model.num_layers + lora
    if train.upcasts_to_fp32:
        # prepare_model_for_kbit_training makes the embeddings fp32, so the residual stream is
        # fp32 (twice the bytes), and autocast casts every linear's input back to the compute
        # dtype (r4 w2); the slowdown Unsloth found and fms-acceleration's bnb plugin removes.
        casts = 6 * sum(m.in_features * copies(model, m) for m in decoder_linears(model))
        forward = 2 * forward + casts
    return train.tokens * (forward * passes + BACKWARD_BYTES_RATIO * forward
                           + t["loss"] * model.vocab_size)


def activations_fp32(train: TrainSpec) -> bool:
    """Whether the step's activations are fp32: no autocast, on an fp32 model or after
    ``prepare_model_for_kbit_training`` (the residual stream is fp32 and bitsandbytes returns
    each matmul in its input's dtype, so q, k and v are fp32 too). Autocast casts SDPA's and every
    linear's inputs to the compute dtype."""
    return not train.autocast and (train.dtype == "fp32" or train.upcasts_to_fp32)


def attention_kernel(model: ModelSpec, train: TrainSpec) -> str:
    """The attention kernel a step runs in ``model`` (one kind of layer, or a model whose layers
    are alike): ``eager`` (also where transformers has no SDPA path for the model), ``flash``
    (flash-attn 2 casts fp32 q, k, v to 16 bits, transformers ``_flash_attention_forward``), or
    SDPA's choice on the step's activations and mask
    (:func:`lorasize.memory.activations.sdpa_backend`, :func:`~lorasize.memory.activations.
    sdpa_mask`)."""
    from ..memory.activations import runs_attention, sdpa_backend, sdpa_input_bytes, sdpa_mask
    from ..memory.stacks import expands_gqa_for_attention

    attn = runs_attention(model, train.attn, train.stack, train.stack_release)
    if attn != "sdpa":
        return attn
    activations = 4 if train.dtype == "fp32" or train.upcasts_to_fp32 else 2
    return sdpa_backend(model, sdpa_input_bytes(activations, train.autocast),
                        expands_gqa_for_attention(train.stack, train.stack_release),
                        sdpa_mask(model, train.seq_len, padded=train.padded))


def _kinds(model: ModelSpec) -> list[ModelSpec]:
    """One spec per kind of decoder layer (its heads, head width, window, layer count)."""
    from ..memory.activations import kind_views

    return [view.spec for view in kind_views(model, ())]


def attention_kinds(model: ModelSpec, train: TrainSpec) -> list[tuple[ModelSpec, str, bool]]:
    """Per kind of decoder layer: its spec, the kernel its attention runs
    (:func:`attention_kernel`) and whether SDPA gets a mask there (padding, or a sliding window
    at this length: :func:`lorasize.memory.activations.sdpa_mask`; never where the layer runs
    eager attention)."""
    from ..memory.activations import sdpa_mask

    out = []
    for kind in _kinds(model):
        kernel = attention_kernel(kind, train)
        masked = kernel != "eager" and sdpa_mask(kind, train.seq_len, train.attn, train.padded)
        out.append((kind, kernel, masked))
    return out


def _score_bytes(model: ModelSpec, train: TrainSpec, passes: int) -> float:
    """The score and probability traffic of a kernel that materialises them (eager attention,
    SDPA's math kernel): b x heads x s x s per layer."""
    from ..memory.activations import softcaps_attention

    fp32 = activations_fp32(train)
    width = 4 if fp32 else 2
    total = 0.0
    for kind, kernel, _ in attention_kinds(model, train):
        if kernel not in ("eager", "math"):
            continue
        per_score = FP32_SCORE_BYTES if fp32 else EAGER_SCORE_BYTES
        if kernel == "eager":
            per_score += width * (EAGER_SCALE_WIDTHS
                                  + (SOFTCAP_WIDTHS if softcaps_attention(kind) else 0))
        total += per_score * train.batch_size * kind.num_heads * train.seq_len ** 2 * (
            kind.num_layers)
    return total * (passes + BACKWARD_BYTES_RATIO)


def attended_pairs(seq_len: int, window: int | None, causal: bool = True) -> float:
    """(query, key) pairs a fused kernel computes in one sequence of one head: the causal half of
    the square, only the last ``window`` keys where flash-attn 2 takes a sliding window
    (``window_size``: every row attends at most ``window`` keys), the whole square where a mask
    stands in for causality (the memory-efficient kernel skips no tile of an explicit mask)."""
    if not causal:
        return float(seq_len * seq_len)
    if window and seq_len > window:
        return window * (window + 1) / 2 + (seq_len - window) * window
    return seq_len * seq_len / 2


@dataclass(frozen=True)
class AttentionWork:
    """What a micro-batch's attention asks: kernel FLOPs in FlashAttention-2's time (the
    memory-efficient kernel's counted at its slowdown), the share of them run by kernels written
    for Ampere (:data:`AMPERE_KERNELS`), the batched GEMMs of kernels that materialise the scores,
    and the bytes a masked memory-efficient kernel moves for its mask."""

    flops: float = 0.0
    ampere_flops: float = 0.0
    gemms: tuple[Gemm, ...] = ()
    mask_bytes: float = 0.0


def _attention(model: ModelSpec, train: TrainSpec, passes: int,
               backward_layers: int) -> AttentionWork:
    """Flash / memory-efficient kernel FLOPs (in bf16 tensor-core time), or the batched GEMMs of
    a kernel that materialises the scores (eager attention, SDPA's math kernel: fp32 ones on the
    CUDA cores, torch's ``allow_tf32=False`` default), kind by kind of layer; the backward runs
    in ``backward_layers`` layers (those whose attention has something trainable upstream),
    spread over the kinds by their share of the layers."""
    from ..memory.activations import sliding_window
    from ..memory.stacks import runs_transformers_4

    b, s, fp32 = train.batch_size, train.seq_len, activations_fp32(train)
    flops = ampere = mask = 0.0
    gemms = []
    for kind, kernel, masked in attention_kinds(model, train):
        layers, d, heads = kind.num_layers, kind.head_dim, kind.num_heads
        back = backward_layers * layers / model.num_layers
        if kernel in ("eager", "math"):
            # QK^T and PV over the full s x s forward; backward two GEMMs for each
            gemms += [Gemm(s, s, d, b * heads * layers * 2 * passes, "attention", fp32),
                      Gemm(s, d, s, b * heads * back * 4, "attention", fp32)]
            continue
        window = sliding_window(kind) if kernel == "flash" and train.attn == "flash" else None
        pairs = attended_pairs(s, window, causal=not masked)
        forward = 4.0 * b * pairs * d * heads
        slowdown = 1.0
        if kernel == "efficient":
            slowdown = EFFICIENT_SLOWDOWN * (FP32_EFFICIENT_SLOWDOWN if fp32 else 1.0)
        kernel_flops = slowdown * forward * (layers * passes + back * FLASH_BACKWARD_RATIO)
        flops += kernel_flops
        if kernel == "efficient" or train.attn in AMPERE_KERNELS:
            ampere += kernel_flops
        if masked and kernel == "efficient":
            width = 4 if fp32 else 2
            # the kernel reads the (b, 1, s, s) mask once for every head (broadcast by stride,
            # each head's blocks run in their own waves), forward and backward
            mask += width * b * heads * s * s * (layers * passes + back)
            if not runs_transformers_4(train.stack, train.stack_release):
                # transformers 5 passes a boolean mask; SDPA turns it into a float one in every
                # layer (``convert_boolean_attn_mask``: read 1 byte, write the float)
                mask += (1 + width) * b * s * s * layers * passes
    return AttentionWork(flops, ampere, tuple(gemms), mask)


# The memory-efficient (CUTLASS, xformers') kernel against FlashAttention-2, forward and backward
# on an A100, head dim 128, 8k tokens, no causal mask: 97 against 201 TFLOPS (the
# flash-attention README's "xformers" and "FlashAttention-2" bars, assets/
# flash2_a100_fwd_bwd_benchmark.png, Dao-AILab/flash-attention @4f285b35, July 2023; the paper,
# section 4.1: FA2 is "around 2x faster than ... FlashAttention in xformers (the 'cutlass'
# implementation)").
EFFICIENT_SLOWDOWN = 201 / 97
# Attention kernels written for Ampere (sm80) that Hopper runs as they are: flash-attn 2's
# package (``--attn flash``) and SDPA's memory-efficient kernel (aten mem_eff_attention
# generate_kernels.py: "Sm80 kernels support up to Sm100"). SDPA's unmasked choice on Hopper is
# cuDNN's Hopper kernel from torch 2.11 (sdp_utils.cpp ``check_prefer_cudnn_attention``, gated
# on the bundled cuDNN > 9.15; transformers #48163), not counted here.
AMPERE_KERNELS = ("flash",)


# FlashAttention-2's backward: five GEMMs against the forward's two (the scores recomputed).
FLASH_BACKWARD_RATIO = 2.5


def _kernels(model: ModelSpec, targets: tuple[Target, ...], train: TrainSpec, passes: int,
             dropout: float, weight_grads: bool) -> float:
    """Kernel launches of one micro-batch: the forward ``passes`` times (the recompute
    included) and the backward (with every weight's gradient when ``weight_grads``)."""
    flash_ops = runs_flash_ops(model, train)
    layers = layer_kernels(model, train.fused_kernels, flash_ops) * model.num_layers
    if model.num_experts:
        layers += model.num_layers * (
            MOE_LOOP_ROUTER_KERNELS + MOE_LOOP_EXPERT_KERNELS * model.num_experts
            if model.expert_modules else MOE_FUSED_KERNELS)
    modules = adapter_modules(targets, train.stack)
    lora_forward, lora_backward = adapter_kernels(train.stack, train.adapter_dtype, train.dtype,
                                                  train.autocast)
    if dropout:
        lora_forward += LORA_DROPOUT_KERNELS[0]
        lora_backward += LORA_DROPOUT_KERNELS[1]
    # bitsandbytes dequantizes each 4-bit weight again for the backward's input gradient
    quant = QUANT_KERNELS * quantized_weights(model)[1] if train.quantized else 0
    forward = layers + modules * lora_forward + quant
    ratio = BACKWARD_KERNELS_RATIO if weight_grads else FROZEN_BACKWARD_KERNELS_RATIO
    backward = layers * ratio + modules * lora_backward + quant
    return forward * passes + backward


def adapter_kernels(stack: str, adapter_dtype: str, dtype: str, autocast: bool
                    ) -> tuple[int, int]:
    """Kernels an adapter module launches (forward, backward), its dropout aside: PEFT's casts
    where the adapters' dtype is not the model's, their weights' too under autocast."""
    if stack == "litgpt":
        return LITGPT_LORA_KERNELS
    forward, backward = LORA_KERNELS
    if stack == "hf-peft" and adapter_dtype != dtype:
        forward, backward = forward + LORA_CAST_KERNELS[0], backward + LORA_CAST_KERNELS[1]
        if autocast:
            forward += LORA_AUTOCAST_KERNELS[0]
            backward += LORA_AUTOCAST_KERNELS[1]
    return forward, backward


def rebuilt_lora_indices(model: ModelSpec, targets: tuple[Target, ...], train: TrainSpec) -> int:
    """Indices a stack that rebuilds its fused q/k/v adapter's index tensor every forward
    (:func:`lorasize.memory.stacks.rebuilds_lora_index`: lit-gpt, litgpt before 0.3.1) turns from
    a Python list into a tensor in one forward: ``zero_pad`` lists every output index of the
    adapted parts, and runs only when one of q, k and v has no adapter."""
    if not rebuilds_lora_index(train.stack, train.stack_release):
        return 0
    parts = {t.linear.name: t for t in targets if t.linear.name in QKV_PARTS}
    if not parts or len(parts) == len(QKV_PARTS):
        return 0
    width = sum(model.q_dim if name == "q_proj" else model.kv_dim for name in parts)
    return width * max(t.copies for t in parts.values())


def _optimizer_bytes(static, train: TrainSpec) -> float:
    """One optimizer step's traffic: read parameters, gradients and state, write parameters and
    state (torch's foreach AdamW; 8-bit state is smaller), and the gradient-norm clipping's read
    of every gradient (transformers' Trainer, max_grad_norm=1.0)."""
    params = static.weights if train.method == "full" else static.adapter
    state = static.optimizer + static.optimizer_paged
    return 2 * params + 2 * static.gradients + 2 * state


def _comms(model: ModelSpec, static, train: TrainSpec, shard: ShardSpec,
           frozen_grads: float = 0.0) -> list[Comm]:
    """What each GPU sends per micro-batch (ring collectives: (N - 1) / N of the buffer);
    ``frozen_grads``: bytes of frozen weights' gradients FSDP reduces as well."""
    n = shard.gpus
    if n <= 1:
        return []
    ring = (n - 1) / n
    grads = static.gradients / train.grad_accum  # reduced once per optimizer step
    out = []
    if shard.sharding in ("ddp", "zero1", "zero2"):
        out.append(Comm("all-reduce", 2 * ring * grads, "backward"))
    elif shard.sharding in ("fsdp", "fsdp-grad-op", "zero3"):
        gathered = static.weights + static.quant_constants + static.adapter
        # FULL_SHARD gathers every unit in forward and again in backward (and for the recompute,
        # which happens inside the backward's gather); SHARD_GRAD_OP keeps them from forward on.
        out.append(Comm("all-gather", ring * gathered, "forward"))
        if shard.sharding != "fsdp-grad-op":
            out.append(Comm("all-gather", ring * gathered, "backward"))
        # FSDP under no_sync reduce-scatters once per optimizer step; ZeRO-3, and FSDP on a
        # stack without no_sync, every micro-batch.
        syncs = train.grad_accum if accumulates_unsharded(train, shard) else 1
        out.append(Comm("reduce-scatter", ring * (static.gradients + frozen_grads) / syncs,
                        "backward"))
    if shard.offload == "params":
        weights = (static.weights + static.adapter) / n
        out.append(Comm("offload", 2 * weights, "none", "host"))
    if shard.offload in ("params", "optimizer"):
        out.append(Comm("offload", 2 * static.gradients / n / train.grad_accum, "none", "host"))
    return out


def _gathers(model: ModelSpec, targets: tuple[Target, ...], train: TrainSpec, shard: ShardSpec,
             passes: int, dora: bool) -> float:
    """Parameter gathers of one micro-batch, each with its host-side cost (hooks, waits).

    FSDP gathers a wrapped unit (a decoder layer) at a time: in forward and again in backward
    (FULL_SHARD; the recompute runs inside the backward's gather), once under SHARD_GRAD_OP.
    DeepSpeed ZeRO-3 hooks every submodule (``parameter_offload.py``,
    ``_register_hooks_recursively``) and runs each one's fetch before its forward, the recomputed
    one included, and again before its backward (``pre_sub_module_forward_function`` /
    ``pre_sub_module_backward_function`` -> ``PartitionedParameterCoordinator.fetch_sub_module``),
    on one GPU as well and whether the module holds parameters or not: a gather per module
    called (:data:`ZERO3_LAYER_CONTAINERS`) and pass."""
    if shard.sharding == "zero3":
        linears = sum(copies(model, m) for m in decoder_linears(model))
        layers = model.num_layers * (len(block_params(model)) + ZERO3_LAYER_CONTAINERS)
        adapters = adapter_modules(targets, train.stack) * ZERO3_ADAPTER_CALLS[dora]
        top = len(top_params(model)) + 1 + ZERO3_TOP_CONTAINERS + (1 if targets else 0)  # + head
        return float((linears + layers + adapters + top) * (passes + 1))
    if shard.gpus > 1 and shard.fsdp:
        return float(model.num_layers * (1 if shard.sharding == "fsdp-grad-op" else 2))
    return 0.0


def step_work(model: ModelSpec, targets: tuple[Target, ...], train: TrainSpec,
              shard: ShardSpec | None = None, dropout: float = 0.0, dora: bool = False,
              paged_out_bytes: float = 0.0) -> StepWork:
    """The work of one micro-batch of ``train`` on one GPU of ``shard``. ``paged_out_bytes``:
    paged optimizer state that does not fit beside the rest and lives in host memory: the
    optimizer step migrates it in and back out (CUDA unified memory) once per optimizer step."""
    shard = shard or ShardSpec()
    model = as_built(model, train)
    full = train.method == "full"
    passes = 2 if train.checkpointing else 1  # forward runs, the recomputed one included
    tokens = train.tokens
    first = None if full else first_adapted_layer(model, targets)
    if not full and first is None:
        first = model.num_layers  # only the head trains: no decoder layer needs a gradient
    if train.checkpointing:
        # with checkpointing on a PEFT model the embeddings' output requires a gradient
        # (PEFT's enable_input_require_grads, so checkpointed blocks see an input that does):
        # every layer computes its input gradients (counted with torch's FlopCounterMode on
        # transformers 5.23 + PEFT 0.21, tests/test_step_time.py)
        first = None
    static = static_bytes(model, targets if not full else (), train, dora)
    frozen_grads = frozen_gradient_bytes(model, train, static, shard)
    weight_grads = full or frozen_grads > 0  # every base weight's gradient is computed
    gemms = _linear_gemms(model, full, tokens, passes, first,
                          set() if full else {t.linear.path for t in targets}, weight_grads,
                          fp32=not train.autocast and (train.dtype == "fp32"
                                                       or train.dequantizes_to_fp32))
    # an fp32 head (kbit preparation's, or an fp32 model's) runs on the CUDA cores unless autocast
    # casts it to the compute dtype
    gemms.append(Gemm(tokens, model.vocab_size, model.hidden_size, 2 + full, "head",
                      not train.autocast and train.head_dtype == "fp32"))
    if not full:
        fp32 = not train.autocast and train.adapter_dtype == "fp32"
        gemms += _adapter_gemms(model, targets, tokens, passes, fp32, first)
    backward_layers = model.num_layers
    if first is not None:
        skips = _first_layer_skips(model, {t.linear.path for t in targets})
        inputs = [m for m in decoder_linears(model) if m.name in ATTENTION_INPUTS]
        backward_layers -= first + (1 if inputs and all(m.path in skips for m in inputs)
                                    and not any(m.path in {t.linear.path for t in targets}
                                                for m in inputs) else 0)
    attention = _attention(model, train, passes, max(backward_layers, 0))
    gemms += attention.gemms
    elementwise = _elementwise_bytes(model, targets if not full else (), train, dropout,
                                     dora and not full, passes)
    elementwise += _score_bytes(model, train, passes) + attention.mask_bytes
    elementwise += FROZEN_GRADIENT_TOUCHES * frozen_grads
    if dora and not full:
        # the weight norm of W + BA each forward: read the weight, write and read the sum in fp32
        elementwise += passes * sum(t.copies * t.linear.in_features * t.linear.out_features
                                    * (DTYPE_BYTES[train.dtype] + 8) for t in targets)
    quantized = quantized_weights(model)[0] if train.quantized else 0
    gathers = _gathers(model, targets if not full else (), train, shard, passes, dora)
    indices = 0 if full else rebuilt_lora_indices(model, targets, train)
    return StepWork(
        tokens=tokens, gathers=gathers, gemms=tuple(gemms), attention_flops=attention.flops,
        ampere_attention_flops=attention.ampere_flops,
        elementwise_bytes=elementwise, dequant_weights=quantized * (passes + 1),
        optimizer_bytes=_optimizer_bytes(static, train), grad_accum=train.grad_accum,
        kernels=_kernels(model, targets if not full else (), train, passes, dropout,
                         weight_grads),
        comms=tuple(_comms(model, static, train, shard, frozen_grads)) + (
            (Comm("paging", 2 * paged_out_bytes / train.grad_accum, "none", "paging"),)
            if paged_out_bytes else ()), gpus=shard.gpus,
        forward_share=1 / (passes + 2), quant=train.quant_type, host_indices=indices * passes,
        syncs=indices > 0)
