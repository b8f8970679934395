"""Qwen-1 (model_type ``qwen``, the Hub's remote ``modeling_qwen.py``): read from its config alone.

transformers ships no class for it, so the layout is checked two ways against real code: its
tensors are exactly those of transformers' Qwen2 at the same dimensions (``c_attn`` is q, k and v
with their biases side by side; ``w1``, ``w2`` and ``c_proj`` are up, gate and down), and real
PEFT counts the LoRA parameters on a module tree with Qwen-1's names and shapes
(``QWenAttention``: ``c_attn = Linear(h, 3 * kv_channels * heads)``, ``c_proj``; ``QWenMLP``:
``w1``, ``w2 = Linear(h, intermediate_size // 2)``, ``c_proj``; biases only on ``c_attn`` under
``no_bias``)."""

from __future__ import annotations

import pytest

from conftest import build_meta_model, peft_wrap
from lorasize import TrainSpec, resolve_model
from lorasize.arch.layout import block_linears, total_params
from lorasize.arch.lora import LoraSpec, resolve_targets, trainable_params
from lorasize.perf.work import (EAGER_TOUCHES, FLASH_OPS_KERNELS, FLASH_OPS_TOUCHES,
                                LAYER_KERNELS, layer_bytes, layer_kernels, runs_flash_ops,
                                step_work)

SIZES = ("qwen-1.8b", "qwen-7b", "qwen-14b", "qwen-72b")
LAYERS = 2


@pytest.mark.parametrize("name", SIZES)
def test_qwen1_holds_the_tensors_of_qwen2_at_its_dimensions(name):
    spec = resolve_model(name).with_layers(LAYERS)
    cfg = spec.hf_config
    qwen2 = build_meta_model(dict(
        model_type="qwen2", hidden_size=cfg["hidden_size"], num_hidden_layers=LAYERS,
        intermediate_size=cfg["intermediate_size"] // 2,
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_attention_heads"], vocab_size=cfg["vocab_size"],
        tie_word_embeddings=False))
    assert total_params(spec) == sum(p.numel() for p in qwen2.parameters())
    shapes = {m.path: (m.in_features, m.out_features, m.bias) for m in block_linears(spec)}
    h, inter = cfg["hidden_size"], cfg["intermediate_size"] // 2
    assert shapes == {"attn.c_attn": (h, 3 * h, True), "attn.c_proj": (h, h, False),
                      "mlp.w1": (h, inter, False), "mlp.w2": (h, inter, False),
                      "mlp.c_proj": (inter, h, False)}


def _qwen1_tree(spec):
    """Qwen-1's module names and shapes (no forward: PEFT only finds and wraps the linears)."""
    import torch
    from torch import nn

    h, inter = spec.hidden_size, spec.intermediate_size
    proj = spec.num_heads * spec.head_dim

    def block():
        b = nn.Module()
        b.ln_1, b.ln_2 = nn.LayerNorm(h, bias=False), nn.LayerNorm(h, bias=False)
        b.attn, b.mlp = nn.Module(), nn.Module()
        b.attn.c_attn = nn.Linear(h, 3 * proj)
        b.attn.c_proj = nn.Linear(h, proj, bias=False)
        b.mlp.w1 = nn.Linear(h, inter, bias=False)
        b.mlp.w2 = nn.Linear(h, inter, bias=False)
        b.mlp.c_proj = nn.Linear(inter, h, bias=False)
        return b

    with torch.device("meta"):
        model = nn.Module()
        model.transformer = nn.Module()
        model.transformer.wte = nn.Embedding(spec.vocab_size, h)
        model.transformer.h = nn.ModuleList(block() for _ in range(spec.num_layers))
        model.transformer.ln_f = nn.LayerNorm(h, bias=False)
        model.lm_head = nn.Linear(h, spec.vocab_size, bias=False)
    return model


@pytest.mark.parametrize("targets, modules", [
    (("all",), ["c_attn", "c_proj", "w1", "w2"]),  # Qwen's finetune.py default
    (("qv",), ["c_attn"]),
    (("attn",), ["c_attn", "attn.c_proj"]),
    (("mlp",), ["w1", "w2", "mlp.c_proj"]),
])
def test_qwen1_lora_counts_under_peft(targets, modules):
    spec = resolve_model("qwen-7b").with_layers(LAYERS)
    tree = _qwen1_tree(spec)
    assert sum(p.numel() for p in tree.parameters()) == total_params(spec)
    model = peft_wrap(tree, r=8, target_modules=modules)
    real = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable_params(resolve_targets(spec, LoraSpec(r=8, targets=targets))) == real
    named = resolve_targets(spec, LoraSpec(r=8, targets=("c_attn", "c_proj", "w1", "w2")))
    assert len(named) == 5  # c_proj is both the attention's and the MLP's output


def test_qwen1_under_flash_attn_runs_its_fused_norm_and_rotary():
    """modeling_qwen.py calls flash-attn's RMSNorm and rotary kernels and flash_attn_func on
    c_attn's split views when flash-attn is installed: a Qwen-1 layer under flash attention
    launches fewer kernels and moves its norms' and rope's bytes as those kernels do; SDPA, and
    other families under flash attention, keep transformers' eager ops."""
    qwen, llama = resolve_model("qwen-7b"), resolve_model("llama2-7b")
    flash, sdpa = TrainSpec(attn="flash"), TrainSpec(attn="sdpa")
    assert runs_flash_ops(qwen, flash) and not runs_flash_ops(qwen, sdpa)
    assert not runs_flash_ops(llama, flash)
    assert not runs_flash_ops(qwen, TrainSpec(attn="flash", kernels="fused"))
    fewer = sum(n * (LAYER_KERNELS[k] - FLASH_OPS_KERNELS[k])
                for k, n in (("rms_norm", 2), ("rope", 1), ("attention", 1)))
    assert layer_kernels(qwen) - layer_kernels(qwen, flash_ops=True) == fewer == 18
    touched = {**EAGER_TOUCHES, **FLASH_OPS_TOUCHES}
    saved = layer_bytes(qwen, EAGER_TOUCHES) - layer_bytes(qwen, touched)
    h, q = qwen.hidden_size, qwen.q_dim
    assert saved == 2 * (28 - 4) * h + (18 - 20) * 2 * q + 4 * 4 * q
    lora = resolve_targets(qwen, LoraSpec(r=8, targets=("all",)))
    assert step_work(qwen, lora, flash).kernels < step_work(qwen, lora, sdpa).kernels
    assert step_work(llama, (), TrainSpec(method="full", attn="flash")).kernels == \
        step_work(llama, (), TrainSpec(method="full", attn="sdpa")).kernels


def test_qwen1_is_estimated_and_refused_by_the_trace_in_one_line(cli):
    code, out, _ = cli("estimate", "-m", "Qwen/Qwen-7B-Chat", "-t", "all", "--attn", "flash",
                       "--gpu", "a100-80gb")
    assert code == 0 and "c_attn, c_proj, w1, w2" in out
    code, _, err = cli("trace", "-m", "qwen-1.8b", "-s", "128")
    assert code == 2 and "Qwen-1" in err and len(err.strip().splitlines()) == 1
