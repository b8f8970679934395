"""The ``lorasize`` command line, end to end, in-process and as a real process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import quiet
from lorasize.arch.catalog import model_entries

DESIGN_KEYS = {"trainable_params", "base_params", "adapter_file_bytes", "train_allocated_bytes",
               "train_reserved_bytes", "train_peak_bytes", "train_breakdown", "gpu", "fits",
               "adapters_fit"}


def test_estimate_table(cli):
    code, out, err = cli("estimate", "--model", "llama2-7b", "--r", "64", "--targets", "all")
    assert code == 0, err
    assert "159,907,840" in out  # r=64 on every linear layer of the blocks
    assert "6,738,415,616" in out
    for label in ("frozen base weights", "activations", "logits and loss", "CUDA context",
                  "max_memory_allocated", "max_memory_reserved", "nvidia-smi"):
        assert label in out


def test_estimate_json_contract(cli):
    code, out, _ = cli("estimate", "-m", "llama3-8b", "--method", "qlora", "--r", "16", "-t", "all",
                       "-b", "4", "-s", "2048", "--grad-checkpointing", "--gpu", "rtx-4090", "--json")
    data = json.loads(out)
    assert DESIGN_KEYS <= set(data)
    assert all(isinstance(v, int) for v in data["train_breakdown"].values())
    assert sum(data["train_breakdown"].values()) == data["train_peak_bytes"]
    assert data["train_allocated_bytes"] <= data["train_reserved_bytes"] <= data["train_peak_bytes"]
    assert data["gpu"] == "rtx-4090"
    assert code == (0 if data["fits"] else 1)


def test_fit_exit_codes(cli):
    code, out, _ = cli("estimate", "-m", "llama2-7b", "--gpu", "a100-80gb", "--json")
    assert code == 0 and json.loads(out)["fits"] is True
    code, out, _ = cli("estimate", "-m", "llama2-70b", "--gpu", "t4", "--json")
    assert code == 1 and json.loads(out)["fits"] is False


def test_suggestions_when_it_does_not_fit(cli):
    code, out, _ = cli("estimate", "-m", "llama3-8b", "--method", "qlora", "--r", "16", "-t", "all",
                       "-b", "4", "-s", "2048", "--grad-checkpointing", "--gpu", "rtx-4090", "--json")
    data = json.loads(out)
    assert code == 1 and any(s.startswith("--batch-size ") for s in data["suggestions"])
    smaller = int(next(s for s in data["suggestions"] if s.startswith("--batch-size")).split()[1])
    code, out, _ = cli("estimate", "-m", "llama3-8b", "--method", "qlora", "--r", "16", "-t", "all",
                       "-b", str(smaller), "-s", "2048", "--grad-checkpointing", "--gpu", "rtx-4090",
                       "--json")
    assert code == 0 and json.loads(out)["fits"] is True


def test_gpu_names_case_insensitive_and_gpu_mem(cli):
    _, out, _ = cli("estimate", "-m", "gpt2", "--gpu", "A100-40GB", "--json")
    assert json.loads(out)["gpu_memory_bytes"] == 40960 * 2**20
    _, out, _ = cli("estimate", "-m", "gpt2", "--gpu-mem", "24GiB", "--json")
    assert json.loads(out)["gpu_memory_bytes"] == 24 * 2**30


@pytest.mark.parametrize("args,flag,fragment", [
    (["-m", "llama2-7"], "--model", "llama2-7b"),
    (["-m", "llama2-7b", "--r", "0"], "--r", "positive"),
    (["-m", "gpt2", "--r", "5000"], "--r", "larger than"),
    (["-m", "llama2-7b", "-t", "q_prj"], "--targets", "q_proj"),
    (["-m", "llama2-7b", "--batch-size", "-3"], "--batch-size", "positive"),
    (["-m", "llama2-7b", "--seq-len", "0"], "--seq-len", "positive"),
    (["-m", "llama2-7b", "--gpu", "a1000"], "--gpu", "a100"),
    (["-m", "llama2-7b", "--gpu-mem", "lots"], "--gpu-mem", "not a size"),
    (["-m", "llama2-7b", "--method", "full", "--quant", "nf4"], "--quant", "full"),
    (["-m", "llama2-7b", "--lora-dropout", "1.5"], "--lora-dropout", "[0, 1)"),
    (["-m", "llama2-7b", "--optimizer", "adam9"], "--optimizer", "adam9"),
    (["-m", "llama2-7b", "--r", "x"], "--r", "x"),
    ([], "--model", "which model"),
])
def test_bad_input_is_one_line_exit_2(cli, args, flag, fragment):
    code, out, err = cli("estimate", *args)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert flag in err and fragment in err
    assert "Traceback" not in err


def test_config_json_path_and_folder(cli, tmp_path):
    entry = next(e for e in model_entries() if e["name"] == "qwen2.5-0.5b")
    (tmp_path / "config.json").write_text(json.dumps(entry["config"]))
    by_name = json.loads(cli("estimate", "-m", "qwen2.5-0.5b", "--json")[1])
    for target in (tmp_path, tmp_path / "config.json"):
        by_path = json.loads(cli("estimate", "-m", str(target), "--json")[1])
        assert by_path["train_breakdown"] == by_name["train_breakdown"]


def test_malformed_config_names_key_and_file(cli, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    code, _, err = cli("estimate", "-m", str(config))
    assert code == 2 and "hidden_size" in err and str(config) in err
    config.write_text("{not json")
    code, _, err = cli("estimate", "-m", str(config))
    assert code == 2 and "JSON" in err and len(err.strip().splitlines()) == 1
    config.write_text(json.dumps({"model_type": "t5", "d_model": 512}))
    code, _, err = cli("estimate", "-m", str(config))
    assert code == 2 and "t5" in err and "language model" in err and len(err.strip().splitlines()) == 1


def test_hub_id_offline_is_a_clear_message(cli):
    code, _, err = cli("estimate", "-m", "someorg/not-a-cached-model")
    assert code == 2 and "someorg/not-a-cached-model" in err and "config.json" in err
    assert len(err.strip().splitlines()) == 1


def _write_adapter(tmp_path, **overrides):
    config = {"peft_type": "LORA", "r": 32, "lora_alpha": 64, "target_modules": ["q_proj", "v_proj"],
              "base_model_name_or_path": "meta-llama/Llama-3.2-3B", "use_dora": False,
              "lora_dropout": 0.0}
    config.update(overrides)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    return tmp_path


def test_adapter_config_fills_flags_and_flags_win(cli, tmp_path):
    folder = _write_adapter(tmp_path)
    data = json.loads(cli("estimate", "--adapter", str(folder), "--json")[1])
    assert data["model"] == "llama3.2-3b" and data["r"] == 32
    assert data["trainable_params"] == 9_175_040  # PEFT's count in its method comparison (mc-p1)
    data = json.loads(cli("estimate", "--adapter", str(folder), "--r", "8", "--json")[1])
    assert data["r"] == 8 and data["trainable_params"] == 9_175_040 // 4
    folder = _write_adapter(tmp_path, target_modules="all-linear", use_dora=True)
    data = json.loads(cli("estimate", "--adapter", str(folder), "--json")[1])
    assert "down_proj" in data["targets"]


def test_models_and_gpus_catalogs(cli):
    code, out, _ = cli("models", "--json")
    models = {m["name"]: m for m in json.loads(out)}
    assert code == 0 and len(models) >= 30
    assert models["llama2-7b"]["params"] == 6_738_415_616
    code, out, _ = cli("gpus", "--json")
    gpus = {g["name"] for g in json.loads(out)}
    assert len(gpus) >= 15
    assert {"a100-40gb", "a100-80gb", "h100-80gb", "h200", "l4", "t4", "a10g", "l40s", "rtx-3090",
            "rtx-4090", "v100-32gb", "mi300x"} <= gpus
    assert "llama2-7b" in cli("models")[1] and "rtx-4090" in cli("gpus")[1]
    # the measured matmul rate beside the datasheet's: an RTX 4090 at its peak, an A10G unmeasured
    table = {line.split()[0]: line.split() for line in cli("gpus")[1].splitlines()[2:]}
    assert "measured" in cli("gpus")[1]
    assert table["rtx-4090"][-3:] == ["165.2", "165.26", "1008"]
    assert table["a10g"][-2:] == ["-", "600"]


def test_inspect_real_adapter(cli, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    tiny = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text(json.dumps(dict(tiny, model_type="llama")))
    with quiet():
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **tiny))
        model = get_peft_model(model.to(torch.bfloat16), LoraConfig(r=4, target_modules="all-linear"))
        model.save_pretrained(tmp_path / "adapter")
    code, out, err = cli("inspect", str(tmp_path / "adapter"), "--model", str(tmp_path / "base"),
                         "--json")
    report = json.loads(out)
    assert code == 0, err
    assert report["predicted"]["file_bytes"] == report["file_bytes"]
    assert report["predicted"]["params"] == report["params"]
    assert "exact match" in cli("inspect", str(tmp_path / "adapter"), "-m", str(tmp_path / "base"))[1]
    assert cli("inspect", str(tmp_path / "missing"))[0] == 2


def test_help_has_examples(cli):
    code, out, _ = cli("estimate", "--help")
    assert code == 0 and "Examples:" in out and "--grad-checkpointing" in out


def test_real_process_no_heavy_imports():
    script = (
        "import sys\n"
        "from lorasize.cli import main\n"
        "code = main(['estimate', '--model', 'llama2-7b', '--gpu', 'a100-40gb', '--json'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'pandas', 'plotly', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["fits"] is True


def test_python_dash_m():
    done = subprocess.run([sys.executable, "-m", "lorasize", "estimate", "-m", "gpt2", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout)["base_params"] == 124_439_808


def test_labels_follow_the_method(cli):
    """Full fine-tuning trains the weights; IA3 trains vectors and has no rank."""
    _, out, _ = cli("estimate", "-m", "gpt2", "--method", "full")
    assert "model weights (trained)" in out and "frozen base weights" not in out
    _, out, _ = cli("estimate", "-m", "gpt2", "--variant", "ia3", "-t", "all")
    assert "IA3 on" in out.splitlines()[0] and "r=" not in out.splitlines()[0]


def test_a_missing_choice_lists_the_choices_on_one_line(cli):
    code, _, err = cli("fit", "-m", "llama2-7b", "--gpu", "rtx-4090")
    assert code == 2 and "Choose from: batch-size, seq-len" in err and "\\n" not in err
    assert len(err.strip().splitlines()) == 1
