"""Multi-GPU memory (lorasize/memory/sharding.py) against DeepSpeed's own estimator, against published
multi-GPU measurements, and against the properties any sharding must keep."""

from __future__ import annotations

import csv
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from lorasize.arch.catalog import find_model_entry, gpu_from_catalog, model_from_catalog
from lorasize.errors import LorasizeError
from lorasize.estimate import ALLOCATED_KEYS, estimate
from lorasize.arch.lora import LoraSpec
from lorasize.memory.sharding import (DEEPSPEED_PREFETCH_BUCKET_SIZE, SHARDINGS, ShardSpec,
                               grad_accum_from_row, largest_module_params, launch_commands,
                               shard_static, sharding_from_row)
from lorasize.plan.solve import fewest_gpus, fit_setup
from lorasize.specs import TrainSpec
from lorasize.memory.weights import static_bytes

from lorasize.measurements import MEMORY as SHARED
FULL = TrainSpec(method="full", dtype="bf16", optimizer="adamw", grad_checkpointing=True)
DEEPSPEED_MODELS = ("llama2-7b", "mistral-7b", "llama3-8b", "gemma-7b", "llama2-13b")
DEEPSPEED_GPUS = (1, 2, 4, 8, 16)


@pytest.fixture(scope="module")
def deepspeed_estimators():
    """DeepSpeed's estimator functions; the test skips where deepspeed does not import.

    deepspeed is not in the ``test`` extra: PyPI has it only as an sdist whose build imports
    torch, so a clean install takes minutes and pulls a CUDA torch into the build environment.
    """
    pytest.importorskip("deepspeed", reason="deepspeed is not installed")
    try:
        from deepspeed.runtime.zero.stage3 import (estimate_zero3_model_states_mem_needs,
                                                   model_to_params)
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    except Exception as exc:  # a CPU-only machine can fail inside deepspeed's accelerator setup
        pytest.skip(f"deepspeed does not import on this machine: {exc}")
    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs, \
        model_to_params


def _model_states(name: str, shard: ShardSpec, train: TrainSpec = FULL):
    """(total params, per-GPU model-state bytes, the sharded bytes) for full fine-tuning."""
    model = model_from_catalog(name)
    static = static_bytes(model, (), train)
    sharded = shard_static(model, train, static, shard)
    s = sharded.static
    return static.trainable_params, s.weights + s.adapter + s.gradients + s.optimizer, sharded


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("name", DEEPSPEED_MODELS)
def test_zero2_model_states_equal_deepspeeds(deepspeed_estimators, name, dtype):
    """ZeRO-2 keeps 2 bytes of 16-bit weights per parameter and 18/N bytes of 16-bit and fp32
    gradients, fp32 master weights and Adam moments (DeepSpeed's own accounting)."""
    zero2, _, _ = deepspeed_estimators
    train = replace(FULL, dtype=dtype)
    for gpus in DEEPSPEED_GPUS:
        params, ours, _ = _model_states(name, ShardSpec(gpus, "zero2"), train)
        _, theirs = zero2(params, num_gpus_per_node=gpus, num_nodes=1, cpu_offload=False)
        assert ours == pytest.approx(theirs, rel=1e-3), (name, gpus)
        params, ours, sharded = _model_states(name, ShardSpec(gpus, "zero2", "optimizer"), train)
        cpu, theirs = zero2(params, num_gpus_per_node=gpus, num_nodes=1, cpu_offload=True)
        assert ours == pytest.approx(theirs, rel=1e-3), (name, gpus)
        # DeepSpeed's host figure is per node with a 1.5 safety factor; ours is exact per rank.
        assert gpus * sharded.host_bytes <= cpu


@pytest.mark.parametrize("name", DEEPSPEED_MODELS)
def test_zero3_model_states_against_deepspeeds(deepspeed_estimators, name):
    """ZeRO-3 partitions everything. DeepSpeed's estimator counts 18 bytes per parameter over N
    plus 4 bytes per parameter of the largest layer; our components add the 16-bit gradient
    partition stage3.py allocates at start (``grad_partitions_flat_buffer``, 2 bytes per
    parameter over N), which its formula leaves out, and count the gathered layer apart."""
    _, zero3, _ = deepspeed_estimators
    model = model_from_catalog(name)
    largest = largest_module_params(model)
    for gpus in DEEPSPEED_GPUS:
        params, ours, sharded = _model_states(name, ShardSpec(gpus, "zero3"))
        _, theirs, largest_memory = zero3(params, largest, num_gpus_per_node=gpus, num_nodes=1,
                                          cpu_offload=False, cpu_offload_params=False)
        assert largest_memory == 4 * largest
        assert ours - (theirs - largest_memory) == pytest.approx(2 * params / gpus, rel=1e-3)
        # The gathered module: its 16-bit weight and gradient as DeepSpeed counts them, plus
        # at most the prefetch bucket.
        assert 0 <= sharded.gathered - largest_memory <= 2 * DEEPSPEED_PREFETCH_BUCKET_SIZE
        for offload, params_too in (("optimizer", False), ("params", True)):
            _, ours, _ = _model_states(name, ShardSpec(gpus, "zero3", offload))
            _, theirs, largest_memory = zero3(params, largest, num_gpus_per_node=gpus,
                                              num_nodes=1, cpu_offload=True,
                                              cpu_offload_params=params_too)
            assert ours == pytest.approx(theirs - largest_memory, rel=1e-3, abs=1), (offload, gpus)


@pytest.mark.parametrize("name", ["llama2-7b", "llama3-8b", "gemma-7b", "qwen2.5-7b", "gpt2"])
def test_largest_module_as_deepspeed_counts_it(deepspeed_estimators, name):
    """``largest_layer_params`` from DeepSpeed's model_to_params on the real transformers
    model (meta device; layers shrunk, the largest module does not depend on their number)."""
    from conftest import build_meta_model

    _, _, model_to_params = deepspeed_estimators
    entry = find_model_entry(name)
    _, largest = model_to_params(build_meta_model(entry["config"], 2))
    assert largest_module_params(model_from_catalog(name)) == largest


# --- published multi-GPU measurements ------------------------------------------------------

# Rows predicted and held to TOLERANCE: high confidence, a setup lorasize expresses. A row whose
# model the catalog lacks is reported and left out.
ASSERTED = ("fms-02", "fms-05", "fms-06", "fms-09", "fms-15", "lt-19", "lt-20", "lt-22", "lt-24")
TOLERANCE = 0.25  # the largest error among them is fms-15's (Llama-2-70B QLoRA FSDP, -22%)
MEDIAN_TOLERANCE = 0.10
# Every other multi-GPU row, with why it is not asserted (printed where it can be predicted).
NOT_ASSERTED = {
    "ras-11": "low confidence: setup inferred",
    "ch-36": "medium confidence",
    "tt-05": "metric unknown (not stated as allocated or reserved)",
    "tt-14": "metric unknown; checkpointing unclear",
    "tt-17": "metric unknown",
    "tt-26": "batch or sequence length not stated",
    "tt-27": "batch or sequence length not stated",
    "peft-09": "medium confidence, read from a screenshot",
    "peft-12": "medium confidence, read from a screenshot",
    "peft-13": "metric unknown",
    "peft-10": "metric unknown",
}


def _multi_gpu_rows() -> list[dict]:
    with SHARED.open(newline="", encoding="utf-8") as handle:
        return [r for r in csv.DictReader(handle)
                if (r["num_gpus"] or "1").strip() not in ("1", "")]


def predict_row(row: dict) -> tuple[int, ShardSpec]:
    """The per-GPU prediction of a multi-GPU row: the row's specs as validate reads them (a
    sharded QLoRA load is not kbit-prepared by TRL) with its sharding and gradient
    accumulation."""
    from lorasize.calibrate.validate import row_estimate

    shard = sharding_from_row(row)
    metric = row["metric"] if row["metric"] in ("peak_allocated", "peak_reserved") else "nvidia_smi"
    single = row_estimate({**row, "metric": metric})
    train = replace(single.train, grad_accum=grad_accum_from_row(row))
    result = estimate(single.model, single.lora, train, gpu=single.gpu, shard=shard)
    value = {"peak_allocated": result.allocated_bytes,
             "peak_reserved": result.reserved_bytes}.get(metric, result.peak_bytes)
    return value, shard


def test_measured_multi_gpu_rows():
    from lorasize.calibrate.validate import Skip, measured_bytes

    rows = _multi_gpu_rows()
    ids = {r["id"] for r in rows}
    unclassified = ids - set(ASSERTED) - set(NOT_ASSERTED)
    assert not unclassified, f"new multi-GPU rows: classify them here: {sorted(unclassified)}"
    errors = {}
    for row in rows:
        try:
            predicted, shard = predict_row(row)
        except (Skip, LorasizeError) as reason:
            assert row["id"] not in ASSERTED or "not in the catalog" in str(reason), \
                (row["id"], str(reason))
            print(f"{row['id']:8} not predicted: {reason}")
            continue
        measured = measured_bytes(row["value"], row["unit"])
        error = (predicted - measured) / measured
        print(f"{row['id']:8} {shard.label:26} predicted {predicted / 1e9:6.2f} GB, measured "
              f"{measured / 1e9:6.2f} GB, {100 * error:+.1f}%"
              + ("" if row["id"] in ASSERTED else f"  (not asserted: {NOT_ASSERTED[row['id']]})"))
        if row["id"] in ASSERTED:
            errors[row["id"]] = error
    assert set(errors) >= {"fms-02", "fms-05", "fms-06", "fms-09", "fms-15", "lt-22", "lt-24"}
    for row_id, error in errors.items():
        assert abs(error) <= TOLERANCE, (row_id, error)
    assert statistics.median(abs(e) for e in errors.values()) <= MEDIAN_TOLERANCE


@pytest.mark.parametrize("row,expected", [
    ({"num_gpus": "2", "notes": "2-GPU runs use accelerate FSDP FULL_SHARD"}, ShardSpec(2, "fsdp")),
    ({"num_gpus": "2", "notes": "FSDP FULL_SHARD with CPU offload of params"},
     ShardSpec(2, "fsdp", "params")),
    ({"num_gpus": "8", "notes": "ZeRO-3, no offload, mixed_precision bf16."}, ShardSpec(8, "zero3")),
    ({"num_gpus": "1", "notes": ""}, ShardSpec()),
])
def test_sharding_from_row(row, expected):
    assert sharding_from_row(row) == expected


@pytest.mark.parametrize("row,expected", [
    ({"notes": "lit-gpt defaults: global batch 128 via grad accumulation", "batch_size": "2",
      "num_gpus": "2"}, 32),
    ({"notes": "gradient_checkpointing True, grad accum 1, HF default optimizer"}, 1),
    ({"notes": "micro batch 1, global batch 16.", "batch_size": "1", "num_gpus": "4"}, 4),
    ({"notes": ""}, 1),
])
def test_grad_accum_from_row(row, expected):
    assert grad_accum_from_row(row) == expected


def test_fsdp_accumulation_holds_unsharded_gradients():
    """Under FSDP no_sync the held gradients are the whole model's, whatever N; the step's are
    sharded."""
    model = model_from_catalog("llama2-7b")
    train = replace(FULL, grad_accum=4)
    static = static_bytes(model, (), train)
    for gpus in (2, 8):
        sharded = shard_static(model, train, static, ShardSpec(gpus, "fsdp"))
        assert sharded.held_gradients == static.gradients
        assert sharded.static.gradients == pytest.approx(static.gradients / gpus, abs=1)
    one_step = shard_static(model, FULL, static, ShardSpec(8, "fsdp"))
    assert one_step.held_gradients == 0


def test_torchtune_fsdp_accumulates_sharded_gradients():
    """torchtune's recipes never call no_sync: FSDP2 reduce-scatters every micro-batch, so no
    whole gradient is held, and each micro-batch sends the whole gradient; under no_sync (the
    other stacks) one micro-batch in grad_accum sends it."""
    from lorasize.perf.work import step_work

    model = model_from_catalog("llama2-7b")
    shard = ShardSpec(8, "fsdp")
    scatter = {}
    for stack in ("torchtune", "hf-peft"):
        train = replace(FULL, grad_accum=4, stack=stack)
        static = static_bytes(model, (), train)
        held = shard_static(model, train, static, shard).held_gradients
        assert held == (0 if stack == "torchtune" else static.gradients)
        comms = step_work(model, (), train, shard).comms
        scatter[stack] = next(c.bytes for c in comms if c.what == "reduce-scatter")
    assert scatter["torchtune"] == pytest.approx(4 * scatter["hf-peft"])


def test_sharding_from_row_needs_a_named_sharding():
    with pytest.raises(LorasizeError, match="num_gpus"):
        sharding_from_row({"num_gpus": "4", "notes": "four GPUs"})


# --- properties ----------------------------------------------------------------------------

SETUPS = [(s, o) for s in SHARDINGS if s != "none" for o in ("none", "optimizer", "params")
          if not (o == "optimizer" and not s.startswith("zero"))
          and not (o == "params" and s not in ("zero3", "fsdp"))]
CASES = [("llama2-7b", TrainSpec(method="full", grad_checkpointing=True)),
         ("llama3-8b", TrainSpec(method="lora", batch_size=2, seq_len=1024)),
         ("mistral-7b", TrainSpec(method="qlora", double_quant=True)),
         ("mixtral-8x7b", TrainSpec(method="lora", grad_checkpointing=True))]


@pytest.mark.parametrize("name,train", CASES, ids=[c[0] + "-" + c[1].method for c in CASES])
def test_one_gpu_without_sharding_is_the_plain_estimate(name, train):
    model = model_from_catalog(name)
    lora = LoraSpec(r=16, targets=("all",))
    assert estimate(model, lora, train, shard=ShardSpec(1)).to_dict() == \
        estimate(model, lora, train).to_dict()


@pytest.mark.parametrize("name,train", CASES, ids=[c[0] + "-" + c[1].method for c in CASES])
def test_breakdowns_still_sum(name, train):
    model = model_from_catalog(name)
    for sharding, offload in SETUPS:
        for gpus in (1, 3, 8):
            e = estimate(model, LoraSpec(r=16, targets=("all",)), train,
                         shard=ShardSpec(gpus, sharding, offload))
            assert sum(e.breakdown.values()) == e.peak_bytes
            assert sum(e.breakdown[k] for k in ALLOCATED_KEYS) == e.allocated_bytes
            assert all(isinstance(v, int) and v >= 0 for v in e.breakdown.values())
            assert all(isinstance(v, int) and v >= 0 for v in e.host_breakdown.values())
            assert e.peak_bytes == max(e.phase_peaks.values()) + e.reserved_bytes \
                - e.allocated_bytes + e.breakdown["cuda_context"] + e.breakdown["paged_optimizer"]


@pytest.mark.parametrize("name,train", CASES, ids=[c[0] + "-" + c[1].method for c in CASES])
def test_more_gpus_never_need_more_memory_per_gpu(name, train):
    model = model_from_catalog(name)
    for sharding, offload in SETUPS:
        peaks = [estimate(model, LoraSpec(r=16, targets=("all",)), train,
                          shard=ShardSpec(gpus, sharding, offload)).peak_bytes
                 for gpus in (1, 2, 3, 4, 8, 16, 64)]
        assert peaks == sorted(peaks, reverse=True), (sharding, offload)


def test_sharding_divides_the_right_components():
    """Full fine-tuning of Llama-2-7B on 8 GPUs: which component each stage divides."""
    model = model_from_catalog("llama2-7b")
    plain = estimate(model, None, FULL)
    one = {k: plain.breakdown[k] for k in ("weights", "gradients", "optimizer")}
    assert one["weights"] > 10 * 2**30

    def parts(sharding, offload="none"):
        e = estimate(model, None, FULL, shard=ShardSpec(8, sharding, offload))
        sharded = shard_static(model, FULL, static_bytes(model, (), FULL),
                               ShardSpec(8, sharding, offload))
        return sharded.static, e

    ddp, e = parts("ddp")
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == tuple(one.values())
    assert e.breakdown["communication"] == one["gradients"]  # DDP's bucket copy
    fsdp, e = parts("fsdp")
    assert fsdp.weights == pytest.approx(one["weights"] / 8, rel=1e-6)
    assert fsdp.optimizer == pytest.approx(one["optimizer"] / 8, rel=1e-6)
    z1, _ = parts("zero1")
    z2, _ = parts("zero2")
    assert z1.weights == z2.weights > one["weights"]  # 16-bit weights + fp32 master partition
    assert z2.gradients < z1.gradients
    off, e = parts("zero3", "params")
    assert off.weights == off.gradients == off.optimizer == 0
    assert e.host_bytes > one["weights"] / 8


def test_lora_frozen_base_is_sharded_only_by_stage_3():
    model = model_from_catalog("llama2-13b")
    train = TrainSpec(method="lora")
    static = static_bytes(model, (), train)
    for sharding, divided in (("ddp", False), ("zero1", False), ("zero2", False),
                              ("zero3", True), ("fsdp", True)):
        weights = shard_static(model, train, static, ShardSpec(4, sharding)).static.weights
        assert (weights < static.weights) == divided, sharding


def test_qlora_constants_stay_whole_and_notes_say_quant_storage():
    model = model_from_catalog("llama2-70b")
    train = TrainSpec(method="qlora", double_quant=True)
    e = estimate(model, LoraSpec(r=8, targets=("all",)), train, shard=ShardSpec(2, "fsdp"))
    whole = estimate(model, LoraSpec(r=8, targets=("all",)), train)
    assert e.breakdown["quant_constants"] == whole.breakdown["quant_constants"]
    assert any("quant_storage" in note for note in e.notes)


@pytest.mark.parametrize("kwargs,flag", [
    ({"gpus": 0}, "--gpus"), ({"gpus": 2}, "--sharding"), ({"sharding": "zero4"}, "--sharding"),
    ({"sharding": "ddp", "offload": "optimizer"}, "--offload"),
    ({"sharding": "zero2", "offload": "params"}, "--offload"),
    ({"sharding": "fsdp", "offload": "optimizer"}, "--offload"),
    ({"sharding": "fsdp", "offload": "disk"}, "--offload"),
])
def test_bad_setups_name_the_flag(kwargs, flag):
    with pytest.raises(LorasizeError) as info:
        ShardSpec(**kwargs)
    assert info.value.source == flag


def test_fit_setup_and_fewest_gpus():
    model = model_from_catalog("llama2-70b")
    gpu = gpu_from_catalog("a100-80gb")
    train = TrainSpec(method="full", grad_checkpointing=True)
    assert not estimate(model, None, train, gpu=gpu).fits
    shard, result = fit_setup(model, LoraSpec(), train, gpu, 8)
    assert result.fits and shard.gpus == 8
    # Nothing earlier in the walk fits on 8 GPUs.
    from lorasize.plan.solve import SETUP_ORDER

    for sharding, offload in SETUP_ORDER[:SETUP_ORDER.index((shard.sharding, shard.offload))]:
        assert not estimate(model, None, train, gpu=gpu, shard=ShardSpec(8, sharding, offload)).fits
    shard, result = fewest_gpus(model, LoraSpec(), train, gpu, "fsdp")
    assert result.fits
    assert not estimate(model, None, train, gpu=gpu, shard=ShardSpec(shard.gpus - 1, "fsdp")).fits
    assert fewest_gpus(model, LoraSpec(), train, gpu, "ddp") is None


def test_launch_commands():
    train = TrainSpec()
    assert launch_commands(ShardSpec(4, "zero3", "optimizer"), train)["accelerate"] == (
        "accelerate launch --num_processes 4 --use_deepspeed --zero_stage 3 "
        "--offload_optimizer_device cpu --mixed_precision bf16 train.py")
    fsdp = launch_commands(ShardSpec(2, "fsdp", "params"), train)
    assert "--use_fsdp --fsdp_sharding_strategy FULL_SHARD" in fsdp["accelerate"]
    assert "--fsdp_offload_params true" in fsdp["accelerate"]
    assert fsdp["torchrun"] == "torchrun --nproc-per-node 2 train.py"
