"""Record what torchtune 0.1's own code allocates while it builds and loads a model.

The ground truth of ``tests/test_init_programs.py``: for each case below, torchtune@fef3ed10d
(v0.1.x, with torchao 0.1) builds the model as ``recipes/lora_finetune_single_device.py`` does
(bf16, on the device, activation checkpointing, the checkpoint copied in with
``load_state_dict(strict=False)``), on the CPU under fake compute
(``benchmarks/torchtune_reserved/replay.py``); every allocation and free is recorded. Written to
``tests/data/torchtune/init_events.json``: per case, the events (keys renumbered in allocation
order) as a SHA-256, their count, and what the caching allocator model holds after them.
``scripts/torchtune_init_events.py --templates`` also rewrites torchao's NF4 templates
(``lorasize/data/programs/torchao_0.1_nf4.json``) from two weight shapes.

Needs torchtune's and torchao's sources (not installed; see benchmarks/torchtune_reserved):

    git clone https://github.com/pytorch/torchtune /tmp/torchtune && git -C /tmp/torchtune checkout fef3ed10d
    git clone https://github.com/pytorch/ao /tmp/ao && git -C /tmp/ao checkout v0.1
    python3 -m venv --system-site-packages /tmp/tt-venv && /tmp/tt-venv/bin/pip install "setuptools<70"
    TORCHTUNE_SRC=/tmp/torchtune TORCHAO_SRC=/tmp/ao PYTHONPATH=$PWD /tmp/tt-venv/bin/python scripts/torchtune_init_events.py
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "torchtune_reserved"))
OUT = ROOT / "tests" / "data" / "torchtune" / "init_events.json"

# (case, builder, its arguments): the published tables' Llama-2-7B runs and variations of shape
# (grouped-query attention, a longer rope cache), targets, rank and quantization.
CASES = [
    ("llama2-7b-lora-qv-r8", "lora_llama2_7b",
     dict(lora_attn_modules=["q_proj", "v_proj"], lora_rank=8, lora_alpha=16)),
    ("llama2-7b-lora-all-r8-output", "lora_llama2_7b",
     dict(lora_attn_modules=["q_proj", "k_proj", "v_proj", "output_proj"], apply_lora_to_mlp=True,
          apply_lora_to_output=True, lora_rank=8, lora_alpha=16)),
    ("llama2-7b-lora-qv-r64", "lora_llama2_7b",
     dict(lora_attn_modules=["q_proj", "v_proj"], lora_rank=64, lora_alpha=16)),
    ("llama2-7b-qlora-all-r8", "lora_llama2_7b",
     dict(lora_attn_modules=["q_proj", "v_proj", "k_proj", "output_proj"], apply_lora_to_mlp=True,
          lora_rank=8, lora_alpha=16, quantize_base=True)),
    ("llama2-7b-qlora-qv-r16", "lora_llama2_7b",
     dict(lora_attn_modules=["q_proj", "v_proj"], lora_rank=16, lora_alpha=32,
          quantize_base=True)),
    ("mistral-7b-qlora-all-r8", "lora_mistral_7b",
     dict(lora_attn_modules=["q_proj", "k_proj", "v_proj", "output_proj"], apply_lora_to_mlp=True,
          lora_rank=8, lora_alpha=16, quantize_base=True)),
]


class _Recorder:
    """Takes the tracker's allocations and frees as events."""

    def __init__(self):
        self.events = []

    def malloc(self, key, nbytes):
        self.events.append(("a", key, nbytes))

    def free(self, key):
        self.events.append(("f", key))


def _recording():
    """(recorder, tracker, fake-compute mode) with torchao's NF4 ops."""
    import run_init  # noqa: F401 (sources on the path, NF4 copy_ for a host checkpoint)
    import torchao.dtypes.nf4tensor as nf4mod
    import replay

    recorder = _Recorder()
    tracker = replay.Tracker(recorder)
    tracker.log = None
    return recorder, tracker, replay.FakeCompute(tracker, nf4mod.NF4_OPS_TABLE, nf4mod.NF4Tensor)


def record(builder: str, args: dict) -> list:
    import torch

    recorder, tracker, mode = _recording()  # first: it puts torchtune's source on the path
    from torchtune import models, modules, utils
    from torchtune.modules.peft.peft_utils import get_adapter_params, set_trainable_params

    build = getattr(models.llama2, builder, None) or getattr(models.mistral, builder)
    with mode:
        with utils.set_default_dtype(torch.bfloat16), torch.device("cpu"):
            model = build(**args)
        set_trainable_params(model, get_adapter_params(model))
        utils.set_activation_checkpointing(model, auto_wrap_policy={modules.TransformerDecoderLayer})
    state = {name.replace("._checkpoint_wrapped_module", ""): torch.empty(
        tuple(p.shape), dtype=torch.float16, device="meta")
        for name, p in model.named_parameters() if "lora_" not in name}
    with mode:
        model.load_state_dict(state, strict=False)
    return recorder.events


def digest(events) -> str:
    from lorasize.memory.init_programs import normalized

    return hashlib.sha256(json.dumps(normalized(events)).encode()).hexdigest()


NF4_OUT = ROOT / "lorasize" / "data" / "programs" / "torchao_0.1_nf4.json"
# The components of an NF4 tensor each template leaves alive, by the order they are allocated in
# it, and the names its frees give what it did not allocate (the input weight; the components
# of the tensor a copy_ replaces, allocated by the to_nf4 that made it).
NF4_KEEPS = {"to_nf4": {"lut": 0, "mean": 4, "factor": 11, "scalers": 15, "data": 26},
             "deepcopy": {"scalers": 41, "factor": 45, "mean": 49, "data": 52, "lut": 56},
             "copy_": {"lut": 2, "mean": 6, "factor": 13, "scalers": 17, "data": 28}}
OUTSIDE = {0: "input", 1: "lut", 5: "mean", 12: "factor", 16: "scalers", 27: "data"}


def nf4_section(shape: tuple, what: str) -> tuple[list, list]:
    """The events before and of one NF4 operation on a weight of ``shape``."""
    import copy

    import torch

    recorder, tracker, mode = _recording()  # first: it puts torchao's source on the path
    from torchao.dtypes.nf4tensor import to_nf4

    keep = []
    checkpoint = torch.empty(shape, dtype=torch.float16, device="meta")  # a host tensor: untracked
    with mode:
        weight = torch.empty(shape, dtype=torch.bfloat16)
        tracker.track(weight)
        if what == "to_nf4":
            start = len(recorder.events)
            keep.append(to_nf4(weight))
            del weight
        else:
            param = torch.nn.Parameter(to_nf4(weight), requires_grad=False)
            del weight
            start = len(recorder.events)
            if what == "deepcopy":
                keep += [param, copy.deepcopy(param)]
            else:
                param.copy_(checkpoint)
                keep.append(param)
        end = len(recorder.events)
    return recorder.events[:start], recorder.events[start:end]


def nf4_templates() -> dict:
    """torchao 0.1's NF4 programs, every size affine in the weight's elements (two shapes)."""
    from fractions import Fraction

    out = {}
    for what in ("to_nf4", "deepcopy", "copy_"):
        runs = []
        for shape in ((4096, 4096), (11008, 4096)):
            before, section = nf4_section(shape, what)
            outside = {e[1]: i for i, e in enumerate(e for e in before if e[0] == "a")}
            local: dict = {}
            events = []
            for e in section:
                if e[0] == "a":
                    local[e[1]] = len(local)
                    events.append(("a", local[e[1]], e[2]))
                else:
                    events.append(("f", local[e[1]] if e[1] in local else OUTSIDE[outside[e[1]]]))
            runs.append((shape[0] * shape[1], events))
        (n1, first), (n2, second) = runs
        assert [e[:2] for e in first] == [e[:2] for e in second], what
        template = []
        for a, b in zip(first, second):
            if a[0] == "a":
                coef = Fraction(b[2] - a[2], n2 - n1)
                template.append(["a", a[1], str(coef), int(a[2] - coef * n1)])
            else:
                template.append(["f", a[1]])
        out[what] = {"events": template, "keeps": NF4_KEEPS[what]}
    return out


def main() -> int:
    from lorasize.memory.init_programs import normalized, replay as replay_events

    if "--templates" in sys.argv:
        data = json.loads(NF4_OUT.read_text())
        data.update(nf4_templates())
        NF4_OUT.write_text(json.dumps(data, separators=(",", ":")) + "\n")
        print(f"wrote {NF4_OUT}")

    cases = []
    for name, builder, args in CASES:
        events = record(builder, args)
        allocator = replay_events(normalized(events))
        cases.append({"case": name, "builder": builder, "args": args, "events": len(events),
                      "sha256": digest(events), "reserved": allocator.reserved,
                      "allocated": allocator.allocated, "peak_allocated": allocator.peak_allocated})
        print(name, len(events), allocator.reserved, allocator.allocated)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "about": "torchtune@fef3ed10d (v0.1.x) with torchao 0.1 building and loading each model "
                 "(scripts/torchtune_init_events.py): the allocation events, replayed through "
                 "lorasize.memory.caching_allocator.",
        "torchtune": "pytorch/torchtune@fef3ed10d", "torchao": "pytorch/ao@v0.1",
        "cases": cases}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
