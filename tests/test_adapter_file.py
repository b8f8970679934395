"""Adapter file size: predicted bytes against real files written by PEFT and safetensors."""

from __future__ import annotations

import pytest

from conftest import quiet
from lorasize import LoraSpec, adapter_file_bytes, resolve_model
from lorasize.arch.lora import resolve_targets
from lorasize.arch.model import ModelSpec
from lorasize.arch.safetensors_format import file_bytes, header_json, read_header

TINY = {
    "llama": dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=160,
                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2),
    "gpt2": dict(model_type="gpt2", vocab_size=512, n_embd=64, n_layer=3, n_head=4, n_positions=128),
    "gpt_neox": dict(model_type="gpt_neox", vocab_size=512, hidden_size=64, intermediate_size=256,
                     num_hidden_layers=3, num_attention_heads=4),
    "phi3": dict(model_type="phi3", vocab_size=512, hidden_size=64, intermediate_size=160,
                 num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                 pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "falcon": dict(model_type="falcon", vocab_size=512, hidden_size=64, num_hidden_layers=3,
                   num_attention_heads=4, multi_query=True, parallel_attn=True, bias=False),
}


def _save_real_adapter(config: dict, tmp_path, r: int, targets, dora: bool, dtype):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config)
    with quiet():
        hf = AutoConfig.for_model(config.pop("model_type"), **config)
        model = AutoModelForCausalLM.from_config(hf).to(dtype)
        model = get_peft_model(model, LoraConfig(r=r, target_modules=targets, use_dora=dora),
                               autocast_adapter_dtype=dtype == torch.float32)
        model.save_pretrained(tmp_path)
    return tmp_path / "adapter_model.safetensors"


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("targets", [("all",), ("qv",), ("qv", "lm_head")])
def test_file_bytes_match_real_peft_file(family, targets, tmp_path):
    import torch

    spec = ModelSpec.from_hf_config(TINY[family], name=family)
    lora = LoraSpec(r=4, targets=targets)
    resolved = resolve_targets(spec, lora)
    peft_targets = "all-linear" if targets == ("all",) else [t.linear.path for t in resolved]
    path = _save_real_adapter(TINY[family], tmp_path, 4, peft_targets, False, torch.float32)
    assert adapter_file_bytes(spec, resolved, "fp32", head_dtype="fp32") == path.stat().st_size


@pytest.mark.parametrize("dora", [False, True])
def test_bf16_and_dora_files(dora, tmp_path):
    import torch

    spec = ModelSpec.from_hf_config(TINY["llama"], name="llama")
    resolved = resolve_targets(spec, LoraSpec(r=8, targets=("all",), dora=dora))
    path = _save_real_adapter(TINY["llama"], tmp_path, 8, "all-linear", dora, torch.bfloat16)
    tensors, _ = read_header(path)
    assert {t.dtype for t in tensors} == {"BF16"}
    assert adapter_file_bytes(spec, resolved, "bf16", dora) == path.stat().st_size


def test_header_is_byte_identical_to_safetensors(tmp_path):
    import torch
    from safetensors.torch import save_file

    tensors = {"b.lora_B.weight": torch.zeros(16, 4), "a.lora_A.weight": torch.zeros(4, 3),
               "c.vec": torch.zeros(7, dtype=torch.bfloat16)}
    path = tmp_path / "x.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    described = [(n, {torch.float32: "F32", torch.bfloat16: "BF16"}[t.dtype], tuple(t.shape))
                 for n, t in tensors.items()]
    raw = path.read_bytes()
    assert raw[8:8 + len(header_json(described, {"format": "pt"}))] == header_json(
        described, {"format": "pt"})
    assert file_bytes(described, {"format": "pt"}) == len(raw)


# Published by PEFT's method comparison (MetaMathQA results, os.stat of adapter_model.safetensors);
# measurements/measured.csv rows mc-d1 and mc-d3.
@pytest.mark.parametrize("targets,r,published", [
    (("q_proj", "v_proj"), 32, 36_715_216),
    (("gate_proj", "up_proj", "down_proj"), 10, 37_868_984),
])
def test_published_peft_file_sizes(targets, r, published):
    spec = resolve_model("llama3.2-3b")
    assert adapter_file_bytes(spec, resolve_targets(spec, LoraSpec(r=r, targets=targets))) == published


def test_seed_r64_qkvo_adapter_is_256_mib():
    """Seed 004: an r=64 q,k,v,o adapter of Llama-2-7B saved by PEFT is about 256 MiB."""
    spec = resolve_model("llama2-7b")
    size = adapter_file_bytes(spec, resolve_targets(
        spec, LoraSpec(r=64, targets=("q_proj", "k_proj", "v_proj", "o_proj"))))
    assert 256 * 2**20 < size < 256 * 2**20 + 64 * 1024  # data plus a header of tens of KiB


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_vera_file_matches_real_peft_file(family, tmp_path):
    import torch
    from peft import VeraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(TINY[family])
    spec = ModelSpec.from_hf_config(config, name=family)
    resolved = resolve_targets(spec, LoraSpec(r=8, targets=("all",), variant="vera"))
    with quiet():
        hf = AutoConfig.for_model(config.pop("model_type"), **config)
        model = AutoModelForCausalLM.from_config(hf).to(torch.float32)
        model = get_peft_model(model, VeraConfig(r=8, target_modules=[t.linear.path for t in resolved]))
        model.save_pretrained(tmp_path)
    assert adapter_file_bytes(spec, resolved, "fp32") == (tmp_path / "adapter_model.safetensors").stat().st_size
