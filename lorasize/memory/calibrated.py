"""The shipped calibration: overhead terms only a real GPU shows, as data the estimate reads.

``lorasize calibrate`` (:mod:`lorasize.calibrate.calibration`) fits them from measurements and
GPU profiles and writes ``lorasize/data/calibration.json``; this module only reads that file (a
leaf: the estimate depends on it, it depends on nothing above the memory model).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import LorasizeError
from ..files import read_json
from .allocator import DEFAULT_CUDA_CONTEXT_BYTES, DEFAULT_RESERVE_FRACTION

SCHEMA_VERSION = 1
DEFAULT_FILE = Path(__file__).resolve().parent.parent / "data" / "calibration.json"


@dataclass(frozen=True)
class Calibration:
    """Overhead terms that only a real GPU shows; ``lorasize calibrate`` fits them from profiles.

    Attributes:
        cuda_context_bytes: device memory outside torch's allocator (context, kernels).
        reserve_fraction: reserved bytes above the allocated peak, per byte of memory that comes
            and goes in a step (activations, logits, temporaries).
        source: where the numbers come from.
        mfu: model FLOPs utilisation of training steps (step time), fitted from GPU profiles;
            None: the step-time model (:mod:`lorasize.perf.steptime`) times the step.
    """

    cuda_context_bytes: int = DEFAULT_CUDA_CONTEXT_BYTES
    reserve_fraction: float = DEFAULT_RESERVE_FRACTION
    source: str = "built-in defaults (allocator.py)"
    mfu: float | None = None


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file.

    Raises:
        LorasizeError: missing file, not JSON, wrong schema version, or a field out of range
            (the message names it).
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise LorasizeError(f"field 'schema_version' must be {SCHEMA_VERSION}", source=str(path))
    context, fraction = data.get("cuda_context_bytes"), data.get("reserve_fraction")
    if not isinstance(context, int) or isinstance(context, bool) or context < 0:
        raise LorasizeError("field 'cuda_context_bytes' must be an integer of 0 or more",
                            source=str(path))
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction <= 1:
        raise LorasizeError("field 'reserve_fraction' must be a number in [0, 1]", source=str(path))
    mfu = data.get("mfu")
    if mfu is not None and (not isinstance(mfu, (int, float)) or isinstance(mfu, bool)
                            or not 0 < mfu <= 1):
        raise LorasizeError("field 'mfu' must be a number in (0, 1] or null", source=str(path))
    return Calibration(cuda_context_bytes=context, reserve_fraction=float(fraction),
                       source=str(data.get("source", path)),
                       mfu=None if mfu is None else float(mfu))


@lru_cache(maxsize=1)
def default_calibration() -> Calibration:
    """The shipped calibration, or the built-in defaults when the file is absent."""
    if DEFAULT_FILE.is_file():
        return load_calibration(DEFAULT_FILE)
    return Calibration()


