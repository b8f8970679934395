"""The litgpt stack rules against litgpt's own model code and Lightning Fabric, at toy size.

Needs ``litgpt`` and ``lightning`` (not test dependencies of lorasize; skipped without them):
``pip install --no-deps litgpt==0.4.0 lightning==2.3.3 lightning-utilities torchmetrics``.

As in ``test_activations_real.py``: tiny litgpt models (``litgpt.lora.GPT``, bf16, CPU) run a real
forward under ``saved_tensors_hooks``; building 3 and 2 layers and taking the difference gives one
decoder layer's saved bytes, which ``layer_bytes_per_token(..., stack="litgpt")`` must reproduce.
The rules checked here (lorasize/memory/stacks.py): fused q/k/v dropout, the fused adapter's output kept
by ``zero_pad``'s ``index_copy``, v as a view of the fused q/k/v output (one query per group), k
and v expanded to every query head (grouped-query), torch's GELU; and Fabric handing the logits
back in fp32. Each case fails without its rule. What cannot run on a CPU (bitsandbytes 0.42's
``MatMul4Bit`` keeping its input, Lightning's fp16 dequantization) is cited in stacks.py.
"""

from __future__ import annotations

import pytest

from lorasize.memory import activations as act
from lorasize.arch.lora import LoraSpec, resolve_targets
from lorasize.arch.model import ModelSpec

litgpt = pytest.importorskip("litgpt.lora")
pytest.importorskip("lightning")

BATCH, SEQ = 2, 32
TOKENS = BATCH * SEQ
LLAMA = dict(name="tiny-llama", block_size=64, vocab_size=512, padded_vocab_size=512, n_head=4,
             n_embd=64, n_query_groups=2, rotary_percentage=1.0, parallel_residual=False, bias=False,
             norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP", intermediate_size=160,
             lora_r=4, lora_alpha=8)
HF_LLAMA = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=160,
                num_attention_heads=4, num_key_value_heads=2)
PHI = dict(name="tiny-phi", block_size=64, vocab_size=512, padded_vocab_size=512, n_head=4,
           n_embd=64, n_query_groups=4, rotary_percentage=0.5, parallel_residual=True,
           shared_attention_norm=True, bias=True, lm_head_bias=True, norm_class_name="LayerNorm",
           mlp_class_name="GptNeoxMLP", intermediate_size=256, gelu_approximate="tanh", lora_r=4,
           lora_alpha=8)
HF_PHI = dict(model_type="phi", vocab_size=512, hidden_size=64, intermediate_size=256,
              num_attention_heads=4, partial_rotary_factor=0.5)
QV = dict(lora_query=True, lora_value=True)
ALL = dict(lora_query=True, lora_key=True, lora_value=True, lora_projection=True, lora_mlp=True)
CASES = {
    "llama-gqa-qv-dropout": (LLAMA, HF_LLAMA, dict(QV, lora_dropout=0.1), ("q_proj", "v_proj")),
    "llama-gqa-qv": (LLAMA, HF_LLAMA, dict(QV, lora_dropout=0.0), ("q_proj", "v_proj")),
    "llama-gqa-all-dropout": (LLAMA, HF_LLAMA, dict(ALL, lora_dropout=0.1), ("all",)),
    "phi-mha-qv-dropout": (PHI, HF_PHI, dict(QV, lora_dropout=0.1), ("q_proj", "v_proj")),
    "phi-mha-all-dropout": (PHI, HF_PHI, dict(ALL, lora_dropout=0.1), ("all",)),
}


def _cuda_dropout(x, p=0.5, training=True, inplace=False):
    import torch

    return torch.native_dropout(x, p, training)[0] if training and 0 < p < 1 else x


def _saved_bytes(config: dict, layers: int) -> int:
    import torch

    torch.manual_seed(0)
    model = litgpt.GPT(litgpt.Config(n_layer=layers, **config)).to(torch.bfloat16)
    model.train()
    litgpt.mark_only_lora_as_trainable(model)
    kept = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in kept:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, config["vocab_size"], (BATCH, SEQ))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids)
    return sum(saved.values())


@pytest.mark.parametrize("case", CASES)
def test_one_litgpt_layer_saved_bytes(case, monkeypatch):
    import torch.nn.functional as F

    monkeypatch.setattr(F, "dropout", _cuda_dropout)
    lit, hf, lora, targets = CASES[case]
    config = dict(lit, **lora)
    measured = _saved_bytes(config, 3) - _saved_bytes(config, 2)
    spec = ModelSpec.from_hf_config(dict(hf, num_hidden_layers=3), name=case)
    resolved = resolve_targets(spec, LoraSpec(r=4, targets=targets))
    d = 2
    predicted = act.layer_bytes_per_token(
        spec, resolved, act.Dtypes(d, d, d, d), seq_len=SEQ, attn="sdpa", full=False,
        dropout=lora["lora_dropout"] > 0, stack="litgpt").total * TOKENS
    # Per layer, not per token: zero_pad's int64 index of the adapted q/k/v columns (only when
    # some are not adapted). CPU LayerNorm keeps mean and rstd in bf16, CUDA in fp32 (4 bytes
    # per token less here; test_activations_real.py).
    adapted = [t for t in resolved if t.linear.name in ("q_proj", "k_proj", "v_proj")]
    padded = len(adapted) < 3
    index = 8 * sum(t.linear.out_features for t in adapted) if padded else 0
    layer_norms = 1 if lit["norm_class_name"] == "LayerNorm" else 0
    assert measured == predicted + index - 4 * layer_norms * TOKENS


def test_litgpt_rules_are_what_the_hf_peft_model_lacks():
    """The same toy layer under the hf-peft rules misses what litgpt's code keeps (the cases
    above would fail without the stack)."""
    lit, hf, lora, targets = CASES["phi-mha-qv-dropout"]
    spec = ModelSpec.from_hf_config(dict(hf, num_hidden_layers=3), name="phi")
    resolved = resolve_targets(spec, LoraSpec(r=4, targets=targets))
    dt = act.Dtypes(2, 2, 2, 2)
    per = {stack: act.layer_bytes_per_token(spec, resolved, dt, seq_len=SEQ, attn="sdpa",
                                            full=False, dropout=True, stack=stack)
           for stack in ("hf-peft", "litgpt")}
    assert per["litgpt"].attention > per["hf-peft"].attention  # v keeps the fused output
    assert per["litgpt"].mlp < per["hf-peft"].mlp  # torch's GELU saves one tensor, not four


def test_fabric_hands_back_fp32_logits():
    """stacks.StackRules.logits_bytes: Fabric's bf16-true module returns float32 outputs
    (``_FabricModule.forward`` -> ``precision.convert_output``), so litgpt's chunked loss runs on
    fp32 logits."""
    import lightning as L
    import torch

    fabric = L.Fabric(accelerator="cpu", devices=1, precision="bf16-true")
    with fabric.init_module():
        model = litgpt.GPT(litgpt.Config(n_layer=1, **dict(LLAMA, **QV)))
    model = fabric.setup_module(model)
    logits = model(torch.randint(0, 512, (BATCH, SEQ)), lm_head_chunk_size=16)
    assert isinstance(logits, list) and len(logits) == SEQ // 16
    assert {chunk.dtype for chunk in logits} == {torch.float32}
    assert next(model.parameters()).dtype == torch.bfloat16
    from lorasize.memory.stacks import FP32, stack_rules

    assert stack_rules("litgpt").logits_bytes == FP32
