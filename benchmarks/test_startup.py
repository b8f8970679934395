"""Start-up time of the command people run most: a cold ``lorasize estimate`` process.

Target: 0.3 s or less on a 2-core machine (issue: the analytic estimator). Run with
``python3 -m pytest benchmarks --benchmark-enable``.
"""

from __future__ import annotations

import subprocess
import sys

TARGET_SECONDS = 0.3


def _run_estimate() -> None:
    subprocess.run([sys.executable, "-m", "lorasize", "estimate", "--model", "llama2-7b", "--r",
                    "64", "--targets", "all", "--gpu", "a100-40gb", "--json"],
                   check=True, capture_output=True)


def test_cold_estimate_process(benchmark):
    benchmark.pedantic(_run_estimate, rounds=10, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.median > TARGET_SECONDS:
        print(f"median {stats.stats.median:.3f} s is above the {TARGET_SECONDS} s target")


def test_estimate_call(benchmark):
    from lorasize import LoraSpec, TrainSpec, estimate, resolve_model

    spec = resolve_model("llama3-70b")
    benchmark(estimate, spec, LoraSpec(r=64, targets=("all",)),
              TrainSpec(method="qlora", batch_size=4, seq_len=4096, grad_checkpointing=True))


def _run_card_estimate() -> None:
    subprocess.run([sys.executable, "-m", "lorasize", "estimate", "--model", "gemma4-26b-a4b",
                    "--r", "16", "--targets", "all", "--gpu", "h100-80gb", "--json"],
                   check=True, capture_output=True)


def test_cold_estimate_process_card_model(benchmark):
    """A catalog model read from its architecture card: torch-free, same target. Measured
    (farm-bench, 7 runs, 2 cores): 0.223 s median against 0.204 s for llama3-8b."""
    benchmark.pedantic(_run_card_estimate, rounds=10, warmup_rounds=1)
