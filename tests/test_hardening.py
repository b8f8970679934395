"""Defects a new user met (issue: hardening), each with the behaviour that replaces it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    code, out, _ = cli("fit", "-m", "gpt2", "--solve", "seq-len", "--gpu", "h100-80gb")
    assert code == 0 and "capped at the 1,024 positions gpt2 was trained for" in out
    code, out, _ = cli("fit", "-m", "gpt2", "--solve", "seq-len", "--gpu", "h100-80gb", "--json")
    assert json.loads(out)["capped_by"].startswith("the 1,024 positions")
    code, out, _ = cli("fit", "-m", "llama2-70b", "--solve", "seq-len", "--gpu", "a100-40gb",
                       "--method", "qlora", "--json")
    assert json.loads(out)["capped_by"] is None  # memory stops it first


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


def test_files_keep_their_mode_links_and_read_only_protection(tmp_path):
    import stat

    from lorasize.errors import LorasizeError
    from lorasize.files import write_atomic

    private = tmp_path / "private.yaml"
    private.write_text("old")
    private.chmod(0o600)
    write_atomic(private, "new")
    assert private.read_text() == "new" and stat.S_IMODE(private.stat().st_mode) == 0o600

    target = tmp_path / "real.yaml"
    target.write_text("old")
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    write_atomic(link, "through")
    assert link.is_symlink() and target.read_text() == "through"

    frozen = tmp_path / "frozen.yaml"
    frozen.write_text("keep")
    frozen.chmod(0o444)
    with pytest.raises(LorasizeError, match="read-only"):
        write_atomic(frozen, "lost")
    assert frozen.read_text() == "keep"


@pytest.mark.parametrize("args,flag", [
    (("report", "examples/plan.yaml", "--out", "{dir}"), "--out"),
    (("report", "examples/plan.yaml", "--out", "{missing}/r.html"), "--out"),
    (("calibrate", "--out", "{readonly}"), "--out"),
    (("check", "memory-budgets.yaml", "--junit", "{missing}/j.xml"), "--junit"),
    (("check", "{readonly}", "--update-baseline"), "--update-baseline"),
    (("profile", "-m", "gpt2", "--device", "cpu", "--out", "{dir}", "--timeline",
      "{missing}/t.html"), "--timeline"),
])
def test_output_paths_are_checked_before_the_work(cli, tmp_path, args, flag):
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readonly = tmp_path / "budgets.yaml"
    shutil.copy(root / "memory-budgets.yaml", readonly)
    readonly.chmod(0o444)
    values = {"dir": str(tmp_path), "missing": str(tmp_path / "nope"), "readonly": str(readonly)}
    filled = [a.format(**values) if "{" in a else (str(root / a) if a.endswith((".yaml",)) else a)
              for a in args]
    code, out, err = cli(*filled)
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1, err
    assert readonly.read_text() == (root / "memory-budgets.yaml").read_text()


def test_report_refuses_its_output_path_before_reading_the_plan(cli, tmp_path):
    """The plan's validation rows are predicted while it is read: a bad --out is refused first
    (a plan that would fail later on shows which came first)."""
    root = Path(__file__).resolve().parent.parent
    plan = tmp_path / "plan.yaml"
    plan.write_text((root / "examples" / "plan.yaml").read_text().replace(
        "validation: [mc-01, mc-03]", "validation: [mc-01, no-such-row]"))
    code, _, err = cli("report", str(plan), "--out", str(tmp_path))
    assert code == 2 and "--out" in err and "no-such-row" not in err, err
    code, _, err = cli("report", str(plan), "--out", str(tmp_path / "r.html"))
    assert code == 2 and "no-such-row" in err and not (tmp_path / "r.html").exists(), err


def test_estimate_loads_only_its_own_command():
    """Subcommands are imported lazily: a cold estimate loads none of the others' modules."""
    import subprocess
    import sys

    script = ("import sys; from lorasize.cli import main; "
              "main(['estimate', '--model', 'llama2-7b', '--gpu', 'a100-40gb', '--json']); "
              "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    loaded = set(done.stderr.split())
    assert "lorasize.cli.estimate_cmd" in loaded
    for other in ("report_cmd", "profile_cmd", "check_cmd", "calibrate_cmd", "trace_cmd",
                  "serve_cmd", "validate_cmd", "inspect_cmd"):
        assert f"lorasize.cli.{other}" not in loaded
    assert not {"torch", "pandas", "plotly", "transformers", "numpy"} & loaded


def test_serve_offers_only_the_options_serving_uses(cli):
    code, out, _ = cli("serve", "--help")
    assert code == 0
    for training in ("--optimizer", "--batch-size", "--grad-accum", "--grad-checkpointing",
                     "--kbit-prep", "--seq-len", "--adapter-train-dtype"):
        assert training not in out
    for serving in ("--engine", "--concurrency", "--quant", "--max-lora-rank", "--batch"):
        assert serving in out


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "http://10.255.255.1:81"])
def test_an_unreachable_hub_fails_fast_in_one_line(cli, monkeypatch, tmp_path, endpoint):
    """A Hub id with no cached config: one TCP connection with a 2 s bound, not half a minute
    of huggingface_hub's retries (a refused port, and an address that never answers)."""
    import time

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    code, _, err = cli("estimate", "-m", "someorg/not-cached")
    # 2 s of connection and the imports; retries would take half a minute (a loaded 2-core CI
    # machine took 6.9 s here)
    assert time.perf_counter() - start < 12
    assert code == 2 and "Hugging Face Hub" in err and "config.json" in err
    assert len(err.strip().splitlines()) == 1
    if endpoint.startswith("http://127.0.0.1"):  # refused: caught before transformers loads
        assert "cannot reach" in err


def test_offline_mode_and_the_cache(monkeypatch, tmp_path, cli):
    from lorasize.arch.resolve import _in_hub_cache

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert not _in_hub_cache("org/model")
    (tmp_path / "models--org--model" / "snapshots").mkdir(parents=True)
    assert _in_hub_cache("org/model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli("estimate", "-m", "someorg/not-cached")
    assert code == 2 and "HF_HUB_OFFLINE" in err


def _seed_hub_cache(cache: Path, repo_id: str, config: Path, revision: str = "0" * 40) -> Path:
    """huggingface_hub's cache layout, as hf_hub_download leaves it."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_bytes(config.read_bytes())
    return snapshot / "config.json"


LLAMA2_CONFIG = Path(__file__).parents[1] / "benchmarks" / "data" / "Llama-2-7b-hf.config.json"


def test_a_cached_hub_config_is_read_without_transformers(monkeypatch, tmp_path):
    """A Hub id already in the local cache is read from its snapshot's config.json, as
    hf_hub_download would offline: no transformers import (seconds), the repo id as the name."""
    _seed_hub_cache(tmp_path, "someorg/llama2-copy", LLAMA2_CONFIG)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    probe = ("import sys, json; from lorasize import resolve_model; "
             "s = resolve_model('someorg/llama2-copy'); "
             "print(json.dumps([s.name, s.source, s.num_layers, s.hidden_size, "
             "'transformers' in sys.modules, 'torch' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          check=True)
    name, source, layers, hidden, transformers_loaded, torch_loaded = json.loads(done.stdout)
    assert (name, source, layers, hidden) == ("someorg/llama2-copy", "hub:someorg/llama2-copy",
                                              32, 4096)
    assert not transformers_loaded and not torch_loaded


def test_a_snapshot_path_is_named_by_its_repository(tmp_path):
    from lorasize import resolve_model

    config = _seed_hub_cache(tmp_path, "someorg/llama2-copy", LLAMA2_CONFIG)
    assert resolve_model(str(config)).name == "someorg/llama2-copy"
    assert resolve_model(str(LLAMA2_CONFIG)).name == "data"  # an ordinary folder keeps its name


def test_the_cached_config_follows_refs_main(monkeypatch, tmp_path):
    from lorasize.arch.resolve import hub_cached_config

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert hub_cached_config("someorg/model") is None
    main = _seed_hub_cache(tmp_path, "someorg/model", LLAMA2_CONFIG, revision="a" * 40)
    older = tmp_path / "models--someorg--model" / "snapshots" / ("b" * 40)
    older.mkdir()
    (older / "config.json").write_text("{}")
    assert hub_cached_config("someorg/model") == main
    (tmp_path / "models--someorg--model" / "refs" / "main").unlink()
    assert hub_cached_config("someorg/model") is None  # two snapshots, no ref: not guessed


@pytest.mark.parametrize("method,hint", [("dora", "--dora"), ("vera", "--variant vera")])
def test_a_variant_given_as_a_method_points_to_its_flag(cli, method, hint):
    code, _, err = cli("estimate", "-m", "llama2-7b", "--method", method)
    assert code == 2 and hint in err and len(err.strip().splitlines()) == 1


def test_settings_the_gpu_cannot_run_are_noted(cli):
    code, out, _ = cli("estimate", "-m", "llama2-7b", "--gpu", "t4", "--attn", "flash", "--json")
    notes = " ".join(json.loads(out)["notes"])
    assert "no bf16 tensor cores" in notes and "flash-attn 2 needs an Ampere" in notes
    code, out, _ = cli("estimate", "-m", "llama2-7b", "--gpu", "a100-40gb", "--attn", "flash",
                       "--json")
    notes = " ".join(json.loads(out)["notes"])
    assert "tensor cores" not in notes and "flash-attn 2 needs" not in notes


def test_a_usage_error_is_one_line_even_after_a_note(cli):
    """A note made while reading the flags (LoRA flags under --method full) is dropped when the
    command then ends in a usage error: exit 2 prints exactly one line (found by the property
    test's generator)."""
    code, out, err = cli("fit", "--solve", "batch-size", "--alpha", "0", "--model", "llama2-7b",
                         "--method", "full")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--gpu" in err


def test_a_failed_launch_names_the_error_not_torchruns_banner():
    pytest.importorskip("torch")
    from lorasize.profile.distributed import _stderr_reason

    stderr = ("W1206 something\n[rank0]: Traceback ...\n"
              "torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError: timed out\n"
              "======================================================\n"
              "lorasize.profile.distributed FAILED\n"
              "======================================================\n")
    assert "RendezvousTimeoutError" in _stderr_reason(stderr)
    assert _stderr_reason("=====\nsomething broke\n=====\n") == "something broke"
    assert _stderr_reason("") == "no output"
