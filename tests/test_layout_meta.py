"""The analytic parameter counts against the real code.

Every catalog architecture is built with the real transformers class on the meta device (with
fewer layers: counts are linear in layers and per-layer dimensions stay exact), and wrapped by
the real PEFT; the analytic totals and LoRA counts must equal ``sum(p.numel())`` exactly.
"""

from __future__ import annotations

import pytest

from conftest import build_meta_model, peft_wrap
from lorasize.arch.catalog import model_entries
from lorasize.arch.layout import total_params
from lorasize.arch.lora import LoraSpec, resolve_targets, trainable_params
from lorasize.arch.model import ModelSpec
from lorasize.arch.families import FAMILY_TABLE

# The hand-written families (entries with an architecture card: tests/test_cards.py) that
# transformers ships (Qwen-1's remote code: tests/test_qwen1.py).
ENTRIES = [e for e in model_entries() if not e.get("card")
           and not FAMILY_TABLE[e["config"]["model_type"]].remote_code]
SHRUNK_LAYERS = 2

# Totals published by the model authors or in model cards, independent of this code.
PUBLISHED_TOTALS = {
    "llama2-7b": 6_738_415_616,
    "llama3-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096,
    "mixtral-8x7b": 46_702_792_704,
    "gemma-7b": 8_537_680_896,
    "gpt2": 124_439_808,
}


def _spec(entry: dict, layers: int | None = None) -> ModelSpec:
    spec = ModelSpec.from_hf_config(entry["config"], name=entry["name"], source=entry["url"])
    return spec.with_layers(layers) if layers else spec


@pytest.mark.parametrize("name,total", sorted(PUBLISHED_TOTALS.items()))
def test_published_totals(name, total):
    entry = next(e for e in ENTRIES if e["name"] == name)
    assert total_params(_spec(entry)) == total


def test_catalog_is_large_and_sourced():
    assert len(ENTRIES) >= 30
    names = [e["name"] for e in ENTRIES]
    assert len(names) == len(set(names))
    for entry in ENTRIES:
        assert entry["url"].startswith("https://huggingface.co/") and entry["url"].endswith(
            "config.json"), entry["name"]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_total_matches_transformers(entry):
    model = build_meta_model(entry["config"], SHRUNK_LAYERS)
    real = sum(p.numel() for p in model.parameters())
    assert total_params(_spec(entry, SHRUNK_LAYERS)) == real


def _peft_kwargs(spec: ModelSpec, lora: LoraSpec) -> dict:
    if lora.targets == ("all",):
        return dict(target_modules="all-linear")
    targets = resolve_targets(spec, lora)
    modules = [t.linear.path for t in targets if not t.linear.experts]
    params = [t.linear.path for t in targets if t.linear.experts]
    return dict(target_modules=modules, target_parameters=params or None)


TARGET_SETS = [("all",), ("qv",), ("attn",), ("mlp",), ("qv", "lm_head")]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
@pytest.mark.parametrize("targets", TARGET_SETS, ids=["+".join(t) for t in TARGET_SETS])
def test_lora_count_matches_peft(entry, targets):
    spec = _spec(entry, SHRUNK_LAYERS)
    lora = LoraSpec(r=8, targets=targets)
    model = peft_wrap(build_meta_model(entry["config"], SHRUNK_LAYERS), r=8,
                      **_peft_kwargs(spec, lora))
    real = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable_params(resolve_targets(spec, lora)) == real


DORA_FAMILIES = ["llama2-7b", "qwen2.5-0.5b", "phi3-mini", "pythia-160m", "gpt2", "falcon-7b"]


@pytest.mark.parametrize("name", DORA_FAMILIES)
def test_dora_count_matches_peft(name):
    entry = next(e for e in ENTRIES if e["name"] == name)
    spec = _spec(entry, SHRUNK_LAYERS)
    lora = LoraSpec(r=4, targets=("all",), dora=True)
    model = peft_wrap(build_meta_model(entry["config"], SHRUNK_LAYERS), r=4,
                      target_modules="all-linear", use_dora=True)
    real = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable_params(resolve_targets(spec, lora), dora=True) == real


def test_seed_figures_llama2_7b():
    """Raschka's lit-gpt printouts (seed 001) and Hilgart's table (seed 000)."""
    entry = next(e for e in ENTRIES if e["name"] == "llama2-7b")
    spec = _spec(entry)
    count = lambda *t: trainable_params(resolve_targets(spec, LoraSpec(r=8, targets=t)))  # noqa: E731
    assert count("qv") == 4_194_304
    assert count("all") == 19_988_480
    assert count("all", "lm_head") == 20_277_248


VARIANT_FAMILIES = ["llama2-7b", "qwen2.5-0.5b", "phi3-mini", "pythia-160m", "gemma-7b"]


@pytest.mark.parametrize("name", VARIANT_FAMILIES)
@pytest.mark.parametrize("targets", [("qv",), ("all",)])
def test_variant_counts_match_peft(name, targets):
    import torch
    from peft import VeraConfig, get_peft_model

    from conftest import quiet

    entry = next(e for e in ENTRIES if e["name"] == name)
    spec = _spec(entry, SHRUNK_LAYERS)
    modules = _peft_kwargs(spec, LoraSpec(r=8, targets=targets))["target_modules"]
    # VeRA: two trainable vectors per adapted matrix (PEFT's own count).
    with quiet(), torch.device("meta"):
        vera = get_peft_model(build_meta_model(entry["config"], SHRUNK_LAYERS),
                              VeraConfig(r=8, target_modules=modules))
    real = sum(p.numel() for p in vera.parameters() if p.requires_grad)
    assert trainable_params(resolve_targets(spec, LoraSpec(r=8, targets=targets, variant="vera"))) == real
    # rsLoRA trains what LoRA trains; LoRA-FA only the B matrices.
    lora = peft_wrap(build_meta_model(entry["config"], SHRUNK_LAYERS), r=8, target_modules=modules,
                     use_rslora=True)
    real_rs = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    real_fa = sum(p.numel() for n, p in lora.named_parameters() if p.requires_grad and "lora_B" in n)
    assert trainable_params(resolve_targets(spec, LoraSpec(r=8, targets=targets, variant="rslora"))) == real_rs
    assert trainable_params(resolve_targets(spec, LoraSpec(r=8, targets=targets, variant="lora-fa"))) == real_fa
