"""Count what one lit-gpt decoder layer asks of the CPU, with lit-gpt's own 2023 code.

The ground truth of ``tests/test_step_time.py``'s lit-gpt launch counts: for each config, build
``lit_gpt.lora.GPT`` (lit-gpt @8641822, the code of its Oct 2023 resource tables) with LoRA on q
and v on the meta device, run one forward and backward under a ``TorchDispatchMode``, and record

- ``forward_ops_per_layer``, ``backward_ops_per_layer``: aten ops that launch a kernel (views
  and metadata left out), a model of two layers less a model of one, with the attention counted
  as a CUDA build
  runs it (one fused kernel forward, one backward: the math decomposition the meta device takes
  is counted on its own and taken out);
- ``lora_ind``: the Python list ``LoRAQKVLinear.zero_pad`` turns into a tensor in every forward.

Needs lit-gpt's code and Lightning (not test dependencies); in a separate environment:

    git clone https://github.com/Lightning-AI/litgpt /tmp/litgpt && git -C /tmp/litgpt checkout 8641822
    python3 -m venv --system-site-packages /tmp/lit-venv && /tmp/lit-venv/bin/pip install lightning
    LIT_GPT=/tmp/litgpt /tmp/lit-venv/bin/python scripts/litgpt_kernel_counts.py

Recorded with lit-gpt @8641822, lightning 2.6.6, torch 2.13.0+cpu.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "litgpt" / "kernel_counts.json"
# (lit-gpt config name, the model lorasize reads)
RUNS = [("phi-1_5", "phi-1.5"), ("stablelm-base-alpha-3b", "stablelm-base-alpha-3b"),
        ("Llama-2-7b-hf", "llama2-7b"), ("Llama-2-13b-hf", "llama2-13b")]
# ops that launch no kernel: views, metadata, allocation without a fill
NO_KERNEL = {"view", "_unsafe_view", "t", "transpose", "expand", "permute", "reshape", "alias",
             "detach", "slice", "select", "unsqueeze", "squeeze", "as_strided", "split",
             "split_with_sizes", "unbind", "chunk", "narrow", "view_as", "_reshape_alias",
             "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty",
             "new_empty_strided", "unflatten", "flatten", "movedim", "diagonal"}
FUSED_ATTENTION_KERNELS = 1  # flash / memory-efficient: one kernel forward, one backward
SEQ = 128


def _counter():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in NO_KERNEL:
                self.ops += 1
            return func(*args, **(kwargs or {}))

    return Count()


def _model_ops(name: str, layers: int) -> tuple[int, int, list]:
    import torch
    from lit_gpt.lora import GPT, Config, mark_only_lora_as_trainable

    config = Config.from_name(name, n_layer=layers, r=8, alpha=16, dropout=0.05, to_query=True,
                              to_key=False, to_value=True)
    with torch.device("meta"):
        model = GPT(config).to(torch.bfloat16)
    mark_only_lora_as_trainable(model)
    model.max_seq_length = SEQ
    x = torch.zeros(1, SEQ, dtype=torch.long, device="meta")
    with _counter() as forward:
        loss = model(x).float().sum()
    with _counter() as backward:
        loss.backward()
    return forward.ops, backward.ops, model.transformer.h[0].attn.attn.lora_ind


def _attention_ops(name: str) -> tuple[int, int]:
    """The ops the meta device's math attention runs, forward and backward, for one layer."""
    import torch
    from lit_gpt.config import Config

    c = Config.from_name(name)
    q = torch.zeros(1, c.n_head, SEQ, c.head_size, device="meta", dtype=torch.bfloat16,
                    requires_grad=True)
    k, v = (torch.zeros_like(q, requires_grad=True) for _ in range(2))
    with _counter() as forward:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    loss = out.sum()
    with _counter() as backward:
        loss.backward()
    with _counter() as bare:  # the sum's backward, which the layer does not run
        torch.zeros_like(q, requires_grad=True).sum().backward()
    return forward.ops, backward.ops - bare.ops


def main() -> None:
    import torch

    sys.path.insert(0, os.environ.get("LIT_GPT", "/tmp/litgpt"))
    runs = []
    for name, model in RUNS:
        forward_1, backward_1, lora_ind = _model_ops(name, 1)
        forward_2, backward_2, _ = _model_ops(name, 2)
        attention_forward, attention_backward = _attention_ops(name)
        forward = forward_2 - forward_1 - attention_forward + FUSED_ATTENTION_KERNELS
        backward = backward_2 - backward_1 - attention_backward + FUSED_ATTENTION_KERNELS
        runs.append({"litgpt_config": name, "model": model, "targets": ["q_proj", "v_proj"],
                     "forward_ops_per_layer": forward, "backward_ops_per_layer": backward,
                     "lora_ind": len(lora_ind)})
        print(f"{name:24} {forward:4d} + {backward:4d} ops a layer, {len(lora_ind):6d} indices")
    meta = {"lightning": importlib.metadata.version("lightning"), "torch": torch.__version__,
            "commit": "Lightning-AI/litgpt@8641822", "seq_len": SEQ,
            "made_by": "scripts/litgpt_kernel_counts.py"}
    OUT.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
