"""Sliding-window layers and models without an SDPA path, held to transformers' own code and the
trace: a sliding layer at a sequence as long as its window gets an explicit mask, so SDPA runs
the memory-efficient kernel over the whole square and keeps a float copy of the mask for its
backward; gpt-oss has no SDPA path at all and runs eager attention."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lorasize import LoraSpec, TrainSpec, estimate, resolve_model
from lorasize.memory.activations import kind_views, sdpa_mask, sliding_window
from lorasize.perf.work import attended_pairs, attention_kernel

from trace_grid import peaks

WINDOW = 8


def _sdpa_calls(seq_len: int, monkeypatch) -> list[tuple[bool, bool]]:
    """(mask passed, k and v repeated) per layer of a two-layer Gemma 3 (sliding, then full
    attention) built by transformers on the meta device."""
    import torch
    import torch.nn.functional as F
    import transformers

    config = transformers.AutoConfig.for_model(
        "gemma3_text", vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention"])
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    seen, real = [], F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kwargs):
        seen.append((attn_mask is not None, key.size(-3) == query.size(-3)))
        return real(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model(input_ids=torch.zeros(1, seq_len, dtype=torch.long, device="meta"))
    return seen


@pytest.mark.parametrize("seq_len", [WINDOW - 1, WINDOW, WINDOW + 1, 4 * WINDOW])
def test_transformers_masks_a_sliding_layer_where_the_rule_says(seq_len, monkeypatch):
    (sliding, sliding_repeated), (full, _) = _sdpa_calls(seq_len, monkeypatch)
    spec = resolve_model("gemma3-270m-it")
    views = [v.spec for v in kind_views(spec, ())]
    window = next(sliding_window(v) for v in views if sliding_window(v))
    # the catalog's rule at the same distance from its own window
    assert sliding == sdpa_mask(views[0], window + seq_len - WINDOW) == (seq_len >= WINDOW)
    assert sliding_repeated == sliding  # a mask: transformers repeats grouped k and v itself
    assert not full and not any(sdpa_mask(v, 10 ** 6) for v in views if not sliding_window(v))
    assert not sdpa_mask(views[0], 10 ** 6, attn="flash")  # flash-attn 2 takes the window


@pytest.mark.parametrize("model_type,extra", [
    ("phi3", {"pad_token_id": 0}), ("starcoder2", {}), ("mistral", {}),
    ("qwen3_moe", {"use_sliding_window": True}), ("qwen3_moe", {"use_sliding_window": False})])
def test_a_config_window_masks_every_layer_where_the_rule_says(model_type, extra, monkeypatch):
    """Families that slide every layer when their config sets ``sliding_window``, built by
    transformers on the meta device: SDPA gets a mask at the window's length, not below it
    (Qwen3-MoE only with ``use_sliding_window``); the rule reads the same config."""
    import torch
    import torch.nn.functional as F
    import transformers

    from lorasize import ModelSpec

    config = dict(model_type=model_type, vocab_size=64, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                  sliding_window=WINDOW, **extra)
    if model_type == "qwen3_moe":
        # dense layers only: the mask is the model's, the experts do not matter here
        config.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      mlp_only_layers=[0, 1])
    built = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(built, attn_implementation="sdpa")
    seen, real = [], F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kwargs):
        seen.append(attn_mask is not None)
        return real(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    spec = ModelSpec.from_hf_config(config, name=f"tiny-{model_type}")
    for seq_len in (WINDOW - 1, WINDOW):
        seen.clear()
        model(input_ids=torch.zeros(1, seq_len, dtype=torch.long, device="meta"))
        assert set(seen) == {sdpa_mask(spec, seq_len)}
    assert sdpa_mask(spec, WINDOW) == extra.get("use_sliding_window", True)


def test_trace_agrees_on_sdpa_masks_and_on_gpt_oss_eager_attention():
    """gemma3-270m-it at 2,048 tokens (window 512: 15 masked layers, each keeping a 2 x s x s
    float mask) and gpt-oss-20b at 1,024 (eager, softmax in bf16, its clamped SwiGLU experts):
    1.3% and 9.4% under the trace before these were modelled."""
    lora = LoraSpec(r=16, targets=("all",))
    cases = [(resolve_model("gemma3-270m-it"), lora, TrainSpec(seq_len=2048, autocast=False)),
             (resolve_model("gpt-oss-20b"), lora, TrainSpec(seq_len=1024, autocast=False))]
    traced, estimated = peaks(cases)
    for case, peak, estimated_peak in zip(cases, traced, estimated):
        assert estimated_peak == pytest.approx(peak, rel=0.005), case[0].name


def test_gpt_oss_runs_eager_attention_and_says_so():
    spec = resolve_model("gpt-oss-20b")
    train = TrainSpec(seq_len=1024)
    assert attention_kernel(spec, train) == "eager"
    assert attention_kernel(spec, TrainSpec(seq_len=1024, attn="flash")) == "flash"
    notes = estimate(spec, LoraSpec(r=16, targets=("all",)), train).notes
    assert any("no SDPA path" in n and "--attn flash" in n for n in notes)


def test_sliding_layers_cost_the_attention_their_kernel_computes():
    from lorasize.arch.catalog import gpu_from_catalog
    from lorasize.arch.lora import resolve_targets
    from lorasize.perf.timing import training_time

    assert attended_pairs(8, None) == 32 and attended_pairs(8, 8) == 32
    assert attended_pairs(8, 2) == 3 + 6 * 2 and attended_pairs(8, 2, causal=False) == 64
    spec = resolve_model("gemma3-270m-it")
    targets = resolve_targets(spec, LoraSpec(r=16, targets=("all",)))
    # an Ampere card, where flash-attn 2 and SDPA's kernels are native code alike
    gpu = gpu_from_catalog("a100-80gb")

    def attention(attn: str, seq_len: int) -> float:
        train = TrainSpec(seq_len=seq_len, attn=attn, grad_checkpointing=True)
        return training_time(spec, targets, train, gpu).breakdown["attention"]

    # below the window both run the causal half; at 8,192 SDPA computes the whole square of
    # 15 of 18 layers, flash-attn 2 512 keys a query there
    assert attention("sdpa", 256) == pytest.approx(attention("flash", 256))
    assert attention("sdpa", 8192) > 5 * attention("flash", 8192)
    llama = resolve_model("llama3-8b")
    llama_targets = resolve_targets(llama, LoraSpec(r=16, targets=("all",)))
    sdpa, flash = (training_time(llama, llama_targets, TrainSpec(seq_len=8192, attn=a), gpu)
                   for a in ("sdpa", "flash"))
    assert sdpa.breakdown["attention"] == flash.breakdown["attention"]


def test_gemma4_moe_layer_runs_its_dense_mlp_and_router_norm_beside_the_experts():
    """Gemma 4's MoE layers run the layer's own gated MLP beside the experts (``mlp`` and
    ``experts`` in ``Gemma4TextDecoderLayer.forward``) and a router that normalises its input in
    fp32 (``Gemma4TextRouter.norm``): both are in what a layer keeps."""
    from lorasize.memory.activations import Dtypes, layer_bytes_per_token

    spec = resolve_model("gemma4-26b-a4b")
    kind = kind_views(spec, ())[0].spec
    traits = kind.kind.traits
    assert traits["shared_intermediate"] == 2112 and traits["router_norm"]
    dt = Dtypes(compute=2, residual=2, norm_out=2, adapter=4)
    kept = layer_bytes_per_token(kind, (), dt, seq_len=512, attn="sdpa", full=False,
                                 dropout=False).mlp
    without = replace(kind, kind=replace(kind.kind, traits={**traits, "shared_intermediate": 0,
                                                             "router_norm": False}))
    bare = layer_bytes_per_token(without, (), dt, seq_len=512, attn="sdpa", full=False,
                                 dropout=False).mlp
    assert kept - bare == 3 * 2 * 2112 + 4 * kind.hidden_size  # gate, up, gelu(gate); fp32 copy


MID_LLAMA = dict(model_type="llama", vocab_size=1024, hidden_size=1024, intermediate_size=2816,
                 num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                 architectures=["LlamaForCausalLM"])


def test_padded_batches_keep_a_mask_per_layer_as_the_trace_does():
    """A batch whose attention mask has padding in it: every layer's SDPA gets a mask (the trace
    passes one; transformers 5 builds a boolean 4-D mask, SDPA a float copy per layer that the
    memory-efficient kernel keeps, with k and v repeated)."""
    from lorasize import ModelSpec

    spec = ModelSpec.from_hf_config(MID_LLAMA, name="mid-llama")
    # a large vocabulary puts the peak at the loss's backward, where the boolean mask the
    # forward built is still alive (the checkpointed layers hold it)
    wide = ModelSpec.from_hf_config({**MID_LLAMA, "vocab_size": 65536, "num_hidden_layers": 4},
                                    name="wide-vocab-llama")
    lora = LoraSpec(r=16, targets=("all",))
    cases = [(model, lora, TrainSpec(seq_len=seq, batch_size=2, autocast=False,
                                     grad_checkpointing=True, padded=padded))
             for model, seq in ((spec, 2048), (wide, 4096)) for padded in (False, True)]
    traced, estimated = peaks(cases)
    for i in (1, 3):
        assert estimated[i] == pytest.approx(traced[i], rel=0.005)
        assert estimated[i] - estimated[i - 1] == pytest.approx(traced[i] - traced[i - 1],
                                                                rel=0.25)


def test_padded_batches_cost_the_whole_square_and_say_so(cli):
    import json

    from lorasize.arch.catalog import gpu_from_catalog
    from lorasize.arch.lora import resolve_targets
    from lorasize.perf.timing import training_time

    spec = resolve_model("llama3-8b")
    targets = resolve_targets(spec, LoraSpec(r=16, targets=("all",)))
    gpu = gpu_from_catalog("a100-80gb")

    def attention(**kw) -> float:
        return training_time(spec, targets, TrainSpec(seq_len=4096, **kw), gpu).breakdown[
            "attention"]

    from lorasize.perf.work import EFFICIENT_SLOWDOWN

    # the whole square, on the memory-efficient kernel
    assert attention(padded=True) == pytest.approx(2 * EFFICIENT_SLOWDOWN * attention(), rel=1e-9)
    assert attention(padded=True, attn="flash") == attention(attn="flash")
    args = ("estimate", "-m", "llama3-8b", "-s", "4096", "-b", "2", "--json")
    code, out, _ = cli(*args, "--padded")
    data = json.loads(out)
    assert code == 0 and data["padded"] and any("padded batches" in n for n in data["notes"])
    code, _, err = cli(*args, "--padded", "--stack", "torchtune")
    assert code == 2 and "--padded" in err and len(err.strip().splitlines()) == 1


def test_trace_and_profile_feed_a_padded_batch_its_mask():
    import torch

    from lorasize.trace.run import step_inputs

    ids = torch.zeros(2, 8, dtype=torch.long)
    assert set(step_inputs(ids, TrainSpec(seq_len=8))) == {"input_ids", "labels"}
    mask = step_inputs(ids, TrainSpec(seq_len=8, padded=True))["attention_mask"]
    assert mask.shape == ids.shape and mask[:, :4].all() and not mask[:, 4:].any()


def test_a_mistral_config_with_a_window_slides_every_layer():
    """Mistral (and Mixtral) slide every layer when the config sets ``sliding_window``
    (Mistral-7B-v0.1: 4,096): the same mask, kept per layer, as a card's sliding layers."""
    from lorasize import ModelSpec

    specs = [ModelSpec.from_hf_config({**MID_LLAMA, "model_type": "mistral",
                                       "architectures": ["MistralForCausalLM"],
                                       "sliding_window": window}, name="mid-mistral")
             for window in (None, 256)]
    assert [sliding_window(s) for s in specs] == [None, 256]
    lora = LoraSpec(r=16, targets=("all",))
    train = TrainSpec(seq_len=1024, batch_size=2, autocast=False)
    traced, estimated = peaks([(s, lora, train) for s in specs])
    assert estimated[1] == pytest.approx(traced[1], rel=0.01)
    assert estimated[1] - estimated[0] == pytest.approx(traced[1] - traced[0], rel=0.25)


def test_estimate_json_names_the_kernel_each_kind_of_layer_runs(cli):
    import json

    code, out, err = cli("estimate", "-m", "gemma3-270m-it", "-s", "4096", "--gpu", "a100-80gb",
                         "--json")
    assert code == 0, err
    assert json.loads(out)["time"]["attention"] == [
        {"layers": 15, "kernel": "efficient", "masked": True},
        {"layers": 3, "kernel": "flash", "masked": False}]
    code, out, _ = cli("estimate", "-m", "gemma2-9b", "-s", "4096", "--gpu", "a100-80gb",
                       "--json")
    assert json.loads(out)["time"]["attention"] == [
        {"layers": 42, "kernel": "eager", "masked": False}]  # no SDPA path: --attn sdpa runs eager
