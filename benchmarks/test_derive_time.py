"""Time to answer for a config outside the catalog (the derived path): a cold process that
imports torch, transformers and PEFT, builds the model on the meta device twice (weights, then
PEFT's all-linear) and estimates. Target (issue: architectures derived from transformers):
under 10 s for an 8B model, torch import included. Measured (farm-bench, 3 runs, 2 cores, a
Llama-3-8B-shaped OLMo 3 config, the test suite running beside it): 7.0 s median, 453 MiB.

Run with ``python3 -m pytest benchmarks --benchmark-enable``.
"""

from __future__ import annotations

import json
import subprocess
import sys

TARGET_SECONDS = 10.0


def test_cold_derived_estimate(benchmark, tmp_path):
    import transformers

    config = transformers.Olmo3Config(hidden_size=4096, intermediate_size=14336,
                                      num_hidden_layers=32, num_attention_heads=32,
                                      num_key_value_heads=8, vocab_size=128256).to_dict()
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))

    def run() -> None:
        subprocess.run([sys.executable, "-m", "lorasize", "estimate", "--model", str(path),
                        "--targets", "all", "--json"], check=True, capture_output=True)

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
