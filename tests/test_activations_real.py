"""The activation model against the tensors the real code saves for backward.

Tiny models of each family run a real forward pass (real transformers, real PEFT, CPU tensors)
under ``torch.autograd.graph.saved_tensors_hooks``; every saved storage that is not a parameter
is counted once. Building the same model with 3 and with 2 layers and taking the difference gives
exactly one decoder layer's saved bytes, which :func:`layer_bytes_per_token` must reproduce.

Two CPU behaviours are put right so the comparison is with what a GPU does:
- dropout goes through ``torch.native_dropout`` (the fused kernel CUDA uses, which saves a bool
  mask) instead of the CPU's ``input * noise``;
- CPU LayerNorm returns its mean and rstd in the input dtype (bf16, 2+2 bytes per token), CUDA in
  fp32 (4+4): the expected CPU figure is 4 bytes per token less per LayerNorm.
"""

from __future__ import annotations

import pytest

from conftest import quiet
from lorasize.memory import activations as act
from lorasize.arch.layout import block_params
from lorasize.arch.lora import LoraSpec, resolve_targets
from lorasize.arch.model import ModelSpec

BATCH, SEQ = 2, 32
SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_attention_heads=4)
FAMILIES = {
    "llama": dict(SMALL, model_type="llama", num_key_value_heads=2),
    "mistral": dict(SMALL, model_type="mistral", num_key_value_heads=2),
    "qwen2": dict(SMALL, model_type="qwen2", num_key_value_heads=2),
    "qwen3": dict(SMALL, model_type="qwen3", num_key_value_heads=2, head_dim=32),
    "gemma": dict(SMALL, model_type="gemma", num_key_value_heads=1, head_dim=32),
    "gemma2": dict(SMALL, model_type="gemma2", num_key_value_heads=2, head_dim=32),
    "phi3": dict(SMALL, model_type="phi3", num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2),
    "gpt_neox": dict(SMALL, model_type="gpt_neox", intermediate_size=256),
    "phi": dict(SMALL, model_type="phi", intermediate_size=256, resid_pdrop=0.0, embd_pdrop=0.0),
    "stablelm": dict(SMALL, model_type="stablelm", num_key_value_heads=4, use_qkv_bias=True),
    "mixtral": dict(SMALL, model_type="mixtral", num_key_value_heads=2, num_local_experts=4,
                    num_experts_per_tok=2),
    "falcon": dict(vocab_size=512, hidden_size=64, num_attention_heads=4, model_type="falcon",
                   multi_query=True, parallel_attn=True, bias=False),
}
# Gemma builds (1 + weight) in fp32 for each norm every forward: a per-layer constant that is a
# few bytes per token at 64 tokens, nothing at real sizes.
PER_LAYER_SLACK = 16


def _cuda_dropout(x, p=0.5, training=True, inplace=False):
    import torch

    return torch.native_dropout(x, p, training)[0] if training and 0 < p < 1 else x


def _forward_saved_bytes(model, vocab_size: int, buffers: bool) -> int:
    """Bytes of every storage autograd saves in one training forward, each counted once;
    parameters (and, with ``buffers``, buffers such as VeRA's shared projections) excluded."""
    import torch

    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    if buffers:
        params |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, vocab_size, (BATCH, SEQ))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return sum(saved.values())


def _saved_bytes(config: dict, layers: int, attn: str, lora_kwargs: dict | None) -> int:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config, num_hidden_layers=layers)
    model_type = config.pop("model_type")
    torch.manual_seed(0)
    with quiet():
        hf = AutoConfig.for_model(model_type, **config)
        model = AutoModelForCausalLM.from_config(hf, attn_implementation=attn).to(torch.bfloat16)
        if lora_kwargs is not None:
            model = get_peft_model(model, LoraConfig(**lora_kwargs))
    return _forward_saved_bytes(model, config["vocab_size"], buffers=False)


CASES = []
for _family in FAMILIES:
    for _attn in ("sdpa", "eager"):
        if _family == "gemma2" and _attn == "sdpa":
            continue  # transformers refuses SDPA for Gemma 2 (soft-capping)
        if _family == "falcon" and _attn == "sdpa":
            continue  # Falcon passes a mask: the CPU runs the math kernel, CUDA a fused one
        for _targets, _dropout in ((("qv",), 0.0), (("qv",), 0.1), (("all",), 0.0),
                                   (("all",), 0.1), (None, 0.0)):
            if _family == "mixtral" and _targets == ("all",) and _dropout:
                continue  # PEFT's ParamWrapper (expert weights) does not support dropout
            CASES.append((_family, _attn, _targets, _dropout))


@pytest.mark.parametrize("family,attn,targets,dropout", CASES,
                         ids=[f"{c[0]}-{c[1]}-{'full' if c[2] is None else '+'.join(c[2])}-{c[3]}"
                              for c in CASES])
def test_one_layer_saved_bytes(family, attn, targets, dropout, monkeypatch):
    import torch.nn.functional as F

    monkeypatch.setattr(F, "dropout", _cuda_dropout)
    config = FAMILIES[family]
    spec = ModelSpec.from_hf_config(dict(config, num_hidden_layers=3), name=family)
    full = targets is None
    resolved = () if full else resolve_targets(spec, LoraSpec(r=4, targets=targets))
    if full:
        lora_kwargs = None
    else:
        modules = "all-linear" if targets == ("all",) else [t.linear.path for t in resolved]
        lora_kwargs = dict(r=4, target_modules=modules, lora_dropout=dropout)
    measured = (_saved_bytes(config, 3, attn, lora_kwargs)
                - _saved_bytes(config, 2, attn, lora_kwargs)) / (BATCH * SEQ)
    dtypes = act.Dtypes(compute=2, residual=2, norm_out=2, adapter=4)
    predicted = act.layer_bytes_per_token(spec, resolved, dtypes, seq_len=SEQ, attn=attn,
                                          full=full, dropout=dropout > 0).total
    predicted += act.layer_constant_bytes(spec, resolved, dtypes) / (BATCH * SEQ)
    if spec.norm == "layer":
        predicted -= 4 * len([p for p in block_params(spec) if not p.path.startswith("self_attn")])
    # Known approximations, kept visible: the expert bookkeeping of MoE full fine-tuning and the
    # attention output copy of parallel-block models in full eager fine-tuning.
    # MoE routing is data dependent (which experts a batch hits): a few bytes per token.
    tolerance = 0.07 * measured if full and family in ("mixtral", "falcon", "phi") else PER_LAYER_SLACK
    if family == "mixtral":
        # with every linear adapted, 4 experts and 64 tokens the per-token expert bookkeeping is
        # 3.2% over; the bf16 copies of the expert adapters it now counts are exact (next test)
        tolerance = max(tolerance, (0.04 if targets == ("all",) else 0.01) * measured)
    assert abs(predicted - measured) <= tolerance, (predicted, measured)


def _saved_variant(config: dict, layers: int, variant: str, targets: list[str]) -> int:
    import torch
    from peft import LoraConfig, VeraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config, num_hidden_layers=layers)
    model_type = config.pop("model_type")
    torch.manual_seed(0)
    with quiet():
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config),
                                                 attn_implementation="sdpa").to(torch.bfloat16)
        if variant == "vera":
            model = get_peft_model(model, VeraConfig(r=4, target_modules=targets))
        else:
            model = get_peft_model(model, LoraConfig(r=4, target_modules=targets,
                                                     use_rslora=variant == "rslora"))
            if variant == "lora-fa":  # what peft.optimizers.create_lorafa_optimizer does to A
                for name, param in model.named_parameters():
                    if "lora_A" in name:
                        param.requires_grad_(False)
    return _forward_saved_bytes(model, config["vocab_size"], buffers=True)


@pytest.mark.parametrize("variant", ["rslora", "lora-fa", "vera"])
@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"]])
def test_variant_layer_saved_bytes(variant, targets):
    config = FAMILIES["llama"]
    spec = ModelSpec.from_hf_config(dict(config, num_hidden_layers=3), name="llama")
    resolved = resolve_targets(spec, LoraSpec(r=4, targets=tuple(targets), variant=variant))
    measured = (_saved_variant(config, 3, variant, targets)
                - _saved_variant(config, 2, variant, targets)) / (BATCH * SEQ)
    dtypes = act.Dtypes(compute=2, residual=2, norm_out=2, adapter=4)
    predicted = act.layer_bytes_per_token(spec, resolved, dtypes, seq_len=SEQ, attn="sdpa",
                                          full=False, dropout=False).total
    assert abs(predicted - measured) <= PER_LAYER_SLACK, (predicted, measured)


def test_expert_adapters_keep_compute_dtype_copies_of_a_and_b():
    """PEFT's ``_LoraFactorsProxy`` folds ``W + s * lhs @ rhs`` with one ``baddbmm`` on copies of
    A and B cast to the weight's dtype, which it keeps for their gradients: with fp32 adapters on
    a bf16 Mixtral, one layer saves exactly those copies beside the merged expert weights."""
    import math

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(FAMILIES["mixtral"], num_hidden_layers=1)
    model_type = config.pop("model_type")
    torch.manual_seed(0)
    with quiet():
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config))
        model = get_peft_model(model.to(torch.bfloat16),
                               LoraConfig(r=4, target_modules="all-linear"))
    model.train()
    experts = [p for n, p in model.named_parameters() if ".experts." in n and "lora_" in n]
    assert experts and all(p.dtype == torch.float32 for p in experts)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params and tensor.dim() == 3 \
                and tensor.size(0) == config["num_local_experts"]:
            saved[storage.data_ptr()] = (tensor.dtype, storage.nbytes())
        return tensor

    ids = torch.randint(0, config["vocab_size"], (BATCH, SEQ))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    spec = ModelSpec.from_hf_config(dict(FAMILIES["mixtral"], num_hidden_layers=1), name="mixtral")
    targets = [t for t in resolve_targets(spec, LoraSpec(r=4, targets=("all",)))
               if t.linear.experts]
    copies = sum(2 * math.prod(shape) for t in targets for name, shape in t.tensors(False)
                 if name in ("lora_A", "lora_B"))
    merged = sum(2 * t.linear.weight_numel for t in targets)
    bf16 = sum(nbytes for dtype, nbytes in saved.values() if dtype == torch.bfloat16)
    assert bf16 == merged + copies
    dtypes = act.Dtypes(compute=2, residual=2, norm_out=2, adapter=4)
    assert act.layer_constant_bytes(spec, tuple(targets), dtypes) == merged + copies
