"""The estimator-versus-trace grid (issue 3), shared by tests/test_trace_grid.py and by
``python tests/trace_grid.py`` which prints the agreement table of any part of the grid.

Architectures are shrunk to 2 decoder layers with their real widths: the trace's cost is the
number of ops, not their size, and full widths keep every family's ratios (head_dim, GQA groups,
vocabulary against hidden size) exactly as in the catalog.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import replace

from lorasize import LoraSpec, ModelSpec, TrainSpec, estimate, resolve_model
from lorasize.memory.allocator import cublas_workspace_bytes
from lorasize.memory.weights import static_bytes

ARCHITECTURES = ("llama2-7b", "llama3-8b", "mistral-7b", "mixtral-8x7b", "qwen2.5-7b",
                 "gemma-7b", "phi3-mini", "pythia-1b")
RANKS = (8, 64)
TARGETS = ("qv", "all")
METHODS = ("lora", "qlora")
CHECKPOINTING = (False, True)
ATTENTION = ("sdpa", "eager")
SIZES = ((1, 256), (2, 512))  # (batch, sequence)
SHRUNK_LAYERS = 2

TOTAL_TOLERANCE = 0.01  # the bar for allocated bytes against the traced peak (issue 15)
STATE_TOLERANCE = 0.005  # weights, adapter, gradients, optimizer state
# trace category at the peak -> estimate components it must match within STATE_TOLERANCE
STATE_COMPONENTS = (("weights", ("weights", "quant_constants")), ("trainable", ("adapter",)),
                    ("optimizer", ("optimizer",)))
# Gradients are compared as state too: every gradient as backward leaves it for the optimizer
# step, against the trace's count just before ``optimizer.step()``. Which of them are alive at
# the backward peak depends on the op inside a layer's backward that the peak falls on (the
# recompute of the first layer, before or after the MLP output projection's adapter gradients);
# the total holds that moment to TOTAL_TOLERANCE.


def shrunk(name: str, layers: int = SHRUNK_LAYERS) -> ModelSpec:
    """The catalog architecture with ``layers`` decoder layers and its real widths."""
    spec = resolve_model(name)
    return ModelSpec.from_hf_config(dict(spec.hf_config, num_hidden_layers=layers), name=name)


def cell(name: str, r: int, targets: str, method: str, checkpointing: bool, attn: str,
         size: tuple[int, int]) -> tuple[ModelSpec, LoraSpec, TrainSpec]:
    """One grid cell as specs.

    Mixtral QLoRA runs without PEFT's kbit preparation: its fp32 upcast reaches the 3-D expert
    weights, which transformers 5's grouped-mm experts refuse (docs/trace.md)."""
    spec = shrunk(name)
    kbit_prep = False if (method == "qlora" and spec.num_experts) else None
    train = TrainSpec(method=method, batch_size=size[0], seq_len=size[1], attn=attn,
                      grad_checkpointing=checkpointing, kbit_prep=kbit_prep)
    return spec, LoraSpec(r=r, targets=(targets,)), train


def full_grid() -> list[tuple]:
    """Every combination: 8 x 2 x 2 x 2 x 2 x 2 x 2 = 512 cells (marked slow)."""
    return list(itertools.product(ARCHITECTURES, RANKS, TARGETS, METHODS, CHECKPOINTING,
                                  ATTENTION, SIZES))


def covering_grid() -> list[tuple]:
    """Every architecture with every level of every other axis at least once, and every pair
    of (method, checkpointing, attention) levels: 4 cells per architecture, rotated so that no
    two architectures share the same four."""
    base = [("lora", False, "sdpa"), ("qlora", True, "sdpa"), ("lora", True, "eager"),
            ("qlora", False, "eager")]
    cells = []
    for i, name in enumerate(ARCHITECTURES):
        for j, (method, checkpointing, attn) in enumerate(base):
            r = RANKS[(i + j) % 2]
            targets = TARGETS[(i // 2 + j) % 2]
            size = SIZES[(i + j // 2) % 2]
            cells.append((name, r, targets, method, checkpointing, attn, size))
    return cells


def traced_cells(configs: list[tuple]) -> list[tuple]:
    """((spec, lora, train), trace result) for each config, traced in worker processes; every
    trace must succeed."""
    from lorasize.trace import trace_many

    outcomes = trace_many(configs)
    for outcome in outcomes:
        assert outcome["ok"], outcome.get("error")
    return list(zip(configs, [o["result"] for o in outcomes]))


def within(traced: list[tuple], tolerance: float) -> None:
    """Every traced cell's total within ``tolerance`` of the estimate."""
    for (spec, lora, train), result in traced:
        rows = compare(spec, lora, train, result)
        assert abs(rows["total"][2]) <= tolerance, (
            spec.name, lora.targets, lora.dora, train.seq_len, train.checkpointing, rows["total"])


def compare(spec: ModelSpec, lora: LoraSpec, train: TrainSpec, traced: dict) -> dict:
    """Estimate against trace for one cell: ``{component: (estimate, trace, relative error)}``.

    The estimate's allocated bytes lose the cuBLAS workspace, which the trace cannot see, and it
    is the step without autocast, as traced."""
    e = estimate(spec, lora, replace(train, autocast=False))
    rows = {"total": (e.allocated_bytes - cublas_workspace_bytes(None), traced["peak_bytes"])}
    for category, components in STATE_COMPONENTS:
        rows[category] = (sum(e.breakdown[c] for c in components),
                          traced["breakdown"].get(category, 0))
    rows["gradients"] = (static_bytes(e.model, e.targets, e.train, e.lora.dora).gradients,
                         traced["gradient_bytes"])
    return {k: (want, got, (want - got) / got if got else (0.0 if want == got else float("inf")))
            for k, (want, got) in rows.items()}


def failures(rows: dict) -> list[str]:
    """The components outside their tolerance, each with its numbers."""
    bad = []
    for name, (want, got, error) in rows.items():
        limit = TOTAL_TOLERANCE if name == "total" else STATE_TOLERANCE
        if abs(error) > limit:
            bad.append(f"{name}: estimate {want:,} trace {got:,} ({100 * error:+.2f}%)")
    return bad


def label(c: tuple) -> str:
    name, r, targets, method, checkpointing, attn, (batch, seq) = c
    return (f"{name} r{r} {targets} {method} {'gc' if checkpointing else 'nogc'} {attn} "
            f"b{batch}s{seq}")


def main(argv: list[str]) -> int:
    """``python tests/trace_grid.py [full|covering] [k/n]``: print the agreement table."""
    import json

    from lorasize.trace import trace_many

    cells = full_grid() if (argv[:1] or ["covering"])[0] == "full" else covering_grid()
    if len(argv) > 1:
        k, n = map(int, argv[1].split("/"))
        cells = cells[k::n]
    outcomes = trace_many([cell(*c) for c in cells])
    for c, outcome in zip(cells, outcomes):
        if not outcome["ok"]:
            print(json.dumps({"cell": label(c), "error": outcome["error"]}), flush=True)
            continue
        rows = compare(*cell(*c), outcome["result"])
        print(json.dumps({"cell": label(c), "rows": rows, "peak_op": outcome["result"]["peak_op"],
                          "bad": failures(rows)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def peaks(cases) -> tuple[list[int], list[int]]:
    """The traced (one subprocess) and estimated peak bytes of each ``(spec, lora, train)``."""
    from lorasize.trace import trace_many

    traced = []
    for outcome in trace_many(list(cases)):
        assert outcome["ok"], outcome.get("error")
        traced.append(outcome["result"]["peak_bytes"])
    return traced, [estimate(*case).allocated_bytes for case in cases]
