"""The step-time model: its GEMM counts against torch's own FLOP counter on the real
transformers + PEFT step, and the behaviour of each term of the breakdown."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lorasize import LoraSpec, TrainSpec, gpu_from_catalog, resolve_model
from lorasize.arch.layout import block_linears
from lorasize.arch.lora import resolve_targets
from lorasize.memory.sharding import ShardSpec
from lorasize.perf.steptime import BREAKDOWN_KEYS, ampere_kernel_slowdown, step_time
from lorasize.perf.timing import training_time
from lorasize.perf.work import EFFICIENT_SLOWDOWN, FP32_EFFICIENT_SLOWDOWN, step_work

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


def test_attention_after_kbit_prep_without_autocast_is_the_kernel_sdpa_gets(monkeypatch):
    """Without autocast, PEFT's prepare_model_for_kbit_training leaves q, k and v fp32, and
    transformers 5 hands grouped-query k and v to SDPA unrepeated: CUDA's dispatcher (the trace's
    emulation of it) then takes the math kernel. Checked on the real model: SDPA's own inputs,
    on the meta device."""
    import peft
    import torch
    import torch.nn.functional as F
    import transformers

    from lorasize import ModelSpec
    from lorasize.perf.work import attention_kernel
    from lorasize.trace.emulation import sdpa_kernel

    config = dict(TINY, num_hidden_layers=1)
    cfg = transformers.AutoConfig.for_model(**{k: v for k, v in config.items()
                                               if k != "architectures"})
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa",
                                                              dtype=torch.bfloat16)
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    seen, real = [], F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kwargs):
        seen.append(sdpa_kernel(query.element_size(), query.size(-1),
                                key.size(-3) != query.size(-3), attn_mask is not None))
        return real(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model(input_ids=torch.zeros(1, 16, dtype=torch.long, device="meta"))
    spec = ModelSpec.from_hf_config(config, name="tiny")
    assert seen == [attention_kernel(spec, TrainSpec(method="qlora", autocast=False))] == ["math"]
    # transformers 4.53 and earlier repeated k and v first (repeat_kv): the memory-efficient
    # kernel, which takes fp32; autocast casts SDPA's inputs to 16 bits: flash
    assert attention_kernel(spec, TrainSpec(method="qlora", autocast=False,
                                            stack_release="4.53")) == "efficient"
    assert attention_kernel(spec, TrainSpec(method="qlora")) == "flash"


def test_fp32_attention_and_head_after_kbit_prep_without_autocast_cost_time():
    """The math kernel's fp32 GEMMs over the whole s x s (no causal skipping) on the CUDA cores
    and its score traffic, the memory-efficient kernel at its fp32 speed, and the fp32 head."""
    kw = dict(model="llama3-8b", method="qlora", batch_size=2, seq_len=8192,
              grad_checkpointing=True)
    flash = _timed(**kw)
    math_kernel = _timed(autocast=False, **kw)
    efficient = _timed(autocast=False, stack_release="4.53", **kw)
    assert math_kernel.breakdown["attention"] > 5 * flash.breakdown["attention"]
    assert math_kernel.breakdown["memory_bound"] > flash.breakdown["memory_bound"] + 1.0
    assert efficient.breakdown["attention"] == pytest.approx(
        FP32_EFFICIENT_SLOWDOWN * EFFICIENT_SLOWDOWN * flash.breakdown["attention"], rel=1e-9)
    assert efficient.breakdown["matmuls"] > flash.breakdown["matmuls"]  # the fp32 head
    spec = resolve_model("llama3-8b")
    head = [g for g in step_work(spec, (), TrainSpec(autocast=False, **{
        k: v for k, v in kw.items() if k != "model"})).gemms if g.what == "head"]
    assert head and all(g.fp32 for g in head)


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
    # the fastest setting's own notes: on Hopper, SDPA would beat flash-attn 2
    code, out, _ = cli("fit", "-m", "llama3-8b", "-s", "4096", "--gpu", "h100-80gb", "--attn",
                       "flash", "--solve", "fastest")
    assert code == 0 and "note: h100-80gb runs flash-attn 2's Ampere kernels" in out


def test_sweep_carries_throughput():
    pytest.importorskip("pandas")
    from lorasize.plan.solve import sweep

    frame = sweep(resolve_model("llama2-7b"), gpu_from_catalog("a100-80gb"), batch_size=[1, 8],
                  seq_len=128)
    fast = frame.set_index("batch_size")["tokens_per_s"]
    assert fast[8] > 2 * fast[1]  # batch 1 is launch-bound


def _litgpt_work(release: str, targets=("q_proj", "v_proj"), shard=None, **train):
    spec = resolve_model("llama2-7b")
    t = TrainSpec(stack="litgpt", stack_release=release, batch_size=1, seq_len=140, **train)
    return step_work(spec, resolve_targets(spec, LoraSpec(r=8, targets=targets), "litgpt"), t,
                     shard)


def test_old_litgpt_rebuilds_the_qkv_adapter_index_every_forward():
    """lit-gpt before 0.3.1 (``LoRAQKVLinear.zero_pad``: ``torch.tensor(self.lora_ind, ...)``)
    lists every adapted q and v output index in each layer's forward: 4,096 + 4,096 a layer of
    Llama-2-7B, twice with checkpointing; nothing when q, k and v all carry adapters (no padding)
    or from 0.3.1 on (the index is cached on the GPU)."""
    old = _litgpt_work("0.0")
    assert old.host_indices == 32 * (4096 + 4096) and old.syncs
    assert _litgpt_work("0.0", grad_checkpointing=True).host_indices == 2 * old.host_indices
    assert _litgpt_work("0.0", ("q_proj", "k_proj", "v_proj")).host_indices == 0
    for release in ("", "0.3.1", "0.5"):
        new = _litgpt_work(release)
        assert new.host_indices == 0 and not new.syncs
    gpu = gpu_from_catalog("a100-40gb")
    slow, fast = step_time(old, gpu), step_time(_litgpt_work(""), gpu)
    assert slow.cpu_seconds - fast.cpu_seconds == pytest.approx(32 * 8192 * 0.28e-6)


def test_a_cpu_that_waits_for_the_gpu_each_layer_hides_no_collective():
    """With a synchronization in every layer the CPU waits for that layer's all-gather: FSDP's
    collectives add to the step instead of hiding behind the CPU's launches."""
    gpu = gpu_from_catalog("a100-40gb")
    fsdp = ShardSpec(2, "fsdp")
    old = step_time(_litgpt_work("0.0", shard=fsdp), gpu)
    new = step_time(_litgpt_work("", shard=fsdp), gpu)
    assert old.breakdown["communication"] > new.breakdown["communication"]
    assert sum(old.breakdown.values()) == pytest.approx(old.seconds, rel=1e-12)
    # the longer of the CPU's launches and the GPU's compute, then the collectives it waited for
    compute = sum(v for k, v in old.breakdown.items() if k not in ("communication", "overhead"))
    assert old.seconds == pytest.approx(
        max(old.cpu_seconds, compute) + old.breakdown["communication"], rel=1e-5)
    assert new.seconds == pytest.approx(max(new.cpu_seconds, new.gpu_seconds), rel=1e-5)


def test_estimate_names_the_old_litgpt_index_rebuild(cli):
    args = ("estimate", "-m", "llama2-13b", "-r", "8", "-t", "qv", "-b", "1", "-s", "140",
            "--stack", "litgpt", "--gpu", "a100-40gb")
    _, old, _ = cli(*args, "--stack-release", "0.0")
    _, new, _ = cli(*args)
    assert "rebuilds the q/k/v adapter's index" in old and "rebuilds" not in new
    code, _, err = cli(*args, "--stack-release", "1.0")
    assert code == 2 and "--stack-release" in err and "litgpt release" in err


# ops that launch no kernel: views, metadata, allocation without a fill
_NO_KERNEL = {"view", "_unsafe_view", "t", "transpose", "expand", "permute", "reshape", "alias",
              "detach", "slice", "select", "unsqueeze", "squeeze", "as_strided", "split",
              "split_with_sizes", "unbind", "chunk", "narrow", "view_as", "_reshape_alias",
              "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty",
              "new_empty_strided", "unflatten", "flatten", "movedim", "diagonal"}
_SEQ = 128


def _launch_counter():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in _NO_KERNEL:
                self.ops += 1
            return func(*args, **(kwargs or {}))

    return Count()


def _peft_layer_launches(targets, dropout: float, fp32_adapters: bool = True,
                         autocast: bool = False) -> float:
    """Kernel-launching aten ops of one Llama-2-7B layer, forward and backward, under
    transformers + PEFT (two layers less one), with the attention counted as one fused kernel
    each way: on the meta device (it runs SDPA's math decomposition), or, under autocast, at a
    tenth of the width on the CPU (autocast has no meta kernels; the ops do not depend on the
    width). ``fp32_adapters``: PEFT's ``autocast_adapter_dtype``."""
    import torch
    import transformers

    device, scale = ("cpu", 8) if autocast else ("meta", 1)
    heads = 32 // scale

    def run(layers):
        cfg = transformers.AutoConfig.for_model(
            "llama", vocab_size=32000 // scale, hidden_size=4096 // scale,
            intermediate_size=11008 // scale, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads)
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(
                cfg, attn_implementation="sdpa", dtype=torch.bfloat16)
        if targets:
            import peft

            model = peft.get_peft_model(model, peft.LoraConfig(
                r=8, target_modules=list(targets), lora_dropout=dropout),
                autocast_adapter_dtype=fp32_adapters)
        model.train()
        ids = torch.zeros(1, _SEQ, dtype=torch.long, device=device)
        with _launch_counter() as count:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=ids).logits.float().sum()
            loss.backward()
        return count.ops

    q = torch.zeros(1, heads, _SEQ, 128, device=device, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.zeros_like(q, requires_grad=True) for _ in range(2))
    with _launch_counter() as attention:
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    with _launch_counter() as bare:
        torch.zeros_like(q, requires_grad=True).sum().backward()
    return run(2) - run(1) - (attention.ops - bare.ops) + 2


def _modelled_layer_launches(model: str, targets, stack: str, dropout: float, **train) -> float:
    def kernels(layers):
        spec = replace(resolve_model(model), num_layers=layers)
        t = TrainSpec(stack=stack, batch_size=1, seq_len=_SEQ, **train)
        chosen = resolve_targets(spec, LoraSpec(r=8, targets=targets), stack) if targets else ()
        return step_work(spec, chosen, t, dropout=dropout).kernels

    return kernels(2) - kernels(1)


_ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.mark.parametrize("targets, dropout, fp32_adapters, autocast", [
    (("q_proj", "v_proj"), 0.05, True, False),
    (_ALL, 0.0, True, False),
    (_ALL, 0.05, True, False),
    ((), 0.0, True, False),
    # adapters in the model's dtype cast nothing; fp32 ones under autocast cast their weights too
    (_ALL, 0.0, False, False),
    (_ALL, 0.05, True, True),
])
def test_launches_a_layer_follow_transformers_and_peft(targets, dropout, fp32_adapters, autocast):
    """The kernels lorasize counts for a layer, forward and backward, against the ops the real
    transformers + PEFT step dispatches (within 7%): what the launch overhead multiplies."""
    real = _peft_layer_launches(targets, dropout, fp32_adapters, autocast)
    method = "lora" if targets else "full"
    modelled = _modelled_layer_launches(
        "llama2-7b", targets, "hf-peft", dropout, method=method, autocast=autocast,
        adapter_train_dtype="fp32" if fp32_adapters else "bf16")
    assert modelled == pytest.approx(real, rel=0.07)


def test_launches_a_layer_follow_litgpt():
    """The same against lit-gpt's own 2023 code (tests/data/litgpt/kernel_counts.json, written by
    scripts/litgpt_kernel_counts.py with lit-gpt @8641822): q and v in one ``LoRAQKVLinear``, and
    the list of adapted indices its ``zero_pad`` rebuilds every forward."""
    from pathlib import Path

    data = json.loads((Path(__file__).parent / "data" / "litgpt" / "kernel_counts.json")
                      .read_text())
    for run in data["runs"]:
        real = run["forward_ops_per_layer"] + run["backward_ops_per_layer"]
        modelled = _modelled_layer_launches(run["model"], tuple(run["targets"]), "litgpt", 0.05)
        assert modelled == pytest.approx(real, rel=0.12), run["model"]
        spec = resolve_model(run["model"])
        work = _litgpt_work_for(spec, tuple(run["targets"]))
        assert work.host_indices == run["lora_ind"] * spec.num_layers, run["model"]


def _litgpt_work_for(spec, targets):
    t = TrainSpec(stack="litgpt", stack_release="0.0", batch_size=1, seq_len=_SEQ)
    return step_work(spec, resolve_targets(spec, LoraSpec(r=8, targets=targets), "litgpt"), t)


def test_a_short_reduction_runs_below_the_gemm_efficiency():
    """Each output tile pays a fixed cost (its first operand slices, its result) worth
    ``gemm_k0`` steps of the reduction: GPT-2's K=768 GEMMs run well below a 7B model's
    K=4096-8192 ones per FLOP; an fp32 GEMM's slower steps make the same cost relatively
    smaller."""
    from lorasize.perf.steptime import Terms, _gemm_terms, combine, default_params, matmul_tflops
    from lorasize.perf.work import Gemm

    gpu, p = gpu_from_catalog("a100-80gb"), default_params()

    def per_flop(k, fp32=False):
        g = Gemm(8192, 2304, k, 1, "base", fp32)
        t = Terms(gemms=(_gemm_terms(g, gpu),), attention=0.0, memory=0.0, dequant=0.0,
                  optimizer=0.0, comms=(), gathers=0.0, kernels=0.0, forward_share=0.5)
        return combine(t, p).seconds / g.flops

    assert per_flop(768) / per_flop(8192) == pytest.approx(
        (1 + p.gemm_k0 / 768) / (1 + p.gemm_k0 / 8192))
    assert per_flop(768) > 1.3 * per_flop(8192)
    ratio = matmul_tflops(gpu) / gpu.fp32_tflops
    assert per_flop(768, True) / per_flop(8192, True) == pytest.approx(
        (1 + p.gemm_k0 / (768 * ratio)) / (1 + p.gemm_k0 / (8192 * ratio)))


def _backward_mms(tmp_path, mixed: bool) -> list[tuple[int, int]]:
    """(rows, columns) of each aten.mm result in one backward of two LoRA-style blocks under
    torch's own FSDP (gloo, one CPU rank, ``use_orig_params=True``): each block one unit with its
    frozen base inside (``mixed``, lit-gpt's wrapping) or the adapter's linears in units of their
    own (PEFT's ``fsdp_auto_wrap_policy``)."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.utils._python_dispatch import TorchDispatchMode

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.base = nn.Linear(64, 64, bias=False)
            self.a, self.b = nn.Linear(64, 4, bias=False), nn.Linear(4, 64, bias=False)

        def forward(self, x):
            return self.base(x) + self.b(self.a(x))

    def policy(module, recurse, nonwrapped_numel):
        if recurse:
            return True
        if mixed:
            return isinstance(module, Block)
        return isinstance(module, nn.Linear) and module.weight.requires_grad

    class Mms(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.mm.default:
                self.shapes.append(tuple(out.shape))
            return out

    from datetime import timedelta

    tmp_path.mkdir(parents=True, exist_ok=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1, timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        model = nn.Sequential(Block(), Block())
        for block in model:
            block.base.weight.requires_grad_(False)
        model = FSDP(model, use_orig_params=True, auto_wrap_policy=policy,
                     device_id=torch.device("cpu"))
        loss = model(torch.randn(8, 64, requires_grad=True)).sum()
        with Mms() as mms:
            loss.backward()
        return mms.shapes
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fsdp_units_mixing_frozen_and_trained_weights_compute_the_frozen_gradients(tmp_path):
    """torch's FSDP with ``use_orig_params=True`` gives every weight of a unit a gradient when
    one of them trains (the unit's flat parameter requires one): a frozen base inside a LoRA
    block gets its weight gradient, a (64, 64) product in each block's backward, while PEFT's
    separate adapter units leave it out. lorasize adds those GEMMs, and the gradient's reduction,
    for lit-gpt's FSDP LoRA runs only."""
    weight_grad = (64, 64)  # the frozen base's gradient: no other product of the step is 64 x 64
    assert _backward_mms(tmp_path / "mixed", True).count(weight_grad) == 2
    assert _backward_mms(tmp_path / "apart", False).count(weight_grad) == 0

    spec = resolve_model("llama2-7b")
    fsdp = ShardSpec(2, "fsdp")

    def base_weight_grads(stack):
        train = TrainSpec(stack=stack, batch_size=4, seq_len=128, grad_accum=8)
        work = step_work(spec, resolve_targets(spec, LoraSpec(r=8), stack), train, fsdp)
        return sum(g.flops for g in work.gemms if g.what == "base" and g.reduces_tokens), work

    full = step_work(spec, (), TrainSpec(method="full", batch_size=4, seq_len=128), fsdp)
    litgpt, work = base_weight_grads("litgpt")
    assert litgpt == sum(g.flops for g in full.gemms if g.what == "base" and g.reduces_tokens)
    assert base_weight_grads("hf-peft")[0] == 0
    # the frozen gradients are reduced once an optimizer step (8 micro-batches), in the dtype
    reduce = sum(c.bytes for c in work.comms if c.what == "reduce-scatter")
    frozen = sum(m.weight_numel for m in block_linears(spec)) * spec.num_layers * 2
    assert reduce == pytest.approx(0.5 * frozen / 8, rel=0.02)


def test_a_weight_gradient_over_an_odd_token_count_keeps_its_tensor_cores():
    """A weight's gradient reduces over the tokens, a strided dimension of both operands, so
    500 tokens (4 x 125) leave its leading dimensions aligned; a vocabulary of 50,257 does not,
    under tensor cores; fp32 GEMMs do without them."""
    from lorasize.perf.steptime import _gemm_terms, matmul_tflops
    from lorasize.perf.work import Gemm

    gpu = gpu_from_catalog("a100-40gb")
    weight_grad = Gemm(4096, 12288, 500, 1, "base", reduces_tokens=True)
    _, seconds, _, _ = _gemm_terms(weight_grad, gpu)
    tiles = 32 * 96
    util = tiles / (-(-tiles // gpu.sms) * gpu.sms)
    assert seconds == pytest.approx(weight_grad.flops / (matmul_tflops(gpu) * 1e12 * util))
    head = Gemm(512, 50257, 768, 1, "head")
    padded = Gemm(512, 50304, 768, 1, "head")
    assert _gemm_terms(head, gpu)[1] > 3 * _gemm_terms(padded, gpu)[1]
    # the rule is the tensor cores': an fp32 GEMM (CUDA cores) of rank 10 pays nothing for it
    rank10 = Gemm(4096, 10, 3072, 1, "adapter", True)
    rank16 = Gemm(4096, 16, 3072, 1, "adapter", True)
    assert _gemm_terms(rank10, gpu)[1] == pytest.approx(_gemm_terms(rank16, gpu)[1] * 10 / 16)


def test_gemms_run_at_the_rate_the_card_is_measured_at():
    """Real clocks differ from the rated boost: a GeForce RTX 3090 or 4090 reaches its datasheet
    bf16 peak or more in a plain torch.matmul, an H100 or A100 under its power cap 80-85% of it
    (public measurements in the catalog's ``matmul_tflops``); a card without a measurement runs
    at the median ratio of those that have one."""
    from lorasize.arch.catalog import gpu_entries
    from lorasize.gpu import GpuSpec
    from lorasize.perf.steptime import matmul_tflops, measured_matmul_ratio

    for name in ("rtx-3090", "rtx-4090"):
        gpu = gpu_from_catalog(name)
        assert matmul_tflops(gpu) >= gpu.bf16_tflops
    for name in ("a100-80gb", "h100-80gb"):
        gpu = gpu_from_catalog(name)
        assert 0.75 < matmul_tflops(gpu) / gpu.bf16_tflops < 0.9
    measured = sorted(e["matmul_tflops"] / e["bf16_tflops"] for e in gpu_entries()
                      if e.get("matmul_tflops"))
    assert len(measured) >= 10 and measured[0] <= measured_matmul_ratio() <= measured[-1]
    custom = GpuSpec("custom", 24 << 30, bf16_tflops=100.0, bandwidth_gbps=1000.0)
    assert matmul_tflops(custom) == pytest.approx(100.0 * measured_matmul_ratio())
    # the user hears when the rate is the stand-in
    spec = resolve_model("llama2-7b")
    train = TrainSpec(batch_size=4, seq_len=512)
    targets = resolve_targets(spec, LoraSpec(r=8), "hf-peft")
    unmeasured = training_time(spec, targets, train, gpu_from_catalog("a10g")).notes
    measured = training_time(spec, targets, train, gpu_from_catalog("rtx-4090")).notes
    assert any("no published matmul measurement for a10g" in n for n in unmeasured)
    assert not any("matmul measurement" in n for n in measured)


def _module_calls(family: str, targets, dora: bool) -> int:
    """Modules one forward calls in transformers + PEFT (a forward pre-hook on every module, as
    DeepSpeed ZeRO-3 registers its fetch), on the meta device, and lorasize's spec of the model."""
    import peft
    import torch
    import transformers

    from lorasize.arch.model import ModelSpec

    cfg = transformers.AutoConfig.for_model(
        family, vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=16)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    if targets:
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=4, target_modules=list(targets), use_dora=dora))
    calls = [0]
    for module in model.modules():
        module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    model(input_ids=torch.zeros(1, 8, dtype=torch.long, device="meta"))
    return calls[0], ModelSpec.from_hf_config(cfg.to_dict(), name=family)


@pytest.mark.parametrize("family, targets, dora", [
    ("llama", (), False), ("llama", ("q_proj", "v_proj"), False), ("llama", _ALL, False),
    ("llama", ("q_proj", "v_proj"), True), ("qwen2", _ALL, False), ("gemma2", (), False)])
def test_zero3_fetches_every_module_called_every_pass(family, targets, dora):
    """DeepSpeed ZeRO-3 hooks every submodule, with parameters or not, and fetches before each
    one's forward (the recompute included) and its backward, on one GPU too: lorasize's count
    against the modules real transformers + PEFT call; FSDP gathers a decoder layer at a
    time."""
    from lorasize.arch.lora import LoraSpec, resolve_targets

    calls, model = _module_calls(family, targets, dora)
    train = TrainSpec(method="lora" if targets else "full")
    chosen = resolve_targets(model, LoraSpec(r=4, targets=targets), "hf-peft") if targets else ()
    work = step_work(model, chosen, train, ShardSpec(1, "zero3"), dora=dora)
    assert work.gathers == 2 * calls
    checkpointed = replace(train, grad_checkpointing=True)
    assert step_work(model, chosen, checkpointed, ShardSpec(4, "zero3"), dora=dora).gathers == \
        3 * calls
    assert step_work(model, chosen, train, ShardSpec(4, "fsdp"), dora=dora).gathers == 2 * 2
    assert step_work(model, chosen, train, ShardSpec(1, "fsdp"), dora=dora).gathers == 0


def test_zero3_fetches_are_named_with_fsdps_throughput():
    """A ZeRO-3 step whose module-by-module fetches cost a notable share says how many, their CPU
    time and what FSDP (a layer's gather at a time) reaches on the same GPUs; a long step whose
    fetches hide behind the GPU says nothing."""
    from lorasize.perf.timing import training_time

    model, gpu = resolve_model("qwen1.5-1.8b"), gpu_from_catalog("a100-80gb")
    short = TrainSpec(method="full", seq_len=256, grad_checkpointing=True)
    timed = training_time(model, (), short, gpu, shard=ShardSpec(1, "zero3"))
    note = next(n for n in timed.notes if "ZeRO-3 runs its fetch" in n)
    assert "954 fetches" in note  # (24 layers x 13 modules + 6) x 3 passes
    assert "about twice" in note  # what Qwen's published ZeRO-3 runs took
    fsdp = float(note.rsplit(": ", 1)[1].split()[0].replace(",", ""))
    assert fsdp > timed.tokens_per_s
    long = TrainSpec(method="full", seq_len=8192, batch_size=4, grad_checkpointing=True)
    timed = training_time(model, (), long, gpu, shard=ShardSpec(8, "zero3"))
    assert not any("ZeRO-3 runs its fetch" in n for n in timed.notes)


def test_hopper_runs_flash_attn_2_and_the_memory_efficient_kernel_as_ampere_code():
    """flash-attn 2's package reaches a smaller share of an H100's matmul rate than of an
    A100's (335 against 201 TFLOPS, on cards about 3x apart); SDPA's unmasked kernel on Hopper
    (cuDNN's, torch 2.11 and later) does not pay it."""
    slowdown = ampere_kernel_slowdown("hopper")
    assert 1.5 < slowdown < 2.2
    assert ampere_kernel_slowdown("ampere") == ampere_kernel_slowdown("ada") == 1.0
    kw = dict(model="llama3-8b", batch_size=1, seq_len=8192, grad_checkpointing=True)
    for gpu, expected in (("h100-80gb", slowdown), ("a100-80gb", 1.0)):
        fa2 = _timed(gpu=gpu, attn="flash", **kw).breakdown["attention"]
        sdpa = _timed(gpu=gpu, attn="sdpa", **kw).breakdown["attention"]
        assert fa2 == pytest.approx(expected * sdpa, rel=1e-9)


def test_a_padded_batch_runs_the_memory_efficient_kernel_and_reads_its_mask_per_head():
    """A mask sends SDPA to the memory-efficient kernel: its FLOPs at that kernel's slowdown
    over the whole square, and the mask read once a head forward (twice with the recompute) and
    backward, plus transformers 5's float copy of its boolean mask in every layer."""
    spec = resolve_model("llama3-8b")
    kw = dict(batch_size=2, seq_len=4096, grad_checkpointing=True)
    packed = step_work(spec, (), TrainSpec(**kw))
    padded = step_work(spec, (), TrainSpec(padded=True, **kw))
    b, s, layers, heads = 2, 4096, spec.num_layers, spec.num_heads
    assert padded.attention_flops == pytest.approx(
        EFFICIENT_SLOWDOWN * 2 * packed.attention_flops, rel=1e-9)  # the whole square
    reads = 2 * b * heads * s * s * layers * (2 + 1)
    converts = (1 + 2) * b * s * s * layers * 2
    assert padded.elementwise_bytes - packed.elementwise_bytes == pytest.approx(
        reads + converts, rel=1e-9)


def test_attention_notes_name_a_faster_setting_with_its_own_time():
    """flash-attn 2 on Hopper: --attn sdpa's own throughput, and only where SDPA exists and is
    faster (not on an A100; not for Gemma 2, which has no SDPA path); a padded SDPA batch: the
    packed and flash-attn 2 throughputs."""
    kw = dict(model="llama3-8b", batch_size=2, seq_len=8192, grad_checkpointing=True)
    flash = _timed(gpu="h100-80gb", attn="flash", **kw)
    sdpa = _timed(gpu="h100-80gb", attn="sdpa", **kw)
    assert sdpa.tokens_per_s > flash.tokens_per_s
    assert any(f"would run {sdpa.tokens_per_s:,.0f} tokens/s" in n for n in flash.notes)
    assert not any("Ampere kernels" in n for n in _timed(gpu="a100-80gb", attn="flash", **kw).notes)
    gemma = _timed(gpu="h100-80gb", attn="flash", **{**kw, "model": "gemma2-9b", "batch_size": 1})
    assert not any("Ampere kernels" in n for n in gemma.notes)
    padded = _timed(gpu="h100-80gb", attn="sdpa", padded=True, **kw)
    assert any(f"packed (no mask) {sdpa.tokens_per_s:,.0f}" in n
               and f"--attn flash (which unpads) {flash.tokens_per_s:,.0f}" in n
               for n in padded.notes)
    # a config window past its length: every layer of phi3-mini masked under SDPA
    phi = dict(model="phi3-mini", gpu="a100-80gb", batch_size=1, seq_len=4096,
               grad_checkpointing=True)
    window = _timed(attn="flash", **phi)
    assert any("sliding window (2,047)" in n and "32 of 32 layers" in n
               and f"takes the window) {window.tokens_per_s:,.0f}" in n
               for n in _timed(attn="sdpa", **phi).notes)
    assert not any("sliding window" in n
                   for n in _timed(attn="sdpa", **{**phi, "seq_len": 2046}).notes)
    # Gemma 2 has no SDPA path (it runs eager): no SDPA mask to speak of
    assert not any("sliding window" in n for n in _timed(
        attn="sdpa", **{**phi, "model": "gemma2-9b", "seq_len": 8192}).notes)


def _eager_score_bytes(model_type: str, **config) -> float:
    """Bytes transformers' eager attention moves a score element (b x heads x s x s), forward,
    on the CPU at bf16: every op that reads or writes a score-sized tensor (the (b, 1, s, s) mask
    counted at the scores' size: the broadcast add reads it for every head)."""
    import torch
    import transformers
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    heads, seq = 4, 64
    scores = heads * seq * seq

    class Bytes(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
            square = [t for t in tensors if tuple(t.shape[-2:]) == (seq, seq)]
            if func.overloadpacket.__name__ not in _NO_KERNEL and any(
                    t.numel() == scores for t in square):
                self.total += sum(scores * t.element_size() for t in square)
            return out

    cfg = transformers.AutoConfig.for_model(
        model_type, vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
        num_attention_heads=heads, num_key_value_heads=heads, **config)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager",
                                                          dtype=torch.bfloat16)
    model.train()
    with Bytes() as count:
        model(input_ids=torch.zeros(1, seq, dtype=torch.long))
    return count.total / scores


# The CPU runs softmax(bf16, dtype=float32) as a cast (r2 w4) and an fp32 softmax (r4 w4); CUDA's
# softmax reads the 16-bit scores and writes fp32 in one kernel (aten ``_softmax`` with
# ``half_to_float``): 8 bytes a score fewer.
_CPU_SOFTMAX_EXTRA = 8


@pytest.mark.parametrize("model_type, config, softcap", [
    ("llama", {}, False),
    ("gemma2", dict(attn_logit_softcapping=50.0, final_logit_softcapping=None, head_dim=32,
                    query_pre_attn_scalar=32, sliding_window=4096), True)])
def test_eager_score_bytes_follow_transformers(model_type, config, softcap):
    """The bytes lorasize counts a score element of eager attention (written, scaled, soft-capped
    where the model does, masked, softmax in fp32 and back, read by PV) equal those of the ops
    transformers 5's ``eager_attention_forward`` (Llama) and Gemma 2's dispatch."""
    from lorasize.perf.work import EAGER_SCALE_WIDTHS, EAGER_SCORE_BYTES, SOFTCAP_WIDTHS

    modelled = EAGER_SCORE_BYTES + 2 * (EAGER_SCALE_WIDTHS + (SOFTCAP_WIDTHS if softcap else 0))
    assert _eager_score_bytes(model_type, **config) - _CPU_SOFTMAX_EXTRA == modelled


def test_soft_capped_eager_attention_costs_its_score_passes():
    """Gemma 2's eager attention: its three soft-capping passes over the scores are time."""
    gemma = resolve_model("gemma2-9b")
    train = TrainSpec(batch_size=1, seq_len=4096, attn="eager", grad_checkpointing=True)
    capped = step_work(gemma, (), train).elementwise_bytes
    uncapped = step_work(replace(gemma, model_type="gemma"), (), train).elementwise_bytes
    assert capped > uncapped
