"""Derive an architecture card from the real transformers and PEFT code (torch tier).

Steps, each the real library deciding (learned in the derive prototype, ``shared/prototypes``):

1. **Build** the class named by the config on the meta device (no weight is allocated, so a
   671B model costs what a 1B one does): ``AutoModelForImageTextToText`` first when the config
   has a ``vision_config`` (the class most recipes load), else ``AutoModelForCausalLM``.
2. **Weights**: every parameter of every decoder layer, grouped into kinds by a fingerprint
   (relative names, shapes, owning classes and the config's ``layer_types`` entry); everything
   outside the layers (embeddings, final norm, head, vision tower, projector) as extras, with
   repeated vision layers folded into one entry and a count.
3. **Quantization**: transformers' own bitsandbytes rule: ``get_modules_to_not_convert`` +
   ``should_convert_module`` + ``replace_with_bnb_linear``'s ``type(m) is nn.Linear or
   isinstance(m, Conv1D)``. Fused 3-D experts and routers are never 4-bit.
4. **PEFT's all-linear**: the real ``get_peft_model`` on a second meta build; every wrapped
   module (``nn.Linear`` or ``ParamWrapper``) is read back with its rank. PEFT rewrites
   all-linear for many MoE types on transformers 5 (experts and router adapted through
   ``target_parameters``, gate/up at rank 2r, dense and shared MLPs dropped); the card records
   what it did, and what it refused, in its own words.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import re
from collections import OrderedDict
from typing import Any

import torch

from ..errors import LorasizeError
from ..trace.build import quiet
from .card import ArchCard, CardLinear, CardParam, LayerKind

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

PROBE_RANK = 8  # the rank of the all-linear build; rank multiples are read against it
# A decoder layer's child whose name holds one of these is its MLP (mlp, shared_mlp,
# block_sparse_moe, feed_forward, ffn...); the other non-norm child is its token mixer.
_MLP_PARTS = ("mlp", "moe", "expert", "ffn", "feed_forward")
_MOE_TOPK_KEYS = ("num_experts_per_tok", "num_experts_per_token", "top_k_experts", "moe_topk", "top_k",
                  "experts_per_token", "num_selected_experts")
_DROP_KEYS = ("architectures", "auto_map", "transformers_version", "quantization_config",
              "_name_or_path", "torch_dtype", "dtype")
_INDEX = re.compile(r"\.(\d+)\.")


def hf_config(config: dict[str, Any], source: str = "config"):
    """transformers' config object for a config.json dictionary.

    Raises:
        LorasizeError: no model_type, or one the installed transformers does not know.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    # A deep copy: transformers' config classes rewrite nested dictionaries in place
    # (rope_scaling gains rope_theta), and the user's config must stay as they gave it.
    values = {k: copy.deepcopy(v) for k, v in config.items()
              if k not in _DROP_KEYS and not k.startswith("_")}
    model_type = values.pop("model_type", None)
    if model_type is None:
        raise LorasizeError("config is missing the key 'model_type'", source=source)
    if model_type not in CONFIG_MAPPING_NAMES:
        import transformers

        raise LorasizeError(f"model_type '{model_type}' is not known to the installed "
                            f"transformers {transformers.__version__}; a newer release may "
                            f"know it (pip install -U transformers)", source=source)
    with quiet():
        try:
            return AutoConfig.for_model(model_type, **values)
        except Exception as exc:  # a config class rejecting a value: the user's file
            raise LorasizeError(f"transformers rejects this {model_type} config: "
                                f"{_first_line(exc)}", source=source) from None


def build_meta(config: dict[str, Any], source: str = "config", attn: str | None = None,
               meta: bool = True):
    """(model, auto class name) of the class most recipes load, on the meta device.

    ``attn``: the attention implementation; a model without it (gpt-oss has no SDPA path:
    attention sinks) is built with eager attention instead, from a fresh config, since a failed
    build leaves the refused implementation set on the config object.

    Raises:
        LorasizeError: transformers cannot build this config as a causal or image-text LM.
    """
    import transformers

    autos = [transformers.AutoModelForCausalLM, transformers.AutoModelForImageTextToText]
    if "vision_config" in config:
        autos.reverse()
    errors = []
    for auto in autos:
        for implementation in ([attn, "eager"] if attn and attn != "eager" else [attn]):
            cfg = hf_config(config, source)
            kwargs = {"attn_implementation": implementation} if implementation else {}
            try:
                with (torch.device("meta") if meta else contextlib.nullcontext()), quiet():
                    return auto.from_config(cfg, **kwargs), auto.__name__
            except ValueError as exc:
                message = _first_line(exc)
                if "Unrecognized configuration class" in message:
                    break  # this auto class does not know the config: try the next
                errors.append(f"{auto.__name__}: {message}")
            except Exception as exc:  # noqa: BLE001  a modeling file failing to build
                errors.append(f"{auto.__name__}: {type(exc).__name__}: {_first_line(exc)}")
                break
    reason = "; ".join(errors) or "neither AutoModelForCausalLM nor AutoModelForImageTextToText " \
                                   "maps this config"
    raise LorasizeError(f"transformers cannot build model_type '{config.get('model_type')}' "
                        f"as a language model ({reason})", source=source)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _decoder_layers(model) -> tuple[str, torch.nn.ModuleList]:
    """The text decoder's layer list and its path (``model.layers``,
    ``model.language_model.layers``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    names = {id(m): n for n, m in model.named_modules()}
    best: tuple[str, torch.nn.ModuleList] | None = None
    roots = [decoder] if decoder is not None else [model]
    for root in roots:
        prefix = names.get(id(root), "")
        # The shallowest module list outside any vision tower and any other list (LongCat's
        # layers hold lists of sub-layers), the longer one at equal depth.
        for name, child in root.named_modules():
            if not isinstance(child, torch.nn.ModuleList) or not len(child) \
                    or "vision" in name or "visual" in name or _INDEX.search(f".{name}."):
                continue
            path = f"{prefix}.{name}" if prefix else name
            rank = (path.count("."), -len(child))
            if best is None or rank < (best[0].count("."), -len(best[1])):
                best = (path, child)
    if best is None:
        raise LorasizeError(f"cannot find the decoder layers of {type(model).__name__}")
    return best


def bnb_converted(model) -> set[str]:
    """Module names transformers' ``replace_with_bnb_linear`` turns into 4-bit layers."""
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = HfQuantizer.get_modules_to_not_convert(model, None, model._keep_in_fp32_modules)
    return {name for name, m in model.named_modules()
            if should_convert_module(name, skip) and (type(m) is torch.nn.Linear
                                                      or isinstance(m, Conv1D))}


def _peft_all_linear(config: dict[str, Any], source: str) -> tuple[dict[str, tuple[int, int, int]], str]:
    """PEFT's all-linear on a fresh meta build: full weight path -> (rank multiplier, in, out),
    and PEFT's refusal ('' when it wraps the model)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    model, _ = build_meta(config, source)
    try:
        with torch.device("meta"), quiet():
            wrapped = get_peft_model(model, LoraConfig(r=PROBE_RANK, target_modules="all-linear"))
    except Exception as exc:  # noqa: BLE001  PEFT's refusal, reported in its own words
        # (sets printed in sorted order, so the card does not change from run to run)
        message = re.sub(r"\{([^{}]*)\}", lambda m: "{" + ", ".join(
            sorted(x.strip() for x in m.group(1).split(","))) + "}", _first_line(exc))
        return {}, f"{type(exc).__name__}: {message}"
    adapted: dict[str, tuple[int, int, int]] = {}
    for name, module in wrapped.named_modules():
        if not isinstance(module, BaseTunerLayer) or "default" not in getattr(module, "lora_A", {}):
            continue
        path = name.removeprefix("base_model.model.").replace(".base_layer", "")
        parameter = getattr(module, "parameter_name", None)
        if parameter and parameter != "weight":
            path = f"{path}.{parameter}"
        a = module.lora_A["default"].weight
        b = module.lora_B["default"].weight
        experts = getattr(module, "num_experts", 1) or 1
        rank = a.shape[0] // experts if parameter and parameter != "weight" else a.shape[0]
        # (in = A's elements per rank: a convolution's A is (r, in, *kernel))
        adapted[path] = (max(1, rank // PROBE_RANK), a[0].numel(), b.shape[0])
    return adapted, ""


def _owner(model, param_name: str):
    return model.get_submodule(param_name.rpartition(".")[0]) if "." in param_name else model


def _is_expert(module, param: torch.nn.Parameter) -> bool:
    """Fused experts: a 3-D weight owned by a module whose class says Expert (a 3-D
    convolution weight of a linear-attention layer is not one)."""
    return param.dim() == 3 and "expert" in type(module).__name__.lower()


def _param_kind(module, name: str) -> str:
    cls = type(module).__name__.lower()
    if "norm" in cls or "norm" in name.rsplit(".", 1)[0].rsplit(".", 1)[-1]:
        return "norm"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    return "other"


def _is_mlp_name(name: str) -> bool:
    return any(part in name for part in _MLP_PARTS)


def _group(path: str) -> str:
    return "mlp" if _is_mlp_name(path.split(".", 1)[0]) else "attn"


def _layer_weights(model, prefix: str, index: int, layer, converted: set[str],
                   adapted: dict[str, tuple[int, int, int]]):
    """(linears, params) of one decoder layer, paths relative to it."""
    linears: list[CardLinear] = []
    params: list[CardParam] = []
    full = f"{prefix}.{index}"
    linear_modules = {n: m for n, m in layer.named_modules()
                      if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}
    for name, param in layer.named_parameters():
        module_name, _, leaf = name.rpartition(".")
        owner = layer.get_submodule(module_name) if module_name else layer
        if module_name in linear_modules:
            if leaf != "weight":
                continue  # the bias is counted with its linear
            m = linear_modules[module_name]
            in_f, out_f = (param.shape[1], param.shape[0]) if param.dim() == 2 else (0, 0)
            if type(m).__name__ == "Conv1D":
                in_f, out_f = param.shape[0], param.shape[1]
            mult, _, _ = adapted.get(f"{full}.{module_name}", (1, 0, 0))
            linears.append(CardLinear(
                path=module_name, in_features=int(in_f), out_features=int(out_f),
                bias=getattr(m, "bias", None) is not None, group=_group(module_name),
                quantizable=f"{full}.{module_name}" in converted,
                all_linear=f"{full}.{module_name}" in adapted, rank_multiplier=mult))
        elif _is_expert(owner, param):
            mult, in_f, out_f = adapted.get(f"{full}.{name}", (1, param.shape[2], param.shape[1]))
            linears.append(CardLinear(
                path=name, in_features=int(in_f), out_features=int(out_f), group=_group(name),
                experts=int(param.shape[0]), quantizable=False,
                all_linear=f"{full}.{name}" in adapted, rank_multiplier=mult))
        elif leaf == "weight" and param.dim() == 2 and f"{full}.{module_name}" in adapted:
            # A router PEFT wraps (ParamWrapper on its weight): transformers 5 routers are no
            # nn.Linear, so bitsandbytes leaves them 16-bit.
            mult, _, _ = adapted[f"{full}.{module_name}"]
            linears.append(CardLinear(
                path=module_name, in_features=int(param.shape[1]),
                out_features=int(param.shape[0]), group=_group(module_name), quantizable=False,
                all_linear=True, rank_multiplier=mult))
        else:
            params.append(CardParam(path=name, numel=int(param.numel()),
                                    kind=_param_kind(owner, name)))
    return linears, params


def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _cfg(config, *keys, default=None):
    for key in keys:
        try:
            value = getattr(config, key, None)
        except Exception:  # noqa: BLE001  per-layer attributes refuse a global read (Gemma 4)
            value = None
        if value is not None:
            return value
    return default


# Model types whose eager attention takes its softmax in the compute dtype, with no fp32 copy:
# gpt-oss (transformers 5.23 ``modeling_gpt_oss.eager_attention_forward``: ``F.softmax(
# combined_logits, dim=-1, dtype=combined_logits.dtype)``, the sink column concatenated first).
SOFTMAX_IN_COMPUTE_DTYPE = frozenset({"gpt_oss"})
# Model types whose experts run their own activation, not the config's ``hidden_act``: gpt-oss's
# clamped SwiGLU (``GptOssExperts._apply_gate``; its config says "silu").
ACTIVATION_BY_MODEL_TYPE = {"gpt_oss": "gpt_oss_swiglu"}


def _model_type(model) -> str:
    text = getattr(model.config, "text_config", None) or model.config
    return str(getattr(text, "model_type", ""))


def _router_norm(router) -> bool:
    """Whether a router normalises its input itself (Gemma 4's ``Gemma4TextRouter.norm``)."""
    return any("Norm" in type(m).__name__ for m in router.children())


def kind_traits(model, layer, linears: list[CardLinear], params: list[CardParam],
                layer_type: str | None) -> dict[str, Any]:
    """What the activation formulas need of one kind of layer, read from its weights and
    modules:

    - ``mixer``: ``attention`` (separate or fused q/k/v and an output projection), ``mla``
      (DeepSeek's low-rank q/kv), or ``other`` (Mamba, gated delta nets, short convolutions:
      measured, not modelled analytically); ``mixer_class`` names the module;
    - ``q_dim``, ``kv_dim``, ``heads``, ``kv_heads``, ``head_dim``; ``sliding_window`` for a
      ``sliding_attention`` layer;
    - ``norms`` (hidden-width norms), ``norm`` (``rms`` or ``layer``), ``norm_plus_one``
      (Gemma's ``x * (1 + w)``), ``qk_norm``;
    - ``mlp``: ``gated``, ``plain`` or ``moe``; ``intermediate`` (per expert for MoE),
      ``experts``, ``top_k``, ``shared_intermediate``; ``act`` (the activation function).
    """
    text = _text_config(model)
    hidden = _hidden(model)
    by_leaf = {m.path.rsplit(".", 1)[-1]: m for m in linears if not m.experts}
    traits: dict[str, Any] = {}
    children = dict(layer.named_children())
    mixer_name = next((n for n, c in children.items() if not _is_mlp_name(n)
                       and "norm" not in n and any(True for _ in c.parameters())), "")
    traits["mixer_class"] = type(children[mixer_name]).__name__ if mixer_name else ""
    head_dim = int(_cfg(text, "head_dim", default=0) or 0)
    qk = [p for p in params if p.kind == "norm" and p.path.split(".")[0] == mixer_name
          and p.path.rsplit(".", 2)[-2] in ("q_norm", "k_norm", "q_layernorm", "k_layernorm")]
    if "q_proj" in by_leaf and "k_proj" in by_leaf and ({"o_proj", "out_proj", "dense"} & set(by_leaf)):
        # (Gemma 4's global layers have no v_proj: their values are the keys.)
        q, kv = by_leaf["q_proj"].out_features, by_leaf["k_proj"].out_features
        traits["mixer"] = "attention"
    elif "qkv_proj" in by_leaf or "query_key_value" in by_leaf:
        fused = by_leaf.get("qkv_proj") or by_leaf["query_key_value"]
        heads_cfg = int(_cfg(text, "num_attention_heads", "n_head", default=1))
        kv_heads_cfg = int(_cfg(text, "num_key_value_heads", default=heads_cfg))
        head_dim = head_dim or fused.out_features // (heads_cfg + 2 * kv_heads_cfg)
        q, kv = heads_cfg * head_dim, kv_heads_cfg * head_dim
        traits["mixer"] = "attention"
    elif any("kv_a_proj" in m.path for m in linears):
        q = kv = 0
        traits["mixer"] = "mla"
    else:
        q = kv = 0
        traits["mixer"] = "other"
    if traits["mixer"] == "attention":
        k_norm = next((p for p in qk if p.path.rsplit(".", 2)[-2] in ("k_norm", "k_layernorm")), None)
        if k_norm is not None and k_norm.numel < kv:
            head_dim = k_norm.numel  # a per-head norm has the head's width (Gemma 4's global heads)
        head_dim = head_dim or hidden // int(_cfg(text, "num_attention_heads", "n_head", default=1))
        traits.update(q_dim=q, kv_dim=kv, head_dim=head_dim, heads=q // head_dim,
                      kv_heads=max(1, kv // head_dim), qk_norm=bool(qk))
        if layer_type and "sliding" in layer_type:
            traits["sliding_window"] = _cfg(text, "sliding_window")
    norm_modules = {p.path.rsplit(".", 1)[0] for p in params if p.kind == "norm"
                    and p.numel in (hidden, 2 * hidden) and p not in qk}
    traits["norms"] = len(norm_modules)
    norm_biases = [p for p in params if p.kind == "norm" and p.path.endswith(".bias")]
    norm_module = next((layer.get_submodule(n) for n in sorted(norm_modules)), None)
    # torch's LayerNorm is one kernel with or without its bias (MPT drops the bias:
    # modeling_mpt.py ``self.norm_1.bias = None``); other weight-only norms are the model's own
    # elementwise ops, RMSNorm's pattern
    traits["norm"] = ("layer" if norm_biases or isinstance(norm_module, torch.nn.LayerNorm)
                      else "rms")
    traits["norm_plus_one"] = _norm_plus_one(norm_module)
    experts = [m for m in linears if m.experts]
    mlp_linears = [m for m in linears if m.group == "mlp" and not m.experts]
    if experts:
        traits["mlp"] = "moe"
        down = next((m for m in experts if "down" in m.path), experts[-1])
        # (E, out, in) for F.linear experts, (E, in, out) for bmm ones (gpt-oss, Llama 4): the
        # inner width is the side that is not the hidden size.
        traits["intermediate"] = down.in_features if down.out_features == hidden else down.out_features
        traits["experts"] = down.experts
        traits["top_k"] = int(_cfg(text, *_MOE_TOPK_KEYS, default=1))
        # a dense gated MLP every token runs beside the experts: a shared expert (Qwen2-MoE,
        # DeepSeek, Llama 4) or the layer's own MLP (Gemma 4's ``mlp`` beside ``experts``)
        shared = [m for m in mlp_linears if m.in_features == hidden
                  and m.path.endswith(("up_proj", "gate_proj"))]
        traits["shared_intermediate"] = shared[0].out_features if shared else 0
    elif mlp_linears:
        # Gated when two projections read the hidden state at the same width (gate/up, w1/w3),
        # or one reads it at twice the width its output projection takes (a fused gate_up).
        ins = [m for m in mlp_linears if m.in_features == hidden]
        outs = [m for m in mlp_linears if m.out_features == hidden and m not in ins]
        widths = [m.out_features for m in ins]
        inner = outs[0].in_features if outs else (widths[0] if widths else 0)
        gated = len(ins) >= 2 and widths.count(inner) >= 2 or (len(ins) == 1 and widths[0] == 2 * inner)
        traits["mlp"] = "gated" if gated else "plain"
        traits["intermediate"] = inner
    else:
        traits["mlp"] = "none"
        traits["intermediate"] = 0
    traits["act"] = ACTIVATION_BY_MODEL_TYPE.get(_model_type(model)) or str(
        _cfg(text, "hidden_act", "hidden_activation", "activation_function", default="silu"))
    if _cfg(text, "attn_logit_softcapping") is not None:
        traits["softcap"] = True
    if experts and any(_router_norm(child) for name, child in layer.named_modules()
                       if name.rsplit(".", 1)[-1] == "router"):
        traits["router_norm"] = True
    if traits["mixer"] == "attention" and _model_type(model) in SOFTMAX_IN_COMPUTE_DTYPE:
        traits["softmax_in_compute_dtype"] = True
    if traits["mixer"] == "attention" and not getattr(model, "_supports_sdpa", True):
        # no SDPA path (gpt-oss's attention sinks: GptOssPreTrainedModel._supports_sdpa =
        # False): from_pretrained runs eager attention unless told flash or flex
        traits["no_sdpa"] = True
    return traits


def _norm_plus_one(module) -> bool:
    """Gemma's RMSNorm scales by ``1 + w`` (its fp32 normalised input is then what the
    multiply saves); read from the norm's forward source."""
    if module is None:
        return False
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return False
    return bool(re.search(r"1(\.0)?\s*\+\s*self\.weight", source))


def _fold(model, names_shapes, converted: set[str], adapted) -> tuple[list[CardLinear], list[CardParam]]:
    """Extras outside the decoder layers, repeated layers folded: ``a.layers.3.fc1`` -> prefix
    ``a.layers``, path ``fc1``, count = the number of layers."""
    linears: "OrderedDict[tuple, CardLinear]" = OrderedDict()
    params: "OrderedDict[tuple, CardParam]" = OrderedDict()
    modules = dict(model.named_modules())
    for name, param in names_shapes:
        module_name, _, leaf = name.rpartition(".")
        owner = modules.get(module_name, model)
        match = list(_INDEX.finditer(name))
        prefix, rel = ("", name)
        if match:
            last = match[-1]
            prefix, rel = name[:last.start()], name[last.end():]
        rel_module = rel.rpartition(".")[0]
        is_linear = isinstance(owner, torch.nn.Linear) or type(owner).__name__ == "Conv1D"
        if not is_linear and leaf == "weight" and module_name in adapted:
            # A convolution PEFT adapts (a vision tower's patch embedding under all-linear on
            # GLM-4.5V): A and B as a matrix of the kernel's elements.
            mult, in_f, out_f = adapted[module_name]
            linears[(prefix, rel_module, in_f, out_f)] = CardLinear(
                path=rel_module, in_features=int(in_f), out_features=int(out_f),
                bias=getattr(owner, "bias", None) is not None, group="vision", quantizable=False,
                all_linear=True, rank_multiplier=mult, prefix=prefix, count=1)
            continue
        if not is_linear and leaf == "bias" and module_name in adapted:
            continue
        if is_linear and leaf == "weight":
            in_f, out_f = (param.shape[1], param.shape[0])
            if type(owner).__name__ == "Conv1D":
                in_f, out_f = param.shape[0], param.shape[1]
            mult, _, _ = adapted.get(module_name, (1, 0, 0))
            key = (prefix, rel_module, in_f, out_f)
            previous = linears.get(key)
            linears[key] = CardLinear(
                path=rel_module, in_features=int(in_f), out_features=int(out_f),
                bias=getattr(owner, "bias", None) is not None, group="vision",
                quantizable=module_name in converted, all_linear=module_name in adapted,
                rank_multiplier=mult, prefix=prefix,
                count=(previous.count + 1) if previous else 1)
        elif is_linear and leaf == "bias":
            continue
        else:
            key = (prefix, rel, param.numel())
            previous = params.get(key)
            params[key] = CardParam(path=rel, numel=int(param.numel()),
                                    kind=_param_kind(owner, name), prefix=prefix,
                                    count=(previous.count + 1) if previous else 1)
    return list(linears.values()), list(params.values())


def derive_card(config: dict[str, Any], source: str = "config") -> ArchCard:
    """The architecture card of a config.json dictionary (see the module docstring).

    Raises:
        LorasizeError: transformers cannot build the config as a language model.
    """
    import peft
    import transformers

    model, auto = build_meta(config, source)
    head, embed = _embeddings(model, source)  # refuse a model without them before anything else
    converted = bnb_converted(model)
    adapted, refusal = _peft_all_linear(config, source)
    prefix, layers = _decoder_layers(model)
    text = _text_config(model)
    layer_types = list(_cfg(text, "layer_types") or [])
    kinds: "OrderedDict[tuple, dict]" = OrderedDict()
    for index, layer in enumerate(layers):
        linears, params = _layer_weights(model, prefix, index, layer, converted, adapted)
        layer_type = layer_types[index] if index < len(layer_types) else None
        key = (tuple(linears), tuple(params), layer_type, type(layer).__name__)
        if key not in kinds:
            kinds[key] = dict(linears=linears, params=params, layer_type=layer_type, layers=[],
                              traits=kind_traits(model, layer, linears, params, layer_type))
        kinds[key]["layers"].append(index)
    inside = f"{prefix}."
    names = {id(m): n for n, m in model.named_modules()}
    head_path = names.get(id(head)) or next(
        (n for n, m in model.named_modules() if getattr(m, "weight", None) is head.weight), None)
    if head_path is None:
        raise LorasizeError(f"cannot find the output head of {type(model).__name__} among its "
                            f"modules", source=source)
    tied = head.weight is embed.weight
    outside = _outside_params(model, inside, head, head_path, embed)
    extra_linears, extra_params = _fold(model, outside, converted, adapted)
    for p in list(extra_params):
        owner_name = (p.prefix + "." if p.prefix else "") + p.path.rpartition(".")[0]
        if names.get(id(embed)) == owner_name and p.kind != "embedding":
            extra_params[extra_params.index(p)] = CardParam(p.path, p.numel, "embedding",
                                                            p.prefix, p.count)
    card_kinds = tuple(
        LayerKind(name=_kind_name(k), layers=tuple(k["layers"]), linears=tuple(k["linears"]),
                  params=tuple(k["params"]), traits=k["traits"])
        for k in kinds.values())
    notes = []
    if refusal:
        notes.append(f"peft-all-linear-refused: {refusal}")
    notes += [f"peft-refuses-name: {leaf}: {cls}" for leaf, cls in _unwrappable_names(model)]
    rewritten = [m for k in card_kinds for m in k.linears if m.group == "mlp" and not m.experts
                 and not m.all_linear]
    if adapted and rewritten:
        notes.append("PEFT's all-linear on this MoE type adapts the attention, the fused experts "
                     "and the router, and leaves the dense and shared-expert MLP linears alone "
                     "(peft convert_peft_config_for_transformers)")
    text_class = transformers.AutoModelForCausalLM._model_mapping.get(type(text), None)
    dims = _dims(model, text, card_kinds)
    return ArchCard(
        model_type=str(config.get("model_type")), model_class=type(model).__name__,
        text_class=text_class.__name__ if text_class is not None else type(model).__name__,
        derived_with={"transformers": transformers.__version__, "peft": peft.__version__,
                      "torch": torch.__version__.split("+")[0], "auto": auto},
        total_params=int(sum(p.numel() for p in model.parameters())),
        block_prefix=prefix, num_layers=len(layers), dims=dims, tie_embeddings=bool(tied),
        head=CardLinear(path=head_path, in_features=int(head.weight.shape[1]),
                        out_features=int(head.weight.shape[0]),
                        bias=getattr(head, "bias", None) is not None, group="head",
                        quantizable=head_path in converted, all_linear=head_path in adapted),
        kinds=card_kinds, extra_linears=tuple(extra_linears), extra_params=tuple(extra_params),
        notes=tuple(notes),
    )


# Module types PEFT's LoRA wraps (peft/tuners/lora/model.py _create_new_module's dispatchers).
_PEFT_WRAPS = ("Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d", "Conv3d", "MultiheadAttention")


def _unwrappable_names(model) -> list[tuple[str, str]]:
    """Leaf names a linear has somewhere in the model that also name a module PEFT cannot wrap
    (Gemma 4's vision ``q_proj`` is a ``Gemma4ClippableLinear`` holding a Linear): PEFT raises
    for a target list naming them, whatever else it matches."""
    leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}
    found = {}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in leaves and type(module).__name__ not in _PEFT_WRAPS \
                and not isinstance(module, torch.nn.Linear):
            found.setdefault(leaf, type(module).__name__)
    return sorted(found.items())


def _embeddings(model, source: str):
    """(output head, input embedding) modules, or a one-line refusal where the class has none
    (PEFT cannot wrap such a model either)."""
    try:
        head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    except NotImplementedError:
        head = embed = None
    if head is None or embed is None or not hasattr(head, "weight"):
        raise LorasizeError(f"{type(model).__name__} exposes no input embedding and output head "
                            f"(get_input_embeddings / get_output_embeddings): not a language model "
                            f"lorasize can size", source=source)
    return head, embed


def _outside_params(model, inside: str, head, head_path: str, embed) -> list:
    """(name, parameter) of every weight outside the decoder layers but the head's own, each
    once. A tied weight is the embedding's (under the embedding's name, whichever name
    transformers lists first); a head bias kept elsewhere as well (BERT-style
    ``cls.predictions.bias``) is the head's."""
    head_params = {id(p) for p in head.parameters()}
    seen: set[int] = set()
    outside = []
    for name, param in model.named_parameters(remove_duplicate=False):
        if name.startswith(inside) or id(param) in seen or name.startswith(f"{head_path}."):
            continue
        if id(param) in head_params and param is not embed.weight:
            continue
        seen.add(id(param))
        outside.append((name, param))
    return outside


def _kind_name(kind: dict) -> str:
    traits = kind["traits"]
    mixer = kind["layer_type"] or (traits["mixer"] if traits["mixer"] != "other"
                                   else traits.get("mixer_class", "other"))
    return f"{mixer}+{traits['mlp']}" if traits["mlp"] in ("moe", "none") else str(mixer)


def _hidden(model) -> int:
    """The residual width: the input embedding's (configs name it hidden_size, n_embd, d_model
    or something else)."""
    return int(model.get_input_embeddings().weight.shape[-1])


def _dims(model, text, kinds: tuple[LayerKind, ...]) -> dict[str, Any]:
    """The scalar dimensions the rest of lorasize reads (widths of the most common kind)."""
    hidden = _hidden(model)
    heads = int(_cfg(text, "num_attention_heads", "n_head", default=1))
    attention = [k for k in kinds if k.traits.get("mixer") == "attention"]
    main = max(attention or kinds, key=lambda k: len(k.layers))
    t = main.traits
    moe = next((k.traits for k in kinds if k.traits.get("mlp") == "moe"), {})
    dense = next((k.traits for k in kinds if k.traits.get("mlp") in ("gated", "plain")), {})
    return {
        "hidden_size": hidden,
        "vocab_size": int(model.get_output_embeddings().weight.shape[0]),
        "num_heads": int(t.get("heads") or heads),
        "num_kv_heads": int(t.get("kv_heads") or _cfg(text, "num_key_value_heads", default=heads)),
        "head_dim": int(t.get("head_dim") or hidden // heads),
        "intermediate_size": int(dense.get("intermediate") or moe.get("intermediate") or 0),
        "num_experts": int(moe.get("experts", 0)),
        "experts_per_token": int(moe.get("top_k", 0)),
        "max_positions": int(_cfg(text, "max_position_embeddings", "n_positions", default=0) or 0),
    }
