"""litgpt QLoRA: the previous micro-batch's quantized-linear inputs outlive its backward.

``StackRules.previous_inputs_alive`` (lorasize/memory/stacks.py). bitsandbytes <= 0.43.1
``MatMul4Bit.forward`` (bitsandbytes/autograd/_functions.py, 0.42.0)::

    if any(ctx.needs_input_grad[:2]):
        ctx.tensors = (A, B)

keeps its input as a plain attribute of ``ctx``; autograd's backward releases only what
``save_for_backward`` saved, so ``A`` lives as long as the graph node. litgpt's ``fit()``
(litgpt/finetune/lora.py, 2024)::

    logits = model(input_ids, lm_head_chunk_size=128)
    ...
    fabric.backward(loss / train.gradient_accumulation_iters(devices))

keeps the graph referenced through ``logits`` until the next iteration's assignment, i.e. until
the next forward has returned. The real-code test runs litgpt 0.4's model through Lightning
2.3's ``BitsandbytesPrecision`` (its ``convert_module``, ``forward_context``, ``convert_output``)
and bitsandbytes 0.42.0's own ``Linear4bit.forward`` and ``MatMul4Bit`` on the CPU, with
``dequantize_4bit`` (a CUDA kernel) replaced by the unquantized weight. It needs::

    pip install --no-deps --target DIR litgpt==0.4.0 lightning==2.3.3 lightning-utilities \\
        torchmetrics bitsandbytes==0.42.0

with ``DIR`` on ``PYTHONPATH`` (skipped otherwise). The arithmetic tests always run.
"""

from __future__ import annotations

import gc
import importlib.metadata
import weakref

import pytest

from lorasize.memory import activations as act
from lorasize.arch.catalog import model_from_catalog
from lorasize.estimate import estimate
from lorasize.arch.lora import LoraSpec
from lorasize.arch.model import ModelSpec
from lorasize.specs import TrainSpec
from lorasize.calibrate.validate import predict

BATCH, SEQ = 2, 32
TOY = dict(name="tiny-llama", block_size=64, vocab_size=512, padded_vocab_size=512, n_head=4,
           n_embd=64, n_query_groups=2, rotary_percentage=1.0, parallel_residual=False,
           bias=False, norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP",
           intermediate_size=160, lora_r=4, lora_alpha=8, lora_query=True, lora_value=True,
           lora_dropout=0.05)
HF_TOY = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=160,
              num_attention_heads=4, num_key_value_heads=2)


def _bnb_042() -> bool:
    try:
        return importlib.metadata.version("bitsandbytes").startswith("0.42.")
    except importlib.metadata.PackageNotFoundError:
        return False


def test_previous_inputs_per_token_llama2_7b():
    """Per token: each layer's distinct quantized inputs (both norm outputs, the attention
    output, the MLP product) in bf16, less the first layer's q/k/v input, plus the head's."""
    spec = model_from_catalog("llama2-7b")
    dt = act.Dtypes(2, 2, 2, 2)
    h, inter, layers = spec.hidden_size, spec.intermediate_size, spec.num_layers
    assert act.previous_inputs_bytes_per_token(spec, dt, "litgpt") == \
        2 * (3 * h + inter) * layers - 2 * h + 2 * h
    assert act.previous_inputs_bytes_per_token(spec, dt, "hf-peft") == 0
    assert act.previous_inputs_bytes_per_token(spec, dt, "torchtune") == 0


def test_rule_raises_a_later_micro_batch_peak_only():
    """A micro-batch that follows another peaks at the end of its forward, by the previous
    micro-batch's quantized inputs; the run's first micro-batch (lit-gpt 2023) does not; LoRA
    does not (no MatMul4Bit)."""
    spec = model_from_catalog("llama2-7b")
    lora = LoraSpec(r=32, targets=("qv",), dropout=0.05)
    base = dict(method="qlora", batch_size=2, seq_len=512, optimizer="paged-adamw",
                stack="litgpt", grad_checkpointing=False)
    later = estimate(spec, lora, TrainSpec(**base))
    first = estimate(spec, lora, TrainSpec(**base, first_micro_batch=True))
    assert later.peak_moment.startswith("next forward")
    assert "next forward end" not in first.phase_peaks
    previous = act.previous_inputs_bytes_per_token(spec, act.Dtypes(2, 2, 2, 2), "litgpt")
    assert later.allocated_bytes - first.allocated_bytes > 0.9 * previous * 1024
    plain = dict(base, method="lora", optimizer="adamw")
    assert estimate(spec, lora, TrainSpec(**plain)).allocated_bytes == \
        estimate(spec, lora, TrainSpec(**plain, first_micro_batch=True)).allocated_bytes


def test_validate_tells_2023_from_2024_rows():
    """The same row dated 2023 (lit-gpt: longest sample first) is predicted lower than dated
    2024 (litgpt: DataLoader order)."""
    row = {"id": "x", "source": "s", "model": "Llama-2-7B", "task": "train", "stack": "litgpt",
           "method": "qlora", "base_precision": "nf4", "double_quant": "false", "r": "32",
           "targets": "q,v", "optimizer": "bnb PagedAdamW", "batch_size": "2", "seq_len": "512",
           "grad_checkpointing": "no", "flash_attn": "sdpa", "gpu": "A10G (24GB)",
           "num_gpus": "1", "metric": "peak_allocated", "value": "13.68", "unit": "GB",
           "confidence": "high"}
    newer = predict(dict(row, notes="litgpt config_hub 2024"))
    older = predict(dict(row, notes="lit-gpt Oct 2023"))
    assert newer > older


@pytest.mark.skipif(not _bnb_042(), reason="needs bitsandbytes 0.42 (its MatMul4Bit keeps A)")
def test_matmul4bit_inputs_outlive_backward_in_litgpt(monkeypatch):
    litgpt = pytest.importorskip("litgpt.lora")
    pytest.importorskip("lightning")
    import torch
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_functional
    from bitsandbytes.autograd import _functions
    from lightning.fabric.plugins import BitsandbytesPrecision
    from litgpt.utils import chunked_cross_entropy

    # The CUDA kernel, replaced: B is the layer's unquantized weight, transposed as bitsandbytes'
    # own dequantize_4bit returns it for a transposed B; fp16 as Lightning quantizes fp16.
    monkeypatch.setattr(bnb_functional, "dequantize_4bit",
                        lambda B, quant_state=None, *a, **k: B.to(torch.float16))
    kept: list[weakref.ref] = []
    forward = _functions.MatMul4Bit.forward

    def recording(ctx, A, B, out=None, bias=None, quant_state=None):
        output = forward(ctx, A, B, out, bias, quant_state)
        if ctx.tensors[0] is not None:
            kept.append(weakref.ref(ctx.tensors[0]))
        return output

    monkeypatch.setattr(_functions.MatMul4Bit, "forward", staticmethod(recording))
    precision = BitsandbytesPrecision("nf4", torch.bfloat16)
    layers = 2
    torch.manual_seed(0)
    with precision.module_init_context():
        model = litgpt.GPT(litgpt.Config(n_layer=layers, **TOY))
    litgpt.mark_only_lora_as_trainable(model)
    model = precision.convert_module(model)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.weight.quant_state = object()  # quantize_ runs only on CUDA
    ids = torch.randint(0, 512, (BATCH, SEQ))

    def step():
        with precision.forward_context():
            logits = model(ids, lm_head_chunk_size=128)
        return precision.convert_output(logits)

    logits = step()  # litgpt fit(): the loss's graph stays referenced through `logits`
    logits[-1] = logits[-1][..., :-1, :]
    loss = chunked_cross_entropy(logits, ids[..., 1:])
    loss.backward()
    loss = loss.item()
    gc.collect()
    alive = {a.untyped_storage().data_ptr(): a.untyped_storage().nbytes()
             for a in (ref() for ref in kept) if a is not None}
    assert len(kept) == 5 * layers + 1 - 1  # every quantized linear and the head, but layer 0's qkv
    assert all(ref() is not None for ref in kept)  # backward released none of them
    spec = ModelSpec.from_hf_config(dict(HF_TOY, num_hidden_layers=layers), name="toy")
    per_token = act.previous_inputs_bytes_per_token(spec, act.Dtypes(2, 2, 2, 2), "litgpt")
    assert sum(alive.values()) == per_token * BATCH * SEQ
    before = list(kept)
    logits = step()  # the next forward: only its return rebinds `logits`, freeing the old graph
    gc.collect()
    assert not any(ref() is not None for ref in before)
