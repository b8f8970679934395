"""Profiles from many machines, merged into one set of calibration rows.

Users send back the profiles their runs wrote (``lorasize profile`` or the Trainer callback).
Before any of them reaches a fit, each is:

- **read** (every ``*.json`` under the folders given, recursively; a file that is not a profile
  is named with the reason and left out, it does not stop the others);
- **deduplicated**: the same run sent twice (same versions, device, configuration and
  measurements) counts once; the copy is named;
- **compared** with the estimate for the configuration it records (allocated bytes; on a CPU
  without the cuBLAS workspace only a GPU allocates);
- **named an outlier** when its allocated peak is more than :data:`OUTLIER_ERROR` from the
  estimate: such a run measured something the model does not describe (another process on the
  GPU, a code path the configuration does not record), and one such row would move a fitted
  constant more than every other row together. Outliers are listed, not fitted.

The software versions of the profiles kept are counted, so a calibration says what it was fitted on.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LorasizeError

# Beyond this relative error of the allocated peak, a profile is an outlier. The estimate's own
# error against published allocated peaks is a few percent (docs/accuracy.md, p90 7.5%), so
# 25% is three times past its tail.
OUTLIER_ERROR = 0.25
# A merge reads at most this many files (a folder of profiles from a fleet, not a disk).
MAX_PROFILE_FILES = 20_000
VERSION_KEYS = ("torch", "transformers", "peft", "bitsandbytes", "driver")


@dataclass(frozen=True)
class ProfileRow:
    """One profile file and what the merge made of it."""

    path: str
    status: str  # used, duplicate, outlier, oom, rejected
    detail: str = ""
    source: str = ""
    device: str = ""
    model: str = ""
    measured_bytes: int | None = None
    predicted_bytes: int | None = None

    @property
    def error(self) -> float | None:
        if not self.measured_bytes or self.predicted_bytes is None:
            return None
        return self.predicted_bytes / self.measured_bytes - 1

    def to_dict(self) -> dict:
        error = self.error
        return {"path": self.path, "status": self.status, "detail": self.detail,
                "source": self.source, "device": self.device, "model": self.model,
                "measured_bytes": self.measured_bytes, "predicted_bytes": self.predicted_bytes,
                "error_percent": None if error is None else round(100 * error, 2)}


@dataclass(frozen=True)
class Merged:
    """The profiles to fit from, and every file's row."""

    profiles: tuple[dict, ...]
    rows: tuple[ProfileRow, ...]
    versions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        counts = Counter(r.status for r in self.rows)
        return {"files": len(self.rows), **{s: counts.get(s, 0) for s in
                                              ("used", "duplicate", "outlier", "oom", "rejected")},
                "versions": self.versions, "profiles": [r.to_dict() for r in self.rows]}


def _files(folders: list[str]) -> list[Path]:
    found: list[Path] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise LorasizeError("no such folder", source=str(folder))
        for path in sorted(root.rglob("*.json")):
            found.append(path)
            if len(found) > MAX_PROFILE_FILES:
                raise LorasizeError(f"more than {MAX_PROFILE_FILES:,} JSON files under the "
                                    f"folders given; merge them in parts", source=str(folder))
    return found


def fingerprint(profile: dict) -> str:
    """The same run's digest: versions, device, configuration and measurements (not where or
    when the file was written)."""
    keyed = {k: profile.get(k) for k in ("versions", "device", "config", "measurements", "ranks")}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def predicted_allocated(profile: dict) -> int:
    """The estimate's allocated peak for the profile's configuration (the largest rank's for a
    multi-GPU profile is not modelled here: None is not returned, such profiles are skipped
    by the caller)."""
    from ..estimate import estimate
    from ..memory.allocator import cublas_workspace_bytes
    from .calibration import _profile_specs

    model, lora, train = _profile_specs(profile["config"])
    allocated = estimate(model, lora, train).allocated_bytes
    if profile["device"]["kind"] != "cuda":
        allocated -= cublas_workspace_bytes(None)
    return allocated


def merge_profiles(folders: list[str]) -> Merged:
    """Read, deduplicate and check every profile under ``folders``."""
    from ..profile.schema import load_profile

    rows, kept, seen = [], [], {}
    versions: dict[str, Counter] = {k: Counter() for k in VERSION_KEYS}
    for path in _files(folders):
        try:
            profile = load_profile(path)
        except LorasizeError as exc:
            rows.append(ProfileRow(str(path), "rejected", Exception.__str__(exc)))
            continue
        base = dict(source=(profile.get("source") or {}).get("kind", "profile"),
                    device=f"{profile['device']['kind']}:{profile['device']['name']}",
                    model=str(profile["config"]["model"].get("name", "")))
        digest = fingerprint(profile)
        if digest in seen:
            rows.append(ProfileRow(str(path), "duplicate", f"same run as {seen[digest]}", **base))
            continue
        seen[digest] = str(path)
        measured = profile["measurements"]
        if measured["oom"]:
            rows.append(ProfileRow(str(path), "oom", "ran out of memory", **base))
            kept.append(profile)
            continue
        peak = measured.get("peak_allocated_bytes")
        try:
            predicted = None if "ranks" in profile else predicted_allocated(profile)
        except (LorasizeError, TypeError, KeyError, ValueError) as exc:
            rows.append(ProfileRow(str(path), "rejected", f"its configuration cannot be "
                                   f"estimated: {exc}", **base))
            continue
        row = ProfileRow(str(path), "used", "", measured_bytes=peak, predicted_bytes=predicted,
                         **base)
        if row.error is not None and abs(row.error) > OUTLIER_ERROR:
            rows.append(ProfileRow(str(path), "outlier",
                                   f"allocated peak {100 * row.error:+.1f}% from the estimate "
                                   f"(beyond {OUTLIER_ERROR:.0%}): left out of the fit",
                                   measured_bytes=peak, predicted_bytes=predicted, **base))
            continue
        rows.append(row)
        kept.append(profile)
        for key in VERSION_KEYS:
            value = profile["versions"].get(key)
            if value:
                versions[key][str(value)] += 1
    return Merged(tuple(kept), tuple(rows),
                  {k: dict(sorted(c.items())) for k, c in versions.items() if c})


def render_merge(merged: Merged) -> str:
    """The merge as a table a person reads: one line per file."""
    from ..plan.render import table
    from ..units import format_bytes

    summary = merged.to_dict()
    out = [f"{summary['files']} profile files: {summary['used']} used, {summary['duplicate']} "
           f"duplicate, {summary['outlier']} outlier, {summary['oom']} out of memory, "
           f"{summary['rejected']} rejected"]
    rows = []
    for r in merged.rows:
        error = r.error
        rows.append((Path(r.path).name, r.status, r.device, r.source,
                     format_bytes(r.measured_bytes) if r.measured_bytes else "-",
                     format_bytes(r.predicted_bytes) if r.predicted_bytes is not None else "-",
                     "-" if error is None else f"{100 * error:+.1f}%", r.detail))
    if rows:
        out += ["", table(rows, ("profile", "status", "device", "from", "measured", "estimate",
                                 "error", "detail"), "llllrrrl")]
    if merged.versions:
        out += ["", "versions: " + "; ".join(
            f"{k} " + ", ".join(f"{v} ({n})" for v, n in counts.items())
            for k, counts in merged.versions.items())]
    return "\n".join(out)
