"""``--stack litgpt`` counts adapters on litgpt's own modules, checked against litgpt's code.

Ground truth: ``tests/data/litgpt/lora_counts.json``, written by ``scripts/litgpt_counts.py``
from litgpt 0.5.13 (Lightning-AI/litgpt@26857050fe3f) building ``litgpt.lora.GPT`` on the meta
device and counting what ``mark_only_lora_as_trainable`` leaves trainable. Each case goes in as a
user's litgpt recipe would (``checkpoint_dir`` and the ``lora_*`` switches) through ``estimate
--recipe``. Where Hugging Face fuses what litgpt adapts part by part (Phi-3's ``qkv_proj`` and
``gate_up_proj``, GPT-NeoX's and Falcon's ``query_key_value``) or around experts (Mixtral,
Qwen3-MoE: a router adapter, and separate gate and up adapters per expert), PEFT's layout counts
less; these cases fail without :mod:`lorasize.arch.parts`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

COUNTS = json.loads((Path(__file__).parent / "data" / "litgpt" / "lora_counts.json").read_text())
SWITCHES = ("lora_query", "lora_key", "lora_value", "lora_projection", "lora_mlp", "lora_head")


def _recipe(tmp_path: Path, run: dict) -> Path:
    lines = [f"checkpoint_dir: checkpoints/{run['model']}", f"lora_r: {run['r']}",
             "lora_alpha: 16", "precision: bf16-true"]
    lines += [f"{name}: {str(name in run['switches']).lower()}" for name in SWITCHES]
    path = tmp_path / "lora.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("run", COUNTS["runs"],
                         ids=[f"{r['litgpt_config']}-{'+'.join(s[5:] for s in r['switches'])}"
                              for r in COUNTS["runs"]])
def test_trainable_parameters_equal_litgpts_own_count(cli, tmp_path, run):
    code, out, err = cli("estimate", "--recipe", str(_recipe(tmp_path, run)), "--json")
    assert code == 0, err
    assert json.loads(out)["trainable_params"] == run["trainable"]


def test_the_issues_phi3_figure(cli):
    """litgpt's config_hub phi-3 recipe (r=8, every lora_* switch on): 15,223,296 trainable,
    where PEFT on Hugging Face's fused qkv_proj and gate_up_proj trains 12,864,000."""
    recipe = Path(__file__).parent / "data" / "recipes" / "litgpt" / \
        "config_hub__finetune__phi-3__qlora.yaml"
    code, out, _ = cli("estimate", "--recipe", str(recipe), "--json")
    assert json.loads(out)["trainable_params"] == 15_223_296
    code, out, _ = cli("estimate", "-m", "phi3-mini", "--r", "8", "--targets", "all,lm_head",
                       "--json")
    assert json.loads(out)["trainable_params"] == 12_864_000  # hf-peft: one adapter per module


def test_part_names_select_parts_under_litgpt_only(cli):
    code, out, _ = cli("estimate", "-m", "pythia-1b", "--stack", "litgpt", "--targets",
                       "q_proj,v_proj", "--json")
    qv = next(r for r in COUNTS["runs"] if r["litgpt_config"] == "pythia-1b"
              and r["switches"] == ["lora_query", "lora_value"])
    assert code == 0 and json.loads(out)["trainable_params"] == qv["trainable"]
    code, out, _ = cli("estimate", "-m", "pythia-1b", "--stack", "litgpt", "--targets", "qv",
                       "--json")
    assert json.loads(out)["trainable_params"] == qv["trainable"]  # the alias means the parts
    code, _, err = cli("estimate", "-m", "pythia-1b", "--targets", "q_proj,v_proj")
    assert code == 2 and "not a module of pythia-1b" in err  # PEFT sees one fused module


def test_a_fused_projection_named_whole_is_every_part(cli):
    code, out, _ = cli("estimate", "-m", "phi3-mini", "--stack", "litgpt", "--targets",
                       "qkv_proj", "--json")
    code2, out2, _ = cli("estimate", "-m", "phi3-mini", "--stack", "litgpt", "--targets",
                         "q_proj,k_proj,v_proj", "--json")
    assert json.loads(out)["trainable_params"] == json.loads(out2)["trainable_params"] == \
        32 * 8 * (3 * 3072 + 3 * 3072)  # A: 3 x (8, 3072); B: (9216, 8)


def test_torchtune_adapts_phi3s_projections_apart(cli):
    """torchtune builds Phi-3 with separate q/k/v and w1/w3 (phi3/_component_builders.py), each
    with its own LoRALinear: q and v are two rank-r adapters, not PEFT's one on qkv_proj."""
    code, out, _ = cli("estimate", "-m", "phi3-mini", "--stack", "torchtune", "--r", "8",
                       "--targets", "q_proj,v_proj", "--json")
    assert code == 0 and json.loads(out)["trainable_params"] == 32 * 8 * (2 * 3072 + 2 * 3072)
    recipe = Path(__file__).parent / "data" / "recipes" / "torchtune" / \
        "recipes__configs__llama3_1__8B_lora_single_device.yaml"
    code, out, _ = cli("estimate", "--recipe", str(recipe), "--model", "phi3-mini", "--json")
    assert code == 0  # the recipe's q_proj / v_proj name parts of phi3's qkv_proj


def test_a_part_adapted_under_torchtune_0_2_quantizes_its_fused_module(cli):
    def weights(*flags):
        code, out, err = cli("estimate", "-m", "phi3-mini", "--stack", "torchtune", "--method",
                             "qlora", "--targets", "q_proj", *flags, "--json")
        assert code == 0, err
        return json.loads(out)["train_breakdown"]["weights"]

    old, now = weights("--stack-release", "0.2"), weights()
    # 0.2 quantizes qkv_proj (it holds the adapted q) but leaves o, gate_up and down in bf16
    assert old - now == pytest.approx(32 * (3072 * 3072 + 3 * 3072 * 8192) * 1.5, rel=0.002)


def test_a_part_under_hf_peft_points_at_the_stacks_that_adapt_parts(cli):
    code, _, err = cli("estimate", "-m", "phi3-mini", "-t", "q_proj,v_proj")
    assert code == 2
    assert "fuses it into qkv_proj" in err and "--stack litgpt or torchtune" in err
    code, _, _ = cli("estimate", "-m", "phi3-mini", "-t", "q_proj,v_proj", "--stack", "litgpt")
    assert code == 0
