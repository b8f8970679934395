"""Serving speed (lorasize.perf.inference) against the published serving figures it can express
(lorasize/data/measurements/serving.csv; none of them fitted anything), and `serve`'s
`performance` block."""

from __future__ import annotations

import csv
import json

import pytest

from lorasize import LoraSpec, gpu_from_catalog, resolve_model
from lorasize.arch.lora import resolve_targets
from lorasize.measurements import SERVING
from lorasize.perf.inference import serving_performance

QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.fixture(scope="module")
def published():
    with SERVING.open(newline="", encoding="utf-8") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def _perf(r, gpu, **kw):
    spec = resolve_model("llama2-7b")  # huggyllama/llama-7b and Llama-2-7B share every shape
    targets = resolve_targets(spec, LoraSpec(r=r, targets=QKVO))
    return serving_performance(spec, targets, gpu_from_catalog(gpu), **kw)


def test_peft_generate_latency_merged_and_unmerged(published):
    """tf-lat-01/02/04: transformers generate, 64 new tokens at batch 1 on an A100-40GB, r=64 on
    q, k, v, o: 2.8 s base, 4.1 s unmerged, 2.8 s merged. The ratio users decide by within
    15%, the absolute times within 30% (the prompt's length is not stated: 32 tokens assumed)."""
    base, unmerged, merged = (float(published[i]["value"]) / 1e3
                              for i in ("tf-lat-01", "tf-lat-02", "tf-lat-04"))
    perf = _perf(64, "a100-40gb", engine="peft", prompt_tokens=32, context=64)
    d = perf.decode_ms_per_token["batch_1"]

    def generate(key):
        return (64 * d[key] + perf.prefill_ms) / 1e3

    assert generate("unmerged") / generate("base") == pytest.approx(unmerged / base, rel=0.15)
    assert generate("merged") / generate("base") == pytest.approx(merged / base, rel=0.15)
    assert generate("base") == pytest.approx(base, rel=0.30)
    assert generate("unmerged") == pytest.approx(unmerged, rel=0.30)
    assert perf.bound == "launch"  # transformers' generate at batch 1 is Python-bound


@pytest.mark.parametrize("concurrency", [8, 32])
def test_slora_one_unmerged_adapter_against_the_base(published, concurrency):
    """slora-a10g-29/30: S-LoRA on an A10G, Llama-7B, base only 1.995 req/s against one
    unmerged r=8 adapter 1.892 req/s (same offered load, saturated)."""
    measured = float(published["slora-a10g-30"]["value"]) / float(published["slora-a10g-29"]["value"])
    t = _perf(8, "a10g", engine="vllm", concurrency=concurrency, adapters=1, prompt_tokens=260,
              context=390, output_tokens=260).throughput_tokens_per_s
    assert t["adapters"] / t["base"] == pytest.approx(measured, rel=0.15)
    assert t["adapters"] < t["base"]


@pytest.mark.parametrize("row,adapters", [("slora-t3-02", 100), ("slora-t3-03", 1000),
                                          ("slora-t3-04", 2000)])
def test_slora_throughput_as_adapters_grow(published, row, adapters):
    """slora-t3-01..04: S-LoRA's throughput with 100, 1,000 and 2,000 r=8 adapters over its
    throughput with 5 (A100-80GB, 10 req/s offered): the ratio within 15%."""
    measured = float(published[row]["value"]) / float(published["slora-t3-01"]["value"])
    kw = dict(engine="vllm", concurrency=32, prompt_tokens=260, context=390, output_tokens=260)
    five = _perf(8, "a100-80gb", adapters=5, **kw).throughput_tokens_per_s["adapters"]
    many = _perf(8, "a100-80gb", adapters=adapters, **kw).throughput_tokens_per_s["adapters"]
    assert many / five == pytest.approx(measured, rel=0.15)
    assert many <= five


def test_engines_batch_adapters_differently():
    kw = dict(concurrency=32, adapters=8, prompt_tokens=256, context=384)
    peft = _perf(16, "a100-80gb", engine="peft", **kw).throughput_tokens_per_s
    vllm = _perf(16, "a100-80gb", engine="vllm", **kw).throughput_tokens_per_s
    # PEFT runs one adapter a forward: 8 adapters make 8 small batches in a row
    assert peft["adapters"] < 0.3 * peft["base"]
    assert vllm["adapters"] > 0.8 * vllm["base"]


def test_decode_is_memory_bound_and_merging_costs_nothing():
    perf = _perf(16, "h100-80gb", engine="vllm", batch=16)
    one, sixteen = perf.decode_ms_per_token["batch_1"], perf.decode_ms_per_token["batch_16"]
    assert perf.bound == "memory"
    assert one["merged"] == one["base"] and one["unmerged"] > one["base"]
    # sixteen requests cost far less than sixteen times one: the weights are read once a step
    assert sixteen["base"] < 1.5 * one["base"]
    # the weights at the bandwidth bound the step from below
    assert one["base"] > 13.4e9 / 3.35e12 * 1e3


def test_serve_json_has_performance(cli):
    code, out, _ = cli("serve", "-m", "llama2-7b", "-r", "16", "-t", "attn", "-g", "a100-80gb",
                       "--engine", "vllm", "--concurrency", "16", "--batch", "8", "--json")
    perf = json.loads(out)["performance"]
    assert code == 0
    assert set(perf["decode_ms_per_token"]) == {"batch_1", "batch_8"}
    assert set(perf["decode_ms_per_token"]["batch_8"]) == {"base", "merged", "unmerged"}
    assert set(perf["throughput_tokens_per_s"]) == {"base", "adapters"}
    assert perf["prefill_ms"] > 0 and perf["adapter_load_s"] > 0
    code, out, _ = cli("serve", "-m", "llama2-7b", "-r", "16", "-t", "attn", "-g", "a100-80gb")
    assert "decode, batch 1" in out and "prefill" in out
    code, _, err = cli("serve", "-m", "llama2-7b", "-g", "a100-80gb", "--batch", "0")
    assert code == 2 and "--batch" in err


def test_serve_refuses_full_fine_tuning_in_one_line(cli):
    code, out, err = cli("serve", "-m", "llama2-7b", "--method", "full", "-g", "a100-80gb")
    assert code == 2 and "--method" in err and "Traceback" not in err + out


def test_a_four_bit_base_decodes_through_the_fused_kernel_at_small_batches():
    """bitsandbytes (0.50, pinned) runs inference on a 4-bit weight through its fused gemm_4bit
    kernel up to its floor of rows, reading the packed weight; above it the model counts the
    dequantized copy. Read from the installed package's source (its CUDA ops do not import on a
    CPU build of torch)."""
    import re
    from importlib.util import find_spec
    from pathlib import Path

    from lorasize.perf.inference import BNB_FUSED_MAX_ROWS, forward_work

    ops = Path(find_spec("bitsandbytes").submodule_search_locations[0]) / "backends/cuda/ops.py"
    floor = re.search(r"_GEMM_4BIT_CUSTOM_FLOOR_M = (\d+)", ops.read_text())
    assert floor and int(floor.group(1)) == BNB_FUSED_MAX_ROWS
    spec = resolve_model("llama2-7b")
    one = forward_work(spec, (), BNB_FUSED_MAX_ROWS, 512, quantized=True, engine="vllm")
    many = forward_work(spec, (), BNB_FUSED_MAX_ROWS + 1, 512, quantized=True, engine="vllm")
    assert one.dequant_weights == 0 < many.dequant_weights
    assert all(g.weight_bytes for g in one.gemms if g.what == "base")
    nf4 = _perf(8, "a100-80gb", engine="vllm", quantized=True).decode_ms_per_token["batch_1"]
    bf16 = _perf(8, "a100-80gb", engine="vllm").decode_ms_per_token["batch_1"]
    # a quarter of the weight bytes and then some (the block constants, the KV cache, the rest)
    assert 0.25 * bf16["base"] < nf4["base"] < 0.5 * bf16["base"]

