"""The step-time model: its GEMM counts against torch's own FLOP counter on the real
transformers + PEFT step, and the behaviour of each term of the breakdown."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lorasize import LoraSpec, TrainSpec, gpu_from_catalog, resolve_model
from lorasize.arch.lora import resolve_targets
from lorasize.memory.sharding import ShardSpec
from lorasize.perf.steptime import BREAKDOWN_KEYS, step_time
from lorasize.perf.timing import training_time
from lorasize.perf.work import step_work

TINY = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=512,
            hidden_size=128, intermediate_size=344, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)


def _counted(config: dict, lora: dict | None, checkpointing: bool, batch: int = 2, seq: int = 64):
    """aten.mm and aten.bmm FLOPs of one real training step (forward and backward), counted by
    torch.utils.flop_counter on the real model with the real adapter."""
    import torch
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(**{k: v for k, v in config.items()
                                               if k != "architectures"})
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager",
                                                          dtype=torch.float32)
    if lora is not None:
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(**lora))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.randint(0, config["vocab_size"], (batch, seq))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    return counts.get("aten.mm", 0) + counts.get("aten.addmm", 0), counts.get("aten.bmm", 0)


CASES = [
    (dict(r=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0), False),
    (dict(r=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0), True),
    (dict(r=4, target_modules=["o_proj", "gate_proj", "up_proj", "down_proj"],
          lora_dropout=0.0), False),
    (dict(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                               "down_proj"], lora_dropout=0.0), True),
    (None, False),
    (None, True),
]


@pytest.mark.parametrize("lora,checkpointing", CASES)
def test_gemm_flops_equal_torch_flop_counter(tmp_path, lora, checkpointing):
    """Every matmul of the step, counted: linear layers, adapters, head (forward, input and
    weight gradients, checkpointing's recompute, which stops before the block's last linear)
    exactly; eager attention's batched matmuls within 10% (the first layer's unneeded key
    gradient is not modelled)."""
    mm, bmm = _counted(TINY, lora, checkpointing)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    spec = resolve_model(str(path))
    full = lora is None
    train = TrainSpec(method="full" if full else "lora", batch_size=2, seq_len=64, attn="eager",
                      grad_checkpointing=checkpointing, dtype="fp32")
    targets = () if full else resolve_targets(
        spec, LoraSpec(r=lora["r"], targets=tuple(lora["target_modules"])))
    work = step_work(spec, targets, train)
    modelled = sum(g.flops for g in work.gemms if g.what != "attention")
    attention = sum(g.flops for g in work.gemms if g.what == "attention")
    assert modelled == pytest.approx(mm, rel=1e-9)
    assert attention == pytest.approx(bmm, rel=0.10)


def _timed(model="llama2-7b", gpu="a100-80gb", lora=LoraSpec(r=16, targets=("attn",)),
           shard=None, **train):
    spec = resolve_model(model)
    t = TrainSpec(**train)
    targets = () if t.method == "full" else resolve_targets(spec, lora)
    return training_time(spec, targets, t, gpu_from_catalog(gpu), shard=shard)


def test_breakdown_sums_to_the_step_and_names_every_term():
    for kwargs in (dict(batch_size=8, seq_len=4096, grad_checkpointing=True),
                   dict(method="qlora", batch_size=1, seq_len=128),
                   dict(method="full", batch_size=2, seq_len=2048, grad_accum=4)):
        t = _timed(**kwargs)
        assert set(t.breakdown) == set(BREAKDOWN_KEYS)
        assert sum(t.breakdown.values()) == pytest.approx(t.step_seconds, rel=1e-12)
        assert all(v >= 0 for v in t.breakdown.values())
        assert t.tokens_per_s == pytest.approx(t.step_seconds ** -1 * kwargs["batch_size"]
                                               * kwargs["seq_len"])


def test_micro_batch_one_is_launch_bound_and_says_so():
    small = _timed(batch_size=1, seq_len=128)
    large = _timed(batch_size=16, seq_len=4096)
    assert small.bound == "launch" and small.breakdown["overhead"] > 0
    assert "batch 4 takes" in small.notes[0]
    assert large.bound == "compute" and large.breakdown["overhead"] < 1e-4 * large.step_seconds
    # launch-bound: four times the tokens cost little more time
    four = _timed(batch_size=4, seq_len=128)
    assert four.step_seconds < 1.5 * small.step_seconds


def test_qlora_pays_dequantization_and_the_kbit_upcast():
    lora = _timed(batch_size=4, seq_len=2048, grad_checkpointing=True)
    qlora = _timed(method="qlora", batch_size=4, seq_len=2048, grad_checkpointing=True,
                   kbit_prep=False)
    upcast = _timed(method="qlora", batch_size=4, seq_len=2048, grad_checkpointing=True)
    assert lora.breakdown["dequantization"] == 0 < qlora.breakdown["dequantization"]
    assert upcast.breakdown["memory_bound"] > 1.5 * qlora.breakdown["memory_bound"]
    assert lora.tokens_per_s > qlora.tokens_per_s > upcast.tokens_per_s


def test_eager_attention_is_slower_than_flash_at_long_sequences():
    flash = _timed(batch_size=1, seq_len=8192, attn="flash")
    eager = _timed(batch_size=1, seq_len=8192, attn="eager")
    assert eager.step_seconds > 1.2 * flash.step_seconds
    assert eager.breakdown["memory_bound"] > flash.breakdown["memory_bound"]


def test_fused_kernels_cut_memory_bound_work():
    eager = _timed(batch_size=4, seq_len=4096, grad_checkpointing=True)
    fused = _timed(batch_size=4, seq_len=4096, grad_checkpointing=True, kernels="fused")
    assert fused.breakdown["memory_bound"] < 0.5 * eager.breakdown["memory_bound"]
    assert fused.breakdown["matmuls"] == eager.breakdown["matmuls"]


def test_optimizer_step_is_amortised_over_accumulation():
    one = _timed(method="full", batch_size=2, seq_len=2048)
    four = _timed(method="full", batch_size=2, seq_len=2048, grad_accum=4)
    assert one.breakdown["optimizer"] > 0
    assert four.breakdown["optimizer"] == pytest.approx(one.breakdown["optimizer"] / 4)
    lora = _timed(batch_size=2, seq_len=2048)
    assert lora.breakdown["optimizer"] < 0.01 * one.breakdown["optimizer"]


def test_fsdp_communication_over_pcie_is_exposed_and_over_nvlink_hidden():
    kwargs = dict(batch_size=1, seq_len=512, grad_checkpointing=True)
    fsdp = ShardSpec(2, "fsdp")
    pcie = _timed(gpu="rtx-4090", shard=fsdp, **kwargs)
    nvlink = _timed(gpu="a100-80gb", shard=fsdp, **kwargs)
    alone = _timed(gpu="rtx-4090", **kwargs)
    assert pcie.breakdown["communication"] > 0.5 * pcie.step_seconds
    assert pcie.bound == "communication"
    assert nvlink.breakdown["communication"] < 0.2 * nvlink.step_seconds
    assert pcie.step_seconds > 2 * alone.step_seconds
    # DDP sends only the (small) adapter gradients
    ddp = _timed(gpu="rtx-4090", shard=ShardSpec(2, "ddp"), **kwargs)
    assert ddp.breakdown["communication"] < pcie.breakdown["communication"]


def test_fp32_adapters_without_autocast_cost_time_for_delta_weight_variants():
    lokr = LoraSpec(r=32, targets=("qv",), variant="lokr")
    mixed = _timed(model="llama3.2-3b", gpu="l40s", lora=lokr, batch_size=4, seq_len=256)
    fp32 = _timed(model="llama3.2-3b", gpu="l40s", lora=lokr, batch_size=4, seq_len=256,
                  autocast=False)
    assert fp32.breakdown["adapter_matmuls"] > 2 * mixed.breakdown["adapter_matmuls"]


def test_misaligned_vocabulary_slows_the_head():
    """GPT-2's 50,257-token vocabulary is not a multiple of 8: padding it to 50,304 speeds the
    head's matmuls up (nanoGPT's finding)."""
    spec = resolve_model("gpt2")
    padded = replace(spec, vocab_size=50304)
    train = TrainSpec(method="full", batch_size=8, seq_len=1024, attn="flash")
    gpu = gpu_from_catalog("a100-80gb")
    slow = step_time(step_work(spec, (), train), gpu).breakdown["matmuls"]
    fast = step_time(step_work(padded, (), train), gpu).breakdown["matmuls"]
    assert fast < 0.8 * slow


def test_estimate_json_and_text_carry_the_breakdown(cli):
    code, out, _ = cli("estimate", "-m", "llama3-8b", "-b", "4", "-s", "2048", "--gpu",
                       "a100-80gb", "--json")
    time = json.loads(out)["time"]
    assert code == 0 and time["model"] == "step"
    assert sum(time["breakdown"].values()) == pytest.approx(time["step_seconds"], rel=1e-3)
    assert 0 < time["mfu"] < 1
    code, out, _ = cli("estimate", "-m", "llama2-7b", "-b", "1", "-s", "128", "--gpu",
                       "a100-40gb")
    assert "launch-bound" in out and "batch 4 takes" in out
    code, _, err = cli("estimate", "-m", "llama2-7b", "--kernels", "triton")
    assert code == 2 and "--kernels" in err


def test_fit_names_the_fastest_setting_that_fits(cli):
    code, out, _ = cli("fit", "-m", "llama3-8b", "-r", "16", "-t", "all", "-s", "2048", "--gpu",
                       "a100-40gb", "--solve", "fastest", "--json")
    data = json.loads(out)
    assert code == 0
    speeds = [c["tokens_per_s"] for c in data["candidates"]]
    assert speeds == sorted(speeds, reverse=True) and data["solved"] == data["candidates"][0]
    gib40 = gpu_from_catalog("a100-40gb").memory_bytes
    assert all(c["train_peak_bytes"] <= gib40 for c in data["candidates"])
    # checkpointing fits a larger batch; each candidate is the largest batch that fits
    by = {c["grad_checkpointing"]: c for c in data["candidates"]}
    assert by[True]["batch_size"] > by[False]["batch_size"]
    code, out, _ = cli("fit", "-m", "llama3-8b", "-r", "16", "-t", "all", "-s", "2048", "--gpu",
                       "a100-40gb", "--solve", "batch-size", "--json")
    assert json.loads(out)["time"]["tokens_per_s"] > 0
    code, out, _ = cli("fit", "-m", "llama2-70b", "--method", "full", "--gpu", "rtx-3060",
                       "--solve", "fastest")
    assert code == 1 and "nothing fits" in out


def test_sweep_carries_throughput():
    pytest.importorskip("pandas")
    from lorasize.plan.solve import sweep

    frame = sweep(resolve_model("llama2-7b"), gpu_from_catalog("a100-80gb"), batch_size=[1, 8],
                  seq_len=128)
    fast = frame.set_index("batch_size")["tokens_per_s"]
    assert fast[8] > 2 * fast[1]  # batch 1 is launch-bound
