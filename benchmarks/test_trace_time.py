"""Time of a whole ``lorasize trace`` process for Llama-2-7B r=8 on q,v (imports included).

Target (issue: the trace tier): 20 s or less on 2 cores, aim 10, under 1 GiB of host memory.
Run with ``python3 -m pytest benchmarks --benchmark-enable``.
"""

from __future__ import annotations

import subprocess
import sys


def _run_trace() -> None:
    subprocess.run([sys.executable, "-m", "lorasize", "trace", "--model", "llama2-7b", "--r", "8",
                    "--targets", "qv", "--json"], check=True, capture_output=True)


def test_trace_llama2_7b_process(benchmark):
    benchmark.pedantic(_run_trace, rounds=3, warmup_rounds=0)
