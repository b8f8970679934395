"""torch.compile's memory (``--kernels compile``): the compiled-layer probe against torch's own
Inductor, and the estimate built on it (lorasize/trace/compiled.py)."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from lorasize.arch.lora import LoraSpec  # noqa: E402
from lorasize.arch.resolve import resolve_model  # noqa: E402
from lorasize.estimate import estimate  # noqa: E402
from lorasize.specs import TrainSpec  # noqa: E402


def _small_layer(targets=()):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=688, num_attention_heads=8,
                         num_key_value_heads=2, head_dim=32, num_hidden_layers=2, vocab_size=1000)
    config._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(config, 1).to(torch.bfloat16)
    if targets:
        from peft import LoraConfig, inject_adapter_in_model

        layer = inject_adapter_in_model(LoraConfig(r=8, target_modules=list(targets)), layer)
        for name, param in layer.named_parameters():
            param.requires_grad_("lora_" in name)
    hidden = torch.randn(2, 64, 256, dtype=torch.bfloat16)
    cos, sin = LlamaRotaryEmbedding(config)(hidden, torch.arange(64)[None].expand(2, 64))
    return layer, hidden, (cos.to(torch.bfloat16), sin.to(torch.bfloat16))


def _saved_by_autograd(module, hidden, rope) -> int:
    """Bytes the step really saves for backward, each storage once: every tensor autograd packs
    (a compiled function saves through ``ctx.save_for_backward`` too), less the parameters and
    the rotary tables."""
    skip = {p.untyped_storage().data_ptr() for p in module.parameters()}
    skip |= {t.untyped_storage().data_ptr() for t in rope}
    seen: dict[int, int] = {}

    def pack(tensor):
        key = tensor.untyped_storage().data_ptr()
        if key not in skip:
            seen[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = module(hidden, position_embeddings=rope, attention_mask=None)
    (out[0] if isinstance(out, tuple) else out).float().sum().backward()
    return sum(seen.values())


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                    reason="Inductor's CPU code generation needs a C++ compiler")
@pytest.mark.parametrize("targets", [(), ("q_proj", "v_proj", "down_proj")])
def test_the_probe_backend_saves_what_inductor_saves(targets):
    """The probe's backend (AOTAutograd with Inductor's partitioner and decompositions, no code
    generation) saves exactly what ``torch.compile``'s default Inductor backend saves, run for
    real on the CPU; and less than the eager layer (else compile would change nothing)."""
    from lorasize.trace.compiled import _backward, _Partition, _storage_key

    layer, hidden, rope = _small_layer(targets)
    eager = _saved_by_autograd(layer, hidden.clone().requires_grad_(True), rope)
    torch._dynamo.reset()
    inductor = _saved_by_autograd(torch.compile(layer), hidden.clone().requires_grad_(True), rope)
    torch._dynamo.reset()
    partition = _Partition()
    x = hidden.clone().requires_grad_(True)
    _backward(torch.compile(layer, backend=partition, dynamic=False)(
        x, position_embeddings=rope, attention_mask=None))
    probed = partition.saved(lambda t: _storage_key(t) == _storage_key(x))
    assert probed == inductor
    assert inductor < eager


@pytest.fixture(scope="module")
def compiled_and_eager():
    model = resolve_model("llama3.2-1b")
    lora = LoraSpec(r=16, targets=("qv",))
    step = dict(batch_size=1, seq_len=512, grad_checkpointing=False, stack="torchtune")
    return (model, lora,
            estimate(model, lora, TrainSpec(kernels="compile", **step)),
            estimate(model, lora, TrainSpec(**step)))


def test_compiled_estimate_keeps_less_and_says_why(compiled_and_eager):
    """Under compile each layer keeps the partitioner's choice, which for LoRA on q and v is
    less than the eager ops' saved tensors (with every linear adapted it is about the same:
    each adapter's input and rank-wide output must be kept either way); the loss keeps the 16-bit logits and recomputes the log-softmax (2 bytes
    a logit instead of 4); weights, adapters and optimizer state do not change."""
    model, _, compiled, eager = compiled_and_eager
    assert compiled.breakdown["activations"] < eager.breakdown["activations"]
    assert compiled.breakdown["logits"] < eager.breakdown["logits"]
    for key in ("weights", "adapter", "optimizer"):
        assert compiled.breakdown[key] == eager.breakdown[key]
    assert any("Inductor's partitioner" in note for note in compiled.notes)


def test_compiled_loss_saves_the_16_bit_logits():
    """The compiled cross-entropy saves its bf16 input (2 bytes a logit) and a few bytes a token
    of statistics, where eager saves the fp32 log-softmax (4 bytes a logit); its gradient is the
    bf16 logits' (2 bytes a logit), made one torchtune chunk at a time."""
    from lorasize.trace import compiled_probe

    model = resolve_model("llama3.2-1b")
    measured = compiled_probe(model, LoraSpec(r=8, targets=("qv",)),
                              TrainSpec(batch_size=1, seq_len=512, stack="torchtune"))
    vocab = model.vocab_size
    assert 2 * vocab <= measured["loss_saved_per_token"] < 2 * vocab + 64
    assert measured["loss_gradient_per_token"] == 2 * vocab
    assert measured["loss_chunk_tokens"] == 512 // 8


def test_compiled_probe_runs_once_across_a_search(compiled_and_eager):
    """The probe's figures scale with the tokens: a second length reuses them, and the layer
    term grows in proportion."""
    model, lora, compiled, _ = compiled_and_eager
    longer = estimate(model, lora, TrainSpec(kernels="compile", batch_size=1, seq_len=1024,
                                             grad_checkpointing=False, stack="torchtune"))
    assert any("scaled with the tokens" in note for note in longer.notes)
    ratio = longer.breakdown["activations"] / compiled.breakdown["activations"]
    assert 1.9 < ratio < 2.1


def test_kernels_compile_on_the_command_line(cli, compiled_and_eager):
    """The flag reaches the same estimate (the fixture's setting: its probe is reused)."""
    compiled = compiled_and_eager[2]
    code, out, err = cli("estimate", "--model", "llama3.2-1b", "--kernels", "compile",
                         "--stack", "torchtune", "--r", "16", "--targets", "qv",
                         "--batch-size", "1", "--seq-len", "512", "--no-grad-checkpointing",
                         "--json")
    assert code == 0, err
    data = json.loads(out)
    assert any("Inductor's partitioner" in note for note in data["notes"])
    assert data["train_breakdown"]["activations"] == compiled.breakdown["activations"]


def test_the_probe_functions_survive_their_modules_import():
    """Importing the probes' modules in-process (the tests do) must not shadow the package's
    functions: ``lorasize.trace.probe`` is the function the estimate calls, so no submodule may
    bear its name."""
    import lorasize.trace.compiled  # noqa: F401
    import lorasize.trace.layer_probe  # noqa: F401
    from lorasize.trace import compiled_probe, probe

    assert callable(probe) and callable(compiled_probe)
