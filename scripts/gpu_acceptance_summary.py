"""Compare every profile in a folder with lorasize's estimate of the same setup, and write
``SUMMARY.md`` and ``summary.json`` there (scripts/gpu-acceptance.sh's last step).

For each profile: peak allocated against the estimate (less the cuBLAS workspace on a CPU),
reserved and device peaks when the device is a GPU, and measured tokens/s against the
step-time model's when the GPU is in the catalog.

    python3 scripts/gpu_acceptance_summary.py profiles/acceptance
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def compare(profile: dict) -> dict:
    from lorasize.arch.catalog import gpu_from_catalog
    from lorasize.calibrate.calibration import _profile_specs
    from lorasize.errors import LorasizeError
    from lorasize.estimate import estimate
    from lorasize.memory.allocator import cublas_workspace_bytes
    from lorasize.perf.timing import training_time

    config, measured, device = profile["config"], profile["measurements"], profile["device"]
    model, lora, train = _profile_specs(config)
    row = {"model": config["model"]["name"], "method": train.method, "r": lora.r,
           "batch": train.batch_size, "seq_len": train.seq_len, "device": device["name"],
           "oom": measured["oom"], "gpus": config.get("gpus", 1)}
    gpu = None
    if device["kind"] == "cuda":
        try:
            gpu = gpu_from_catalog(device["name"])
        except LorasizeError:
            gpu = None
    from lorasize.memory.sharding import ShardSpec
    from lorasize.profile.schema import profile_gpus, profile_sharding

    shard = ShardSpec(profile_gpus(profile), profile_sharding(profile))
    e = estimate(model, lora, train, gpu=gpu, shard=shard)
    if measured["oom"]:
        row["verdict"] = "out of memory" + (" (estimate: fits)" if e.fits else "")
        return row
    expected = e.allocated_bytes - (cublas_workspace_bytes(None) if device["kind"] == "cpu" else 0)
    pairs = [("allocated", measured.get("peak_allocated_bytes"), expected)]
    if device["kind"] == "cuda":
        pairs += [("reserved", measured.get("peak_reserved_bytes"), e.reserved_bytes),
                  ("device", measured.get("device_peak_bytes"), e.peak_bytes)]
    for name, got, want in pairs:
        if got:
            row[f"{name}_measured"], row[f"{name}_estimated"] = got, want
            row[f"{name}_error"] = round(want / got - 1, 4)
    if gpu is not None and measured.get("tokens_per_s") and row["gpus"] == 1:
        timed = training_time(model, e.targets, train, gpu)
        if timed:
            row["tokens_per_s_measured"] = measured["tokens_per_s"]
            row["tokens_per_s_estimated"] = round(timed.tokens_per_s, 1)
            row["tokens_per_s_error"] = round(timed.tokens_per_s / measured["tokens_per_s"] - 1, 4)
    if "inference" in measured:
        row["inference"] = measured["inference"].get("generate_seconds")
    return row


def main(folder: str) -> int:
    from lorasize.files import write_atomic
    from lorasize.profile.schema import load_profile

    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        if path.name == "summary.json":
            continue
        try:
            rows.append(dict(compare(load_profile(path)), file=path.name))
        except Exception as exc:  # one unreadable profile is a row, not the end of the summary
            rows.append({"file": path.name, "error": f"{type(exc).__name__}: {exc}"})
    lines = ["# GPU acceptance: profiles against the estimate", "",
             "| profile | device | allocated | reserved | device peak | tokens/s |",
             "|---|---|---|---|---|---|"]

    def cell(row, key):
        if f"{key}_error" not in row:
            return "-"
        return f"{row[f'{key}_measured']:,} ({100 * row[f'{key}_error']:+.1f}%)"

    for row in rows:
        if "error" in row:
            lines.append(f"| {row['file']} | - | {row['error']} | | | |")
            continue
        lines.append(f"| {row['file']} | {row['device']} | {cell(row, 'allocated')} | "
                     f"{cell(row, 'reserved')} | {cell(row, 'device')} | "
                     f"{cell(row, 'tokens_per_s')} |")
    lines += ["", "Each cell: measured, and the estimate's error against it."]
    write_atomic(Path(folder) / "SUMMARY.md", "\n".join(lines) + "\n")
    write_atomic(Path(folder) / "summary.json", json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    return 1 if any("error" in row for row in rows) or not rows else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "profiles/acceptance"))
