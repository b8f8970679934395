"""After PEFT's kbit preparation the activations are fp32; under autocast (the Trainer's
``bf16=True``) SDPA still gets 16-bit inputs, because CUDA's autocast casts them
(``KERNEL_CUDA(scaled_dot_product_attention, lower_precision_fp)``, aten ``autocast_mode.cpp``):
flash attention, no seq x seq matrices. Without autocast, grouped-query heads fall to the math
kernel. Memory and step time read the same rule."""

from __future__ import annotations

import json

import pytest

from lorasize import LoraSpec, TrainSpec, estimate, resolve_model
from lorasize.memory.activations import sdpa_input_bytes
from lorasize.perf.work import attention_kernel


def test_torch_autocasts_sdpa_to_sixteen_bits():
    import torch
    import torch.nn.functional as F

    # CUDA's autocast has its own kernel for SDPA (registered in every build of torch) ...
    assert torch._C._dispatch_has_kernel_for_dispatch_key("aten::scaled_dot_product_attention",
                                                          "AutocastCUDA")
    # ... and the same lower-precision policy runs here on the CPU's: fp32 in, bf16 out
    q = torch.randn(1, 2, 8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert out.dtype == torch.bfloat16
    assert sdpa_input_bytes(4, autocast=True) == 2 and sdpa_input_bytes(4, autocast=False) == 4


@pytest.mark.parametrize("autocast,kernel", [(True, "flash"), (False, "math")])
def test_memory_and_time_agree_on_the_kernel(autocast, kernel):
    spec = resolve_model("llama3-8b")  # grouped-query heads
    lora = LoraSpec(r=16, targets=("all",))
    train = TrainSpec(method="qlora", batch_size=1, seq_len=8192, autocast=autocast)
    assert attention_kernel(spec, train) == kernel
    e = estimate(spec, lora, train)
    math_note = any("math kernel" in n for n in e.notes)
    assert math_note == (kernel == "math")
    # the math kernel's backward makes two heads x s x s fp32 matrices at its peak
    square = 2 * 4 * spec.num_heads * 8192 ** 2
    without = estimate(spec, lora, TrainSpec(method="qlora", batch_size=1, seq_len=8192,
                                             autocast=False))
    if autocast:
        assert e.allocated_bytes < without.allocated_bytes - square / 2
    else:
        assert e.breakdown["temporaries"] >= square


def test_without_autocast_the_advice_names_it(cli):
    code, out, _ = cli("estimate", "-m", "llama3-8b", "--method", "qlora", "-r", "16", "-t", "all",
                       "-s", "8192", "-b", "1", "--gpu", "a100-40gb", "--no-autocast", "--json")
    data = json.loads(out)
    assert code == 1 and any(s.startswith("--autocast") for s in data["suggestions"])
    code, out, _ = cli("estimate", "-m", "llama3-8b", "--method", "qlora", "-r", "16", "-t", "all",
                       "-s", "8192", "-b", "1", "--gpu", "a100-40gb", "--json")
    assert code == 0 and json.loads(out)["suggestions"] == []
