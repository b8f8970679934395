"""Architecture cards: what a model's weights are, derived from transformers, kept as data.

A card lists every weight of a model the way the real transformers class builds it (path,
shape, which are tied, fused 3-D experts, routers, biases, norms, a vision tower), groups the
decoder layers into *kinds* (layers with the same weights and the same ``layer_types`` entry:
sliding and global attention, Mamba, linear attention, MoE and dense), and records what PEFT's
``all-linear`` adapts (and at which rank multiple) and what bitsandbytes quantizes, as the real
PEFT and transformers code decided it.

Cards are written by :mod:`lorasize.arch.derive` (torch, on the meta device) and read here
without torch: the catalog ships one card per model under ``lorasize/data/cards/`` (made by
``scripts/make_cards.py``, checked by ``tests/test_cards.py``), and a config outside the catalog
gets one derived on the fly when torch is installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from ..errors import LorasizeError

CARD_SCHEMA = 1
# Mixers with an analytic activation formula (lorasize.memory.activations); others are measured.
ANALYTIC_MIXERS = ("attention",)


@dataclass(frozen=True)
class CardLinear:
    """A weight matrix LoRA can adapt: an ``nn.Linear``, a fused 3-D expert weight or a router
    weight PEFT wraps (``ParamWrapper``).

    ``prefix``: the module list it repeats under (``model.layers``), empty for one outside any;
    ``count``: copies (layers of its kind, or of the vision tower); ``all_linear``: PEFT's
    ``all-linear`` adapts it, with rank ``r * rank_multiplier``.
    """

    path: str
    in_features: int
    out_features: int
    bias: bool = False
    group: str = "attn"
    experts: int = 0
    quantizable: bool = True
    all_linear: bool = True
    rank_multiplier: int = 1
    prefix: str = ""
    count: int = 1


@dataclass(frozen=True)
class CardParam:
    """Any other parameter (norm, embedding, expert bias, convolution...), ``count`` copies."""

    path: str
    numel: int
    kind: str = "other"
    prefix: str = ""
    count: int = 1


@dataclass(frozen=True)
class LayerKind:
    """Decoder layers that hold the same weights and the same ``layer_types`` entry.

    ``traits`` feed the activation formulas (widths, norms, MLP shape, sliding window); see
    :func:`lorasize.arch.derive.kind_traits` for each key.
    """

    name: str
    layers: tuple[int, ...]
    linears: tuple[CardLinear, ...]
    params: tuple[CardParam, ...]
    traits: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def mixer(self) -> str:
        return str(self.traits.get("mixer", "attention"))

    @property
    def analytic(self) -> bool:
        """Whether :mod:`lorasize.memory.activations` has a formula for this kind's layers."""
        return self.mixer in ANALYTIC_MIXERS


@dataclass(frozen=True)
class ArchCard:
    """One model's weights as transformers builds them (see the module docstring)."""

    model_type: str
    model_class: str
    block_prefix: str
    num_layers: int
    dims: dict[str, Any]
    tie_embeddings: bool
    head: CardLinear
    kinds: tuple[LayerKind, ...]
    extra_linears: tuple[CardLinear, ...]
    extra_params: tuple[CardParam, ...]
    total_params: int
    notes: tuple[str, ...] = ()
    derived_with: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    text_class: str = ""

    @property
    def multimodal(self) -> bool:
        return self.text_class != "" and self.text_class != self.model_class

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": CARD_SCHEMA, "model_type": self.model_type, "model_class": self.model_class,
            "text_class": self.text_class, "derived_with": dict(self.derived_with),
            "total_params": self.total_params, "block_prefix": self.block_prefix,
            "num_layers": self.num_layers, "dims": dict(self.dims),
            "tie_embeddings": self.tie_embeddings, "head": _linear_dict(self.head),
            "kinds": [{"name": k.name, "layers": _ranges(k.layers), "traits": dict(k.traits),
                       "linears": [_linear_dict(m) for m in k.linears],
                       "params": [_param_dict(p) for p in k.params]} for k in self.kinds],
            "extra_linears": [_linear_dict(m) for m in self.extra_linears],
            "extra_params": [_param_dict(p) for p in self.extra_params],
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "card") -> "ArchCard":
        """Read a card written by :meth:`to_dict`.

        Raises:
            LorasizeError: another schema, or a malformed card.
        """
        if not isinstance(data, dict) or data.get("schema") != CARD_SCHEMA:
            raise LorasizeError(f"not an architecture card of schema {CARD_SCHEMA}", source=source)
        try:
            return cls(
                model_type=data["model_type"], model_class=data["model_class"],
                text_class=data.get("text_class", ""),
                derived_with=dict(data.get("derived_with", {})),
                total_params=int(data["total_params"]), block_prefix=data["block_prefix"],
                num_layers=int(data["num_layers"]), dims=dict(data["dims"]),
                tie_embeddings=bool(data["tie_embeddings"]), head=CardLinear(**data["head"]),
                kinds=tuple(LayerKind(name=k["name"], layers=_unranges(k["layers"]),
                                      traits=dict(k.get("traits", {})),
                                      linears=tuple(CardLinear(**m) for m in k["linears"]),
                                      params=tuple(CardParam(**p) for p in k["params"]))
                            for k in data["kinds"]),
                extra_linears=tuple(CardLinear(**m) for m in data["extra_linears"]),
                extra_params=tuple(CardParam(**p) for p in data["extra_params"]),
                notes=tuple(data.get("notes", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LorasizeError(f"malformed architecture card ({exc})", source=source) from None


def _linear_dict(m: CardLinear) -> dict[str, Any]:
    return {k: v for k, v in m.__dict__.items() if v != _LINEAR_DEFAULTS.get(k, object())}


def _param_dict(p: CardParam) -> dict[str, Any]:
    return {k: v for k, v in p.__dict__.items() if v != _PARAM_DEFAULTS.get(k, object())}


_LINEAR_DEFAULTS = {"bias": False, "group": "attn", "experts": 0, "quantizable": True,
                    "all_linear": True, "rank_multiplier": 1, "prefix": "", "count": 1}
_PARAM_DEFAULTS = {"kind": "other", "prefix": "", "count": 1}


def _ranges(layers: tuple[int, ...]) -> list:
    """Layer indices as ``[first, last]`` runs (a 94-layer list stays one line)."""
    runs: list[list[int]] = []
    for i in layers:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def _unranges(runs: list) -> tuple[int, ...]:
    return tuple(i for first, last in runs for i in range(first, last + 1))


@lru_cache(maxsize=None)
def load_card(name: str) -> ArchCard:
    """A card shipped in ``lorasize/data/cards`` (catalog models).

    Raises:
        LorasizeError: no such card.
    """
    try:
        text = resources.files("lorasize.data").joinpath("cards").joinpath(f"{name}.json").read_text(
            encoding="utf-8")
    except (FileNotFoundError, OSError):
        raise LorasizeError(f"no architecture card '{name}' ships with lorasize") from None
    return ArchCard.from_dict(json.loads(text), source=f"card {name}")
