"""Defects a new user met (issue: hardening), each with the behaviour that replaces it."""

from __future__ import annotations

import json

import pytest


def test_bare_gpu_mem_is_refused_with_the_forms(cli):
    code, _, err = cli("estimate", "-m", "llama2-7b", "--gpu-mem", "24")
    assert code == 2 and "--gpu-mem" in err and "24GiB" in err and len(err.strip().splitlines()) == 1
    code, out, _ = cli("estimate", "-m", "llama2-7b", "--gpu-mem", "24GiB", "--json")
    assert code in (0, 1) and json.loads(out)["gpu_memory_bytes"] == 24 * 2**30


def test_ctrl_c_exits_130(cli, monkeypatch):
    import lorasize.cli.estimate_cmd as command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "run_estimate", interrupted)
    code, _, _ = cli("estimate", "-m", "llama2-7b")
    assert code == 130


def test_all_linear_is_peft_spelling_of_all(cli):
    _, a, _ = cli("estimate", "-m", "llama2-7b", "--targets", "all", "--json")
    _, b, _ = cli("estimate", "-m", "llama2-7b", "--targets", "all-linear", "--json")
    assert json.loads(a)["trainable_params"] == json.loads(b)["trainable_params"]


def test_overlong_model_name_is_one_line(cli):
    code, _, err = cli("estimate", "-m", "x" * 300)
    assert code == 2 and "--model" in err and len(err.strip().splitlines()) == 1


def test_lora_flags_under_full_fine_tuning_are_named_as_ignored(cli):
    code, _, err = cli("estimate", "-m", "gpt2", "--method", "full", "--r", "64", "--dora")
    assert code == 0 and "--r" in err and "--dora" in err and "ignored" in err


def test_sequence_beyond_the_models_positions_is_noted_and_solves_stop_there(cli):
    code, out, _ = cli("estimate", "-m", "gpt2", "--seq-len", "8192", "--json")
    assert code == 0 and any("1,024 positions" in n for n in json.loads(out)["notes"])
    from lorasize import LoraSpec, TrainSpec, gpu_from_catalog, resolve_model
    from lorasize.plan.solve import solve

    value, _ = solve(resolve_model("gpt2"), LoraSpec(), TrainSpec(), gpu_from_catalog("h100-80gb"),
                     "seq-len")
    assert value == 1024


@pytest.mark.parametrize("field,value", [("rank_pattern", {"q_proj": 64}),
                                         ("layers_to_transform", [0, 1]),
                                         ("modules_to_save", ["lm_head"])])
def test_adapter_fields_that_change_training_are_refused_by_name(cli, tmp_path, field, value):
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
              "base_model_name_or_path": "llama2-7b", field: value}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    code, _, err = cli("estimate", "--adapter", str(tmp_path))
    assert code == 2 and field in err and len(err.strip().splitlines()) == 1


def test_check_scenario_gpu_mem_follows_the_same_rule(cli, tmp_path):
    """A budgets file's gpu_mem goes through the same parser as --gpu-mem (lorasize.gpu)."""
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text('scenarios:\n  s1:\n    model: llama2-7b\n    gpu_mem: "24"\n    budget: fits\n')
    code, _, err = cli("check", str(budgets))
    assert code == 2 and "gpu_mem" in err and "24GiB" in err and len(err.strip().splitlines()) == 1


def test_targets_matching_nothing_are_refused():
    from lorasize import LoraSpec, LorasizeError, resolve_model
    from lorasize.arch.lora import resolve_targets

    with pytest.raises(LorasizeError, match="adapts no module"):
        resolve_targets(resolve_model("deepseek-v3"), LoraSpec(targets=("qv",)))


def test_the_gpu_extra_brings_pynvml_and_the_error_names_it():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml")
                            .read_text())["project"]
    gpu = project["optional-dependencies"]["gpu"]
    assert any(d.startswith("nvidia-ml-py") for d in gpu) and "lorasize[torch]" in gpu
    source = (Path(__file__).resolve().parent.parent / "lorasize" / "profile" / "backends.py")
    assert 'pip install \\"lorasize[gpu]\\"' in source.read_text()
