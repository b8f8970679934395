"""The published measurements shipped with lorasize (``lorasize/data/measurements``).

Copied from the project's shared measurement set: ``measured.csv`` (memory, parameter counts,
adapter sizes), ``timing.csv`` (training throughput) and ``serving.csv`` (multi-adapter serving),
each with an evidence file quoting the source of every row; their columns are documented in the
folder's README.md. ``timing_added.csv`` holds throughput rows gathered later from other
sources, in the same columns, kept out of every fit. ``validate`` and ``calibrate`` read them by
default, so the accuracy figures in the README can be reproduced from any install.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "data" / "measurements"
MEMORY = FOLDER / "measured.csv"
TIMING = FOLDER / "timing.csv"
# Throughput rows lorasize's maintainers gathered after the step-time fit was frozen, from sources
# outside the shared set (evidence in timing_added_evidence.md): never fitted, only reported.
TIMING_ADDED = FOLDER / "timing_added.csv"
SERVING = FOLDER / "serving.csv"
# Serving figures gathered later from other sources (evidence in serving_added_evidence.md): none
# shaped the serving model; `python -m lorasize.calibrate.serving_check` reports them.
SERVING_ADDED = FOLDER / "serving_added.csv"
