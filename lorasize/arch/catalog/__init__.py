"""The model and GPU catalogs: look-up by name, with suggestions for typos.

The data lives in :mod:`lorasize.arch.catalog._models` (dimensions from each model's public
``config.json``, with its URL; the families lorasize has hand-written layouts for),
``lorasize/data/models.json`` (whole ``config.json`` files of the families whose layout comes from
an architecture card in ``lorasize/data/cards``, derived from transformers by
``scripts/make_cards.py``) and :mod:`lorasize.arch.catalog._gpus`.
"""

from __future__ import annotations

import difflib
from functools import lru_cache

from ...errors import LorasizeError
from ...gpu import GpuSpec
from ..model import ModelSpec


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


@lru_cache(maxsize=1)
def _carded_models() -> tuple[dict, ...]:
    """Catalog entries whose layout an architecture card holds (``lorasize/data/models.json``)."""
    import json
    from importlib import resources

    text = resources.files("lorasize.data").joinpath("models.json").read_text(encoding="utf-8")
    return tuple(json.loads(text)["models"])


def _all_models() -> list[dict]:
    from ._models import MODELS

    return list(MODELS) + list(_carded_models())


@lru_cache(maxsize=1)
def _model_index() -> dict[str, dict]:
    index: dict[str, dict] = {}
    for entry in _all_models():
        for name in (entry["name"], *entry.get("aliases", ()), entry.get("hf_id", "")):
            if name:
                index.setdefault(_key(name), entry)
    return index


@lru_cache(maxsize=1)
def _gpu_index() -> dict[str, dict]:
    from ._gpus import GPUS

    index: dict[str, dict] = {}
    for entry in GPUS:
        for name in (entry["name"], *entry.get("aliases", ())):
            index.setdefault(_key(name), entry)
    return index


def model_entries() -> list[dict]:
    """Every catalog model entry, in catalog order (hand-written families first)."""
    return _all_models()


def gpu_entries() -> list[dict]:
    """Every catalog GPU entry, in catalog order."""
    from ._gpus import GPUS

    return list(GPUS)


def _suggest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(_key(name), names, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def find_model_entry(name: str) -> dict | None:
    """The catalog entry for a name or alias, or None."""
    return _model_index().get(_key(name))


def model_from_catalog(name: str, flag: str = "--model") -> ModelSpec:
    """The catalog model called ``name``.

    Raises:
        LorasizeError: no such model; the message suggests close names.
    """
    entry = find_model_entry(name)
    if entry is None:
        names = [e["name"] for e in model_entries()]
        raise LorasizeError(
            f"unknown model '{name}'{_suggest(name, names)} (see 'lorasize models', or give a "
            f"config.json path)", source=flag)
    if entry.get("card"):
        from ..card import load_card

        return ModelSpec.from_card(load_card(entry["card"]), entry["config"], name=entry["name"],
                                   source=entry["url"])
    return ModelSpec.from_hf_config(entry["config"], name=entry["name"], source=entry["url"])


def gpu_from_catalog(name: str, flag: str = "--gpu") -> GpuSpec:
    """The catalog GPU called ``name`` (case-insensitive, aliases included).

    Raises:
        LorasizeError: no such GPU; the message suggests close names.
    """
    entry = _gpu_index().get(_key(name))
    if entry is None:
        names = [e["name"] for e in gpu_entries()]
        raise LorasizeError(
            f"unknown GPU '{name}'{_suggest(name, names)} (see 'lorasize gpus', or give "
            f"--gpu-mem 24GiB)", source=flag)
    return GpuSpec.from_entry(entry)
