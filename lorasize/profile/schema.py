"""Profile files: one JSON file per profiled configuration, under ``profiles/``.

A profile records what a real run measured, with everything needed to reproduce and to compare
it: ``schema_version``, the software versions, the device, the configuration (model config,
LoRA and training specs) and the measurements. Files are written atomically; the loader rejects
a malformed file with a message naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import LorasizeError
from ..files import read_json, write_atomic

SCHEMA_VERSION = 1
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
                  "context_bytes")


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
    if data["schema_version"] != SCHEMA_VERSION:
        raise LorasizeError(f"field 'schema_version' must be {SCHEMA_VERSION}", source=source)
    _check(data["device"], REQUIRED_DEVICE, "device.", source)
    _check(data["config"], REQUIRED_CONFIG, "config.", source)
    _check(data["measurements"], REQUIRED_MEASUREMENTS, "measurements.", source)
    measurements = data["measurements"]
    if not measurements["oom"]:
        for name in ("peak_allocated_bytes", "phases", "step_seconds", "tokens_per_s"):
            if name not in measurements:
                raise LorasizeError(f"missing field 'measurements.{name}'", source=source)
    for name in MEASURED_BYTES:
        value = measurements.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise LorasizeError(f"field 'measurements.{name}' must be bytes (an integer >= 0)",
                                source=source)
    return data


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
