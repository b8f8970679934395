"""torchtune 0.1 builds its model on the GPU: what that reserves, checked against torchtune's code.

Ground truth: ``tests/data/torchtune/init_events.json``, written by
``scripts/torchtune_init_events.py`` from torchtune@fef3ed10d (v0.1.x) and torchao 0.1 building
and loading each model on fake tensors. lorasize's program (:mod:`lorasize.memory.init_programs`)
must make the same events in the same order (their SHA-256) and so reserve the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lorasize import resolve_model
from lorasize.memory.init_programs import normalized, replay, torchtune_01_program

DATA = json.loads((Path(__file__).parent / "data" / "torchtune" / "init_events.json").read_text())
MODELS = {"lora_llama2_7b": "llama2-7b", "lora_mistral_7b": "mistral-7b"}


def _program(case: dict):
    args = case["args"]
    targets = set(args["lora_attn_modules"]) | ({"w1", "w2", "w3"} if args.get("apply_lora_to_mlp")
                                               else set())
    return torchtune_01_program(resolve_model(MODELS[case["builder"]]), targets, args["lora_rank"],
                                args.get("quantize_base", False),
                                args.get("apply_lora_to_output", False))


@pytest.mark.parametrize("case", DATA["cases"], ids=[c["case"] for c in DATA["cases"]])
def test_the_build_allocates_what_torchtunes_code_does(case):
    events = _program(case).events
    assert len(events) == case["events"]
    assert hashlib.sha256(json.dumps(normalized(events)).encode()).hexdigest() == case["sha256"]
    allocator = replay(events)
    assert (allocator.reserved, allocator.allocated) == (case["reserved"], case["allocated"])


def test_qlora_reserves_twice_what_it_keeps():
    """torchao 0.1's transients fragment the segments the NF4 weights land in (the published
    QLoRA figure, tt-11: 9.13 GB reserved after init for 4.2 GB of tensors)."""
    case = next(c for c in DATA["cases"] if c["case"] == "llama2-7b-qlora-all-r8")
    allocator = replay(_program(case).events)
    assert allocator.reserved > 2 * allocator.allocated
    assert abs(allocator.reserved / 9.13e9 - 1) < 0.001


TRAIN = json.loads((Path(__file__).parent / "data" / "torchtune" / "train_replay.json").read_text())


def _estimate(case: dict):
    """The estimate of a case of train_replay.json: Llama-2-7B on torchtune 0.1, batch 2 x 512,
    activation checkpointing."""
    from lorasize import LoraSpec, TrainSpec
    from lorasize.estimate import estimate

    train = TrainSpec(method=case["method"], quant="nf4" if case["method"] == "qlora" else None,
                      batch_size=2, seq_len=512, grad_checkpointing=True, stack="torchtune",
                      stack_release="0.1")
    return estimate(resolve_model("llama2-7b"),
                    LoraSpec(r=8, targets=tuple(case["targets"]), dropout=case["dropout"]), train)


@pytest.mark.parametrize("case", TRAIN["cases"], ids=[c["case"] for c in TRAIN["cases"]])
def test_training_reserved_is_what_torchtunes_training_loop_reserves(case):
    """The estimate's reserved bytes for torchtune 0.1 against torchtune's own training loop
    replayed through the same allocator model (figures to 1 MB: within 1%)."""
    est = _estimate(case)
    assert abs(est.reserved_bytes / case["reserved"] - 1) < 0.01
    assert any("torchtune 0.1 builds the model on the GPU" in n for n in est.notes)


def test_later_releases_are_not_given_0_1s_build():
    from lorasize import LoraSpec, TrainSpec
    from lorasize.estimate import estimate

    lora = LoraSpec(r=8, targets=("q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "up_proj",
                                  "down_proj"))
    for release in ("", "0.2", "0.3.1"):
        train = TrainSpec(method="qlora", quant="nf4", batch_size=2, seq_len=512,
                          grad_checkpointing=True, stack="torchtune", stack_release=release)
        est = estimate(resolve_model("llama2-7b"), lora, train)
        assert not any("builds the model on the GPU" in n for n in est.notes)
        assert est.reserved_bytes < 7e9


@pytest.mark.parametrize("case", TRAIN["cases"], ids=[c["case"] for c in TRAIN["cases"]])
def test_peak_allocated_is_what_torchtunes_training_loop_allocates(case):
    """torchtune 0.1 computes the loss on whole fp32 logits, which the recipe holds through
    backward, and torchao 0.1 dequantizes an NF4 weight through 14 bytes a weight element: the
    peak of allocated bytes within 1% of its own loop's (LoRA: the chunked loss of 0.3 and later
    would say 3% less; QLoRA: a 2-byte dequantized weight, 6% less)."""
    est = _estimate(case)
    assert abs(est.allocated_bytes / case["peak_allocated"] - 1) < 0.01


def test_torchao_0_1_dequantizes_through_14_bytes_a_weight():
    """The peak of get_original_weight's recorded events: two int64 index tensors of half the
    elements (4 + 4 bytes a weight), four 1-byte halves, the scalers, the 2-byte result."""
    from fractions import Fraction

    from lorasize.memory.init_programs import dequant_peak_per_element

    assert dequant_peak_per_element() == 4 + 4 + 1 + 1 + 1 + 1 + 2 + Fraction(1, 32)


def test_torchtune_0_1_serves_the_base_it_quantized(cli):
    """torchtune <= 0.2 quantizes the linears carrying LoRA: with every linear adapted the served
    base is the 4-bit one."""
    fits = {}
    for release in ("0.1", "0.3"):
        code, out, _ = cli("estimate", "-m", "llama2-7b", "--method", "qlora", "-t", "all",
                           "--stack", "torchtune", "--stack-release", release, "--gpu", "rtx-4090",
                           "--json")
        assert code == 0
        fits[release] = json.loads(out)["adapters_fit"]
    assert fits["0.1"] == fits["0.3"] > 200


def test_a_build_lorasize_has_no_program_for_says_so():
    from lorasize import LoraSpec, TrainSpec
    from lorasize.estimate import estimate

    train = TrainSpec(stack="torchtune", stack_release="0.1")
    est = estimate(resolve_model("qwen2.5-7b"), LoraSpec(), train)
    assert any("this reserve is the formula's" in n for n in est.notes)


def test_check_reads_an_unquoted_release(cli, tmp_path):
    budgets = tmp_path / "b.yaml"
    budgets.write_text("scenarios:\n  tt:\n    model: llama2-7b\n    method: qlora\n"
                       "    targets: all\n    stack: torchtune\n    stack-release: 0.1\n"
                       "    budget: fits rtx-4090\n")
    code, out, err = cli("check", str(budgets))
    assert code == 0, err
