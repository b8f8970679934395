"""Shared fixtures: building real Hugging Face models on the meta device, running the CLI."""

from __future__ import annotations

import contextlib
import io
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def quiet():
    """Silence transformers/peft/bitsandbytes chatter during a build (the trace tier's own)."""
    from lorasize.trace.build import quiet as library_quiet

    return library_quiet()


def build_meta_model(config: dict, num_layers: int | None = None):
    """The real transformers model for a config dict, on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config)
    model_type = config.pop("model_type")
    if num_layers is not None:
        key = "n_layer" if model_type == "gpt2" else "num_hidden_layers"
        config[key] = num_layers
    with quiet():
        hf_config = AutoConfig.for_model(model_type, **config)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf_config)


def peft_wrap(model, **lora_kwargs):
    """Wrap with PEFT under the meta device (adapter weights never touch host memory)."""
    import torch
    from peft import LoraConfig, get_peft_model

    with quiet(), torch.device("meta"):
        return get_peft_model(model, LoraConfig(**lora_kwargs))


def run_cli(*args: str):
    """Run ``lorasize`` in-process; returns (exit code, stdout, stderr)."""
    from lorasize.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def published():
    """The shipped measurements priced once per test process, ``{id: Row}`` (a run costs about
    25 s on two cores)."""
    from lorasize.calibrate.validate import validate
    from lorasize.measurements import MEMORY

    return {r.id: r for r in validate(MEMORY)}
