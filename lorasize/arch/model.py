"""Architecture dimensions of a decoder-only model, read from a Hugging Face ``config.json``.

:class:`ModelSpec` holds the numbers every estimate needs (hidden size, layers, heads, vocabulary,
...) and the few structural switches that change parameter counts (biases, norms, tied embeddings,
experts). It is built from a config dictionary by :func:`ModelSpec.from_hf_config`, which knows
the key names of each ``model_type`` we support and the defaults of transformers' config classes
when a key is absent. No torch and no transformers are imported here.

Which modules a block holds, and their names, is the concern of :mod:`lorasize.arch.layout`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import LorasizeError
from ..files import read_json
from ..units import dtype_name
from .families import FAMILY_TABLE

# model_type -> family, the key :mod:`lorasize.arch.layout` uses for module structure; the rest
# of what a hand-written family means is data in :mod:`lorasize.arch.families`.
FAMILIES: dict[str, str] = {model_type: f.layout for model_type, f in FAMILY_TABLE.items()}


@dataclass(frozen=True)
class ModelSpec:
    """The dimensions of a decoder-only transformer, as its config.json states them.

    Attributes:
        name: catalog name or the path it was read from.
        model_type: the Hugging Face ``model_type`` (``llama``, ``gpt_neox`` ...).
        vocab_size: rows of the embedding matrix.
        hidden_size: width of the residual stream (h).
        num_layers: decoder blocks (L).
        num_heads: query heads.
        num_kv_heads: key/value heads (grouped-query attention when fewer than ``num_heads``).
        head_dim: width of one head; not always ``hidden_size / num_heads`` (Gemma-7B: 256).
        intermediate_size: MLP inner width (per expert for mixture-of-experts).
        tie_embeddings: the output head shares the input embedding matrix.
        max_positions: context length the model was trained for.
        num_experts: experts per MoE layer, 0 for a dense MLP.
        experts_per_token: experts each token is routed to.
        qkv_bias: q, k and v projections carry biases.
        out_bias: the attention output projection carries a bias.
        mlp_bias: the MLP projections carry biases.
        lm_head_bias: the output head carries a bias (Phi-2).
        norm: ``"rms"`` (weight only) or ``"layer"`` (weight and bias).
        parallel_block: attention and MLP read the same normalised input (one norm per block).
        qk_norm: per-head norms on queries and keys (Qwen3, some StableLM).
        dtype: the checkpoint's dtype (``bf16``...), informative.
        source: where the dimensions came from (config URL or file path).
        expert_modules: the model is built as transformers 4 built mixtures of experts: one
            ``nn.Linear`` per expert matrix and a ``nn.Linear`` router, which bitsandbytes
            quantizes (``MixtralSparseMoeBlock`` holds ``experts = nn.ModuleList`` of
            ``MixtralBlockSparseTop2MLP`` with ``w1``/``w2``/``w3`` and ``gate = nn.Linear``,
            transformers v4.46 ``models/mixtral/modeling_mixtral.py``); transformers 5 holds them
            as 3-D parameters it does not convert. Set by
            :func:`lorasize.memory.stacks.as_built`, never by a config.
    """

    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_embeddings: bool
    max_positions: int = 0
    num_experts: int = 0
    experts_per_token: int = 0
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False
    norm: str = "rms"
    parallel_block: bool = False
    qk_norm: bool = False
    dtype: str = "bf16"
    source: str = ""
    hf_config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    card: Any = field(default=None, compare=False, repr=False)  # lorasize.arch.card.ArchCard
    derived: bool = False  # the card was derived on the fly (not shipped with the catalog)
    expert_modules: bool = False
    kind: Any = field(default=None, compare=False, repr=False)  # one LayerKind of the card (a view)

    @property
    def family(self) -> str:
        """The module-structure family (see :mod:`lorasize.arch.layout`); ``card`` for a model whose
        layout an architecture card describes."""
        return "card" if self.card is not None else FAMILIES[self.model_type]

    @property
    def q_dim(self) -> int:
        """Output width of the query projection."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Output width of each of the key and value projections."""
        return self.num_kv_heads * self.head_dim

    def with_layers(self, num_layers: int) -> "ModelSpec":
        """The same architecture with another number of blocks (used to shrink models in tests)."""
        return replace(self, num_layers=num_layers)

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], name: str = "", source: str = "") -> "ModelSpec":
        """Read a Hugging Face config dictionary.

        Args:
            config: the parsed ``config.json``.
            name: a name to show for the model.
            source: where the config came from, for messages.

        Raises:
            LorasizeError: the model type is unsupported or a required key is missing.
        """
        return _parse(config, name or config.get("_name_or_path", "") or "model", source)

    @classmethod
    def from_card(cls, card, config: dict[str, Any], name: str, source: str = "",
                  derived: bool = False) -> "ModelSpec":
        """A model whose layout an architecture card (:mod:`lorasize.arch.card`) describes."""
        dims = card.dims
        dtype = config.get("torch_dtype") or config.get("dtype") \
            or (config.get("text_config") or {}).get("torch_dtype") or "bfloat16"
        try:
            dtype = dtype_name(dtype)
        except (ValueError, TypeError):
            dtype = "bf16"
        return cls(
            name=name, model_type=card.model_type, vocab_size=int(dims["vocab_size"]),
            hidden_size=int(dims["hidden_size"]), num_layers=card.num_layers,
            num_heads=int(dims["num_heads"]), num_kv_heads=int(dims["num_kv_heads"]),
            head_dim=int(dims["head_dim"]), intermediate_size=int(dims["intermediate_size"]),
            tie_embeddings=card.tie_embeddings, max_positions=int(dims.get("max_positions") or 0),
            num_experts=int(dims.get("num_experts") or 0),
            experts_per_token=int(dims.get("experts_per_token") or 0),
            lm_head_bias=card.head.bias, dtype=dtype, source=source, hf_config=dict(config),
            card=card, derived=derived,
            # the first kind's norm stands for the model where one number is read (the step's
            # elementwise bytes and launches); memory reads each kind's own
            norm=str(card.kinds[0].traits.get("norm", "rms")) if card.kinds else "rms")

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None,
                  source: str | None = None) -> "ModelSpec":
        """Read ``config.json`` from a file, or from a directory holding one. The model is named
        ``name``, else the repository of a Hugging Face cache snapshot it lies in, else its folder.

        Raises:
            LorasizeError: the file is missing, not JSON, or not a supported decoder config.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise LorasizeError("no such file", source=str(path))
        config = read_json(path)
        if not isinstance(config, dict):
            raise LorasizeError("expected a JSON object", source=str(path))
        return cls.from_hf_config(config, name=name or _folder_name(path),
                                  source=source or str(path))


def _folder_name(config_path: Path) -> str:
    """``org/name`` for ``.../models--org--name/snapshots/<revision>/config.json`` (a file in
    huggingface_hub's cache), else the folder holding the file."""
    parent = config_path.parent
    repo = parent.parent.parent.name
    if parent.parent.name == "snapshots" and repo.startswith("models--") and repo.count("--") >= 2:
        return repo[len("models--"):].replace("--", "/", 1)
    return str(parent.name or config_path)


def _get(config: dict[str, Any], source: str, *keys: str, default: Any = None) -> Any:
    """The first of ``keys`` present in ``config``; ``default`` if none; raise if no default."""
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    if default is not None:
        return default
    raise LorasizeError(f"config is missing the key '{keys[0]}'", source=source or None)


def _positive_int(config: dict[str, Any], source: str, *keys: str, default: Any = None) -> int:
    value = _get(config, source, *keys, default=default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LorasizeError(f"config key '{keys[0]}' must be a positive integer, got {value!r}",
                            source=source or None)
    return value


def _parse(config: dict[str, Any], name: str, source: str) -> ModelSpec:
    model_type = config.get("model_type")
    if model_type is None:
        raise LorasizeError("config is missing the key 'model_type'", source=source or None)
    if model_type not in FAMILIES:
        return _derived(config, name, source)
    get = lambda *keys, default=None: _get(config, source, *keys, default=default)  # noqa: E731
    pos = lambda *keys, default=None: _positive_int(config, source, *keys, default=default)  # noqa: E731

    hidden = pos("hidden_size", "n_embd", "d_model")
    layers = pos("num_hidden_layers", "n_layer", "num_layers")
    heads = pos("num_attention_heads", "n_head")
    vocab = pos("vocab_size")
    head_dim = pos("head_dim", default=hidden // heads)
    kv_heads = pos("num_key_value_heads", default=heads)
    dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    try:
        dtype = dtype_name(dtype)
    except ValueError:
        dtype = "bf16"
    fields: dict[str, Any] = dict(
        name=name, model_type=model_type, vocab_size=vocab, hidden_size=hidden,
        num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        tie_embeddings=bool(get("tie_word_embeddings",
                                default=FAMILY_TABLE[model_type].tie_default)),
        max_positions=int(get("max_position_embeddings", "n_positions", "n_ctx", default=0)),
        norm=FAMILY_TABLE[model_type].norm,
        dtype=dtype, source=source, hf_config=dict(config),
    )
    bias = bool(get("attention_bias", default=FAMILY_TABLE[model_type].qkv_bias_default))
    fields.update(qkv_bias=bias, out_bias=bias, mlp_bias=bool(get("mlp_bias", default=False)))

    if model_type == "gpt2":
        fields.update(intermediate_size=pos("n_inner", default=4 * hidden), mlp_bias=True)
    elif model_type == "falcon":
        bias = bool(get("bias", default=False))
        new_arch = bool(get("new_decoder_architecture", default=False))
        if new_arch:
            kv_heads = pos("num_kv_heads", default=heads)
        elif get("multi_query", default=True):
            kv_heads = 1
        else:
            kv_heads = heads
        fields.update(
            num_kv_heads=kv_heads, intermediate_size=pos("ffn_hidden_size", default=4 * hidden),
            qkv_bias=bias, out_bias=bias, mlp_bias=bias,
            parallel_block=bool(get("parallel_attn", default=True)) and not new_arch,
        )
        fields["hf_config"]["_falcon_new_arch"] = new_arch
    elif model_type == "gpt_neox":
        fields.update(intermediate_size=pos("intermediate_size"), mlp_bias=True)
    elif model_type == "phi":
        fields.update(intermediate_size=pos("intermediate_size"), qkv_bias=True, out_bias=True,
                      mlp_bias=True, lm_head_bias=True, parallel_block=True,
                      qk_norm=bool(get("qk_layernorm", default=False)))
    elif model_type == "stablelm":
        fields.update(intermediate_size=pos("intermediate_size"),
                      qkv_bias=bool(get("use_qkv_bias", default=False)), out_bias=False,
                      parallel_block=bool(get("use_parallel_residual", default=False)),
                      qk_norm=bool(get("qk_layernorm", default=False)))
    elif model_type == "qwen2":
        # Qwen2 always has q/k/v biases and never an o_proj bias (modeling_qwen2.py).
        fields.update(intermediate_size=pos("intermediate_size"), qkv_bias=True, out_bias=False)
    elif model_type == "qwen3":
        fields.update(intermediate_size=pos("intermediate_size"), qk_norm=True)
    elif model_type == "mixtral":
        fields.update(intermediate_size=pos("intermediate_size"),
                      num_experts=pos("num_local_experts"),
                      experts_per_token=pos("num_experts_per_tok"))
    elif model_type == "phi3":
        fields.update(intermediate_size=pos("intermediate_size"))
    elif model_type == "qwen":
        # modeling_qwen.py: QWenAttention.c_attn = Linear(h, 3 * kv_channels * heads) (bias),
        # c_proj and the MLP's w1, w2, c_proj biased unless no_bias; QWenMLP's width is
        # intermediate_size // 2; the context is seq_length.
        biased = not bool(get("no_bias", default=True))
        fields.update(intermediate_size=pos("intermediate_size") // 2,
                      head_dim=pos("kv_channels", default=hidden // heads),
                      qkv_bias=True, out_bias=biased, mlp_bias=biased,
                      max_positions=int(get("seq_length", "max_position_embeddings", default=0)))
    else:  # llama, mistral, gemma, gemma2
        fields.update(intermediate_size=pos("intermediate_size"))
    if fields["num_heads"] % fields["num_kv_heads"]:
        raise LorasizeError(
            f"num_attention_heads ({heads}) is not a multiple of num_key_value_heads "
            f"({fields['num_kv_heads']})", source=source or None)
    return ModelSpec(**fields)


def _derived(config: dict[str, Any], name: str, source: str) -> ModelSpec:
    """A config of a family without a hand-written parser: its card is derived from the real
    transformers code (torch needed), once per config in this process."""
    import importlib.util
    import json

    shipped = _shipped_card(config)
    if shipped is not None:  # a catalog model's own config.json: its card, no torch
        card, entry = shipped
        return ModelSpec.from_card(card, config, name, source or entry["url"])
    for module in ("torch", "transformers", "peft"):
        if importlib.util.find_spec(module) is None:
            raise LorasizeError(
                f"model_type '{config.get('model_type')}' is not in lorasize's catalog; reading "
                f"its architecture from transformers needs the '{module}' package: "
                f"pip install \"lorasize[torch]\"", source=source or None)
    card = _derive_cached(json.dumps(config, sort_keys=True, default=str), source)
    return ModelSpec.from_card(card, config, name, source, derived=True)


@lru_cache(maxsize=None)
def _derive_cached(key: str, source: str):
    """The card of a config (its JSON text is the key), derived once per process."""
    import json

    from .derive import derive_card

    return derive_card(json.loads(key), source or "config")


_NOT_ARCHITECTURE = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache")


def _shipped_card(config: dict[str, Any]):
    """(card, catalog entry) when ``config`` is a catalog model's config (keys that do not shape
    the model aside), else None."""
    from .catalog import model_entries

    def core(c: dict) -> dict:
        return {k: v for k, v in c.items() if k not in _NOT_ARCHITECTURE}

    wanted = core(config)
    for entry in model_entries():
        if entry.get("card") and entry["config"].get("model_type") == config.get("model_type") \
                and core(entry["config"]) == wanted:
            from .card import load_card

            return load_card(entry["card"]), entry
    return None
