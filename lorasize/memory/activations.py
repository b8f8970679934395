"""Activation memory: the tensors autograd keeps from forward to backward, per layer and token.

The model follows Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", arXiv 2205.05198, section 4.1): count, op by op, the tensors each
operation saves for its backward, in bytes per token, and multiply by batch x sequence x layers.
Their GPT block gives ``sbh(34 + 5as/h)`` bytes per layer in 16-bit training. What changes here:

1. **Frozen weights save less.** Autograd saves a matmul's input only to compute the weight's
   gradient (``mm``: ``self`` is saved only if ``mat2`` requires grad). A frozen base linear
   saves nothing; only norms, activations functions, attention and the LoRA branches keep tensors.
2. **LoRA branches** (PEFT 0.21 ``Linear.forward``): the input is cast to the adapter's dtype
   (fp32 by default), a new ``4 * in`` bytes per target (shared when the input already is
   fp32), saved by ``lora_A``; ``lora_A``'s output (``4 * r``) is saved by ``lora_B``. With
   ``lora_dropout > 0`` the dropped copy (``4 * in``) replaces the cast input and a 1-byte mask
   per element is added (``native_dropout`` saves its mask).
3. **Hugging Face norms upcast.** ``LlamaRMSNorm`` computes in fp32: ``x.to(float32).pow(2)``
   saves a ``4h`` copy and ``rsqrt`` one fp32 per token. ``nn.LayerNorm`` saves its input and
   fp32 mean and rstd (8 bytes per token).
4. **Attention kernels** (PyTorch 2.13 ``scaled_dot_product_attention`` on CUDA): flash and
   memory-efficient attention save q, k, v, the output and an fp32 log-sum-exp per head
   (Dao et al. 2022, "FlashAttention", section 3.1) -- O(s) per token. Eager attention
   (transformers ``eager_attention_forward``) saves the fp32 softmax output and its 16-bit copy,
   ``(4 + d) * heads * s`` bytes per token -- the O(s^2) term -- plus a ``[b, 1, s, s]`` mask
   built once per forward. With no padding mask transformers passes ``enable_gqa`` to SDPA, so
   k and v are saved at their grouped-query width; eager attention repeats them to full width.
5. **Fused projections** (Phi-3 ``qkv_proj``, GPT-NeoX/Falcon ``query_key_value``, GPT-2
   ``c_attn``) cost the same as separate ones: RoPE and the KV cache make k and v contiguous
   copies, so the fused output is not kept alive.
6. **Gradient checkpointing** (transformers 5: ``torch.utils.checkpoint`` non-reentrant per
   decoder layer) keeps each layer's input, ``d_res * h`` per token, and recomputes one layer at
   a time in backward.
7. **Mixture-of-experts LoRA** (PEFT ``ParamWrapper``) materialises ``W + BA`` for every expert
   of each adapted layer, and the expert matmuls save it: a per-layer cost the size of the expert
   weights, whatever the batch.
8. **Logits and loss** (transformers ``ForCausalLMLoss``): logits are upcast to fp32,
   ``log_softmax`` saves its fp32 output, and its backward holds that output, the incoming
   gradient and the outgoing gradient at once: ``3 * 4 * V`` bytes per token at the peak.

Here ``d`` is the compute dtype's size, ``d_res`` the residual stream's (fp32 after
``prepare_model_for_kbit_training`` upcasts the embeddings), and ``h``, ``q``, ``kv``, ``I`` the
hidden, query, key/value and MLP widths. Each formula is checked against the trace tier, which
runs the real transformers and PEFT code under fake tensors (``tests/test_trace_agreement.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..arch.families import FAMILY_TABLE
from ..arch.layout import block_linears, block_params
from ..arch.lora import Target
from ..arch.model import ModelSpec
from .stacks import (expands_gqa_for_attention, loss_in_compute_dtype, runs_transformers_4,
                     stack_rules, unchunked_loss)

FP32 = 4
BOOL = 1
INDEX = 8  # int64 indices
LOSS_FP32_COPIES_AT_PEAK = 3  # log_softmax output, grad_output, grad_input (log_softmax_backward)
TORCHTUNE_OUTPUT_CHUNKS = 8  # torchtune.modules.loss.CEWithChunkedOutputLoss num_output_chunks
# torchtune <= 0.2's whole-logits loss at its backward peak: the recipe's shifted fp32 logits, the
# log-softmax output and its two gradients (stacks.unchunked_loss; torchtune's own loop, replayed
# by benchmarks/torchtune_reserved, holds four vocabulary-wide fp32 blocks there)
TORCHTUNE_UNCHUNKED_LOSS_COPIES = 4
# Per-token bytes saved by each activation function, in units of d * I (see module docstring):
# silu / gelu / gelu_pytorch_tanh save their input; GPT-2 and Phi-2 "gelu_new" is written in
# Python (transformers activations.NewGELUActivation) and saves x, tanh(.), 0.5x and 1 + tanh(.).
# gpt-oss's clamped SwiGLU (transformers 5.23 ``GptOssExperts._apply_gate``) keeps the whole
# gate/up output (the clamps save their strided inputs: the "2" of gate and up) and saves the
# clamped gate, sigmoid(alpha * gate), up + 1 and their product: 4 (the layer probe agrees).
_ACT_FUNCTION_SAVES = {"gelu_new": 4, "gpt_oss_swiglu": 4}  # by the activation's name
ATTN_IMPLEMENTATIONS = ("sdpa", "flash", "eager")


@dataclass(frozen=True)
class Dtypes:
    """Byte widths in the step: compute (d), residual stream, norm output, adapter."""

    compute: int
    residual: int
    norm_out: int
    adapter: int


@dataclass(frozen=True)
class LayerActivations:
    """Bytes per token saved by one decoder layer, by part, for reporting and tests."""

    norms: int
    attention: int
    mlp: int
    lora: int

    @property
    def total(self) -> int:
        return self.norms + self.attention + self.mlp + self.lora


def _norm_bytes(spec: ModelSpec, dt: Dtypes, width: int, full: bool) -> int:
    """Bytes per token one norm saves over ``width`` features."""
    if spec.norm == "layer":
        # native_layer_norm saves its input (the residual stream) and fp32 mean and rstd.
        return dt.residual * width + 2 * FP32
    # RMSNorm: fp32 copy of the input (shared when already fp32) and rsqrt; with a trainable
    # weight the multiply also saves the normalised 16-bit tensor.
    return FP32 * width + FP32 + (dt.norm_out * width if full else 0)


def runs_attention(spec: ModelSpec, attn: str, stack: str = "hf-peft", release: str = "") -> str:
    """The attention implementation transformers actually runs for ``attn``: a model without an
    SDPA path falls back to eager, as ``from_pretrained`` does: the ``no_sdpa`` trait (gpt-oss's
    attention sinks, every release), or ``no_sdpa_since`` a transformers major release (Gemma 2's
    soft-capping: 5) where ``stack`` at ``release`` runs a later one."""
    kinds = [k.traits for k in spec.card.kinds] if spec.card is not None and spec.kind is None \
        else [_traits(spec)]
    lacks = any(t.get("no_sdpa") or (t.get("no_sdpa_since")
                                     and not runs_transformers_4(stack, release)) for t in kinds)
    return "eager" if attn == "sdpa" and lacks else attn


def _traits(spec: ModelSpec) -> dict:
    """The activation traits of one kind of layer: a card's kind, or a hand-written family's
    row (:data:`lorasize.arch.families.FAMILY_TABLE`); the same keys either way."""
    if spec.kind is not None:
        return spec.kind.traits
    return FAMILY_TABLE[spec.model_type].traits if spec.model_type in FAMILY_TABLE else {}


def softcaps_attention(spec: ModelSpec) -> bool:
    """Whether the layer soft-caps its attention scores (Gemma 2's ``attn_logit_softcapping``;
    the family trait that also soft-caps its final logits)."""
    return bool(_traits(spec).get("softcap"))


def calls_flash_attn_ops(spec: ModelSpec) -> bool:
    """Whether the model's own code calls flash-attn's fused norm and rotary kernels when
    flash-attn is installed (the ``flash_ops`` trait: Qwen-1's ``modeling_qwen.py``)."""
    return bool(_traits(spec).get("flash_ops"))


def _norm_count(spec: ModelSpec) -> int:
    """Norms over the hidden width in one block (per-head q/k norms excluded)."""
    if spec.kind is not None:
        return int(_traits(spec).get("norms", 0))
    return sum(1 for p in block_params(spec) if not p.path.startswith("self_attn"))


_NOT_NORM_FED = ("o_proj", "dense", "c_proj", "down_proj", "fc2", "dense_4h_to_h", "out_proj")


def _source(spec: ModelSpec, path: str, group: str) -> str:
    """The tensor a linear reads: a norm's output (shared by the linears it feeds) or the input
    of a non-norm-fed projection (its own path). One norm feeding attention and MLP (Falcon-7B,
    Phi-2's parallel block) is one source."""
    if path.endswith(_NOT_NORM_FED):
        return path
    return "norm" if _norm_count(spec) == 1 else f"{group}-norm"


def _lora_bytes(spec: ModelSpec, targets: tuple[Target, ...], dt: Dtypes, dropout: bool,
                attn_output_saved: bool, fused_qkv_dropout: bool = False,
                saved_inputs: set[str] | None = None, fused_qkv_output: bool = False,
                dora: bool = False) -> int:
    """Bytes per token the LoRA branches of one layer save.

    DoRA (peft/tuners/lora/dora.py ``DoraLinearLayer.forward``, PEFT 0.21) multiplies the
    trainable magnitude into ``(m / ||W + BA|| - 1) * base_result + m / ||.|| * lora_result``:
    both products keep their other operand for the magnitude's gradient, so each adapted matrix
    also saves ``lora_result`` (B's output, adapter dtype) and ``base_result`` (the base layer's
    output when the dropout is identity; with a dropout, ``F.linear(dropout(x), W)`` computed
    again in the adapter's dtype, whose weight copy :func:`lorasize.arch.lora.input_grad_saved_bytes`
    counts).

    A branch casts its input to the adapter's dtype (a new tensor per branch) unless the input
    already has it; then every branch reading that input shares it, and nothing is added when
    the input is saved anyway (the attention output, which flash/efficient kernels keep).
    ``fused_qkv_dropout``: q, k and v branches share one dropout (litgpt's ``LoRAQKVLinear``).
    ``saved_inputs``: filled with the sources whose input the branches save as is.
    ``fused_qkv_output``: the q/k/v branches' output is saved (litgpt's ``zero_pad``).
    """
    total = 0
    shared: set[str] = set()
    dropped: set[str] = set()
    attn_in = [t for t in targets if t.linear.group == "attn"
               and not t.linear.path.endswith(_NOT_NORM_FED)]
    # Every q/k/v column adapted (one fused module, or q, k and v all targeted): no padding.
    qkv_all = sum(t.linear.out_features for t in attn_in) == spec.q_dim + 2 * spec.kv_dim
    for target in targets:
        if target.linear.group == "head":
            continue  # the head's input is the final norm's output, counted with the top
        share = target.copies / spec.num_layers  # a target on some layers only
        linear = target.linear
        norm_fed = not linear.path.endswith(_NOT_NORM_FED)
        source = f"{linear.group}-norm" if norm_fed else linear.path
        in_dtype = dt.norm_out if norm_fed else dt.compute
        if linear.experts and spec.expert_modules:
            # transformers 4: a token runs top-k experts, each LoRA branch on the expert's input
            # (the gathered hidden states for gate and up, the gated product for down)
            share *= spec.experts_per_token
            norm_fed, in_dtype = False, dt.compute
            source = f"experts-{linear.in_features}"
            target = replace(target, linear=replace(linear, experts=0))
        if target.variant == "ia3" and not target.is_feedforward:
            # PEFT's IA3 multiplies the base output by its vector: the multiply keeps the output.
            total += round(dt.compute * linear.out_features * share)
            continue
        saved = dt.adapter * target.branch_width  # the rank-wide product B keeps
        if target.variant in ("lora-fa", "vera"):
            # LoRA-FA: A is frozen, so its matmul keeps no input; B keeps A's output. VeRA: the
            # shared A and B are frozen buffers; lambda_d * (x A^T) keeps the rank-wide product,
            # lambda_b * (... B^T) keeps the out-wide one (peft/tuners/vera/layer.py).
            if target.variant == "vera":
                saved += dt.adapter * linear.out_features
            if dropout:
                saved += BOOL * linear.in_features
            total += round(saved * share)
            continue
        if fused_qkv_output and norm_fed and linear.group == "attn" and not qkv_all:
            saved += dt.adapter * linear.out_features
        if dora and target.variant in ("lora", "rslora", "loraplus"):
            saved += (dt.adapter + (dt.adapter if dropout else dt.compute)) * linear.out_features
        if dropout:
            if fused_qkv_dropout and norm_fed and linear.group == "attn":
                if source not in dropped:
                    dropped.add(source)
                    saved += (dt.adapter + BOOL) * linear.in_features
            else:
                saved += (dt.adapter + BOOL) * linear.in_features
        elif in_dtype != dt.adapter:
            saved += dt.adapter * linear.in_features
        elif source not in shared:
            shared.add(source)
            is_attn_output = not norm_fed and linear.group == "attn"
            if not (is_attn_output and attn_output_saved):
                saved += in_dtype * linear.in_features
                if saved_inputs is not None:
                    saved_inputs.add(_source(spec, linear.path, linear.group))
        total += round(saved * share)
    return total


def sdpa_backend(spec: ModelSpec, compute_bytes: int, expands_gqa: bool = False,
                 masked: bool = False) -> str:
    """The kernel ``scaled_dot_product_attention`` picks on a CUDA GPU (sm80+), torch 2.13.

    Flash attention takes 16-bit inputs, head_dim <= 256 and grouped-query heads, and no
    explicit mask; the memory-efficient kernel also takes fp32 and masks but not grouped-query
    heads (``check_batch_size_and_num_heads_dense<false>`` in ``sdp_utils.cpp``), so it runs them
    when the stack repeats k and v to every query head first (``expands_gqa``:
    :func:`lorasize.memory.stacks.expands_gqa_for_attention`; transformers does whenever it
    passes a mask, ``use_gqa_in_sdpa``); anything else falls to the math kernel, which
    materialises the seq x seq probabilities. ``masked``: SDPA gets a mask
    (:func:`sdpa_mask`).
    """
    if compute_bytes == 2 and spec.head_dim <= FLASH_MAX_HEAD_DIM and not masked:
        return "flash"
    if spec.num_heads == spec.num_kv_heads or expands_gqa or repeats_kv_itself(spec, masked):
        return "efficient"
    return "math"


# The widest head flash attention takes (``check_head_dim_size_flash`` in ``sdp_utils.cpp``).
FLASH_MAX_HEAD_DIM = 256


def repeats_kv_itself(spec: ModelSpec, masked: bool) -> bool:
    """Whether transformers 5 repeats grouped k and v to every query head before SDPA where it
    could pass them grouped: with a mask, or heads wider than flash takes (``use_gqa_in_sdpa``:
    ``attention_mask is None and key.shape[-1] == value.shape[-1] <= 256``)."""
    return masked or spec.head_dim > FLASH_MAX_HEAD_DIM


def sdpa_mask(spec: ModelSpec, seq_len: int, attn: str = "sdpa", padded: bool = False) -> bool:
    """Whether SDPA gets an explicit mask in this kind of layer: every layer of a padded batch
    (``TrainSpec.padded``), and a sliding-window layer at a sequence at least as long as its
    window, where transformers cannot leave the masking to SDPA's ``is_causal`` (masking_utils
    ``_ignore_causal_mask_sdpa``: a padding mask with a zero, or ``kv_length >=
    local_attention_size``; checked on the real model in ``tests/test_sliding_mask.py``)."""
    if attn != "sdpa":
        return False
    window = sliding_window(spec)
    return padded or (bool(window) and seq_len >= window)


# Families whose every layer slides when the config sets ``sliding_window`` (transformers 5.23
# ``MistralModel.forward``, and the same line in Mixtral's, Phi-3's, PhiMoE's, Starcoder2's and
# Qwen3-MoE's: ``mask_function = create_causal_mask if self.config.sliding_window is None else
# create_sliding_window_causal_mask``; Mistral-7B-v0.1 sets 4,096, Phi-3-mini-4k 2,047;
# Qwen3-MoE's config drops it unless ``use_sliding_window``, ``configuration_qwen3_moe.py``).
CONFIG_WINDOW_FAMILIES = frozenset({"mistral", "mixtral", "phi3", "phimoe", "starcoder2",
                                    "qwen3_moe"})


def sliding_window(spec: ModelSpec) -> int | None:
    """Keys each query of this kind of layer attends at most (a card's ``sliding_attention``
    kind, or a :data:`CONFIG_WINDOW_FAMILIES` config's ``sliding_window``), or None."""
    window = _traits(spec).get("sliding_window")
    if spec.kind is None and spec.model_type in CONFIG_WINDOW_FAMILIES:
        config = spec.hf_config or {}
        window = None if config.get("use_sliding_window") is False else \
            config.get("sliding_window")
    return int(window) if window else None


def sdpa_input_bytes(compute_bytes: int, autocast: bool) -> int:
    """Bytes per element of what SDPA receives: CUDA's autocast casts its inputs to the 16-bit
    compute dtype (``KERNEL_CUDA(scaled_dot_product_attention, lower_precision_fp)``, aten
    ``autocast_mode.cpp``), so fp32 activations (after kbit preparation) meet flash attention
    there; without autocast they stay as they are."""
    return min(compute_bytes, 2) if autocast else compute_bytes


def _parallel_shared_input(spec: ModelSpec) -> bool:
    """GPT-NeoX's parallel residual normalises the same input twice: it is saved once."""
    return bool(_traits(spec).get("parallel_shared_input")) \
        and spec.hf_config.get("use_parallel_residual", True)


def input_norm_alias_bytes_per_token(spec: ModelSpec, dt: Dtypes) -> int:
    """Bytes per token of a checkpointed layer's recompute that are its checkpointed input
    itself: the norms that read the layer's input save it as is when no cast copies it first
    (``native_layer_norm`` always; an RMSNorm's ``hidden_states.to(torch.float32)`` when the
    residual stream is already fp32, as after kbit preparation)."""
    if spec.norm == "layer":
        return dt.residual * spec.hidden_size
    if dt.residual == FP32 and spec.norm == "rms":
        return FP32 * spec.hidden_size
    return 0


def first_layer_unsaved_bytes_per_token(spec: ModelSpec, targets: tuple[Target, ...],
                                        dt: Dtypes, layer: LayerActivations) -> int:
    """Bytes per token of ``layer`` that the first decoder layer does not keep when nothing
    upstream needs a gradient (frozen embeddings, no checkpointing): the norms that read the
    layer's input save nothing, and neither does a parallel block's MLP without an adapter, which
    reads nothing else (GPT-NeoX ``x + attn(ln1(x)) + mlp(ln2(x))``, Falcon's and Phi's one shared
    norm). Autograd saves a tensor only for an input or weight that needs a gradient."""
    parallel = spec.parallel_block or _parallel_shared_input(spec)
    if not parallel:
        return _norm_bytes(spec, dt, spec.hidden_size, full=False)
    unsaved = _norm_count(spec) * _norm_bytes(spec, dt, spec.hidden_size, full=False)
    if _parallel_shared_input(spec):
        unsaved -= dt.residual * spec.hidden_size  # the input both norms read, saved once
    if not any(t.linear.group == "mlp" for t in targets):
        unsaved += layer.mlp
    return unsaved


def layer_bytes_per_token(spec: ModelSpec, targets: tuple[Target, ...], dt: Dtypes, *,
                          seq_len: int, attn: str, full: bool, dropout: bool,
                          stack: str = "hf-peft", quantized: bool = False,
                          dora: bool = False, release: str = "",
                          autocast: bool = False, padded: bool = False) -> LayerActivations:
    """Bytes per token one decoder layer keeps for backward (no checkpointing).

    ``stack`` applies that stack's rules (:mod:`lorasize.memory.stacks`); ``quantized``: the block's
    linears are quantized (QLoRA).
    """
    rules = stack_rules(stack)
    expands = expands_gqa_for_attention(stack, release)
    d, h, q, kv, inter = dt.compute, spec.hidden_size, spec.q_dim, spec.kv_dim, spec.intermediate_size
    v_extra = 0
    if rules.expands_gqa:
        kv = q  # k and v expanded to every query head before the kernel saves them
    if rules.v_views_qkv and spec.num_kv_heads == spec.num_heads and attn != "eager":
        v_extra = d * (q + kv)  # the saved v keeps the whole fused q/k/v output alive
    heads = spec.num_heads
    traits = _traits(spec)
    masked = sdpa_mask(spec, seq_len, attn, padded)
    gemma_norm = bool(traits.get("norm_plus_one"))
    norms = _norm_count(spec) * _norm_bytes(spec, dt, h, full and not gemma_norm)
    if full and gemma_norm:
        norms += _norm_count(spec) * FP32 * h  # (x * (1 + w)) saves the fp32 normalised x
    if _parallel_shared_input(spec):
        norms -= dt.residual * h
    if spec.qk_norm and spec.norm == "rms":
        norms += FP32 * (q + kv) + FP32 * (spec.num_heads + spec.num_kv_heads)
        if full:
            norms += d * (q + kv)
    # k and v reach the kernel as contiguous copies: RoPE makes new q and k, and the KV cache
    # (use_cache defaults to True outside gradient checkpointing) concatenates v into its own
    # tensor, so a fused projection's output is not kept alive by them.
    if attn == "eager":
        repeat = spec.num_heads != spec.num_kv_heads
        key = value = d * q if repeat else d * kv
        if traits.get("softmax_in_compute_dtype"):
            probs = d * heads * seq_len  # FalconAttention's softmax runs in the compute dtype
        else:
            # softmax(..., dtype=float32).to(query.dtype): the cast is a second copy only when
            # the compute dtype is 16-bit (it is a no-op on fp32, e.g. after kbit preparation).
            probs = (FP32 + (d if d != FP32 else 0)) * heads * seq_len
        if softcaps_attention(spec):
            probs += d * heads * seq_len  # tanh soft-capping saves its output
        attention = d * q + key + value + probs
        if full:
            attention += d * q  # o_proj's weight gradient needs the attention output
    elif attn == "flash":
        # flash-attn 2 (attn_implementation="flash_attention_2") casts fp32 q, k, v to the
        # 16-bit dtype (transformers _flash_attention_forward) and saves them, the output and an
        # fp32 log-sum-exp per head.
        half = min(d, 2)
        attention = half * (q + kv + kv + q) + FP32 * heads
    elif sdpa_backend(spec, sdpa_input_bytes(d, autocast), expands, masked) == "math":
        # PyTorch's math kernel: the scaled q, the scaled and repeated k, the repeated v and the
        # fp32 probabilities (aten _scaled_dot_product_attention_math).
        attention = 3 * d * q + d * heads * seq_len
    else:
        a = sdpa_input_bytes(d, autocast)  # autocast's 16-bit copies are what the kernel saves
        if repeats_kv_itself(spec, masked) and spec.num_kv_heads > 1:
            # the kernel saves transformers' repeated k and v: copies, unless one head is
            # expanded (a view: repeat_kv's reshape keeps its zero stride)
            kv = q
        attention = a * q + a * kv + a * kv + a * q + FP32 * heads
        if masked and not runs_transformers_4(stack, release):
            # SDPA turns transformers 5's boolean mask into a float bias of q's dtype
            # (``convert_boolean_attn_mask``), which the kernel saves for its backward: b x s x s
            # (transformers 4's own masks were float already, one for every layer)
            attention += a * seq_len
        if full and traits.get("cat_rope"):
            attention += d * q  # o_proj's input is a contiguous copy of the kernel's output
    attention += v_extra
    if full:
        attention += d * h  # the norm output, saved once for the q/k/v weight gradients
    act = 1 if rules.fused_gelu else _ACT_FUNCTION_SAVES.get(str(traits.get("act")), 1)
    gated = traits.get("mlp") in ("gated", "moe")
    if gated:
        mlp = (2 + act) * d * inter  # gate (saved by the activation), up, act(gate)
    else:
        mlp = act * d * inter
    if spec.num_experts:
        k = spec.experts_per_token
        # MixtralExperts: per routed token the expert's gate/up output, act(gate), the weighted
        # output (saved by the multiply by the routing weight) and int64 token / slot indices;
        # per token the router's fp32 softmax, top-k indices and values, and their sum.
        mlp = k * (mlp + d * h + FP32 + 2 * INDEX) + FP32 * spec.num_experts + k * (INDEX + FP32) + FP32
        if traits.get("router_norm") and dt.residual != FP32:
            # a router that normalises its input itself (Gemma 4's Gemma4TextRouter.norm): its
            # RMSNorm runs on an fp32 copy, which its pow and multiply save
            mlp += FP32 * h
        if full:
            mlp += k * (d * h + d * inter)  # each expert's gathered input and down_proj input
    elif full:
        mlp += d * h + d * inter  # weight gradients need the MLP inputs too
    shared = int(traits.get("shared_intermediate") or 0)
    if shared:
        # A shared expert (Qwen2-MoE, DeepSeek, Llama 4) is a dense gated MLP every token runs.
        mlp += (2 + act) * d * shared + (d * h + d * shared if full else 0)
    if traits.get("mlp") == "none":
        mlp = 0
    if spec.kind is not None and not spec.kind.analytic:
        attention = 0  # measured by the layer probe (lorasize.trace.layer_probe), not modelled here
    saved_inputs: set[str] = set()
    # the flash and memory-efficient kernels keep their output; eager attention and the math
    # kernel (fp32 or masked grouped-query inputs) do not
    kernel_saves_output = attn == "flash" or (attn == "sdpa"
                                              and sdpa_backend(spec, sdpa_input_bytes(
                                                  dt.compute, autocast), expands, masked) != "math")
    lora = 0 if full else _lora_bytes(spec, targets, dt, dropout,
                                      attn_output_saved=kernel_saves_output,
                                      dora=dora,
                                      fused_qkv_dropout=rules.fused_qkv_dropout,
                                      saved_inputs=saved_inputs,
                                      fused_qkv_output=rules.fused_qkv_saves_lora_output)
    if quantized and rules.quantized_saves_input and not full:
        lora += quantized_input_bytes(spec, dt, saved_inputs)
    return LayerActivations(norms=norms, attention=attention, mlp=mlp, lora=lora)


def quantized_input_bytes(spec: ModelSpec, dt: Dtypes, already_saved: set[str] = frozenset()) -> int:
    """Bytes per token that bitsandbytes <= 0.43.1 keeps for one layer's quantized linears.

    ``MatMul4Bit.forward`` stored its input (``ctx.tensors = (A, B)``) whenever the input needed
    a gradient, though backward uses only B (bitsandbytes PR #1270, "delete useless buffered
    activation", fixed in 0.43.2). Each distinct input is kept once: a norm's output shared by
    the linears it feeds, the attention output (litgpt copies it out of the kernel's layout with
    ``y.transpose(1, 2).reshape``) and the MLP's inner product. Inputs a LoRA branch already
    saves as they are (``already_saved``) are not counted twice.
    """
    widths: dict[str, int] = {}
    for linear in block_linears(spec):
        if linear.quantizable and not linear.experts:
            source = _source(spec, linear.path, linear.group)
            widths[source] = linear.in_features
    in_dtype = {True: dt.compute, False: dt.norm_out}
    return sum(in_dtype[source.endswith(_NOT_NORM_FED)] * width
               for source, width in widths.items() if source not in already_saved)


def previous_inputs_bytes_per_token(spec: ModelSpec, dt: Dtypes, stack: str) -> int:
    """Bytes per token of the previous micro-batch still alive when the next forward ends, for a
    stack with ``previous_inputs_alive`` (:mod:`lorasize.memory.stacks`): every input ``MatMul4Bit``
    kept on its ``ctx`` (:func:`quantized_input_bytes` of each layer, none left out for a LoRA
    branch, whose saved tensors backward did release), less the first layer's norm-fed q/k/v
    input (the frozen embedding's output needs no gradient, so nothing is kept), plus a quantized
    head's input; 0 for other stacks."""
    rules = stack_rules(stack)
    if not (rules.previous_inputs_alive and rules.quantized_saves_input):
        return 0
    total = quantized_input_bytes(spec, dt) * spec.num_layers - dt.norm_out * spec.hidden_size
    if rules.quantize_head:
        total += dt.norm_out * spec.hidden_size
    return total


def next_forward_logits_bytes_per_token(spec: ModelSpec, stack: str, compute: int,
                                        converting: bool = True) -> int:
    """Bytes per token of logits alive late in the next forward (litgpt): the previous
    micro-batch's, as Fabric handed them back, and the new chunks: in the compute dtype while
    the head computes them, in both dtypes while ``convert_output`` casts them (``converting``)."""
    rules = stack_rules(stack)
    handed = rules.logits_bytes or compute
    return (handed + compute + (handed if converting else 0)) * spec.vocab_size


def layer_constant_bytes(spec: ModelSpec, targets: tuple[Target, ...], dt: Dtypes) -> int:
    """Bytes one layer saves whatever the token count.

    PEFT adapts stacked expert weights with ``ParamWrapper``, a parametrization that builds
    ``W + B @ A`` for every expert in the compute dtype on each forward; the expert matmuls then
    save that weight for backward (peft/tuners/lora/layer.py, ``ParamWrapper._activate_lora``).
    """
    if spec.expert_modules:
        return 0  # transformers 4: each expert an nn.Linear with its own LoRA, nothing built
    experts = [t for t in targets if t.linear.experts]
    total = sum(dt.compute * t.linear.weight_numel for t in experts)
    if dt.adapter != dt.compute:
        # ``get_delta_factors`` casts A and B to the weight's dtype (``lhs.to(param.dtype)``),
        # and ``baddbmm`` keeps both copies for their gradients (``_LoraFactorsProxy``).
        total += sum(dt.compute * math.prod(shape) for t in experts
                     for name, shape in t.tensors(False) if name in ("lora_A", "lora_B"))
    return total


def checkpoint_bytes_per_token(spec: ModelSpec, dt: Dtypes) -> int:
    """Bytes per token each checkpointed layer keeps: its input hidden states."""
    return dt.residual * spec.hidden_size


def top_bytes_per_token(spec: ModelSpec, dt: Dtypes, full: bool,
                        head: Target | None = None, *, stack: str = "hf-peft",
                        quantized: bool = False, dropout: bool = False) -> int:
    """Bytes per token saved outside the blocks: the final norm, and a LoRA on the head (its
    fp32 input cast and rank-wide output).

    litgpt: the head's LoRA runs in the compute dtype on its own dropout copy (litgpt
    ``LoRALinear.forward``: ``self.lora_dropout(x) @ self.lora_A.transpose(0, 1)``), and a
    quantized head keeps its input (:func:`quantized_input_bytes`).
    """
    rules = stack_rules(stack)
    h = spec.hidden_size
    total = _norm_bytes(spec, dt, h, full)
    if full:
        total += dt.norm_out * h  # the head's weight gradient needs its input
    head_input_saved = False
    if head is not None and stack == "litgpt":
        total += dt.adapter * head.rank
        if dropout:
            total += (dt.adapter + BOOL) * h
        else:
            total += dt.norm_out * h
            head_input_saved = True
    elif head is not None:
        total += FP32 * h + FP32 * head.rank
    if quantized and rules.quantize_head and rules.quantized_saves_input and not full \
            and not head_input_saved:
        total += dt.norm_out * h
    return total


def logits_peak_bytes_per_token(spec: ModelSpec, stack: str = "hf-peft", compute: int = 2,
                                release: str = "") -> int:
    """Bytes per token live at the loss's backward peak.

    - hf-peft: the fp32 log-softmax output, its incoming and outgoing gradients (3 x 4V).
    - torchtune (``CEWithChunkedOutputLoss``, 8 chunks): every chunk's fp32 log-softmax output is
      saved (4V) and one chunk's two gradients are live at a time (2 x 4V / 8). Releases <= 0.2
      (``StackRules.unchunked_loss_releases``): the recipe's shifted fp32 logits, the
      log-softmax output and its two gradients (4 x 4V).
    - litgpt (``chunked_cross_entropy``, 128-token chunks, no upcast): the log-softmax outputs in
      the compute dtype (dV); one chunk's gradients are negligible per token.
    - transformers 4's own loss for some families (:func:`lorasize.memory.stacks.loss_in_compute_dtype`):
      the same three copies in the compute dtype (3 x dV).

    Final-logit soft-capping (Gemma 2: ``final_logit_softcapping``) runs ``tanh(logits / c) * c``
    on the head's output; ``tanh`` keeps its output for backward (dV more): transformers'
    ``Gemma2ForCausalLM.forward`` and litgpt's ``softcapping`` alike.
    """
    # absent from a config, transformers' Gemma2Config default (30.0) applies: the family trait
    capped = spec.hf_config.get("final_logit_softcapping",
                                30.0 if softcaps_attention(spec) else None)
    softcap = compute * spec.vocab_size if capped else 0
    if stack == "torchtune" and unchunked_loss(stack, release):
        return TORCHTUNE_UNCHUNKED_LOSS_COPIES * FP32 * spec.vocab_size
    if stack == "torchtune":
        return FP32 * spec.vocab_size + 2 * FP32 * spec.vocab_size // TORCHTUNE_OUTPUT_CHUNKS
    if stack == "litgpt":
        # Every chunk's log-softmax output (then its gradient, as backward walks the chunks) and,
        # with logits_alive, the chunked logits themselves, in the dtype Fabric hands them back in.
        rules = stack_rules(stack)
        copies = 2 if rules.logits_alive else 1
        return copies * (rules.logits_bytes or compute) * spec.vocab_size + softcap
    if loss_in_compute_dtype(spec.model_type, stack, release):
        return LOSS_FP32_COPIES_AT_PEAK * compute * spec.vocab_size + softcap
    return LOSS_FP32_COPIES_AT_PEAK * FP32 * spec.vocab_size + softcap


def loss_forward_bytes_per_token(spec: ModelSpec, stack: str, compute: int, release: str) -> int:
    """Bytes per token of logits alive while the loss's forward runs, where that outgrows its
    backward (0 elsewhere): transformers 4's ``ForCausalLMLoss`` (4.48.1
    ``loss/loss_utils.py`` lines 35-47) upcasts (``logits.float()``) and then shifts with a
    contiguous copy (``logits[..., :-1, :].contiguous()``), so the model's 16-bit logits, the
    fp32 copy, the shifted fp32 copy and the log-softmax output are alive at once:
    ``(d + 12) V``. transformers 5 shifts the labels instead (``nn.functional.pad(labels, ...)``)
    and keeps ``(d + 8) V`` there, under its backward's ``12 V``. Logits already fp32 (a head
    upcast by ``prepare_model_for_kbit_training``) make ``.float()`` a no-op: ``12 V``, the
    backward's."""
    if (not runs_transformers_4(stack, release) or compute == FP32
            or loss_in_compute_dtype(spec.model_type, stack, release)):
        return 0
    return (compute + LOSS_FP32_COPIES_AT_PEAK * FP32) * spec.vocab_size


def held_logits_bytes_per_token(spec: ModelSpec, stack: str, release: str) -> int:
    """Bytes per token of logits a recipe keeps referenced through backward: torchtune <= 0.2's
    shifted fp32 logits (``logits = logits[..., :-1, :].contiguous()``, still bound while
    ``loss.backward()`` runs); 0 elsewhere."""
    return FP32 * spec.vocab_size if unchunked_loss(stack, release) else 0


def head_backward_logits_bytes_per_token(spec: ModelSpec, stack: str, compute: int) -> int:
    """Bytes per token of logits live when a chunked head runs backward (litgpt): every chunk's
    logits as the loss saw them and their gradients cast back to the compute dtype (Fabric's
    output cast and the loss run backward for every chunk before the head's first chunk)."""
    rules = stack_rules(stack)
    return ((rules.logits_bytes or compute) + compute) * spec.vocab_size


def loss_chunk_bytes(spec: ModelSpec, stack: str, compute: int, batch: int, seq_len: int) -> int:
    """Bytes of one output chunk's transient gradient in the loss's backward (litgpt:
    ``nll_loss_backward`` fills a ``[batch x 128, V]`` gradient before ``log_softmax_backward``
    turns it into the chunk's logits gradient); 0 for stacks that do not chunk the head."""
    rules = stack_rules(stack)
    if not rules.lm_head_chunk:
        return 0
    return (rules.logits_bytes or compute) * spec.vocab_size * batch * min(rules.lm_head_chunk, seq_len)


def attention_mask_bytes(spec: ModelSpec, dt: Dtypes, batch: int, seq_len: int, attn: str,
                     padded: bool = False, stack: str = "hf-peft", release: str = "") -> int:
    """The 4-D mask a forward builds once: eager attention's causal one, and under SDPA where a
    layer gets a mask (:func:`sdpa_mask`) transformers 5's boolean one (transformers 4's was
    float, in the compute dtype)."""
    if attn == "eager":
        return dt.compute * batch * seq_len * seq_len
    if not any(sdpa_mask(view.spec, seq_len, attn, padded) for view in kind_views(spec, ())):
        return 0
    width = dt.compute if runs_transformers_4(stack, release) else BOOL
    return width * batch * seq_len * seq_len


def attention_backward_transient(spec: ModelSpec, dt: Dtypes, batch: int, seq_len: int,
                                 attn: str, expands_gqa: bool = False,
                                 autocast: bool = False) -> int:
    """Bytes of the s x s matrices an attention backward makes when the kernel materialises the
    probabilities (eager attention, and SDPA's math kernel, taken when fp32 activations meet
    grouped-query heads): ``softmax_backward_data`` writes the scores' gradient while the
    probabilities' gradient is alive, two heads x s x s matrices in the activations' dtype
    (aten ``_scaled_dot_product_attention_math``, transformers ``eager_attention_forward``)."""
    if attn == "eager" or (attn == "sdpa" and sdpa_backend(
            spec, sdpa_input_bytes(dt.compute, autocast), expands_gqa) == "math"):
        return 2 * dt.compute * batch * spec.num_heads * seq_len * seq_len
    return 0


def layer_backward_transient_per_token(spec: ModelSpec, dt: Dtypes) -> int:
    """Bytes per token that exist only while one layer runs backward: the gradients of the MLP's
    three intermediate tensors and of the hidden states flowing down."""
    return 3 * dt.compute * spec.intermediate_size + 2 * dt.residual * spec.hidden_size


def mlp_output_projection(spec: ModelSpec):
    """The dense MLP's output projection among a layer's linears (``down_proj``, ``fc2``,
    ``dense_4h_to_h``...), or None: the MLP linear that no norm feeds."""
    return next((m for m in block_linears(spec) if m.group == "mlp" and not m.experts
                 and m.path.endswith(_NOT_NORM_FED)), None)


def saved_output_projection_input_per_token(spec: ModelSpec, targets: tuple[Target, ...],
                                            dt: Dtypes) -> int:
    """Bytes per token of the MLP output projection's input that a LoRA branch on it saves as
    is (0 when it has no such branch)."""
    out = mlp_output_projection(spec)
    return sum(dt.compute * t.linear.in_features for t in targets
               if out is not None and t.linear.path == out.path
               and t.variant not in ("lora-fa", "vera", "ia3") and t.copies == spec.num_layers)


@dataclass(frozen=True)
class KindView:
    """One kind of decoder layer of a card model, as the per-layer formulas see it: ``spec`` is
    the model with that kind's widths and ``num_layers`` its layer count; ``targets`` are the
    adapted matrices of those layers."""

    spec: ModelSpec
    targets: tuple[Target, ...]

    @property
    def layers(self) -> int:
        return self.spec.num_layers


def kind_views(spec: ModelSpec, targets: tuple[Target, ...]) -> tuple[KindView, ...]:
    """The model's decoder layers, one view per kind: the model itself for the hand-written
    families (every layer alike), each kind of an architecture card otherwise. Vision-tower
    targets belong to no kind (text-only training never runs the tower)."""
    if spec.card is None:
        return (KindView(spec, targets),)
    from dataclasses import replace

    from ..arch.layout import copies

    views = []
    for kind in spec.card.kinds:
        t = kind.traits
        layers = set(kind.layers)
        view = replace(
            spec, num_layers=len(kind.layers), kind=kind,
            num_heads=int(t.get("heads") or spec.num_heads),
            num_kv_heads=int(t.get("kv_heads") or spec.num_kv_heads),
            head_dim=int(t.get("head_dim") or spec.head_dim),
            intermediate_size=int(t.get("intermediate") or 0),
            num_experts=int(t.get("experts") or 0), experts_per_token=int(t.get("top_k") or 0),
            qk_norm=bool(t.get("qk_norm")), norm=str(t.get("norm", "rms")))
        kind_targets = []
        for target in targets:
            linear = target.linear
            if linear.group in ("head", "vision") or linear.prefix:
                continue
            held = layers & set(linear.layer_ids or range(spec.num_layers))
            if not held:
                continue
            share = len(held) * target.copies // copies(spec, linear)
            if share:
                kind_targets.append(replace(target, copies=share))
        views.append(KindView(view, tuple(kind_targets)))
    return tuple(views)
