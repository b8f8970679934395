"""LoRA+, AdaLoRA, LoHa and LoKr against PEFT's own code.

- trainable parameters: PEFT's ``get_nb_trainable_parameters()`` on meta-device models of one
  catalog entry per architecture family (2 decoder layers, real widths), as in
  tests/test_layout_meta.py;
- adapter file bytes: ``save_pretrained`` on tiny real models;
- optimizer state: the real optimizer (PEFT's LoRA+ optimizer, torch AdamW) after one step on a
  tiny real model, against the estimate's optimizer bytes.
"""

from __future__ import annotations

import pytest

from conftest import build_meta_model, quiet
from lorasize import LoraSpec, TrainSpec, adapter_file_bytes
from lorasize.memory.allocator import block
from lorasize.arch.catalog import model_entries
from lorasize.errors import LorasizeError
from lorasize.arch.lora import factorization, lokr_tensors, resolve_targets, trainable_params
from lorasize.arch.model import ModelSpec
from lorasize.memory.weights import static_bytes

ENTRIES = {e["name"]: e for e in model_entries()}
# One catalog entry per transformers model_type in the catalog.
FAMILIES = ["llama2-7b", "mistral-7b", "mixtral-8x7b", "qwen2.5-0.5b", "qwen3-8b", "gemma-2b",
            "gemma2-2b", "phi-2", "phi3-mini", "pythia-160m", "falcon-7b", "stablelm-3b", "gpt2"]
SHRUNK_LAYERS = 2
METHODS = ("adalora", "loha", "lokr", "ia3")


def _spec(name: str) -> ModelSpec:
    entry = ENTRIES[name]
    spec = ModelSpec.from_hf_config(entry["config"], name=name, source=entry["url"])
    return spec.with_layers(SHRUNK_LAYERS)


def peft_config(variant: str, r: int, modules, feedforward=(), **extra):
    """The PEFT config lorasize's ``--variant`` stands for (the trace tier builds the same);
    IA3 needs the feed-forward module names (``Target.is_feedforward``)."""
    from lorasize.trace.build import variant_config

    if variant == "ia3":
        extra["feedforward_modules"] = list(feedforward)
    return variant_config(variant, r, 2 * r, modules, **extra)


def _feedforward(spec: ModelSpec, lora: LoraSpec) -> list[str]:
    return [t.linear.path for t in resolve_targets(spec, lora) if t.is_feedforward]


def _modules(spec: ModelSpec, lora: LoraSpec):
    if lora.targets == ("all",):
        return "all-linear"
    return [t.linear.path for t in resolve_targets(spec, lora)]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("variant", METHODS)
@pytest.mark.parametrize("targets", [("qv",), ("all",)])
def test_counts_match_peft(name, variant, targets):
    import torch
    from peft import get_peft_model

    spec = _spec(name)
    lora = LoraSpec(r=8, targets=targets, variant=variant)
    if name == "gpt2" and variant in ("loha", "lokr"):
        with pytest.raises(LorasizeError, match="Conv1D"):
            resolve_targets(spec, lora)
        with pytest.raises(TypeError, match="Conv1D"), quiet(), torch.device("meta"):
            get_peft_model(build_meta_model(ENTRIES[name]["config"], SHRUNK_LAYERS),
                           peft_config(variant, 8, _modules(spec, LoraSpec(r=8, targets=targets))))
        return
    with quiet(), torch.device("meta"):
        model = get_peft_model(build_meta_model(ENTRIES[name]["config"], SHRUNK_LAYERS),
                               peft_config(variant, 8, _modules(spec, lora), _feedforward(spec, lora)))
    trainable, _ = model.get_nb_trainable_parameters()
    resolved = resolve_targets(spec, lora)
    if variant == "adalora":
        # On the meta device PEFT never moves ``ranknum``, so it stays frozen there; on a real
        # device it trains (test_adalora_ranknum_trains_on_a_real_base).
        trainable += sum(t.copies for t in resolved)
    assert trainable_params(resolved) == trainable


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_adalora_ranknum_trains_on_a_real_base(dtype):
    """A real (CPU) bf16 base: PEFT's move to the base layer's dtype re-wraps ``ranknum`` as a
    trainable Parameter; an fp32 CPU base needs no move and keeps it frozen. On a GPU the move
    from the CPU always happens, as on the bf16 base here."""
    import torch
    from peft import get_peft_model

    spec = ModelSpec.from_hf_config(TINY["llama"], name="llama")
    resolved = resolve_targets(spec, LoraSpec(r=4, targets=("all",), variant="adalora"))
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    with quiet():
        model = get_peft_model(_tiny_model("llama", torch_dtype), peft_config("adalora", 4, "all-linear"))
    trainable, _ = model.get_nb_trainable_parameters()
    frozen_ranknum = sum(t.copies for t in resolved) if dtype == "fp32" else 0
    assert trainable_params(resolved) == trainable + frozen_ranknum


@pytest.mark.parametrize("factor,both,r", [(-1, False, 8), (-1, True, 2), (4, False, 64),
                                           (8, True, 1), (16, False, 4)])
def test_lokr_factor_options_match_peft(factor, both, r):
    """decompose_factor / decompose_both on Llama's shapes (4096, 11008, 1024 wide)."""
    import torch
    from peft import get_peft_model

    with quiet(), torch.device("meta"):
        model = get_peft_model(build_meta_model(ENTRIES["llama3-8b"]["config"], 1),
                               peft_config("lokr", r, ["k_proj", "o_proj", "down_proj"],
                                           decompose_factor=factor, decompose_both=both))
    trainable, _ = model.get_nb_trainable_parameters()
    shapes = [(1024, 4096), (4096, 4096), (4096, 14336)]  # (out, in) of k, o, down
    ours = sum(a * b for out_f, in_f in shapes
               for _, (a, b) in lokr_tensors(in_f, out_f, r, factor, both))
    assert ours == trainable


def test_factorization_examples_from_peft_docstring():
    assert [factorization(256), factorization(128), factorization(127), factorization(128, 4)] == [
        (16, 16), (8, 16), (1, 127), (4, 32)]


def test_loraplus_trains_what_lora_trains():
    spec = _spec("llama2-7b")
    lora = resolve_targets(spec, LoraSpec(r=8, targets=("all",)))
    plus = resolve_targets(spec, LoraSpec(r=8, targets=("all",), variant="loraplus"))
    assert trainable_params(plus) == trainable_params(lora)


@pytest.mark.parametrize("kwargs,flag", [
    (dict(variant="loha", dora=True), "--dora"),
    (dict(variant="adalora", dora=True), "--dora"),
    (dict(variant="lokr", dropout=0.1), "--lora-dropout"),
])
def test_bad_combinations_name_the_flag(kwargs, flag):
    with pytest.raises(LorasizeError) as info:
        LoraSpec(**kwargs)
    assert info.value.source == flag


def test_experts_named_for_loha_is_an_error():
    spec = _spec("mixtral-8x7b")
    expert = next(t.linear.name for t in resolve_targets(spec, LoraSpec(targets=("all",)))
                  if t.linear.experts)
    with pytest.raises(LorasizeError) as info:
        resolve_targets(spec, LoraSpec(targets=(expert,), variant="loha"))
    assert info.value.source == "--targets"


TINY = {
    "llama": dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=160,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "gpt_neox": dict(model_type="gpt_neox", vocab_size=512, hidden_size=64, intermediate_size=256,
                     num_hidden_layers=2, num_attention_heads=4),
    "phi3": dict(model_type="phi3", vocab_size=512, hidden_size=64, intermediate_size=160,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 pad_token_id=0, bos_token_id=1, eos_token_id=2),
}


def _tiny_model(family: str, dtype):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(TINY[family])
    torch.manual_seed(0)
    with quiet():
        hf = AutoConfig.for_model(config.pop("model_type"), **config)
        return AutoModelForCausalLM.from_config(hf).to(dtype)


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("variant", METHODS)
@pytest.mark.parametrize("targets", [("all",), ("qv", "lm_head")])
def test_file_bytes_match_real_peft_file(family, variant, targets, tmp_path):
    import torch
    from peft import get_peft_model

    spec = ModelSpec.from_hf_config(TINY[family], name=family)
    lora = LoraSpec(r=4, targets=targets, variant=variant)
    resolved = resolve_targets(spec, lora)
    with quiet():
        model = get_peft_model(_tiny_model(family, torch.float32),
                               peft_config(variant, 4, _modules(spec, lora), _feedforward(spec, lora)))
        model.save_pretrained(tmp_path)
    real = (tmp_path / "adapter_model.safetensors").stat().st_size
    assert adapter_file_bytes(spec, resolved, "fp32", head_dtype="fp32") == real


def _state_bytes(optimizer) -> int:
    """Device bytes of an optimizer's state tensors, each rounded by the allocator; AdamW's
    ``step`` stays on the host on CUDA (not device memory)."""
    import torch

    seen, total = set(), 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step" and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                total += block(value.numel() * value.element_size())
    return total


def _one_step(model, optimizer, vocab_size: int) -> None:
    import torch

    ids = torch.randint(0, vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


@pytest.mark.parametrize("targets", [("qv",), ("all", "lm_head")])
def test_loraplus_optimizer_state_is_loras(targets):
    """PEFT's ``create_loraplus_optimizer`` (B at 16x the learning rate, its own parameter
    groups) keeps exactly AdamW's state for LoRA: the estimate for --variant loraplus."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.optimizers import create_loraplus_optimizer

    spec = ModelSpec.from_hf_config(TINY["llama"], name="llama")
    lora = LoraSpec(r=4, targets=targets, variant="loraplus")
    resolved = resolve_targets(spec, lora)
    with quiet():
        model = get_peft_model(_tiny_model("llama", torch.bfloat16),
                               LoraConfig(r=4, target_modules=_modules(spec, lora)))
        optimizer = create_loraplus_optimizer(model, optimizer_cls=torch.optim.AdamW, lr=1e-4,
                                              loraplus_lr_ratio=16, foreach=True)
        _one_step(model, optimizer, spec.vocab_size)
    assert len({g["lr"] for g in optimizer.param_groups if g["params"]}) == 2  # A's and B's
    real = _state_bytes(optimizer)
    assert static_bytes(spec, resolved, TrainSpec()).optimizer == real


@pytest.mark.parametrize("variant", METHODS)
def test_optimizer_state_follows_the_tensors(variant):
    """AdamW after one real step of each method on a tiny model: state bytes equal the estimate's
    (the shapes and which tensors train, AdaLoRA's frozen ranknum included)."""
    import torch
    from peft import get_peft_model

    spec = ModelSpec.from_hf_config(TINY["llama"], name="llama")
    lora = LoraSpec(r=4, targets=("all",), variant=variant)
    with quiet():
        model = get_peft_model(_tiny_model("llama", torch.bfloat16),
                               peft_config(variant, 4, "all-linear", _feedforward(spec, lora)))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      foreach=True)
        _one_step(model, optimizer, spec.vocab_size)
    real = _state_bytes(optimizer)
    if variant == "adalora":  # its training loop's update_and_allocate, after the step
        model.base_model.update_and_allocate(1)
        allocator = model.base_model.rankallocator
        real += sum(block(t.numel() * t.element_size()) for scores in (
            allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc) for t in scores.values())
    static = static_bytes(spec, resolve_targets(spec, lora), TrainSpec())
    assert static.optimizer == real
    assert static.gradients == sum(block(p.grad.numel() * p.grad.element_size())
                                   for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("variant", ["adalora", "loha", "lokr", "ia3", "rslora"])
def test_estimate_reads_a_real_adapter_folder(variant, tmp_path, cli):
    """``lorasize estimate --adapter`` on a folder written by PEFT's save_pretrained: the method
    comes from ``peft_type`` (AdaLoRA's rank from ``init_r``), and the predicted file size is the
    real file's."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model

    spec = ModelSpec.from_hf_config(TINY["llama"], name="llama")
    lora = LoraSpec(r=4, targets=("qv",), variant=variant)
    modules = _modules(spec, LoraSpec(r=4, targets=("qv",)))
    config = (LoraConfig(r=4, target_modules=modules, use_rslora=True) if variant == "rslora"
              else peft_config(variant, 4, modules, _feedforward(spec, lora)))
    with quiet():
        model = get_peft_model(_tiny_model("llama", torch.float32), config)
        model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "config.json").write_text(json.dumps(TINY["llama"]))
    code, out, err = cli("estimate", "--adapter", str(tmp_path / "adapter"), "-m",
                         str(tmp_path / "config.json"), "--json")
    assert code == 0, err
    data = json.loads(out)
    real = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    assert data["adapter_file_bytes"] == real
    trainable, _ = model.get_nb_trainable_parameters()  # a real fp32 CPU base: ranknum frozen
    ranknum = len(data["targets"]) * spec.num_layers if variant == "adalora" else 0
    assert data["trainable_params"] == trainable + ranknum
    code, out, err = cli("inspect", str(tmp_path / "adapter"), "-m", str(tmp_path / "config.json"),
                         "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["predicted"]["file_bytes"] == report["file_bytes"] == real
    assert report["predicted"]["params"] == report["params"]
