"""Recipes in: real recipe files of each framework (fetched copies with their source and commit in
``tests/data/recipes/<framework>/SOURCE.md``) give the same estimate as the flags a person wrote by
hand from that framework's documentation and code (``expected.json`` beside them, written from
the framework's code before the readers existed, each flag with its origin)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorasize.errors import LorasizeError
from lorasize.recipes import detect_framework, read_recipe
from lorasize.recipes.recipe import load_mapping

RECIPES = Path(__file__).parent / "data" / "recipes"
FRAMEWORK_OF_FOLDER = {"axolotl": "axolotl", "llamafactory": "llama-factory",
                       "torchtune": "torchtune", "litgpt": "litgpt", "hf": "hf"}
# Hub ids a recipe names that the offline catalog does not hold, and the catalog model of the
# same shapes given with --model on both sides (the command line wins over the recipe).
SAME_SHAPES = {"TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": "tinyllama-1.1b",
               "HuggingFaceTB/SmolLM-360M": "smollm-360m-instruct"}


def _cases():
    for folder in sorted(p for p in RECIPES.iterdir() if p.is_dir()):
        expected = folder / "expected.json"
        if not expected.exists():
            continue
        for name, case in json.loads(expected.read_text()).items():
            yield pytest.param(folder.name, name, case, id=f"{folder.name}/{name}")


def _model_flag(flags: list[str]) -> list[str]:
    model = flags[flags.index("--model") + 1] if "--model" in flags else None
    return ["--model", SAME_SHAPES[model]] if model in SAME_SHAPES else []


def _without(flags: list[str], name: str) -> list[str]:
    if name not in flags:
        return flags
    i = flags.index(name)
    return flags[:i] + flags[i + 2:]


@pytest.mark.parametrize("folder,name,case", list(_cases()))
def test_a_recipe_gives_the_estimate_of_the_flags_written_by_hand(cli, folder, name, case):
    flags = [str(f) for f in case["flags"]]
    override = _model_flag(flags)
    by_hand = (_without(flags, "--model") + override) if override else flags
    code, out, err = cli("estimate", *by_hand, "--gpu", "a100-80gb", "--json")
    assert code in (0, 1), err
    expected = json.loads(out)
    path = RECIPES / folder / name
    # flags the recipe cannot fix (a sequence length the data decides) go on both sides
    extra = [str(f) for f in case.get("extra", [])]
    code, out, err = cli("estimate", "--recipe", str(path), *override, *extra, "--gpu",
                         "a100-80gb", "--json")
    assert code in (0, 1), err
    got = json.loads(out)
    recipe = got.pop("recipe")
    assert recipe["framework"] == FRAMEWORK_OF_FOLDER[folder]
    for key in ("trainable_params", "base_params", "targets", "method", "quant", "r"):
        assert got[key] == expected[key], key
    # the whole estimate: memory by component, fit, serving, time
    assert got == expected


@pytest.mark.parametrize("folder", sorted(FRAMEWORK_OF_FOLDER))
def test_every_recipe_copy_names_its_source(folder):
    root = RECIPES / folder
    if not root.exists():
        pytest.skip(f"no {folder} recipes")
    source = (root / "SOURCE.md").read_text()
    for path in root.iterdir():
        if path.suffix in (".yaml", ".yml", ".json") and path.name != "expected.json":
            assert path.name in source or path.name.split("__")[-1] in source, path.name
            assert detect_framework(load_mapping(path)) == FRAMEWORK_OF_FOLDER[folder], path.name


def test_the_command_line_wins_and_says_so(cli):
    path = RECIPES / "litgpt" / "config_hub__finetune__llama-2-7b__lora.yaml"
    code, out, err = cli("estimate", "--recipe", str(path), "--r", "4", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["r"] == 4
    setting = next(s for s in data["recipe"]["settings"] if s["option"] == "r")
    assert setting["overridden"] and setting["value"] == 32
    code, out, err = cli("estimate", "--recipe", str(path), "--r", "4")
    assert "--r 4 (given)" in out and "over the recipe's --r 32" in out
    # a switch reads as the flag given, and the recipe's as its flag
    path = RECIPES / "hf" / "trl__examples__cli_configs__example_config.yaml"
    code, out, err = cli("estimate", "--recipe", str(path), "-m", "llama3-8b", "--no-padded")
    assert code in (0, 1), err
    assert "--no-padded (given)" in out and "over the recipe's --padded," in out


def test_assumed_values_name_the_framework_code(cli):
    path = RECIPES / "litgpt" / "config_hub__finetune__llama-2-7b__lora.yaml"
    recipe = read_recipe(path)
    assumed = {s.option: s.origin for s in recipe.settings if s.assumed}
    assert "kbit_prep" in assumed and "litgpt@" in assumed["kbit_prep"]
    code, out, _ = cli("estimate", "--recipe", str(path))
    assert f"Recipe {path} (litgpt):" in out and "assumed: litgpt@" in out


@pytest.mark.parametrize("text,message", [
    ("- a\n- b\n", "holds no mapping"),
    ("foo: [\n", "not valid YAML"),
    ("learning_rate: 1\n", "not a recipe lorasize reads"),
    ('{"peft_type": "LORA", "r": 8}', "--adapter"),
])
def test_a_file_that_is_no_recipe_is_one_line_naming_the_flag(cli, tmp_path, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    code, out, err = cli("estimate", "--recipe", str(path))
    assert code == 2 and message in err and "--recipe" in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_recipe_is_a_usage_error(cli, tmp_path):
    code, _, err = cli("estimate", "--recipe", str(tmp_path / "nope.yml"))
    assert code == 2 and "no such file" in err


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.yaml"
    with path.open("wb") as handle:
        handle.truncate(5 * 2**20)
    with pytest.raises(LorasizeError, match="bytes"):
        read_recipe(path)


def test_a_check_scenario_reads_a_recipe_and_its_own_keys_win(cli, tmp_path):
    import yaml

    recipe = RECIPES / "llamafactory" / "examples__train_qlora__qwen3_lora_sft_otfq.yaml"
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(f"scenarios:\n  from-recipe:\n    recipe: {recipe}\n"
                       f"    budget: train_peak <= 80 GiB\n"
                       f"  shorter:\n    recipe: {recipe}\n    seq_len: 512\n"
                       f"    budget: train_peak <= 80 GiB\n")
    code, out, err = cli("check", str(budgets), "--update-baseline")
    assert code == 0, err
    stored = yaml.safe_load(budgets.read_text())["scenarios"]
    code, out, err = cli("estimate", "--recipe", str(recipe), "--json")
    assert stored["from-recipe"]["baseline"]["train_peak_bytes"] == json.loads(out)["train_peak_bytes"]
    code, out, err = cli("estimate", "--recipe", str(recipe), "--seq-len", "512", "--json")
    assert stored["shorter"]["baseline"]["train_peak_bytes"] == json.loads(out)["train_peak_bytes"]


def test_a_check_scenario_with_a_broken_recipe_names_the_line(cli, tmp_path):
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("scenarios:\n  s:\n    recipe: nope.yaml\n    budget: train_peak <= 1 GiB\n")
    code, _, err = cli("check", str(budgets))
    assert code == 2 and f"{budgets}:3" in err and "no such file" in err


def test_a_report_plan_reads_a_recipe_and_its_own_keys_win(tmp_path):
    from lorasize.plan.report import load_plan

    recipe = RECIPES / "llamafactory" / "examples__train_qlora__qwen3_lora_sft_otfq.yaml"
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"title: t\nrecipe: {recipe}\ngpus: [rtx-4090]\ntraining:\n  seq_len: 1024\n")
    parsed = load_plan(plan)
    options = read_recipe(recipe).options()
    assert parsed.model.name == "qwen3-4b-instruct-2507"
    assert parsed.train.method == "qlora" and parsed.train.double_quant is True
    assert parsed.train.kbit_prep is False and parsed.train.grad_checkpointing is True
    assert parsed.train.seq_len == 1024 != options["seq_len"]  # the plan's own key wins
    assert parsed.ranks == (options["r"],) and parsed.target_sets == (("all",),)


def test_fit_reads_a_recipe(cli):
    path = RECIPES / "llamafactory" / "examples__train_lora__qwen3_lora_sft.yaml"
    code, out, err = cli("fit", "--recipe", str(path), "--gpu", "rtx-4090", "--solve", "seq-len",
                         "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["recipe"]["framework"] == "llama-factory"
    by_hand = json.loads(RECIPES.joinpath("llamafactory", "expected.json").read_text())[path.name]
    flags = _without(by_hand["flags"], "--epochs")  # fit has no --epochs
    code, out, _ = cli("fit", *flags, "--gpu", "rtx-4090", "--solve", "seq-len", "--json")
    assert json.loads(out)["solved"] == data["solved"]


def test_trace_reads_a_recipe(cli, tmp_path):
    pytest.importorskip("torch")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(model_type="llama", vocab_size=256, hidden_size=64,
                                      intermediate_size=160, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)))
    path = RECIPES / "llamafactory" / "examples__train_lora__qwen3_lora_sft.yaml"
    code, out, err = cli("trace", "--recipe", str(path), "--model", str(config), "--seq-len", "32",
                         "--json")
    assert code == 0, err
    data = json.loads(out)
    given = {s["option"] for s in data["recipe"]["settings"] if s["overridden"]}
    assert given == {"model", "seq_len"} and data["peak_bytes"] > 0


def test_trainer_arguments_with_a_peft_adapter_folder(cli, tmp_path):
    """A TrainingArguments dump (what transformers itself writes) with --adapter: every key of
    the dump is known, and the pair gives the estimate of the flags written by hand."""
    pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from transformers import TrainingArguments

    arguments = TrainingArguments(output_dir=str(tmp_path / "o"), per_device_train_batch_size=2,
                                  gradient_accumulation_steps=4, gradient_checkpointing=True,
                                  bf16=True, optim="paged_adamw_8bit", use_cpu=True)
    path = tmp_path / "training_args.json"
    path.write_text(arguments.to_json_string())
    adapter = tmp_path / "adapter"
    peft.LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj"]).save_pretrained(adapter)
    recipe = read_recipe(path)
    assert recipe.framework == "hf"
    assert [k for k, why in recipe.unread if "not a setting" in why] == []
    common = ["--model", "llama3-8b", "--seq-len", "1024", "--json"]
    code, out, err = cli("estimate", "--recipe", str(path), "--adapter", str(adapter), *common)
    assert code == 0, err
    got = json.loads(out)
    got.pop("recipe")
    code, out, err = cli("estimate", "--r", "16", "--alpha", "32", "--targets", "q_proj,k_proj",
                         "--batch-size", "2", "--grad-accum", "4", "--grad-checkpointing",
                         "--optimizer", "paged-adamw-8bit", "--epochs", "3", *common)
    assert got == json.loads(out)


def _adapter_cases():
    expected = json.loads((RECIPES / "hf" / "adapters" / "expected.json").read_text())
    context = expected["run_context_flags"]
    for name, case in expected.items():
        if not name.startswith("peft__"):
            continue
        if "--variant" in case["adapter_flags"]:
            continue  # LoRA-FA is the optimizer's choice (training_params.json), not the config's
        yield pytest.param(name, case, context, id=name.rsplit("__", 1)[-1])


@pytest.mark.parametrize("name,case,context", list(_adapter_cases()))
def test_a_real_adapter_config_gives_the_flags_written_by_hand(cli, name, case, context):
    """PEFT's method-comparison adapter folders (real adapter_config.json files) with --adapter
    equal the flags a second reader wrote from PEFT's code."""
    folder = RECIPES / "hf" / "adapters" / name
    extra = [str(f) for f in case.get("extra", [])]
    code, out, err = cli("estimate", "--adapter", str(folder), *extra, *context, "--json")
    assert code == 0, err
    code, hand, err = cli("estimate", *case["adapter_flags"], *extra, *context, "--json")
    assert code == 0, err
    assert json.loads(out) == json.loads(hand)


@pytest.mark.parametrize("text,padded", [
    ("model_name_or_path: m\nper_device_train_batch_size: 4\nmax_length: 512\n", True),
    ("model_name_or_path: m\nper_device_train_batch_size: 1\nmax_length: 512\n", None),
    ("model_name_or_path: m\nper_device_train_batch_size: 4\nmax_length: 512\npacking: true\n",
     None),
    ("model_name_or_path: m\nper_device_train_batch_size: 4\nmax_length: 512\n"
     "padding_free: true\n", None),
    ("base_model: m\nmicro_batch_size: 1\nsequence_len: 512\n", True),
    ("base_model: m\nmicro_batch_size: 1\nsequence_len: 512\npad_to_sequence_len: false\n", None),
    ("base_model: m\nmicro_batch_size: 2\nsequence_len: 512\npad_to_sequence_len: false\n", True),
    ("base_model: m\nmicro_batch_size: 2\nsequence_len: 512\nsample_packing: true\n", None),
])
def test_a_recipe_that_pads_gives_sdpa_its_mask(tmp_path, text, padded):
    """TRL pads to the batch's longest sample (one sample: no padding); axolotl to a multiple
    of 64 unless pad_to_sequence_len is false; packing and padding_free do not pad."""
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    assert read_recipe(str(path)).options().get("padded") is padded


def test_an_error_about_a_flag_the_recipe_set_says_so(cli, tmp_path):
    path = tmp_path / "lf.yaml"
    path.write_text("model_name_or_path: m\nfinetuning_type: lora\ncutoff_len: 512\n")
    code, _, err = cli("estimate", "--recipe", str(path), "-m", "llama3-8b", "--stack", "litgpt")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--padded:" in err and f"the recipe {path} set --padded: give --no-padded" in err
    code, _, err = cli("estimate", "--recipe", str(path), "-m", "llama3-8b", "--stack", "litgpt",
                       "--padded")
    assert code == 2 and "the recipe" not in err
