"""Training time: FLOPs per token from first principles, throughput against published runs."""

from __future__ import annotations

import json

import pytest

from lorasize import LoraSpec, TrainSpec, gpu_from_catalog, resolve_model
from lorasize.arch.layout import block_linears
from lorasize.arch.lora import resolve_targets
from lorasize.perf.timing import flops_per_token, training_time


def test_full_fine_tuning_is_six_n_plus_attention():
    """Kaplan et al.: 6 FLOPs per parameter per token, plus the attention term."""
    spec = resolve_model("llama2-7b")
    train = TrainSpec(method="full", seq_len=2048, grad_checkpointing=False)
    matmul_params = 32 * sum(m.in_features * m.out_features for m in block_linears(spec)) + 32000 * 4096
    attention = 3 * 2 * 2048 * 4096 * 32
    assert flops_per_token(spec, (), train) == pytest.approx(6 * matmul_params + attention, rel=1e-9)


def test_frozen_base_and_checkpointing():
    spec = resolve_model("llama3-8b")
    targets = resolve_targets(spec, LoraSpec(r=16, targets=("all",)))
    lora = flops_per_token(spec, targets, TrainSpec(grad_checkpointing=False))
    full = flops_per_token(spec, (), TrainSpec(method="full", grad_checkpointing=False))
    recomputed = flops_per_token(spec, targets, TrainSpec(grad_checkpointing=True))
    assert lora < full  # no weight gradients for frozen weights
    assert recomputed > lora
    assert flops_per_token(spec, targets, TrainSpec(attn="eager")) > flops_per_token(
        spec, targets, TrainSpec(attn="sdpa"))


# IBM fms-acceleration, A100-80GB, batch 4 x 4096 tokens, gradient checkpointing, flash-attn 2,
# train_tokens_per_second (scripts/benchmarks/refs/a100_80gb.csv, quoted in
# measurements/evidence.md). The step-time model's figures are fitted to timing.csv, which holds
# the QLoRA row (fms-a100-057) but not the other three; each must be within the 30% the
# performance issue (#14) sets for the 90th percentile.
RUNS = [
    ("mistral-7b", ("attn",), "lora", 3324, 0.30),
    ("mistral-7b", None, "full", 3062, 0.30),
    ("mistral-7b", ("attn",), "qlora", 2903, 0.30),
    ("llama2-70b", ("attn",), "qlora", 464, 0.30),
]


@pytest.mark.parametrize("model,targets,method,measured,tolerance", RUNS)
def test_throughput_against_published_runs(model, targets, method, measured, tolerance):
    spec = resolve_model(model)
    train = TrainSpec(method=method, batch_size=4, seq_len=4096, grad_checkpointing=True,
                      attn="flash", double_quant=method == "qlora")
    resolved = () if targets is None else resolve_targets(spec, LoraSpec(r=16, targets=targets))
    predicted = training_time(spec, resolved, train, gpu_from_catalog("a100-80gb"))
    assert predicted.tokens_per_s == pytest.approx(measured, rel=tolerance)


def test_hours_and_cost_in_the_cli(cli):
    code, out, _ = cli("estimate", "-m", "llama2-7b", "--gpu", "a100-40gb", "--dataset-tokens",
                       "10000000", "--epochs", "2", "--usd-per-gpu-hour", "3", "--json")
    time = json.loads(out)["time"]
    assert code == 0
    assert time["hours"] == pytest.approx(2 * 10_000_000 / time["tokens_per_s"] / 3600, rel=1e-3)
    assert time["usd"] == pytest.approx(time["hours"] * 3, abs=0.01)  # both rounded
    code, _, err = cli("estimate", "-m", "llama2-7b", "--gpu", "a100-40gb", "--mfu", "2")
    assert code == 2 and "--mfu" in err
