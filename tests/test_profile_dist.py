"""Multi-GPU profiling for real on the CPU: torchrun, two gloo ranks, FSDP2 and DDP.

Each rank's memory between steps (weights and optimizer state) is checked against the model's
own parameter counts, built here independently on the meta device: under FSDP every rank holds
half of it, under DDP all of it plus the gradient buckets (one more copy of the trainable
parameters).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from lorasize.errors import LorasizeError
from lorasize.profile import load_profile, validate_profile

from conftest import build_meta_model, peft_wrap

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=160,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
BF16_BYTES, FP32_BYTES = 2, 4
ADAMW_COPIES = 3  # the parameter, exp_avg and exp_avg_sq (same dtype as the parameter)
# Bytes between steps that are neither parameters nor optimizer moments: AdamW's 4-byte step
# counter per tensor, the rotary inv_freq buffer. Well under 1% of these tiny models.
REL = 0.005


@pytest.fixture
def tiny_model(tmp_path):
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    return folder


def _numels(method: str) -> tuple[int, int]:
    """(frozen, trainable) parameter counts of the model the profiler builds."""
    model = build_meta_model(TINY)
    if method != "full":
        model = peft_wrap(model, r=4, target_modules="all-linear")
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return frozen, trainable


def _profile(cli, model, out, *args) -> dict:
    code, stdout, err = cli("profile", "-m", str(model), "-r", "4", "-t", "all", "-b", "2",
                            "-s", "32", "--device", "cpu", "--steps", "2", "--out", str(out),
                            "--json", *args)
    assert code == 0, err
    data = json.loads(stdout)
    assert load_profile(data["path"]) == {k: v for k, v in data.items() if k != "path"}
    return data


def _check_ranks(data: dict, gpus: int, sharding: str) -> list[dict]:
    assert data["config"]["gpus"] == gpus and data["config"]["sharding"] == sharding
    ranks = data["ranks"]
    assert [r["rank"] for r in ranks] == list(range(gpus))
    for rank in ranks:
        assert rank["status"] == "ok" and not rank["oom"]
        assert 0 < rank["steady_bytes"] < rank["peak_allocated_bytes"]
        assert set(rank["phases"]) == {"forward", "backward", "optimizer"}
        assert rank["tokens_per_s"] > 0
    measured = data["measurements"]
    assert measured["peak_allocated_bytes"] == max(r["peak_allocated_bytes"] for r in ranks)
    assert measured["tokens_per_s"] == pytest.approx(
        gpus * 2 * 32 / max(r["step_seconds"] for r in ranks), rel=1e-3)
    return ranks


def test_fsdp_full_fine_tuning_each_rank_holds_half(cli, tiny_model, tmp_path):
    """Full fine-tuning, FSDP over 2 ranks: weights and AdamW state per rank are half of the
    model's (numel x 2 bytes x 3 / 2), and each rank's peak is below the one-process peak."""
    out = tmp_path / "profiles"
    out.mkdir()
    data = _profile(cli, tiny_model, out, "--method", "full", "--gpus", "2", "--sharding", "fsdp")
    ranks = _check_ranks(data, 2, "fsdp")
    _, trainable = _numels("full")
    whole = ADAMW_COPIES * trainable * BF16_BYTES
    for rank in ranks:
        assert rank["steady_bytes"] == pytest.approx(whole / 2, rel=REL)
    single = _profile(cli, tiny_model, out, "--method", "full")["measurements"]
    assert single["steady_bytes"] == pytest.approx(whole, rel=REL)
    assert all(r["peak_allocated_bytes"] < single["peak_allocated_bytes"] for r in ranks)


def test_ddp_lora_each_rank_holds_all_plus_gradient_buckets(cli, tiny_model, tmp_path):
    """DDP replicates: each rank holds the whole base, the fp32 adapters with their AdamW state,
    and DDP's gradient buckets (one more fp32 copy of the adapters)."""
    out = tmp_path / "profiles"
    out.mkdir()
    data = _profile(cli, tiny_model, out, "--gpus", "2", "--sharding", "ddp")
    ranks = _check_ranks(data, 2, "ddp")
    frozen, trainable = _numels("lora")
    expected = frozen * BF16_BYTES + (ADAMW_COPIES + 1) * trainable * FP32_BYTES
    for rank in ranks:
        assert rank["steady_bytes"] == pytest.approx(expected, rel=REL)


@pytest.mark.slow
def test_fsdp_lora_each_rank_holds_half(cli, tiny_model, tmp_path):
    out = tmp_path / "profiles"
    out.mkdir()
    data = _profile(cli, tiny_model, out, "--gpus", "2", "--sharding", "fsdp")
    ranks = _check_ranks(data, 2, "fsdp")
    frozen, trainable = _numels("lora")
    whole = frozen * BF16_BYTES + ADAMW_COPIES * trainable * FP32_BYTES
    for rank in ranks:
        assert rank["steady_bytes"] == pytest.approx(whole / 2, rel=REL)
    single = _profile(cli, tiny_model, out)["measurements"]
    assert all(r["peak_allocated_bytes"] <= single["peak_allocated_bytes"] for r in ranks)
    # fsdp-grad-op keeps each layer gathered from forward to backward: more memory in backward.
    grad_op = _profile(cli, tiny_model, out, "--gpus", "2", "--sharding", "fsdp-grad-op")
    assert (grad_op["measurements"]["phases"]["backward"]["peak_allocated_bytes"]
            > data["measurements"]["phases"]["backward"]["peak_allocated_bytes"])


@pytest.mark.slow
def test_fsdp_qlora_shards_the_packed_weights_not_the_quantization_constants(cli, tiny_model,
                                                                             tmp_path):
    """QLoRA (real bitsandbytes on the CPU) under FSDP: the packed NF4 bytes, re-typed as bf16
    (quant_storage), are sharded; the absmax constants are attributes and stay whole on every
    rank, so a rank holds a little more than half of one process's bytes."""
    out = tmp_path / "profiles"
    out.mkdir()
    args = ("--method", "qlora", "-t", "qv", "--no-kbit-prep")
    data = _profile(cli, tiny_model, out, *args, "--gpus", "2", "--sharding", "fsdp")
    ranks = _check_ranks(data, 2, "fsdp")
    single = _profile(cli, tiny_model, out, *args)["measurements"]["steady_bytes"]
    for rank in ranks:
        assert 0.5 * single < rank["steady_bytes"] < 0.55 * single


@pytest.mark.slow
def test_bad_input_found_by_the_ranks_names_the_flag(cli, tiny_model, tmp_path):
    """Every rank fails while building (a target the model lacks): one line naming the flag,
    exit 2, no profile written."""
    code, _, err = cli("profile", "-m", str(tiny_model), "-t", "not_a_module", "-s", "16",
                       "--device", "cpu", "--steps", "1", "--gpus", "2", "--sharding", "ddp",
                       "--out", str(tmp_path))
    assert code == 2 and "--targets" in err and "not_a_module" in err
    assert len(err.strip().splitlines()) == 1 and not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("args,flag", [
    (["--gpus", "0", "--sharding", "fsdp"], "--gpus"),
    (["--gpus", "2", "--sharding", "nonsense"], "--sharding"),
    (["--gpus", "2"], "--sharding"),
    (["--gpus", "2", "--sharding", "zero3"], "--sharding"),
    (["--gpus", "2", "--sharding", "fsdp", "--offload", "params"], "--offload"),
    (["--gpus", "2", "--sharding", "fsdp", "--inference", "2"], "--inference"),
    (["--gpus", "2", "--sharding", "fsdp", "--timeline", "t.html"], "--timeline"),
])
def test_bad_multi_gpu_flags_are_one_line_naming_the_flag(cli, tiny_model, tmp_path, args, flag):
    code, _, err = cli("profile", "-m", str(tiny_model), "--device", "cpu", "--out",
                       str(tmp_path), *args)
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1, err


def _shipped_multi_rank() -> dict:
    shipped = [load_profile(p) for p in sorted((ROOT / "profiles").glob("*.json"))]
    multi = [p for p in shipped if "ranks" in p]
    assert multi, "profiles/ holds an example multi-rank CPU profile"
    return multi[0]


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d["ranks"].pop(), "ranks"),
    (lambda d: d["ranks"][1].update(steady_bytes=-1), r"ranks\[1\]\.steady_bytes"),
    (lambda d: d["ranks"][1].pop("peak_allocated_bytes"), r"ranks\[1\]\.peak_allocated_bytes"),
    (lambda d: d["ranks"][0].update(status="fine"), r"ranks\[0\]\.status"),
    (lambda d: d["ranks"].reverse(), r"ranks\[0\]\.rank"),
    (lambda d: d["config"].update(gpus=0), r"config\.gpus"),
    (lambda d: d["config"].update(sharding="zero3"), r"config\.sharding"),
    (lambda d: d["config"].update(sharding="none"), r"config\.sharding"),
])
def test_malformed_multi_rank_profiles_name_the_field(mutate, field):
    data = copy.deepcopy(_shipped_multi_rank())
    mutate(data)
    with pytest.raises(LorasizeError, match=field):
        validate_profile(data, "x.json")


def test_calibrate_takes_each_rank_of_a_gpu_profile_as_a_reserve_row(cli, tmp_path):
    """GPU profiles cannot be made on a CPU: the rank figures are written here, with a reserve
    of a quarter of each rank's dynamic bytes, which the fit must recover."""
    from lorasize.memory.allocator import DEFAULT_CUDA_CONTEXT_BYTES
    from lorasize.calibrate.calibration import load_calibration
    from lorasize.profile import write_profile

    base = _shipped_multi_rank()
    for index, dynamic in enumerate((2**30, 3 * 2**30)):
        profile = copy.deepcopy(base)
        profile["device"] = {"kind": "cuda", "name": "NVIDIA H100", "memory_bytes": 80 * 2**30}
        for rank in profile["ranks"]:
            steady = (5 + rank["rank"]) * 2**30
            rank.update(steady_bytes=steady, peak_allocated_bytes=steady + dynamic,
                        peak_reserved_bytes=steady + dynamic + dynamic // 4,
                        device_peak_bytes=steady + dynamic + dynamic // 4 + 2**30)
        write_profile(profile, tmp_path / f"p{index}.json")
    code, out, err = cli("calibrate", "--profiles", str(tmp_path), "--out", str(tmp_path / "c.json"))
    assert code == 0, err
    fitted = load_calibration(tmp_path / "c.json")
    assert fitted.reserve_fraction == pytest.approx(0.25, abs=1e-4)
    assert json.loads(out.splitlines()[-1])["rows"].count("profile:tiny-llama:rank1") == 2
    # No context rows from multi-GPU profiles (NCCL's buffers are outside torch as well).
    assert fitted.cuda_context_bytes == DEFAULT_CUDA_CONTEXT_BYTES


def _job(tmp_path) -> dict:
    profile = _shipped_multi_rank()
    return dict({k: profile["config"][k] for k in ("model", "lora", "train", "steps", "warmup",
                                                   "gpus", "sharding")},
                device="cuda", rank_dir=str(tmp_path), result=str(tmp_path / "profile.json"))


def test_an_out_of_memory_rank_is_a_result(tmp_path):
    """What the launcher makes of a rank that ran out of memory (GPU only, so its rank file is
    written here): the profile records it, and the rank torchrun stopped."""
    from lorasize.profile.distributed import collect

    job = _job(tmp_path)
    (tmp_path / "rank1.json").write_text(json.dumps(
        {"rank": 1, "local_rank": 1, "oom": True, "status": "oom", "phases": {}}))
    profile = collect(job, 1, "")
    assert profile["measurements"]["oom"] is True
    assert [(r["rank"], r["status"]) for r in profile["ranks"]] == [(0, "stopped"), (1, "oom")]


def test_a_failing_rank_is_named(tmp_path):
    from lorasize.profile.distributed import RankFailed, collect

    job = _job(tmp_path)
    with pytest.raises(RankFailed, match="torchrun failed: no output"):
        collect(job, 1, "")
    (tmp_path / "rank1.json").write_text(json.dumps(
        {"rank": 1, "local_rank": 1, "oom": False, "status": "error", "kind": "DistBackendError",
         "error": "NCCL error", "bad_input": False, "source": None}))
    with pytest.raises(RankFailed, match="rank 1 failed: DistBackendError: NCCL error"):
        collect(job, 1, "")


TORCHRUN_FAILED = """[rank0]: Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
lorasize.profile.distributed FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  exitcode  : -11 (pid: 4242)
  error_file: <N/A>
"""


def test_a_launch_no_rank_reported_names_torchruns_exit_code(tmp_path):
    from lorasize.profile.distributed import LaunchFailed, collect

    with pytest.raises(LaunchFailed, match="torchrun failed: exitcode  : -11"):
        collect(_job(tmp_path), 1, TORCHRUN_FAILED)


def test_a_failed_launch_is_tried_once_more(cli, tiny_model, tmp_path, monkeypatch):
    """torchrun failing before any rank reports (a rendezvous or start-up failure) is launched
    again; the second, real launch profiles."""
    import subprocess

    from lorasize.profile import distributed

    real, calls = subprocess.run, []

    def first_fails(command, **kwargs):
        calls.append(command)
        if len(calls) == 1:
            return subprocess.CompletedProcess(command, 1, "", TORCHRUN_FAILED)
        return real(command, **kwargs)

    monkeypatch.setattr(distributed.subprocess, "run", first_fails)
    out = tmp_path / "profiles"
    out.mkdir()
    data = _profile(cli, tiny_model, out, "--gpus", "2", "--sharding", "ddp")
    assert len(calls) == 2 and [r["status"] for r in data["ranks"]] == ["ok", "ok"]


@pytest.mark.slow
def test_sweep_points_can_be_multi_gpu(cli, tiny_model, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {{model: {tiny_model}, seq_len: 16, gpus: 2}}\n"
                     "grid: {sharding: [fsdp, ddp]}\nsteps: 1\ndevice: cpu\n")
    out = tmp_path / "profiles"
    out.mkdir()
    code, stdout, err = cli("profile", "--sweep", str(sweep), "--out", str(out), "--json")
    assert code == 0, err
    rows = json.loads(stdout)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    shardings = sorted(load_profile(r["path"])["config"]["sharding"] for r in rows)
    assert shardings == ["ddp", "fsdp"]


def test_each_rank_reads_its_own_gpu_in_nvml():
    """Rank i samples torch's cuda:i, which NVML numbers by the machine's GPUs."""
    from lorasize.profile.backends import nvml_index

    assert [nvml_index(i, "4,5,6,7") for i in range(4)] == [4, 5, 6, 7]
    assert nvml_index(1, None) == 1 and nvml_index(1, "") == 1
    assert nvml_index(0, "GPU-8f6e2c1a-0000") == 0


def _forward_peaks(cli, model, out, *args) -> list[int]:
    data = _profile(cli, model, out, "--steps", "1", *args)
    return [r["phases"]["forward"]["peak_allocated_bytes"]
            for r in data.get("ranks", [data["measurements"]])]


def test_gradient_accumulation_holds_the_gradients_between_micro_batches(cli, tiny_model,
                                                                         tmp_path):
    """--grad-accum 2: the second micro-batch's forward runs with the first one's gradients
    alive, exactly the trainable parameters' bytes more (fp32 adapters)."""
    out = tmp_path / "profiles"
    out.mkdir()
    (one,), (two,) = (_forward_peaks(cli, tiny_model, out, "--grad-accum", n) for n in "12")
    assert two - one == _numels("lora")[1] * FP32_BYTES


@pytest.mark.slow
def test_fsdp_gradient_accumulation_holds_unsharded_gradients(cli, tiny_model, tmp_path):
    """Under FSDP2 with gradient sync off between micro-batches (as no_sync), each rank keeps
    the whole model's gradients, not its shard."""
    out = tmp_path / "profiles"
    out.mkdir()
    flags = ("--gpus", "2", "--sharding", "fsdp")
    one = _forward_peaks(cli, tiny_model, out, *flags)
    two = _forward_peaks(cli, tiny_model, out, *flags, "--grad-accum", "2")
    assert [b - a for a, b in zip(one, two)] == [_numels("lora")[1] * FP32_BYTES] * 2
