"""AdaLoRA, LoHa and LoKr: the estimate against the trace tier (the real PEFT layers under fake
tensors, every live byte counted) on Llama-2-7B's real widths with 2 decoder layers.

What each method adds and where it was measured (``python tests/test_variant_trace.py`` prints
the table):
- LoHa / LoKr build the whole delta weight each forward and ``F.linear`` keeps it for backward
  (a weight-sized fp32 tensor per adapted matrix and layer); one branch's backward holds 5 (LoHa)
  or 3 (LoKr) weight-sized tensors at once.
- AdaLoRA divides its output by the trainable ``ranknum`` (an out-wide saved numerator per
  token) and keeps three importance tensors per ``lora_*`` parameter (``update_and_allocate``).
- IA3 scales a module's output (the multiply keeps the 16-bit output) or, on the MLP's output
  projection, its input (an fp32 copy of it).

Totals must agree within 3%; the weights, adapter and optimizer state at the peak, and every
gradient before the optimizer step, within 0.5% (tests/trace_grid.py).
"""

from __future__ import annotations

import pytest

from lorasize import LoraSpec, TrainSpec
from trace_grid import compare, shrunk, traced_cells

CELLS = [
    ("loha", ("qv",), False),
    ("loha", ("all",), True),
    ("lokr", ("qv",), False),
    ("lokr", ("all",), False),
    ("adalora", ("all",), False),
    ("adalora", ("qv",), True),
    ("ia3", ("all",), False),
]


def _configs():
    spec = shrunk("llama2-7b")
    return [(spec, LoraSpec(r=8, targets=targets, variant=variant),
             TrainSpec(seq_len=256, grad_checkpointing=checkpointing))
            for variant, targets, checkpointing in CELLS]


@pytest.fixture(scope="module")
def traced():
    configs = _configs()
    return traced_cells(configs)


def test_estimate_agrees_with_trace(traced):
    for (spec, lora, train), result in traced:
        rows = compare(spec, lora, train, result)
        assert abs(rows["total"][2]) <= 0.03, (lora.variant, lora.targets, rows["total"])
        for component in ("weights", "trainable", "optimizer", "gradients"):
            assert abs(rows[component][2]) <= 0.005, (lora.variant, component, rows[component])


def test_delta_weights_are_most_of_the_saved_bytes(traced):
    """LoKr with every linear adapted, no checkpointing: the saved delta weights (one fp32 copy of
    each adapted matrix of the second layer; the first layer's attention inputs need no
    gradient) dominate what the trace sees in the activations, as the estimate says."""
    (spec, lora, train), result = next(item for item in traced if item[0][1].variant == "lokr"
                                       and item[0][1].targets == ("all",))
    from lorasize.arch.lora import resolve_targets

    deltas = sum(4 * t.linear.weight_numel for t in resolve_targets(spec, lora))
    assert result["breakdown"]["activations"] > deltas


if __name__ == "__main__":
    for (spec, lora, train), result in traced_cells(_configs()):
        rows = compare(spec, lora, train, result)
        print(f"{lora.variant:8} {'+'.join(lora.targets):4} {'gc' if train.checkpointing else 'nogc':4} "
              + "  ".join(f"{k} {100 * v[2]:+.2f}%" for k, v in rows.items()))


@pytest.mark.parametrize("variant", ["adalora", "loha", "lokr", "ia3"])
@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"]])
def test_one_layer_saved_bytes_on_real_tensors(variant, targets):
    """Without fake tensors: a tiny bf16 Llama with 3 and with 2 layers runs a real forward under
    ``saved_tensors_hooks`` (tests/test_activations_real.py); the difference is one layer's saved
    bytes, per token plus the delta weights (AdaLoRA's ``A * E``) it keeps whatever the tokens."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from conftest import quiet
    from lorasize.memory import activations as act
    from lorasize.arch.lora import input_grad_saved_bytes, resolve_targets
    from lorasize.arch.model import ModelSpec
    from test_activations_real import BATCH, FAMILIES, PER_LAYER_SLACK, SEQ, _forward_saved_bytes
    from test_variants_peft import peft_config

    def saved(layers: int) -> int:
        config = dict(FAMILIES["llama"], num_hidden_layers=layers)
        model_type = config.pop("model_type")
        torch.manual_seed(0)
        with quiet():
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config),
                                                     attn_implementation="sdpa").to(torch.bfloat16)
            model = get_peft_model(model, peft_config(variant, 4, targets, ["down_proj"]
                                                      if "down_proj" in targets else []))
        return _forward_saved_bytes(model, config["vocab_size"], buffers=True)

    spec = ModelSpec.from_hf_config(dict(FAMILIES["llama"], num_hidden_layers=3), name="llama")
    resolved = resolve_targets(spec, LoraSpec(r=4, targets=tuple(targets), variant=variant))
    dtypes = act.Dtypes(compute=2, residual=2, norm_out=2, adapter=4)
    per_token = act.layer_bytes_per_token(spec, resolved, dtypes, seq_len=SEQ, attn="sdpa",
                                          full=False, dropout=False).total
    predicted = per_token * BATCH * SEQ + input_grad_saved_bytes(spec, resolved, 4).per_layer
    measured = saved(3) - saved(2)
    assert abs(predicted - measured) <= PER_LAYER_SLACK * BATCH * SEQ, (predicted, measured)
