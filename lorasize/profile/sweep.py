"""Profile sweeps: a grid of configurations, each point in its own process.

A sweep file names fixed flags and a grid::

    base: {model: llama2-7b, method: qlora, targets: all}
    grid: {r: [8, 16], batch_size: [1, 4], seq_len: [512, 2048]}
    steps: 3

Every point runs ``lorasize profile`` in a fresh process (a GPU out-of-memory error poisons the
CUDA context of the process it happens in), so one OOM is a row of the summary, not the end of the
sweep.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

from ..errors import LorasizeError

FLAG_KEYS = {"model", "r", "alpha", "targets", "method", "quant", "dtype", "optimizer",
             "batch_size", "seq_len", "attn", "lora_dropout", "variant", "stack", "gpus",
             "sharding"}
SWITCH_KEYS = {"grad_checkpointing", "double_quant", "dora", "kbit_prep"}


def load_sweep(path: str | Path) -> tuple[list[dict], dict]:
    """The points of a sweep file and its options (steps, warmup, device).

    Raises:
        LorasizeError: unreadable or malformed file (names the field).
    """
    from ..files import read_yaml

    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("base", {}), dict):
        raise LorasizeError("expected a mapping with 'base' and 'grid'", source=str(path))
    base, grid = dict(data.get("base") or {}), dict(data.get("grid") or {})
    for key in list(base) + list(grid):
        if key not in FLAG_KEYS | SWITCH_KEYS:
            raise LorasizeError(f"unknown field '{key}'", source=str(path))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise LorasizeError(f"'grid.{key}' must be a non-empty list", source=str(path))
    if "model" not in base and "model" not in grid:
        raise LorasizeError("missing field 'base.model'", source=str(path))
    points = [dict(base, **dict(zip(grid, combo))) for combo in itertools.product(*grid.values())]
    options = {k: data[k] for k in ("steps", "warmup", "device") if k in data}
    return points, options


def point_args(point: dict) -> list[str]:
    """``lorasize profile`` flags for one point."""
    args = []
    for key, value in point.items():
        flag = "--" + key.replace("_", "-")
        if key in SWITCH_KEYS:
            args.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            args += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    return args


def run_point(point: dict, out: str, options: dict, timeout: float = 3600) -> dict:
    """Profile one point in its own process; returns a summary row."""
    command = [sys.executable, "-m", "lorasize", "profile", *point_args(point), "--out", out,
               "--json", "--steps", str(options.get("steps", 3)),
               "--warmup", str(options.get("warmup", 1)), "--device", str(options.get("device", "auto"))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"point": point, "status": "timeout"}
    if done.returncode in (0, 1) and done.stdout.strip().startswith("{"):
        data = json.loads(done.stdout)
        measured = data["measurements"]
        return {"point": point, "status": "oom" if measured["oom"] else "ok", "path": data["path"],
                "peak_allocated_bytes": measured.get("peak_allocated_bytes"),
                "tokens_per_s": measured.get("tokens_per_s")}
    reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"point": point, "status": "error", "error": reason}
