"""bitsandbytes before 0.47 computes a 4-bit layer in its input's dtype: after PEFT's kbit
preparation (an fp32 residual stream) each weight is dequantized to fp32 and, without autocast,
multiplied in fp32 on the CUDA cores. Held to bitsandbytes' own code, the trace, and the step."""

from __future__ import annotations

import json

import pytest

from lorasize import LoraSpec, TrainSpec, estimate, resolve_model
from lorasize.arch.catalog import gpu_from_catalog
from lorasize.memory.quant import computes_in_input_dtype
from lorasize.arch.lora import resolve_targets
from lorasize.perf.timing import training_time
from lorasize.perf.work import step_work
from lorasize.trace import trace_many

from trace_grid import compare, failures, shrunk


def _linear4bit(before_047: bool):
    import bitsandbytes as bnb
    import torch

    layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(32, 64, dtype=torch.bfloat16),
                                     requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")
    if before_047:  # bitsandbytes 0.45.0-0.46.1 Linear4bit.__init__: compute_type_is_set = False
        layer.compute_type_is_set = False
    return layer


@pytest.mark.parametrize("before_047", [False, True])
def test_bitsandbytes_computes_in_the_dtype_the_rule_says(before_047, monkeypatch):
    import bitsandbytes as bnb
    import torch
    import torch.nn.functional as F

    seen, real = [], F.linear

    def spy(a, w, bias=None):
        seen.append((a.dtype, w.dtype))
        return real(a, w, bias)

    monkeypatch.setattr(F, "linear", spy)
    layer = _linear4bit(before_047)
    out = layer(torch.randn(4, 64, requires_grad=True))  # kbit preparation's fp32 input
    release = "0.45.0" if before_047 else bnb.__version__
    assert computes_in_input_dtype(release) == before_047
    want = torch.float32 if before_047 else torch.bfloat16
    assert seen == [(want, want)] and out.dtype == torch.float32
    assert not computes_in_input_dtype("") and not computes_in_input_dtype("0.47.0")
    assert computes_in_input_dtype("0.46.1")


def test_trace_and_estimate_see_the_fp32_copy_of_each_dequantized_weight():
    spec, lora = shrunk("llama3-8b"), LoraSpec(r=16, targets=("all",))
    trains = [TrainSpec(method="qlora", seq_len=256, autocast=False, bnb_release=release)
              for release in ("", "0.45.0")]
    traced = [o["result"] for o in trace_many([(spec, lora, t) for t in trains])]
    estimated = [estimate(spec, lora, t).allocated_bytes for t in trains]
    for train, result in zip(trains, traced):
        assert not failures(compare(spec, lora, train, result)), train.bnb_release
    grew, predicted = traced[1]["peak_bytes"] - traced[0]["peak_bytes"], estimated[1] - estimated[0]
    assert grew > 0 and predicted == pytest.approx(grew, rel=0.3)


def test_fp32_base_matmuls_cost_their_time_only_without_autocast():
    spec, lora = resolve_model("llama3-8b"), LoraSpec(r=8, targets=("all",))
    kw = dict(method="qlora", batch_size=2, seq_len=8192, grad_checkpointing=True)

    def timed(**extra):
        return training_time(spec, resolve_targets(spec, lora), TrainSpec(**kw, **extra),
                             gpu_from_catalog("a100-80gb"))

    now, old = timed(autocast=False), timed(autocast=False, bnb_release="0.45.0")
    # no tensor cores: the base GEMMs at the A100's 19.5 fp32 TFLOPS, not its 312 bf16 (the
    # fp32 head is in both)
    assert old.breakdown["matmuls"] > 6 * now.breakdown["matmuls"]
    assert timed(bnb_release="0.45.0").breakdown["matmuls"] == timed().breakdown["matmuls"]
    base = [g for g in step_work(spec, (), TrainSpec(autocast=False, bnb_release="0.45.0", **kw)
                                 ).gemms if g.what == "base"]
    assert base and all(g.fp32 for g in base)
    # torchtune's NF4 is torchao's: no such rule
    assert not TrainSpec(stack="torchtune", bnb_release="0.45.0", **kw).dequantizes_to_fp32


def test_cli_flag(cli):
    args = ("estimate", "-m", "llama3-8b", "--method", "qlora", "-s", "1024", "--json")
    code, out, _ = cli(*args, "--bnb-release", "0.45.0", "--no-autocast")
    data = json.loads(out)
    assert code == 0 and data["bnb_release"] == "0.45.0"
    assert any("off the tensor cores" in n and "0.47" in n for n in data["notes"])
    code, _, err = cli(*args, "--bnb-release", "latest")
    assert code == 2 and "--bnb-release" in err and len(err.strip().splitlines()) == 1
