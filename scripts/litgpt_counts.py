"""Count litgpt's trainable LoRA parameters with litgpt's own code, on the meta device.

The ground truth of ``tests/test_parts.py``: for each litgpt config and set of
``lora_*`` switches, build ``litgpt.lora.GPT`` on the meta device, call
``mark_only_lora_as_trainable`` (as ``litgpt/finetune/lora.py`` does, bias ``"none"``) and count
what trains. Needs litgpt (not a test dependency: its pins conflict with transformers 5); in a
separate environment:

    python3 -m venv /tmp/litgpt-venv && /tmp/litgpt-venv/bin/pip install torch==2.13.0 litgpt==0.5.13
    /tmp/litgpt-venv/bin/python scripts/litgpt_counts.py   # writes tests/data/litgpt/lora_counts.json

Recorded with litgpt 0.5.13 (Lightning-AI/litgpt@26857050fe3f), torch 2.13.0+cpu.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "litgpt" / "lora_counts.json"
SWITCHES = ("lora_query", "lora_key", "lora_value", "lora_projection", "lora_mlp", "lora_head")
ALL = dict.fromkeys(SWITCHES, True)
QV = {name: name in ("lora_query", "lora_value") for name in SWITCHES}
# (litgpt config name, the Hugging Face id lorasize reads, switches, r)
RUNS = [
    ("Phi-3-mini-4k-instruct", "microsoft/Phi-3-mini-4k-instruct", ALL, 8),
    ("Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf", QV, 8),
    ("Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf", ALL, 8),
    ("Llama-3-8B", "meta-llama/Meta-Llama-3-8B", ALL, 16),
    ("Llama-3-8B", "meta-llama/Meta-Llama-3-8B", QV, 16),
    ("Mistral-7B-v0.1", "mistralai/Mistral-7B-v0.1", ALL, 8),
    ("Gemma-2b", "google/gemma-2b", ALL, 8),
    ("Gemma-2-2b", "google/gemma-2-2b", ALL, 8),
    ("Qwen2.5-7B", "Qwen/Qwen2.5-7B", ALL, 8),
    ("tiny-llama-1.1b", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", ALL, 8),
    ("Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x7B-v0.1", ALL, 8),
    ("Qwen3-30B-A3B", "Qwen/Qwen3-30B-A3B", ALL, 8),
    ("pythia-1b", "EleutherAI/pythia-1b", ALL, 8),
    ("pythia-1b", "EleutherAI/pythia-1b", QV, 8),
    ("falcon-7b", "tiiuae/falcon-7b", ALL, 8),
    ("phi-2", "microsoft/phi-2", ALL, 8),
    ("Llama-3.2-1B", "meta-llama/Llama-3.2-1B", ALL, 8),
    ("Qwen3-8B", "Qwen/Qwen3-8B", ALL, 8),
]


def count(name: str, switches: dict, r: int) -> dict:
    import torch
    from litgpt.lora import GPT, Config, mark_only_lora_as_trainable

    config = Config.from_name(name, lora_r=r, lora_alpha=16, **switches)
    with torch.device("meta"):
        model = GPT(config)
    mark_only_lora_as_trainable(model)
    trainable = {n: list(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "layer_0": {n: s for n, s in trainable.items()
                        if n.startswith("transformer.h.0.") and ".experts." not in n
                        or ".experts.0." in n},
            "outside_layers": {n: s for n, s in trainable.items()
                               if not n.startswith("transformer.h.")}}


def main() -> None:
    import torch

    runs = []
    for name, hub_id, switches, r in RUNS:
        runs.append({"litgpt_config": name, "model": hub_id, "r": r,
                     "switches": [s for s in SWITCHES if switches[s]], **count(name, switches, r)})
        print(f"{name:24} r={r:<3} {runs[-1]['trainable']:>13,}")
    meta = {"litgpt": importlib.metadata.version("litgpt"), "torch": torch.__version__,
            "commit": "Lightning-AI/litgpt@26857050fe3ff627cd714fe92f5838f51a3d5efa",
            "made_by": "scripts/litgpt_counts.py"}
    OUT.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
