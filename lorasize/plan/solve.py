"""Inverse questions: the largest batch, sequence length or rank that fits a GPU, the smallest
multi-GPU setup that fits, and sweeps.

The estimate grows with each of these (a property test holds it to that), so a binary search
finds the largest value whose device total stays within the GPU's memory less the headroom.
Per-GPU memory never rises with the number of GPUs (another property test), so a binary search
also finds the fewest GPUs for a sharding.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from ..errors import LorasizeError, MissingExtraError
from ..estimate import Estimate, estimate
from ..gpu import GpuSpec
from ..arch.layout import block_linears
from ..arch.lora import LoraSpec
from ..arch.model import ModelSpec
from ..memory.sharding import ShardSpec
from ..specs import TrainSpec

SOLVABLE = ("batch-size", "seq-len", "r")
MAX_BATCH = 65_536
MAX_SEQ_LEN = 1_048_576
MAX_GPUS = 4096
# The order to try setups in, cheapest in communication and framework complexity first: plain
# data parallelism, then DeepSpeed's stages (ZeRO paper, section 5), FSDP full shard, then the
# host offloads (slowest).
SETUP_ORDER = (("ddp", "none"), ("zero1", "none"), ("zero2", "none"), ("fsdp", "none"),
               ("zero3", "none"), ("zero3", "optimizer"), ("fsdp", "params"), ("zero3", "params"))
# GPU counts to try when the user has not given one: one node of 2, 4 or 8, then whole nodes.
NODE_SIZES = (2, 4, 8, 16, 32, 64, 128, 256)


def _with(field: str, value: int, lora: LoraSpec, train: TrainSpec) -> tuple[LoraSpec, TrainSpec]:
    if field == "r":
        return replace(lora, r=value), train
    if field == "batch-size":
        return lora, replace(train, batch_size=value)
    return lora, replace(train, seq_len=value)


def search_limit(field: str, model: ModelSpec) -> tuple[int, str]:
    """The largest value :func:`solve` tries for ``field``, and what sets it, in words."""
    if field == "r":
        return (min(min(m.in_features, m.out_features) for m in block_linears(model)),
                "the smallest adapted matrix's dimension")
    if field == "batch-size":
        return MAX_BATCH, "the search's largest batch"
    # No longer than the model was trained for (max_position_embeddings), when the config says.
    if model.max_positions and model.max_positions <= MAX_SEQ_LEN:
        return model.max_positions, (f"the {model.max_positions:,} positions {model.name} was "
                                     f"trained for (max_position_embeddings)")
    return MAX_SEQ_LEN, "the search's longest sequence"


def solve(model: ModelSpec, lora: LoraSpec, train: TrainSpec, gpu: GpuSpec, field: str,
          headroom: float = 0.0, shard: ShardSpec | None = None) -> tuple[int | None, Estimate]:
    """The largest value of ``field`` whose estimate fits ``gpu`` with ``headroom`` to spare
    (per GPU under ``shard``, when given).

    Returns:
        (value, estimate at that value); value is None when even 1 does not fit, and the
        estimate is then the one at 1.

    Raises:
        LorasizeError: an unknown field or a headroom outside [0, 1).
    """
    if field not in SOLVABLE:
        raise LorasizeError(f"'{field}' is not one of {', '.join(SOLVABLE)}", source="--solve")
    if not 0 <= headroom < 1:
        raise LorasizeError(f"must be in [0, 1), got {headroom}", source="--headroom")
    limit = int(gpu.memory_bytes * (1 - headroom))

    def at(value: int) -> Estimate:
        spec_lora, spec_train = _with(field, value, lora, train)
        return estimate(model, spec_lora, spec_train, gpu=gpu, shard=shard)

    lowest = at(1)
    if lowest.peak_bytes > limit:
        return None, lowest
    low, high = 1, search_limit(field, model)[0]
    while low < high:
        middle = (low + high + 1) // 2
        if at(middle).peak_bytes <= limit:
            low = middle
        else:
            high = middle - 1
    return low, at(low)


def fastest(model: ModelSpec, lora: LoraSpec, train: TrainSpec, gpu: GpuSpec,
            headroom: float = 0.0, shard: ShardSpec | None = None) -> list[dict]:
    """The settings that fit, fastest first: for checkpointing off and on, the largest batch
    that fits ``gpu`` and the tokens per second it runs at (the step-time model). A larger
    batch is never slower per token, so the largest that fits is each one's best.

    Returns:
        One dict per setting that fits (``batch_size``, ``grad_checkpointing``,
        ``tokens_per_s``, ``step_seconds``, ``train_peak_bytes``, and the step-time model's
        ``notes``: a faster attention setting, a launch-bound step), fastest first; empty when
        nothing fits.
    """
    from ..perf.timing import estimate_time

    found = []
    for checkpointing in (False, True):
        candidate = replace(train, grad_checkpointing=checkpointing)
        value, result = solve(model, lora, candidate, gpu, "batch-size", headroom, shard)
        if not value:
            continue
        timed = estimate_time(result)
        if timed is None:
            continue
        found.append({"batch_size": value, "grad_checkpointing": checkpointing,
                      "tokens_per_s": timed.tokens_per_s, "step_seconds": timed.step_seconds,
                      "bound": timed.bound, "train_peak_bytes": result.peak_bytes,
                      "notes": list(timed.notes)})
    return sorted(found, key=lambda c: -c["tokens_per_s"])


def fit_setup(model: ModelSpec, lora: LoraSpec, train: TrainSpec, gpu: GpuSpec,
              gpus: int | None = None, calibration=None) -> tuple[ShardSpec, Estimate] | None:
    """The first setup in :data:`SETUP_ORDER` whose per-GPU estimate fits ``gpu``.

    Args:
        gpus: the number of GPUs to share; None tries :data:`NODE_SIZES` in turn (the fewest
            GPUs first, then the cheapest setup at that count).

    Returns:
        (shard, estimate), or None when nothing fits.
    """
    for count in (gpus,) if gpus else NODE_SIZES:
        for sharding, offload in SETUP_ORDER:
            shard = ShardSpec(count, sharding, offload)
            result = estimate(model, lora, train, gpu=gpu, calibration=calibration, shard=shard)
            if result.fits:
                return shard, result
    return None


def fewest_gpus(model: ModelSpec, lora: LoraSpec, train: TrainSpec, gpu: GpuSpec,
                sharding: str, offload: str = "none", max_gpus: int = MAX_GPUS,
                calibration=None) -> tuple[ShardSpec, Estimate] | None:
    """The fewest GPUs on which ``sharding`` (with ``offload``) fits ``gpu``.

    Returns:
        (shard, estimate), or None when even ``max_gpus`` do not fit.

    Raises:
        LorasizeError: an unknown sharding or offload, or a combination no framework offers.
    """
    def at(count: int) -> Estimate:
        return estimate(model, lora, train, gpu=gpu, calibration=calibration,
                        shard=ShardSpec(count, sharding, offload))

    if sharding == "none":
        result = estimate(model, lora, train, gpu=gpu, calibration=calibration,
                          shard=ShardSpec(1, sharding, offload))
        return (result.shard, result) if result.fits else None
    if not at(max_gpus).fits:
        return None
    low, high = 1, max_gpus
    while low < high:
        middle = (low + high) // 2
        if at(middle).fits:
            high = middle
        else:
            low = middle + 1
    return ShardSpec(low, sharding, offload), at(low)


def sweep(model: ModelSpec, gpu: GpuSpec | None = None, **grid: Any):
    """Estimates over a grid, as a pandas DataFrame (one row per combination).

    Keyword arguments name :class:`LoraSpec` or :class:`TrainSpec` fields and give a value or a
    list of values, e.g. ``sweep(model, r=[8, 16, 64], seq_len=[512, 2048], targets=[("all",)])``.

    Raises:
        MissingExtraError: pandas is not installed.
    """
    try:
        import pandas as pd
    except ImportError:
        raise MissingExtraError("lorasize.sweep", "report", "pandas") from None
    lora_fields = set(LoraSpec.__dataclass_fields__)
    train_fields = set(TrainSpec.__dataclass_fields__)
    unknown = set(grid) - lora_fields - train_fields
    if unknown:
        raise LorasizeError(f"unknown sweep fields: {', '.join(sorted(unknown))}")
    names = list(grid)
    values = [v if isinstance(v, (list, tuple)) and not (name == "targets" and v and
                                                        isinstance(v[0], str)) else [v]
              for name, v in grid.items()]
    from ..perf.timing import estimate_time

    rows = []
    for combo in itertools.product(*values):
        chosen = dict(zip(names, combo))
        lora = LoraSpec(**{k: v for k, v in chosen.items() if k in lora_fields})
        train = TrainSpec(**{k: v for k, v in chosen.items() if k in train_fields})
        result = estimate(model, lora, train, gpu=gpu)
        row = dict(chosen)
        row.update({k: v for k, v in result.to_dict().items()
                    if k not in ("train_breakdown", "phase_peaks", "notes", "targets")})
        row.update({f"breakdown_{k}": v for k, v in result.breakdown.items()})
        timed = estimate_time(result) if gpu else None
        row.update(tokens_per_s=timed.tokens_per_s if timed else None,
                   step_seconds=timed.step_seconds if timed else None)
        rows.append(row)
    return pd.DataFrame(rows)
