"""transformers 4's mixtures of experts: one ``nn.Linear`` per expert, quantized and looped over.

transformers 4 (v4.46-4.57 ``MixtralSparseMoeBlock``: ``experts = nn.ModuleList`` of
``MixtralBlockSparseTop2MLP`` with ``w1``/``w2``/``w3``, the router ``gate = nn.Linear``) let
bitsandbytes quantize every expert; transformers 5 fuses them into 3-D parameters it leaves in
16 bits. ``--stack-release 4.46`` (hf-peft: the transformers release) estimates the former. The
byte counts below are worked from Mixtral's config by hand; the kernel count from transformers 5's
own forward.
"""

from __future__ import annotations

import collections
import csv
import json

import pytest

from lorasize import resolve_model as load_model
from lorasize.calibrate.timing_rows import SOURCE_RELEASES, load_rows
from lorasize.estimate import estimate
from lorasize.measurements import TIMING
from lorasize.memory.stacks import as_built, builds_expert_modules
from lorasize.perf.work import MOE_FUSED_KERNELS, step_work
from lorasize.specs import TrainSpec
from lorasize.arch.lora import LoraSpec, resolve_targets

H, KV, INTER, E, LAYERS, VOCAB = 4096, 1024, 14336, 8, 32, 32000  # Mixtral-8x7B config.json


def _qlora(release: str, **kw) -> TrainSpec:
    return TrainSpec(method="qlora", quant="nf4", kbit_prep=False, stack_release=release,
                     batch_size=1, seq_len=256, **kw)


def test_transformers_4_quantizes_every_expert_and_the_router():
    model = load_model("mixtral-8x7b")
    est = estimate(model, LoraSpec(r=16, targets=("q_proj", "v_proj")), _qlora("4.46"))
    quantized = LAYERS * (2 * H * H + 2 * H * KV + E * 3 * H * INTER + H * E)
    sixteen_bit = 2 * VOCAB * H + (2 * LAYERS + 1) * H  # embeddings, head, norms
    assert est.breakdown["weights"] == quantized // 2 + 2 * sixteen_bit


def test_transformers_5_keeps_the_fused_experts_in_16_bits():
    model = load_model("mixtral-8x7b")
    est = estimate(model, LoraSpec(r=16, targets=("q_proj", "v_proj")), _qlora(""))
    quantized = LAYERS * (2 * H * H + 2 * H * KV)
    sixteen_bit = 2 * VOCAB * H + (2 * LAYERS + 1) * H + LAYERS * (E * 3 * H * INTER + H * E)
    assert est.breakdown["weights"] == quantized // 2 + 2 * sixteen_bit


def test_one_expert_matrix_is_dequantized_at_a_time():
    """bitsandbytes dequantizes one nn.Linear's weight per call: an expert's w1 (14336 x 4096),
    not the whole stacked parameter."""
    model = as_built(load_model("mixtral-8x7b"), _qlora("4.46"))
    from lorasize.memory.weights import static_bytes

    static = static_bytes(model, (), _qlora("4.46"))
    assert static.largest_quantized == H * INTER


def test_the_step_dequantizes_the_experts_in_every_pass():
    model = load_model("mixtral-8x7b")
    lora = LoraSpec(r=16, targets=("q_proj", "v_proj"))
    for release, expected in (("4.46", LAYERS * (2 * H * H + 2 * H * KV + E * 3 * H * INTER + H * E)),
                              ("", LAYERS * (2 * H * H + 2 * H * KV))):
        train = _qlora(release, grad_checkpointing=True)
        work = step_work(model, resolve_targets(as_built(model, train), lora, "hf-peft"), train)
        assert work.dequant_weights == 3 * expected  # forward, recompute, backward


def test_releases():
    assert builds_expert_modules("hf-peft", "4.57.1")
    assert not builds_expert_modules("hf-peft", "5.0")
    assert not builds_expert_modules("hf-peft", "")
    assert not builds_expert_modules("torchtune", "0.2")
    dense = load_model("llama2-7b")
    assert as_built(dense, _qlora("4.46")) is dense


def test_fused_expert_kernels_match_transformers_5s_forward():
    """The kernels a Mixtral layer launches beyond a Llama layer's, counted on transformers' own
    forward (tiny widths, every expert hit; view ops launch nothing)."""
    torch = pytest.importorskip("torch")
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import AutoConfig, AutoModelForCausalLM

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view and func.overloadpacket.__name__ not in ("empty", "_unsafe_view"):
                self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    def forward_ops(family: str, layers: int, **extra) -> int:
        config = AutoConfig.for_model(family, hidden_size=64, intermediate_size=128,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      num_hidden_layers=layers, vocab_size=128, **extra)
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
        model.requires_grad_(False)
        count = Count()
        with count, torch.no_grad():
            model(input_ids=torch.randint(0, 128, (1, 256)))
        return sum(count.ops.values())

    moe = dict(num_local_experts=8, num_experts_per_tok=2)
    per_layer = {family: forward_ops(family, 3, **kw) - forward_ops(family, 2, **kw)
                 for family, kw in (("llama", {}), ("mixtral", moe))}
    assert per_layer["mixtral"] - per_layer["llama"] == MOE_FUSED_KERNELS


def test_validate_prices_transformers_4_moe_qlora(published):
    row = published["fms-11"]
    assert not row.skipped and row.in_bar
    assert abs(row.rel_error) < 0.12


def test_timing_rows_read_the_sources_transformers_release():
    rows, _ = load_rows(TIMING)
    fms = [r for r in rows if r.source in SOURCE_RELEASES]
    assert fms and all(r.train.stack_release == "4.48.1" for r in fms)
    with open(TIMING, newline="", encoding="utf-8") as handle:
        dated = {r["id"] for r in csv.DictReader(handle) if "2024" in r["source"]}
    answer_ai = [r for r in rows if r.id in dated and r.train.stack == "hf-peft"]
    assert answer_ai and all(r.train.stack_release == "4" for r in answer_ai)


def test_trace_refuses_a_transformers_4_layout(cli):
    code, _, err = cli("trace", "-m", "mixtral-8x7b", "--method", "qlora", "-s", "64",
                       "--stack-release", "4.46")
    assert code == 2 and "--stack-release" in err and "Traceback" not in err


@pytest.mark.parametrize("args, words", [
    (("-m", "mixtral-8x7b", "--stack-release", "0.1"), "transformers release"),
    (("-m", "llama2-7b", "--stack", "torchtune", "--stack-release", "4.46"), "torchtune release"),
    (("-m", "llama2-7b", "--stack", "litgpt", "--stack-release", "1.2"), "litgpt release"),
])
def test_releases_a_stack_does_not_have_are_refused(cli, args, words):
    code, _, err = cli("estimate", *args)
    assert code == 2 and words in err and "Traceback" not in err


def test_only_families_transformers_4_built_from_linears_change():
    """gpt-oss kept 3-D experts in transformers 4 too: 4.46 changes nothing there."""
    model = load_model("gpt-oss-20b")
    lora = LoraSpec(r=8, targets=("q_proj", "v_proj"))
    assert (estimate(model, lora, _qlora("4.46")).breakdown["weights"]
            == estimate(model, lora, _qlora("")).breakdown["weights"])


def test_profile_refuses_a_transformers_4_layout(cli, tmp_path):
    code, _, err = cli("profile", "-m", "mixtral-8x7b", "-t", "q_proj", "--stack-release", "4.46",
                       "-o", str(tmp_path / "p.json"))
    assert code == 2 and "--stack-release" in err and not (tmp_path / "p.json").exists()


def test_transformers_4_adapts_each_expert_matrix_apart():
    """PEFT's all-linear on transformers 4's Mixtral: q, k, v, o, the router and every expert's
    w1, w3 and w2, each an nn.Linear with a rank-r adapter (r (in + out) parameters)."""
    model = load_model("mixtral-8x7b")
    r = 16
    per_layer = (r * (H + H) * 2 + r * (H + KV) * 2  # q, o; k, v
                 + r * (H + E)  # the router
                 + E * (2 * r * (H + INTER) + r * (INTER + H)))  # w1, w3; w2
    est = estimate(model, LoraSpec(r=r, targets=("all",)), _qlora("4.46"))
    assert est.trainable_params == LAYERS * per_layer
    assert {t.linear.name for t in est.targets} >= {"w1", "w2", "w3", "gate"}
    assert not any("W + BA" in n for n in est.notes)


def test_transformers_4_expert_names_select_their_matrices(cli):
    code, out, err = cli("estimate", "-m", "qwen3-30b-a3b", "--method", "qlora", "-r", "8", "-t",
                         "gate_proj,up_proj,down_proj", "--stack-release", "4.46", "--json")
    assert code == 0, err
    assert {"gate_proj", "up_proj", "down_proj"} <= set(json.loads(out)["targets"])
