"""Calibration: fitting the overhead terms, the file format, and the shipped default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorasize import LoraSpec, TrainSpec, estimate, resolve_model
from lorasize.calibrate.calibration import (DEFAULT_FILE, MIN_ROWS, calibrate_from_measurements, fit,
                                  load_calibration, write_calibration)
from lorasize.errors import LorasizeError
from lorasize.estimate import Calibration

from lorasize.measurements import MEMORY as SHARED


def test_least_squares_recovers_the_constants():
    reserved = [(a + int(0.2 * d), a, d) for a, d in ((10**9, 10**8), (5 * 10**9, 3 * 10**9),
                                                      (2 * 10**9, 10**9))]
    device = [(a + int(0.2 * d) + 700 * 2**20, a, d) for a, d in ((10**9, 10**8), (2 * 10**9, 10**9),
                                                                   (3 * 10**9, 2 * 10**9))]
    calibration, report = fit(reserved, device, "synthetic")
    assert calibration.reserve_fraction == pytest.approx(0.2, abs=1e-6)
    assert calibration.cuda_context_bytes == pytest.approx(700 * 2**20, abs=2)
    assert report["reserved_rows"] == report["device_rows"] == MIN_ROWS


def test_too_few_rows_keep_the_defaults():
    calibration, _ = fit([(2, 1, 1)], [(10**10, 1, 1)], "one row")
    assert calibration.reserve_fraction == Calibration().reserve_fraction
    assert calibration.cuda_context_bytes == Calibration().cuda_context_bytes


def test_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "c.json"
    write_calibration(Calibration(cuda_context_bytes=123 * 2**20, reserve_fraction=0.3, mfu=0.42),
                      path)
    loaded = load_calibration(path)
    assert (loaded.cuda_context_bytes, loaded.reserve_fraction, loaded.mfu) == (123 * 2**20, 0.3, 0.42)
    for data, field in (({"schema_version": 9}, "schema_version"),
                        ({"schema_version": 1, "cuda_context_bytes": -1, "reserve_fraction": 0.1},
                         "cuda_context_bytes"),
                        ({"schema_version": 1, "cuda_context_bytes": 1, "reserve_fraction": 2},
                         "reserve_fraction"),
                        ({"schema_version": 1, "cuda_context_bytes": 1, "reserve_fraction": 0.1,
                          "mfu": 1.5}, "mfu")):
        path.write_text(json.dumps(data))
        with pytest.raises(LorasizeError, match=field):
            load_calibration(path)


def test_calibration_moves_reserved_and_device_only(tmp_path, cli):
    spec, lora, train = resolve_model("llama2-7b"), LoraSpec(), TrainSpec()
    low = estimate(spec, lora, train, calibration=Calibration(0, 0.0))
    high = estimate(spec, lora, train, calibration=Calibration(2**30, 0.5))
    assert low.allocated_bytes == high.allocated_bytes
    assert high.reserved_bytes > low.reserved_bytes and high.peak_bytes > low.peak_bytes
    path = tmp_path / "c.json"
    path.write_text("{broken")
    code, _, err = cli("estimate", "-m", "llama2-7b", "--calibration", str(path))
    assert code == 2 and str(path) in err


def test_shipped_calibration_loads():
    calibration = load_calibration(DEFAULT_FILE)
    assert 0 <= calibration.reserve_fraction <= 1


def test_shipped_calibration_is_the_fit_of_the_measurements():
    fitted, report = calibrate_from_measurements(SHARED)
    shipped = load_calibration(DEFAULT_FILE)
    assert (shipped.cuda_context_bytes, shipped.reserve_fraction) == (
        fitted.cuda_context_bytes, fitted.reserve_fraction), (
        "regenerate: lorasize calibrate "
        "-o lorasize/data/calibration.json")
    assert report["reserved_rows"] >= MIN_ROWS


def test_gpu_profiles_feed_the_fit(tmp_path, cli):
    """Profiles of GPU runs are fit points (here synthetic ones whose reserve is 25% of the
    step's dynamic memory); CPU profiles are skipped."""
    from dataclasses import asdict

    from lorasize.profile import write_profile
    from lorasize.profile.schema import SCHEMA_VERSION

    from lorasize import gpu_from_catalog
    from lorasize.perf.timing import dequant_seconds, peak_compute_seconds

    spec = resolve_model("llama3.2-1b")
    zero = Calibration(0, 0.0)
    l4 = gpu_from_catalog("NVIDIA L4")  # the name torch.cuda.get_device_name() prints
    runs = ((8, 512, "lora"), (16, 1024, "qlora"), (64, 2048, "lora"))
    seconds_of = []
    for index, (r, seq, method) in enumerate(runs):
        lora, train = LoraSpec(r=r, targets=("all",)), TrainSpec(seq_len=seq, method=method)
        e = estimate(spec, lora, train, calibration=zero)
        # Steps that ran at 37% of the L4's peak, plus the QLoRA run's dequantization.
        seconds = (peak_compute_seconds(spec, e.targets, train, l4) / 0.37
                   + dequant_seconds(spec, train, l4))
        seconds_of.append(seconds)
        profile = {
            "schema_version": SCHEMA_VERSION, "versions": {"torch": "2.13.0"},
            "device": {"kind": "cuda", "name": "NVIDIA L4", "memory_bytes": 24 * 2**30},
            "config": {"model": {"name": spec.name, "hf_config": spec.hf_config},
                       "lora": asdict(lora), "train": asdict(train), "steps": 3},
            "measurements": {"oom": False, "phases": {}, "step_seconds": seconds,
                             "tokens_per_s": train.tokens / seconds,
                             "peak_allocated_bytes": e.allocated_bytes,
                             "peak_reserved_bytes": e.allocated_bytes + e.dynamic_bytes // 4,
                             "device_peak_bytes": e.allocated_bytes + e.dynamic_bytes // 4 + 600 * 2**20,
                             "context_bytes": 600 * 2**20},
        }
        write_profile(profile, tmp_path / f"p{index}.json")
    code, out, err = cli("calibrate", "--profiles", str(tmp_path), "--out", str(tmp_path / "c.json"))
    assert code == 0, err
    fitted = load_calibration(tmp_path / "c.json")
    assert fitted.reserve_fraction == pytest.approx(0.25, abs=1e-4)
    assert fitted.cuda_context_bytes == pytest.approx(600 * 2**20, rel=0.01)
    assert fitted.mfu == pytest.approx(0.37, abs=1e-4)
    # The calibrated estimate gives the QLoRA run's measured throughput back; --mfu overrides.
    args = ("estimate", "-m", "llama3.2-1b", "--method", "qlora", "-r", "16", "-t", "all", "-s",
            "1024", "--gpu", "l4", "--json")
    code, out, _ = cli(*args, "--calibration", str(tmp_path / "c.json"))
    timing = json.loads(out)["time"]
    assert timing["mfu"] == pytest.approx(0.37, abs=1e-4)
    assert timing["tokens_per_s"] == pytest.approx(1024 / seconds_of[1], rel=1e-3)
    _, out, _ = cli(*args, "--calibration", str(tmp_path / "c.json"), "--mfu", "0.2")
    assert json.loads(out)["time"]["mfu"] == 0.2
    _, out, _ = cli(*args)
    # the shipped calibration has no profiles: the step-time model times the step
    assert json.loads(out)["time"]["model"] == "step"


def test_calibrate_refuses_to_fit_nothing(tmp_path, cli):
    empty = tmp_path / "profiles"
    empty.mkdir()
    out = tmp_path / "c.json"
    code, _, err = cli("calibrate", "--profiles", str(empty), "--out", str(out))
    assert code == 2 and "no usable row" in err and not out.exists()
