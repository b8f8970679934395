"""Architecture cards against the real code.

- Every shipped card is what transformers and PEFT derive today (a release that changes an
  architecture, or PEFT's all-linear, fails here: run ``scripts/make_cards.py``).
- Totals and trainable parameters read through a card equal the real model built on the meta
  device and wrapped by the real PEFT, independently of the derivation: for every catalog card,
  and for configs of model types nobody here has read (transformers' own config classes,
  shrunk), on the derived path.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import quiet
from lorasize.arch.card import ArchCard, load_card
from lorasize.arch.catalog import model_entries, model_from_catalog
from lorasize.errors import LorasizeError
from lorasize.arch.layout import total_params
from lorasize.arch.lora import LoraSpec, resolve_targets, trainable_params
from lorasize.arch.model import ModelSpec

CARDED = [e for e in model_entries() if e.get("card")]
# One catalog model per carded model_type runs in CI; the rest with -m slow.
_FIRST_OF_TYPE = {}
for _entry in CARDED:
    _FIRST_OF_TYPE.setdefault(_entry["config"]["model_type"], _entry["name"])
SAMPLE = [pytest.param(e, id=e["name"], marks=() if _FIRST_OF_TYPE[e["config"]["model_type"]]
                       == e["name"] else pytest.mark.slow) for e in CARDED]


def real_model(config: dict):
    """The class most recipes load, built on meta with transformers' Auto classes."""
    import copy

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    values = {k: copy.deepcopy(v) for k, v in config.items()
              if k not in ("architectures", "auto_map", "transformers_version",
                           "quantization_config", "torch_dtype", "dtype")}
    auto = AutoModelForImageTextToText if "vision_config" in config else AutoModelForCausalLM
    with quiet(), torch.device("meta"):
        return auto.from_config(AutoConfig.for_model(**values))


def peft_trainable(config: dict, **lora) -> int | str:
    """PEFT's own count, or its refusal."""
    import torch
    from peft import LoraConfig, get_peft_model

    try:
        with quiet(), torch.device("meta"):
            model = get_peft_model(real_model(config), LoraConfig(r=8, **lora))
    except Exception as exc:  # noqa: BLE001
        return f"refused: {exc}"
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def ours(spec: ModelSpec, targets: tuple[str, ...]) -> int | str:
    try:
        return trainable_params(resolve_targets(spec, LoraSpec(r=8, targets=targets)))
    except LorasizeError as exc:
        return f"refused: {exc}"


def test_catalog_has_a_hundred_models_and_cards_for_new_families():
    entries = model_entries()
    assert len(entries) >= 100
    assert len({e["name"] for e in entries}) == len(entries)
    types = {e["config"]["model_type"] for e in CARDED}
    assert len(types) >= 15
    for entry in CARDED:
        assert entry["url"].startswith("https://huggingface.co/") and entry["found_at"]
        load_card(entry["card"])  # every card parses


@pytest.mark.parametrize("entry", SAMPLE)
def test_card_is_what_transformers_derives_today(entry):
    from lorasize.arch.derive import derive_card

    derived = derive_card(entry["config"], source=entry["url"]).to_dict()
    shipped = load_card(entry["card"]).to_dict()
    derived.pop("derived_with"), shipped.pop("derived_with")
    assert derived == shipped, f"run: python scripts/make_cards.py {entry['name']}"


@pytest.mark.parametrize("entry", SAMPLE)
def test_card_counts_equal_transformers_and_peft(entry):
    spec = model_from_catalog(entry["name"])
    real = real_model(entry["config"])
    assert total_params(spec) == sum(p.numel() for p in real.parameters())
    all_linear = peft_trainable(entry["config"], target_modules="all-linear")
    if isinstance(all_linear, str):
        assert ours(spec, ("all",)).startswith("refused") and "PEFT" in ours(spec, ("all",))
    else:
        assert ours(spec, ("all",)) == all_linear
    qv = peft_trainable(entry["config"], target_modules=["q_proj", "v_proj"])
    mine = ours(spec, ("q_proj", "v_proj"))
    assert (isinstance(qv, str) and isinstance(mine, str)) or mine == qv


def _shrunk(cls_name: str, **overrides) -> dict:
    """transformers' own default config of a class, shrunk to a few layers and narrow widths."""
    import transformers

    config = getattr(transformers, cls_name)(**overrides).to_dict()
    return config


# Model types no hand-written code here has read, from transformers' own config classes (their
# defaults, shrunk): the derived path must count them exactly.
DERIVED_TYPES = {
    "olmo3": ("Olmo3Config", dict(num_hidden_layers=4, hidden_size=512, intermediate_size=1024,
                                   num_attention_heads=8, num_key_value_heads=4)),
    "smollm3": ("SmolLM3Config", dict(num_hidden_layers=4, hidden_size=512,
                                       intermediate_size=1024, num_attention_heads=8,
                                       num_key_value_heads=4)),
    "seed_oss": ("SeedOssConfig", dict(num_hidden_layers=2, hidden_size=512,
                                        intermediate_size=1024, num_attention_heads=8,
                                        num_key_value_heads=4, head_dim=64)),
    "exaone4": ("Exaone4Config", dict(num_hidden_layers=4, hidden_size=512,
                                       intermediate_size=1024, num_attention_heads=8,
                                       num_key_value_heads=4)),
    "ernie4_5": ("Ernie4_5Config", dict(num_hidden_layers=2, hidden_size=512,
                                         intermediate_size=1024, num_attention_heads=8,
                                         num_key_value_heads=4)),
    "ernie4_5_moe": ("Ernie4_5_MoeConfig", dict(num_hidden_layers=3, hidden_size=512,
                                                 intermediate_size=1024, moe_intermediate_size=256,
                                                 num_attention_heads=8, num_key_value_heads=4,
                                                 moe_num_experts=8)),
    "lfm2": ("Lfm2Config", dict(num_hidden_layers=4, hidden_size=512, intermediate_size=1024,
                                 num_attention_heads=8, num_key_value_heads=4,
                                 layer_types=["conv", "full_attention", "conv", "full_attention"])),
    "glm4": ("Glm4Config", dict(num_hidden_layers=2, hidden_size=512, intermediate_size=1024,
                                 num_attention_heads=8, num_key_value_heads=4)),
    "apertus": ("ApertusConfig", dict(num_hidden_layers=2, hidden_size=512,
                                       intermediate_size=1024, num_attention_heads=8,
                                       num_key_value_heads=4)),
    "phimoe": ("PhimoeConfig", dict(num_hidden_layers=2, hidden_size=512, intermediate_size=512,
                                     num_attention_heads=8, num_key_value_heads=4,
                                     num_local_experts=4)),
    "minimax_m2": ("MiniMaxM2Config", dict(num_hidden_layers=2, hidden_size=512,
                                            intermediate_size=256, num_attention_heads=8,
                                            num_key_value_heads=4, head_dim=64,
                                            num_local_experts=4)),
    "granitemoehybrid": ("GraniteMoeHybridConfig", dict(
        num_hidden_layers=4, hidden_size=512, intermediate_size=512, num_attention_heads=8,
        num_key_value_heads=4, mamba_n_heads=32, mamba_d_head=32,
        layer_types=["mamba", "mamba", "mamba", "attention"])),
    "falcon_h1": ("FalconH1Config", dict(num_hidden_layers=2, hidden_size=512,
                                         intermediate_size=1024, num_attention_heads=8,
                                         num_key_value_heads=4, mamba_n_heads=32,
                                         mamba_d_head=32)),
    "kimi_linear": ("KimiLinearConfig", dict(num_hidden_layers=2, hidden_size=512,
                                             intermediate_size=1024, moe_intermediate_size=256,
                                             num_attention_heads=8, num_key_value_heads=8,
                                             num_experts=8)),
    "longcat_flash": ("LongcatFlashConfig", dict(num_hidden_layers=2, hidden_size=512,
                                                 ffn_hidden_size=1024, expert_ffn_hidden_size=256,
                                                 num_attention_heads=8, n_routed_experts=8)),
    "cohere2": ("Cohere2Config", dict(num_hidden_layers=4, hidden_size=512,
                                       intermediate_size=1024, num_attention_heads=8,
                                       num_key_value_heads=4)),
    "glm4_moe": ("Glm4MoeConfig", dict(num_hidden_layers=3, hidden_size=512,
                                        intermediate_size=1024, moe_intermediate_size=256,
                                        num_attention_heads=8, num_key_value_heads=4,
                                        n_routed_experts=8, first_k_dense_replace=1)),
}


@pytest.mark.parametrize("model_type", sorted(DERIVED_TYPES))
def test_derived_path_counts_equal_transformers_and_peft(model_type):
    cls_name, overrides = DERIVED_TYPES[model_type]
    try:
        config = _shrunk(cls_name, **overrides)
    except Exception as exc:  # noqa: BLE001  the class rejects a shrunk width: use its defaults
        pytest.fail(f"{cls_name}: {exc}")
    spec = ModelSpec.from_hf_config(config, name=model_type)
    assert spec.derived and spec.card.model_type == model_type
    assert total_params(spec) == sum(p.numel() for p in real_model(config).parameters())
    all_linear = peft_trainable(config, target_modules="all-linear")
    mine = ours(spec, ("all",))
    if isinstance(all_linear, str):  # PEFT refuses (Mamba out_proj, conv1d): so do we, saying why
        assert isinstance(mine, str) and "PEFT refuses all-linear" in mine
    else:
        assert mine == all_linear


def test_derived_estimate_says_it_was_derived(cli, tmp_path):
    config = _shrunk("Olmo3Config", num_hidden_layers=2, hidden_size=256, intermediate_size=512,
                     num_attention_heads=4, num_key_value_heads=2)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code, out, err = cli("estimate", "-m", str(path), "--targets", "all", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert any("derived from transformers" in n for n in result["notes"])
    assert result["base_params"] == sum(p.numel() for p in real_model(config).parameters())


def test_peft_refusal_is_reported_in_peft_words():
    config = _shrunk("FalconH1Config", num_hidden_layers=2, hidden_size=512,
                     intermediate_size=1024, num_attention_heads=8, num_key_value_heads=4,
                     mamba_n_heads=32, mamba_d_head=32)
    spec = ModelSpec.from_hf_config(config, name="falcon-h1")
    with pytest.raises(LorasizeError, match="Mamba"):
        resolve_targets(spec, LoraSpec(targets=("all",)))
    assert trainable_params(resolve_targets(spec, LoraSpec(r=8, targets=("q_proj", "v_proj")))) \
        == peft_trainable(config, target_modules=["q_proj", "v_proj"])


def test_unknown_model_type_names_transformers():
    with pytest.raises(LorasizeError, match="not known to the installed transformers"):
        ModelSpec.from_hf_config({"model_type": "kimi_k2", "hidden_size": 64}, name="k")


def test_without_torch_the_message_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(LorasizeError, match=r'pip install "lorasize\[torch\]"'):
        ModelSpec.from_hf_config({"model_type": "olmo3", "hidden_size": 64}, name="o")


def test_catalog_card_estimate_imports_no_torch():
    code = ("import sys; from lorasize.arch.catalog import model_from_catalog; "
            "from lorasize.estimate import estimate; from lorasize.arch.lora import LoraSpec; "
            "e = estimate(model_from_catalog('gemma4-26b-a4b'), LoraSpec(targets=('all',))); "
            "assert e.trainable_params > 0; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_card_round_trips():
    card = load_card("qwen3-next-80b-a3b-instruct")
    assert ArchCard.from_dict(json.loads(card.to_json())) == card
    assert {k.traits["mixer"] for k in card.kinds} == {"attention", "other"}


def test_a_catalog_models_own_config_reads_its_card_without_torch(tmp_path):
    from lorasize.arch.catalog import find_model_entry

    path = tmp_path / "config.json"
    path.write_text(json.dumps(find_model_entry("qwen3-30b-a3b")["config"]))
    code = (f"import sys; from lorasize.arch.resolve import resolve_model; "
            f"s = resolve_model({str(path)!r}); "
            f"print(s.card.model_class, s.derived, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["Qwen3MoeForCausalLM", "False", "False"]


def test_models_command_lists_cards_without_torch():
    code = ("import sys; from lorasize.cli import main; main(['models', '--json']); "
            "assert 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert rows["gpt-oss-20b"]["params"] == load_card("gpt-oss-20b").total_params


@pytest.mark.parametrize("model_type", ["camembert", "bert"])
def test_tied_head_weight_and_bias_counted_once(model_type):
    """transformers 5 lists a tied head first (``lm_head.decoder.weight``) and BERT-style heads
    keep their bias twice (``cls.predictions.bias`` is ``decoder.bias``): each counted once."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, num_hidden_layers=2).to_dict()
    spec = ModelSpec.from_hf_config(config, name=model_type)
    assert total_params(spec) == sum(p.numel() for p in real_model(config).parameters())


@pytest.mark.parametrize("model_type", ["mpt", "bamba"])
def test_probe_runs_where_layers_return_tuples_or_need_no_cache(model_type):
    """The probe's stubs return what the model's loop unpacks (MPT's layers return tuples), and
    a hybrid whose training forward cannot build its cache without attention in front (Bamba)
    is probed with use_cache=False."""
    from transformers import AutoConfig

    from lorasize.estimate import estimate
    from lorasize.specs import TrainSpec

    config = AutoConfig.for_model(model_type, num_hidden_layers=4).to_dict()
    spec = ModelSpec.from_hf_config(config, name=model_type)
    if all(k.analytic for k in spec.card.kinds):
        pytest.skip("no probed kind in this config")
    result = estimate(spec, LoraSpec(r=8, targets=("mlp",) if model_type == "bamba"
                                     else ("all",)), TrainSpec(seq_len=256))
    assert result.allocated_bytes > 0
    assert any("measured by the layer probe" in n for n in result.notes)


def test_a_probe_that_kbit_prep_breaks_names_the_flag(cli):
    """PEFT's kbit prep makes transformers 5's fused experts fp32 and its grouped-mm kernel
    refuses them: the real step fails too, and the message says how to estimate it."""
    code, _, err = cli("estimate", "-m", "deepseek-v2-lite", "--method", "qlora", "-t", "all")
    assert code == 2 and "--no-kbit-prep" in err and "Traceback" not in err


@pytest.mark.parametrize("model,norm", [
    # torch's LayerNorm, with its bias (gpt_bigcode) or without (MPT: ``norm_1.bias = None``)
    ("gpt_bigcode-santacoder", "layer"),
    ("mpt", "layer"),
    # weight-only norms written as the model's own ops: Cohere's mean-subtracting one, RMSNorm
    ("c4ai-command-r7b-12-2024", "rms"),
    ("gemma3-270m-it", "rms"),
])
def test_a_cards_norm_is_its_kernel_and_the_model_reads_it(model, norm):
    """The step's elementwise bytes and launches follow the model's norm: one LayerNorm kernel
    or the ops of a weight-only norm written in Python."""
    from lorasize import resolve_model
    from lorasize.measurements import FOLDER

    spec = resolve_model(str(FOLDER / "configs" / "mpt-125m-foundry") if model == "mpt"
                         else model)
    assert spec.card is not None
    assert spec.card.kinds[0].traits["norm"] == norm
    assert spec.norm == norm
