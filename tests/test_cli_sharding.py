"""``lorasize estimate --gpus N --sharding ... --offload ...``: per-GPU output, host memory, the
smallest setup that fits with its launch lines, and one-line errors naming the flag."""

from __future__ import annotations

import json

import pytest


def test_json_reports_per_gpu_and_host(cli):
    code, out, _ = cli("estimate", "-m", "llama2-7b", "--method", "full", "--gpus", "4",
                       "--sharding", "zero3", "--offload", "optimizer", "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["gpus"], data["sharding"], data["offload"]) == (4, "zero3", "optimizer")
    assert data["host_offload_bytes"] == sum(data["host_breakdown"].values()) > 0
    assert sum(data["train_breakdown"].values()) == data["train_peak_bytes"]
    _, one, _ = cli("estimate", "-m", "llama2-7b", "--method", "full", "--json")
    assert data["train_peak_bytes"] < json.loads(one)["train_peak_bytes"] / 4


def test_text_shows_per_gpu_and_host(cli):
    code, out, _ = cli("estimate", "-m", "llama2-7b", "--gpus", "2", "--sharding", "fsdp",
                       "--offload", "params")
    assert code == 0
    assert "per GPU of 2 x fsdp, params offload" in out
    assert "Offloaded to host (CPU) memory, per GPU process:" in out


def test_does_not_fit_names_the_smallest_setup(cli):
    code, out, _ = cli("estimate", "-m", "llama2-13b", "--method", "full",
                       "--grad-checkpointing", "--gpu", "a100-80gb", "--json")
    assert code == 1
    setups = json.loads(out)["multi_gpu"]
    assert setups and setups[0]["why"] == "Fewest GPUs that fit"
    first = setups[0]
    assert first["train_peak_bytes"] <= 80 * 2**30
    assert first["launch"]["accelerate"].startswith(
        f"accelerate launch --num_processes {first['gpus']}")
    assert first["launch"]["torchrun"] == f"torchrun --nproc-per-node {first['gpus']} train.py"
    code, text, _ = cli("estimate", "-m", "llama2-13b", "--method", "full",
                        "--grad-checkpointing", "--gpu", "a100-80gb")
    assert code == 1 and "Fewest GPUs that fit:" in text and "accelerate launch" in text


def test_given_sharding_too_small_gets_walk_and_fewest(cli):
    code, out, _ = cli("estimate", "-m", "llama2-70b", "--method", "full",
                       "--grad-checkpointing", "--gpu", "a100-80gb", "--gpus", "8",
                       "--sharding", "zero3", "--json")
    assert code == 1
    whys = [s["why"] for s in json.loads(out)["multi_gpu"]]
    assert whys[0] == "Smallest setup on 8 GPUs"
    assert "Fewest GPUs with zero3" in whys


@pytest.mark.parametrize("args,flag", [
    (["--gpus", "4"], "--sharding"),
    (["--gpus", "0", "--sharding", "ddp"], "--gpus"),
    (["--sharding", "ddp", "--offload", "params"], "--offload"),
    (["--sharding", "fsdp", "--offload", "optimizer"], "--offload"),
    (["--sharding", "zero9"], "--sharding"),
])
def test_bad_setups_exit_2_naming_the_flag(cli, args, flag):
    code, out, err = cli("estimate", "-m", "llama2-7b", *args)
    assert code == 2
    assert flag in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_hours_split_over_gpus_and_cost_counts_them_all(cli):
    base = ["estimate", "-m", "llama2-7b", "--gpu", "a100-80gb", "--dataset-tokens", "100000000",
            "--usd-per-gpu-hour", "2", "--json"]
    one = json.loads(cli(*base)[1])["time"]
    four = json.loads(cli(*base, "--gpus", "4", "--sharding", "ddp")[1])["time"]
    assert four["hours"] == pytest.approx(one["hours"] / 4, abs=1e-3)
    assert four["usd"] == pytest.approx(one["usd"], abs=0.02)


def test_fit_solves_per_gpu(cli):
    """Full fine-tuning of Llama-3-8B fits no A100-40GB alone; on 8 under ZeRO-3 the solved
    sequence length fits per GPU and one more token does not."""
    from lorasize import TrainSpec, estimate, gpu_from_catalog, resolve_model
    from lorasize.memory.sharding import ShardSpec

    args = ("fit", "-m", "llama3-8b", "--method", "full", "--gpu", "a100-40gb", "--solve",
            "seq-len", "--json")
    code, out, _ = cli(*args)
    assert code == 1 and json.loads(out)["solved"] is None
    code, out, err = cli(*args, "--gpus", "8", "--sharding", "zero3")
    assert code == 0, err
    solved = json.loads(out)["solved"]
    gpu, shard = gpu_from_catalog("a100-40gb"), ShardSpec(8, "zero3")
    above = estimate(resolve_model("llama3-8b"), train=TrainSpec(method="full", seq_len=solved + 1),
                     gpu=gpu, shard=shard)
    assert above.peak_bytes > gpu.memory_bytes
    code, _, err = cli(*args, "--gpus", "8")
    assert code == 2 and err.startswith("lorasize: error: --sharding")
