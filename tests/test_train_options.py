"""Adapter training dtype (AdamW state in fp32 or bf16) and gradient accumulation, against real
torch + PEFT and the trace tier."""

from __future__ import annotations

import math

import pytest

from conftest import quiet
from lorasize import LoraSpec, TrainSpec, estimate, resolve_model
from lorasize.memory.allocator import block
from lorasize.errors import LorasizeError
from lorasize.arch.lora import resolve_targets
from lorasize.arch.model import ModelSpec
from lorasize.memory.weights import static_bytes

TINY = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=160,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
SPEC = ModelSpec.from_hf_config(TINY, name="tiny-llama")


def _real_step(adapter_dtype: str):
    """One real AdamW step of a bf16 tiny Llama with PEFT LoRA on every linear; adapters fp32
    (PEFT's default autocast) or bf16 (``autocast_adapter_dtype=False``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(TINY)
    torch.manual_seed(0)
    with quiet():
        model = AutoModelForCausalLM.from_config(
            AutoConfig.for_model(config.pop("model_type"), **config)).to(torch.bfloat16)
        model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"),
                               autocast_adapter_dtype=adapter_dtype == "fp32")
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      foreach=True)
        ids = torch.randint(0, SPEC.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("adapter_dtype", ["fp32", "bf16"])
def test_adamw_state_follows_the_adapter_dtype(adapter_dtype):
    import torch

    model, optimizer = _real_step(adapter_dtype)
    states = [v for s in optimizer.state.values() for k, v in s.items() if k != "step"]
    want = {"fp32": torch.float32, "bf16": torch.bfloat16}[adapter_dtype]
    assert {t.dtype for t in states} == {want}
    real_state = sum(block(t.numel() * t.element_size()) for t in states)
    real_grads = sum(block(p.grad.numel() * p.grad.element_size())
                     for p in model.parameters() if p.grad is not None)
    train = TrainSpec(adapter_train_dtype=None if adapter_dtype == "fp32" else adapter_dtype)
    static = static_bytes(SPEC, resolve_targets(SPEC, LoraSpec(r=8, targets=("all",))), train)
    assert (static.optimizer, static.gradients) == (real_state, real_grads)


def test_bf16_adapters_halve_state_at_full_size():
    spec, lora = resolve_model("llama2-7b"), LoraSpec(r=64, targets=("all",))
    fp32 = estimate(spec, lora, TrainSpec())
    bf16 = estimate(spec, lora, TrainSpec(adapter_train_dtype="bf16"))
    assert bf16.breakdown["optimizer"] * 2 == fp32.breakdown["optimizer"]
    assert bf16.breakdown["adapter"] * 2 == fp32.breakdown["adapter"]
    assert bf16.peak_bytes < fp32.peak_bytes


def test_bad_values_name_the_flag(cli):
    for args, flag in ((["--grad-accum", "0"], "--grad-accum"),
                       (["--adapter-train-dtype", "int8"], "--adapter-train-dtype")):
        code, _, err = cli("estimate", "-m", "llama2-7b", *args)
        assert code == 2 and flag in err and len(err.strip().splitlines()) == 1
    with pytest.raises(LorasizeError) as info:
        TrainSpec(grad_accum=-1)
    assert info.value.source == "--grad-accum"


def test_grad_accum_changes_steps_not_throughput(cli):
    import json

    runs = {}
    for accum in (1, 4):
        code, out, err = cli("estimate", "-m", "llama2-7b", "-b", "2", "-s", "1024", "--gpu",
                             "a100-80gb", "--dataset-tokens", "10000000", "--grad-accum",
                             str(accum), "--json")
        assert code == 0, err
        runs[accum] = json.loads(out)
    one, four = runs[1], runs[4]
    assert one["time"]["optimizer_steps"] == math.ceil(10_000_000 / 2048)
    assert four["time"]["optimizer_steps"] == math.ceil(10_000_000 / (4 * 2048))
    # the optimizer step runs once per 4 micro-batches: only its share of the step changes
    assert four["time"]["breakdown"]["optimizer"] == pytest.approx(
        one["time"]["breakdown"]["optimizer"] / 4, abs=2e-6)
    assert four["time"]["tokens_per_s"] == pytest.approx(one["time"]["tokens_per_s"], rel=0.01)
    assert four["time"]["tokens_per_s"] >= one["time"]["tokens_per_s"]
    assert four["time"]["hours"] == pytest.approx(one["time"]["hours"], rel=0.01)
    assert any("effective batch 8" in note for note in four["notes"])


def test_grad_accum_holds_only_the_gradients():
    """The analytic side: every moment but the optimizer step gains at most the gradients."""
    spec, lora = resolve_model("llama3-8b"), LoraSpec(r=16, targets=("all",))
    one = estimate(spec, lora, TrainSpec(seq_len=1024))
    four = estimate(spec, lora, TrainSpec(seq_len=1024, grad_accum=4))
    gradients = static_bytes(spec, resolve_targets(spec, lora), TrainSpec()).gradients
    assert 0 < four.allocated_bytes - one.allocated_bytes <= gradients
    assert four.breakdown["activations"] == one.breakdown["activations"]


def test_trace_two_micro_batches_and_bf16_adapters():
    """The trace tier runs 2 micro-batches per optimizer step (gradients of the first alive
    through the second) and bf16 adapters; the estimate follows both."""
    from lorasize.trace import trace_many

    from trace_grid import compare, shrunk

    spec = shrunk("llama2-7b")
    lora = LoraSpec(r=64, targets=("all",))
    trains = [TrainSpec(seq_len=256), TrainSpec(seq_len=256, grad_accum=2),
              TrainSpec(seq_len=256, adapter_train_dtype="bf16")]
    outcomes = trace_many([(spec, lora, train) for train in trains])
    assert all(o["ok"] for o in outcomes), outcomes
    single, accumulated, bf16 = (o["result"] for o in outcomes)
    gradients = static_bytes(spec, resolve_targets(spec, lora), trains[0]).gradients
    # The accumulated step's peak holds the first micro-batch's gradients, no more activations.
    assert 0 < accumulated["peak_bytes"] - single["peak_bytes"] <= gradients
    assert accumulated["breakdown"]["activations"] <= single["breakdown"]["activations"]
    for train, traced in zip(trains, (single, accumulated, bf16)):
        rows = compare(spec, lora, train, traced)
        assert abs(rows["total"][2]) <= 0.03, (train, rows["total"])
        for component in ("trainable", "optimizer"):
            assert abs(rows[component][2]) <= 0.005, (train, component, rows[component])
    assert bf16["breakdown"]["optimizer"] * 2 == single["breakdown"]["optimizer"]
