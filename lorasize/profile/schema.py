"""Profile files: one JSON file per profiled configuration, under ``profiles/``.

A profile records what a real run measured, with everything needed to reproduce and to compare
it: ``schema_version``, the software versions, the device, the configuration (model config,
LoRA and training specs) and the measurements. Files are written atomically; the loader rejects
a malformed file with a message naming the field.

Version 2 adds multi-GPU profiles: ``config.gpus`` and ``config.sharding`` (``none``, ``fsdp``,
``fsdp-grad-op`` or ``ddp``) and, when a sharding is given, a ``ranks`` list with each rank's own
measurements (the top-level ``measurements`` are then the largest rank's memory and the whole
job's throughput). Version 1 files (single GPU, no such fields) still load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import LorasizeError
from ..files import read_json, write_atomic

SCHEMA_VERSION = 2
LOADABLE_VERSIONS = (1, 2)
PROFILED_SHARDINGS = ("none", "fsdp", "fsdp-grad-op", "ddp")
RANK_STATUSES = ("ok", "oom", "stopped")
REQUIRED = {
    "schema_version": int,
    "versions": dict,
    "device": dict,
    "config": dict,
    "measurements": dict,
}
REQUIRED_DEVICE = {"kind": str, "name": str, "memory_bytes": (int, type(None))}
REQUIRED_CONFIG = {"model": dict, "lora": dict, "train": dict, "steps": int}
REQUIRED_MEASUREMENTS = {"oom": bool}
MEASURED_BYTES = ("peak_allocated_bytes", "peak_reserved_bytes", "device_peak_bytes",
                  "context_bytes", "steady_bytes")
REQUIRED_RANK = {"rank": int, "status": str, "oom": bool}


def _check(data: dict, fields: dict, where: str, source: str) -> None:
    for name, kind in fields.items():
        if name not in data:
            raise LorasizeError(f"missing field '{where}{name}'", source=source)
        if not isinstance(data[name], kind) or (kind is int and isinstance(data[name], bool)):
            raise LorasizeError(f"field '{where}{name}' has the wrong type", source=source)


def validate_profile(data: Any, source: str = "profile") -> dict:
    """Check a parsed profile; returns it.

    Raises:
        LorasizeError: naming the first missing or malformed field.
    """
    if not isinstance(data, dict):
        raise LorasizeError("a profile is a JSON object", source=source)
    _check(data, REQUIRED, "", source)
    if data["schema_version"] not in LOADABLE_VERSIONS:
        raise LorasizeError(f"field 'schema_version' must be one of "
                            f"{', '.join(map(str, LOADABLE_VERSIONS))}", source=source)
    _check(data["device"], REQUIRED_DEVICE, "device.", source)
    _check(data["config"], REQUIRED_CONFIG, "config.", source)
    _check(data["measurements"], REQUIRED_MEASUREMENTS, "measurements.", source)
    _check_measurements(data["measurements"], "measurements.", source)
    gpus, sharding = profile_gpus(data), profile_sharding(data)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise LorasizeError("field 'config.gpus' must be an integer of 1 or more", source=source)
    if sharding not in PROFILED_SHARDINGS:
        raise LorasizeError(f"field 'config.sharding' must be one of {', '.join(PROFILED_SHARDINGS)}",
                            source=source)
    if sharding == "none":
        if gpus != 1:
            raise LorasizeError("field 'config.sharding' must name the sharding of a profile with "
                                "more than one GPU", source=source)
        if "ranks" in data:
            raise LorasizeError("field 'ranks' belongs to a profile with a sharding", source=source)
        return data
    ranks = data.get("ranks")
    if not isinstance(ranks, list) or len(ranks) != gpus:
        raise LorasizeError(f"field 'ranks' must be a list of {gpus} ranks (config.gpus)",
                            source=source)
    for index, rank in enumerate(ranks):
        where = f"ranks[{index}]."
        if not isinstance(rank, dict):
            raise LorasizeError(f"field 'ranks[{index}]' must be an object", source=source)
        _check(rank, REQUIRED_RANK, where, source)
        if rank["rank"] != index:
            raise LorasizeError(f"field '{where}rank' must be {index} (ranks in order)", source=source)
        if rank["status"] not in RANK_STATUSES:
            raise LorasizeError(f"field '{where}status' must be one of {', '.join(RANK_STATUSES)}",
                                source=source)
        if rank["status"] == "ok":
            _check_measurements(rank, where, source)
    return data


def _check_measurements(measurements: dict, where: str, source: str) -> None:
    if not measurements["oom"]:
        for name in ("peak_allocated_bytes", "phases", "step_seconds", "tokens_per_s"):
            if name not in measurements:
                raise LorasizeError(f"missing field '{where}{name}'", source=source)
    for name in MEASURED_BYTES:
        value = measurements.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise LorasizeError(f"field '{where}{name}' must be bytes (an integer >= 0)",
                                source=source)


def profile_gpus(profile: dict) -> int:
    """How many GPUs (ranks) a profile ran on; 1 for version 1 files."""
    return profile["config"].get("gpus", 1)


def profile_sharding(profile: dict) -> str:
    """The profile's sharding (``none`` for a single-GPU run and version 1 files)."""
    return profile["config"].get("sharding", "none")


def rank_reserve_points(profile: dict) -> list[tuple[int, int, int]]:
    """Allocator-reserve fit points, one per rank of a multi-GPU GPU profile: (measured
    reserved, measured allocated, measured dynamic = allocated peak - bytes live between
    steps). Every rank is a device with its own caching allocator, so each is a row; the
    figures are the rank's own because the estimator's per-rank prediction is not what this
    constant describes (the allocator's reserve above what was allocated)."""
    points = []
    for rank in profile.get("ranks", []):
        if rank["status"] != "ok" or not rank.get("peak_reserved_bytes") or not rank.get("steady_bytes"):
            continue
        allocated = rank["peak_allocated_bytes"]
        points.append((rank["peak_reserved_bytes"], allocated, allocated - rank["steady_bytes"]))
    return points


def load_profile(path: str | Path) -> dict:
    """Read and check one profile file."""
    return validate_profile(read_json(path), str(path))


def load_profiles(folder: str | Path) -> list[dict]:
    """Every ``*.json`` profile under ``folder``, checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LorasizeError("no such folder", source=str(folder))
    return [load_profile(p) for p in sorted(folder.glob("*.json"))]


def write_profile(data: dict, path: str | Path) -> None:
    """Check and write a profile atomically."""
    validate_profile(data, str(path))
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
