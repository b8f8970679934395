"""Which parameters a model holds, module by module, as transformers 5 builds it.

Every family (see :data:`lorasize.arch.model.FAMILIES`) lays out its decoder block as a list of
:class:`Linear` modules (what LoRA can target, what bitsandbytes can quantize) and a list of other
:class:`Param` tensors (norms, embeddings, routers...). Module paths are relative to the block and
spelled as in the Hugging Face modeling file (``self_attn.q_proj``, ``mlp.c_proj``), so target
names match the way PEFT matches them: a target ``t`` matches path ``p`` when ``p == t`` or
``p.endswith("." + t)``.

Sources: ``transformers/models/<type>/modeling_<type>.py`` at transformers 5.23.0. The counts are
checked in ``tests/test_layout_meta.py`` against ``sum(p.numel())`` of the real classes built on
the meta device, and the LoRA counts against PEFT's own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .model import ModelSpec


@dataclass(frozen=True)
class Linear:
    """A weight matrix LoRA can adapt.

    Attributes:
        path: module path inside the block (``self_attn.q_proj``), or at the top for the head.
        in_features: input width.
        out_features: output width.
        bias: carries a bias vector.
        group: ``"attn"``, ``"mlp"`` or ``"head"``.
        experts: number of stacked expert matrices held in one 3-D parameter (0 for a plain
            linear module). PEFT adapts these through ``target_parameters``.
        quantizable: bitsandbytes replaces it when loading in 4 or 8 bit (transformers'
            ``replace_with_bnb_linear`` converts only ``nn.Linear`` and ``Conv1D`` modules).
        rank_multiplier: PEFT's rank for this matrix is ``r`` times this (fused expert
            gate/up matrices get ``2r`` so they match two separate adapters).
    """

    path: str
    in_features: int
    out_features: int
    bias: bool = False
    group: str = "attn"
    experts: int = 0
    quantizable: bool = True
    rank_multiplier: int = 1
    # Read from an architecture card (lorasize.arch.card); the defaults mean "one per decoder
    # layer, under the family's block path, all-linear by lorasize's rule".
    count: int = 0  # copies in the model; 0: one per decoder layer
    layer_ids: tuple[int, ...] = ()  # the layers holding it, when not every layer
    prefix: str = ""  # the module list it repeats under, when not the decoder's
    all_linear: bool | None = None  # PEFT's all-linear adapts it (None: every block linear)

    @property
    def name(self) -> str:
        """The last component of the path (``q_proj``)."""
        return self.path.rsplit(".", 1)[-1]

    @property
    def weight_numel(self) -> int:
        """Elements of the weight (all experts together)."""
        return max(self.experts, 1) * self.in_features * self.out_features

    @property
    def numel(self) -> int:
        """Elements of weight and bias."""
        return self.weight_numel + (self.out_features * max(self.experts, 1) if self.bias else 0)

    def matches(self, target: str) -> bool:
        """Whether a PEFT ``target_modules`` entry selects this module (suffix match)."""
        return self.path == target or self.path.endswith("." + target)


@dataclass(frozen=True)
class Param:
    """A parameter that is not a LoRA-targetable matrix (norm, embedding, router...)."""

    path: str
    numel: int
    kind: str = "norm"  # "norm", "embedding", "router", "other"
    count: int = 0  # copies; 0: one per decoder layer (block params) or one (top params)


def copies(spec: ModelSpec, linear: Linear) -> int:
    """How many copies of a block linear the model holds."""
    return linear.count or spec.num_layers


def layer_index(linear: Linear, i: int) -> int:
    """The layer index of the ``i``-th copy of a linear."""
    return linear.layer_ids[i] if linear.layer_ids else i


def copy_layers(linear: Linear, count: int) -> list[int | None]:
    """Layer indices of ``count`` copies of a linear (None for one outside any layer list:
    the head, a projector): what :func:`module_path` takes."""
    if linear.group == "head" or (linear.group == "vision" and not linear.prefix):
        return [None]
    return [layer_index(linear, i) for i in range(count)]


def _norm(spec: ModelSpec, path: str, width: int | None = None) -> Param:
    width = spec.hidden_size if width is None else width
    return Param(path, width * (2 if spec.norm == "layer" else 1))


def block_linears(spec: ModelSpec) -> tuple[Linear, ...]:
    """The LoRA-targetable matrices of one decoder block (of every kind of block, each with its
    count, for a model an architecture card describes)."""
    linears = _block_linears(spec)
    if spec.expert_modules:
        linears = tuple(part for m in linears for part in _as_expert_modules(spec, m))
    return linears


# transformers 4's names of an expert's three matrices (gate, up, down), by model type; the others
# used the dense MLP's (gate_proj, up_proj, down_proj). modeling_mixtral.py / modeling_phimoe.py
# v4.46: MixtralBlockSparseTop2MLP / PhimoeBlockSparseTop2MLP ``w1``, ``w3``, ``w2``.
EXPERT_MODULE_NAMES = {"mixtral": ("w1", "w3", "w2"), "phimoe": ("w1", "w3", "w2")}
_DENSE_NAMES = ("gate_proj", "up_proj", "down_proj")


def is_router(spec: ModelSpec, linear: Linear) -> bool:
    """Whether ``linear`` is a mixture of experts' router: an MLP matrix with one output per
    expert, not itself an expert."""
    return (bool(spec.num_experts) and linear.out_features == spec.num_experts
            and not linear.experts and linear.group == "mlp")


def _as_expert_modules(spec: ModelSpec, linear: Linear) -> tuple[Linear, ...]:
    """A linear as transformers 4 built it: a router an ``nn.Linear``, and a 3-D expert weight
    one ``nn.Linear`` per expert, its fused gate/up matrix two (each a rank-r LoRA of its own;
    bitsandbytes converts them all)."""
    if not linear.experts:
        return (replace(linear, quantizable=True),) if is_router(spec, linear) else (linear,)
    gate, up, down = EXPERT_MODULE_NAMES.get(spec.model_type, _DENSE_NAMES)
    prefix = linear.path.rsplit(".", 1)[0] + "." if "." in linear.path else ""
    if linear.rank_multiplier == 2:  # gate and up fused into one 3-D weight
        half = linear.out_features // 2
        return tuple(replace(linear, path=prefix + name, out_features=half, quantizable=True,
                             rank_multiplier=1) for name in (gate, up))
    name = {"gate_proj": gate, "up_proj": up}.get(linear.name, down)
    return (replace(linear, path=prefix + name, quantizable=True),)


def expert_matrix_numel(linear: Linear) -> int:
    """Elements of one expert's matrix, or of the whole weight of a plain linear."""
    return linear.in_features * linear.out_features if linear.experts else linear.weight_numel


def _block_linears(spec: ModelSpec) -> tuple[Linear, ...]:
    if spec.card is not None:
        return _card_block_linears(spec.card)
    h, q, kv, inter = spec.hidden_size, spec.q_dim, spec.kv_dim, spec.intermediate_size
    family = spec.family
    if family == "gpt2":
        return (
            Linear("attn.c_attn", h, 3 * h, True),
            Linear("attn.c_proj", h, h, True),
            Linear("mlp.c_fc", h, inter, True, "mlp"),
            Linear("mlp.c_proj", inter, h, True, "mlp"),
        )
    if family in ("gpt_neox", "falcon"):
        prefix = "attention" if family == "gpt_neox" else "self_attention"
        return (
            Linear(f"{prefix}.query_key_value", h, q + 2 * kv, spec.qkv_bias),
            Linear(f"{prefix}.dense", q, h, spec.out_bias),
            Linear("mlp.dense_h_to_4h", h, inter, spec.mlp_bias, "mlp"),
            Linear("mlp.dense_4h_to_h", inter, h, spec.mlp_bias, "mlp"),
        )
    if family == "qwen":
        return (
            Linear("attn.c_attn", h, q + 2 * kv, True),
            Linear("attn.c_proj", q, h, spec.out_bias),
            Linear("mlp.w1", h, inter, spec.mlp_bias, "mlp"),
            Linear("mlp.w2", h, inter, spec.mlp_bias, "mlp"),
            Linear("mlp.c_proj", inter, h, spec.mlp_bias, "mlp"),
        )
    if family == "phi3":
        return (
            Linear("self_attn.qkv_proj", h, q + 2 * kv, spec.qkv_bias),
            Linear("self_attn.o_proj", q, h, spec.out_bias),
            Linear("mlp.gate_up_proj", h, 2 * inter, spec.mlp_bias, "mlp"),
            Linear("mlp.down_proj", inter, h, spec.mlp_bias, "mlp"),
        )
    attention = (
        Linear("self_attn.q_proj", h, q, spec.qkv_bias),
        Linear("self_attn.k_proj", h, kv, spec.qkv_bias),
        Linear("self_attn.v_proj", h, kv, spec.qkv_bias),
        Linear("self_attn.dense" if family == "phi" else "self_attn.o_proj", q, h, spec.out_bias),
    )
    if family == "phi":
        mlp = (Linear("mlp.fc1", h, inter, True, "mlp"), Linear("mlp.fc2", inter, h, True, "mlp"))
    elif family == "mixtral":
        experts = spec.num_experts
        mlp = (
            # MixtralTopKRouter is no nn.Linear, so bitsandbytes leaves it, but PEFT adapts it.
            Linear("mlp.gate", h, experts, False, "mlp", quantizable=False),
            Linear("mlp.experts.gate_up_proj", h, 2 * inter, False, "mlp", experts=experts,
                   quantizable=False, rank_multiplier=2),
            Linear("mlp.experts.down_proj", inter, h, False, "mlp", experts=experts,
                   quantizable=False),
        )
    else:
        mlp = (
            Linear("mlp.gate_proj", h, inter, spec.mlp_bias, "mlp"),
            Linear("mlp.up_proj", h, inter, spec.mlp_bias, "mlp"),
            Linear("mlp.down_proj", inter, h, spec.mlp_bias, "mlp"),
        )
    return attention + mlp


def block_params(spec: ModelSpec) -> tuple[Param, ...]:
    """The other parameters of one decoder block (norms)."""
    if spec.card is not None:
        return _card_block_params(spec.card)
    family = spec.family
    if family in ("gpt2", "qwen"):
        return (_norm(spec, "ln_1"), _norm(spec, "ln_2"))
    if family == "falcon":
        if spec.hf_config.get("_falcon_new_arch"):
            return (_norm(spec, "ln_attn"), _norm(spec, "ln_mlp"))
        if spec.parallel_block:
            return (_norm(spec, "input_layernorm"),)
        return (_norm(spec, "input_layernorm"), _norm(spec, "post_attention_layernorm"))
    if family == "phi":
        norms = (_norm(spec, "input_layernorm"),)
        if spec.qk_norm:
            norms += (_norm(spec, "self_attn.q_layernorm", spec.head_dim),
                      _norm(spec, "self_attn.k_layernorm", spec.head_dim))
        return norms
    if family == "gemma2":
        return tuple(_norm(spec, name) for name in (
            "input_layernorm", "post_attention_layernorm",
            "pre_feedforward_layernorm", "post_feedforward_layernorm"))
    norms = (_norm(spec, "input_layernorm"),)
    if not spec.parallel_block:
        norms += (_norm(spec, "post_attention_layernorm"),)
    if family == "qwen3":
        norms += (Param("self_attn.q_norm", spec.head_dim), Param("self_attn.k_norm", spec.head_dim))
    if family == "stablelm" and spec.qk_norm:
        # StableLmLayerNormPerHead: one bias-free LayerNorm(head_dim) per query / key-value head.
        norms += (Param("self_attn.q_layernorm", spec.num_heads * spec.head_dim),
                  Param("self_attn.k_layernorm", spec.num_kv_heads * spec.head_dim))
    return norms


def head_linear(spec: ModelSpec) -> Linear:
    """The output head, ``lm_head`` in every family under transformers 5 (GPT-NeoX's was
    ``embed_out`` before). bitsandbytes never quantizes it."""
    if spec.card is not None:
        head = spec.card.head
        return Linear(head.path, head.in_features, head.out_features, head.bias, "head",
                      quantizable=False, count=1, all_linear=False)
    return Linear("lm_head", spec.hidden_size, spec.vocab_size, spec.lm_head_bias, "head",
                  quantizable=False)


def top_params(spec: ModelSpec) -> tuple[Param, ...]:
    """Parameters outside the blocks except the head: embeddings and the final norm (and, for
    a multimodal checkpoint, every non-linear weight of its vision tower and projector)."""
    if spec.card is not None:
        return tuple(Param(_joined(p.prefix, p.path), p.numel, p.kind, p.count)
                     for p in spec.card.extra_params)
    params = [Param("embed_tokens", spec.vocab_size * spec.hidden_size, "embedding")]
    if spec.family == "gpt2":
        params.append(Param("wpe", spec.max_positions * spec.hidden_size, "embedding"))
    final = {"gpt2": "ln_f", "qwen": "ln_f", "gpt_neox": "final_layer_norm", "falcon": "ln_f",
             "phi": "final_layernorm"}.get(spec.family, "norm")
    params.append(_norm(spec, final))
    return tuple(params)


def extra_linears(spec: ModelSpec) -> tuple[Linear, ...]:
    """Linears outside the decoder blocks and the head: a multimodal checkpoint's vision tower
    and projector (frozen, never run by text-only training, but loaded, counted, quantized and,
    under PEFT's all-linear, adapted)."""
    if spec.card is None:
        return ()
    return tuple(Linear(m.path, m.in_features, m.out_features, m.bias, m.group,
                        quantizable=m.quantizable, rank_multiplier=m.rank_multiplier,
                        count=m.count, prefix=m.prefix, all_linear=m.all_linear)
                 for m in spec.card.extra_linears)


def total_params(spec: ModelSpec) -> int:
    """All parameters, counting tied embeddings once (as ``model.parameters()`` does)."""
    total = sum(m.numel * copies(spec, m) for m in block_linears(spec) + extra_linears(spec))
    total += sum(p.numel * (p.count or spec.num_layers) for p in block_params(spec))
    total += sum(p.numel * (p.count or 1) for p in top_params(spec))
    head = head_linear(spec)
    if not spec.tie_embeddings:
        total += head.weight_numel
    if head.bias:
        total += head.out_features
    return total


_BLOCK_PREFIX = {"gpt_neox": "gpt_neox.layers", "falcon": "transformer.h", "gpt2": "transformer.h"}


def module_path(spec: ModelSpec, linear: Linear, layer: int | None) -> str:
    """Full module path in the Hugging Face model (``model.layers.3.self_attn.q_proj``)."""
    if layer is None:
        return _joined(linear.prefix, linear.path)
    prefix = linear.prefix or (spec.card.block_prefix if spec.card is not None
                               else _BLOCK_PREFIX.get(spec.family, "model.layers"))
    return f"{prefix}.{layer}.{linear.path}"


def _joined(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path


def _card_block_linears(card) -> tuple[Linear, ...]:
    """The card's block linears, one entry per distinct matrix, with the layers holding it."""
    merged: dict[tuple, list] = {}
    for kind in card.kinds:
        for m in kind.linears:
            key = (m.path, m.in_features, m.out_features, m.bias, m.group, m.experts,
                   m.quantizable, m.rank_multiplier, m.all_linear)
            merged.setdefault(key, []).extend(kind.layers)
    linears = []
    for (path, in_f, out_f, bias, group, experts, quantizable, mult, all_linear), layers \
            in merged.items():
        layers = tuple(sorted(layers))
        everywhere = len(layers) == card.num_layers
        linears.append(Linear(path, in_f, out_f, bias, group, experts, quantizable, mult,
                              count=len(layers), layer_ids=() if everywhere else layers,
                              all_linear=all_linear))
    return tuple(linears)


def _card_block_params(card) -> tuple[Param, ...]:
    merged: dict[tuple, int] = {}
    for kind in card.kinds:
        for p in kind.params:
            key = (p.path, p.numel, p.kind)
            merged[key] = merged.get(key, 0) + len(kind.layers)
    return tuple(Param(path, numel, kind, count) for (path, numel, kind), count in merged.items())
