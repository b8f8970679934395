"""The memory facts of DESIGN.md, each checked against the real library that creates the bytes."""

from __future__ import annotations

import math

import pytest

from conftest import quiet
from lorasize import LoraSpec, TrainSpec, estimate, resolve_model
from lorasize.memory.allocator import block
from lorasize.memory.optimizers import state_bytes
from lorasize.memory.quant import quantized_bytes


def _unique_block_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += block(t.numel() * t.element_size())
    return total


@pytest.mark.parametrize("quant", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("shape", [(200, 1000), (64, 64), (96, 4100)])
def test_4bit_bytes_match_bitsandbytes(quant, double_quant, shape):
    import torch
    import bitsandbytes.functional as F

    with quiet():
        packed, state = F.quantize_4bit(torch.randn(*shape, dtype=torch.bfloat16), blocksize=64,
                                        compress_statistics=double_quant, quant_type=quant)
    constants = [state.absmax, state.code, getattr(state, "offset", None)]
    if state.state2 is not None:
        constants += [state.state2.absmax, state.state2.code]
    predicted = quantized_bytes(math.prod(shape), shape[0], quant, double_quant)
    assert predicted.weight == _unique_block_bytes([packed])
    assert predicted.constants == _unique_block_bytes(constants)


def test_int8_bytes_match_bitsandbytes():
    import torch
    import bitsandbytes.functional as F

    with quiet():
        weights, scales, _ = F.int8_vectorwise_quant(torch.randn(300, 700, dtype=torch.float16))
    predicted = quantized_bytes(300 * 700, 300, "int8", False)
    assert (predicted.weight, predicted.constants) == (
        _unique_block_bytes([weights]), _unique_block_bytes([scales]))


def _real_state_bytes(optimizer_name: str, shape, dtype) -> int:
    import torch

    param = torch.nn.Parameter(torch.zeros(*shape, dtype=dtype))
    param.grad = torch.zeros_like(param)
    with quiet():
        if optimizer_name == "adamw":
            optimizer = torch.optim.AdamW([param], foreach=True)
        elif optimizer_name == "adamw-fused":
            optimizer = torch.optim.AdamW([param], fused=True)
        elif optimizer_name == "adamw-8bit":
            import bitsandbytes as bnb
            optimizer = bnb.optim.AdamW8bit([param])
        elif optimizer_name == "paged-adamw":
            import bitsandbytes as bnb
            optimizer = bnb.optim.PagedAdamW([param])
        elif optimizer_name in ("lion", "lion-8bit"):
            import bitsandbytes as bnb
            optimizer = (bnb.optim.Lion if optimizer_name == "lion" else bnb.optim.Lion8bit)([param])
        elif optimizer_name == "sgd-momentum":
            optimizer = torch.optim.SGD([param], lr=0.1, momentum=0.9)
        elif optimizer_name == "adafactor":
            from transformers.optimization import Adafactor
            optimizer = Adafactor([param])
        else:
            optimizer = torch.optim.SGD([param], lr=0.1)
        optimizer.step()
    state = optimizer.state[param]
    # torch keeps AdamW's step on the CPU for foreach on CUDA too: not device memory; fused
    # AdamW keeps it on the parameter's device.
    # bitsandbytes' qmaps are shared by every parameter: once per optimizer, not per tensor.
    host = ("qmap1", "qmap2") + (() if optimizer_name == "adamw-fused" else ("step",))
    tensors = [v for k, v in state.items() if torch.is_tensor(v) and k not in host]
    return _unique_block_bytes(tensors)


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-fused", "adamw-8bit", "paged-adamw",
                                       "adafactor", "sgd", "sgd-momentum", "lion", "lion-8bit"])
@pytest.mark.parametrize("shape", [(8, 4096), (4096, 64), (16, 200), (300,)])
def test_optimizer_state_matches_real_optimizers(optimizer, shape):
    import torch

    predicted = state_bytes(optimizer, shape, 4)
    # On the CPU nothing is paged, so compare the sum of device and paged bytes.
    assert predicted.device + predicted.paged == _real_state_bytes(optimizer, shape, torch.float32)


def test_eight_bit_state_small_tensors_stay_fp32():
    small, large = state_bytes("adamw-8bit", (16, 255), 4), state_bytes("adamw-8bit", (16, 256), 4)
    assert small.device == 2 * block(16 * 255 * 4)  # 4080 elements < min_8bit_size
    assert large.device < small.device


def test_paged_state_is_outside_torch_allocator():
    spec = resolve_model("llama2-7b")
    lora = LoraSpec(r=64, targets=("all",))
    paged = estimate(spec, lora, TrainSpec(method="qlora", optimizer="paged-adamw"))
    plain = estimate(spec, lora, TrainSpec(method="qlora", optimizer="adamw"))
    assert paged.breakdown["paged_optimizer"] > 0
    assert paged.allocated_bytes < plain.allocated_bytes
    assert paged.breakdown["optimizer"] + paged.breakdown["paged_optimizer"] == pytest.approx(
        plain.breakdown["optimizer"], rel=0.01)


def test_adapters_are_fp32_on_a_bf16_base():
    """PEFT autocasts adapter weights to fp32: r=64 on q,k,v,o of Llama-2-7B is 256 MiB."""
    import torch
    from conftest import build_meta_model, peft_wrap
    from lorasize.arch.catalog import find_model_entry

    wrapped = peft_wrap(build_meta_model(find_model_entry("llama2-7b")["config"], 2).to(torch.bfloat16),
                        r=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    assert {p.dtype for p in wrapped.parameters() if p.requires_grad} == {torch.float32}
    e = estimate(resolve_model("llama2-7b"),
                 LoraSpec(r=64, targets=("q_proj", "k_proj", "v_proj", "o_proj")))
    assert e.breakdown["adapter"] == 256 * 2**20


def test_kbit_prep_upcasts_unquantized_weights():
    spec = resolve_model("llama3-8b")
    lora = LoraSpec(r=16, targets=("all",))
    prepped = estimate(spec, lora, TrainSpec(method="qlora", kbit_prep=True))
    raw = estimate(spec, lora, TrainSpec(method="qlora", kbit_prep=False))
    embeddings_and_head = 2 * spec.vocab_size * spec.hidden_size  # untied in Llama-3-8B
    assert prepped.breakdown["weights"] - raw.breakdown["weights"] == pytest.approx(
        embeddings_and_head * 2, rel=0.001)  # bf16 -> fp32 adds 2 bytes each


def test_nf4_weights_are_half_a_byte_plus_constants():
    spec = resolve_model("llama2-7b")
    q = estimate(spec, train=TrainSpec(method="qlora", kbit_prep=False))
    linear_params = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    rest = spec.vocab_size * spec.hidden_size * 2 + 32 * 2 * 4096 + 4096
    assert q.breakdown["weights"] == pytest.approx(linear_params * 0.5 + rest * 2, rel=0.001)
    assert q.breakdown["quant_constants"] == pytest.approx(linear_params / 64 * 4, rel=0.01)
    dq = estimate(spec, train=TrainSpec(method="qlora", kbit_prep=False, double_quant=True))
    assert dq.breakdown["quant_constants"] < q.breakdown["quant_constants"] / 3


def test_logits_upcast_dominates_at_large_vocab():
    """128k vocabulary: the fp32 log-softmax and its gradients are the biggest dynamic term."""
    e = estimate(resolve_model("llama3-8b"), LoraSpec(r=16, targets=("all",)),
                 TrainSpec(method="qlora", batch_size=4, seq_len=2048, grad_checkpointing=True))
    assert e.breakdown["logits"] == 3 * 4 * 4 * 2048 * 128256
    assert e.breakdown["logits"] > e.breakdown["activations"]


def test_eager_attention_is_quadratic_sdpa_linear():
    spec = resolve_model("llama2-7b")
    act = lambda attn, s: estimate(spec, train=TrainSpec(attn=attn, seq_len=s)).breakdown[  # noqa: E731
        "activations"]
    assert act("sdpa", 4096) / act("sdpa", 1024) == pytest.approx(4, rel=0.02)
    assert act("eager", 4096) / act("eager", 1024) > 8


def test_checkpointing_keeps_layer_inputs():
    spec = resolve_model("llama2-7b")
    e = estimate(spec, train=TrainSpec(seq_len=1024, grad_checkpointing=True))
    kept = 32 * 1024 * 4096 * 2
    assert kept <= e.breakdown["activations"] < kept * 1.2


def test_torchtune_quantizes_only_lora_layers_before_0_3():
    """torchtune <= 0.2.1's QLoRA quantizes only the linears that carry LoRA; from 0.3.0
    (pytorch/torchtune@898670f) every attention and MLP linear, as bitsandbytes does."""
    spec = resolve_model("llama2-7b")
    qv = LoraSpec(r=8, targets=("qv",))
    hf = estimate(spec, qv, TrainSpec(method="qlora", kbit_prep=False))
    old = estimate(spec, qv, TrainSpec(method="qlora", stack="torchtune", stack_release="0.2.1"))
    unquantized = 32 * (2 * 4096 * 4096 + 3 * 4096 * 11008)  # k, o, gate, up, down stay bf16
    assert old.breakdown["weights"] - hf.breakdown["weights"] == pytest.approx(unquantized * 1.5,
                                                                               rel=0.001)
    assert old.breakdown["adapter"] == hf.breakdown["adapter"] // 2  # bf16 adapters
    now = estimate(spec, qv, TrainSpec(method="qlora", stack="torchtune"))
    assert now.breakdown["weights"] == hf.breakdown["weights"]
    assert estimate(spec, qv, TrainSpec(method="qlora", stack="torchtune", stack_release="0.3")
                    ).breakdown["weights"] == now.breakdown["weights"]


def test_validate_reads_the_torchtune_release_from_a_rows_date():
    from lorasize.calibrate.validate import _date

    assert _date({"source_locator": "README.md @fef3ed10d (2024-04-16)"}) == "2024-04-16"
    assert _date({"source_locator": "tutorial (added Apr 2024 PR #702)"}) == "2024-04-01"
    assert _date({"source_locator": "README", "notes": "no date"}) == "9999-12-31"


def test_chunked_losses_shrink_the_logits_term():
    """The loss term alone (other stack rules, such as litgpt's expanded k and v, change the
    rest of the moment): torchtune's fp32 chunks (4V + 8V/8) and litgpt's chunks, which Fabric
    casts to fp32 and keeps alive next to the log-softmax outputs (2 x 4V), both stay under
    transformers' whole fp32 loss (3 x 4V)."""
    from lorasize.memory import activations as act

    spec = resolve_model("llama3-8b")
    loss = {stack: act.logits_peak_bytes_per_token(spec, stack, 2)
            for stack in ("hf-peft", "torchtune", "litgpt")}
    assert loss["torchtune"] < loss["litgpt"] < loss["hf-peft"]
    assert loss["litgpt"] == 2 * 4 * spec.vocab_size