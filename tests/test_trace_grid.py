"""The estimator held to the trace (issue 3) over 8 architectures, shrunk to 2 layers.

Bars: the estimate's allocated bytes without the cuBLAS workspace within 1% of the traced peak;
weights (+ quantization constants), adapter and optimizer state at the peak, and every gradient
before the optimizer step, within 0.5%. The
default run checks a covering grid (every level of every axis on every architecture, 32 cells,
one subprocess); ``-m slow`` checks all 512 combinations, one subprocess per architecture.
``python tests/trace_grid.py full`` prints the whole agreement table.
"""

from __future__ import annotations

import pytest

from lorasize import resolve_model
from lorasize.memory.activations import sdpa_backend
from lorasize.trace import trace_many

from trace_grid import (ARCHITECTURES, cell, compare, covering_grid, failures,
                        full_grid, label)


def _check(cells: list[tuple]) -> None:
    specs = [cell(*c) for c in cells]
    problems = []
    for c, (spec, lora, train), outcome in zip(cells, specs, trace_many(specs)):
        if not outcome["ok"]:
            problems.append(f"{label(c)}: cannot trace: {outcome['error']}")
            continue
        bad = failures(compare(spec, lora, train, outcome["result"]))
        problems += [f"{label(c)}: {b}" for b in bad]
    assert not problems, "\n".join(problems)


def test_covering_grid_has_every_level_on_every_architecture():
    cells = covering_grid()
    assert {c[0] for c in cells} == set(ARCHITECTURES)
    for name in ARCHITECTURES:
        mine = [c for c in cells if c[0] == name]
        for axis in range(1, 7):
            assert len({c[axis] for c in mine}) == 2, (name, axis)


def test_estimator_agrees_with_trace_covering_grid():
    _check(covering_grid())


# The full grid's worst cells before each rule that brought them within 1% (issue 15):
WORST_CELLS = [
    # GPT-NeoX's parallel MLP in the first layer reads only the frozen embeddings' output and
    # saves nothing, nor do the LayerNorms that read it: +1.6% (+2.6% QLoRA)
    ("pythia-1b", 8, "qv", "lora", False, "sdpa", (2, 512)),
    ("pythia-1b", 64, "qv", "qlora", False, "eager", (2, 512)),
    # PEFT's ParamWrapper keeps bf16 copies of fp32 expert adapters for baddbmm: -1.3%
    ("mixtral-8x7b", 64, "all", "lora", False, "sdpa", (1, 256)),
    # a recompute's top is freed, its input norm saves the checkpoint itself, and it stops
    # before an output projection that saves nothing: +2.7%
    ("mistral-7b", 8, "qv", "qlora", True, "sdpa", (2, 512)),
    ("llama2-7b", 8, "all", "qlora", True, "sdpa", (2, 512)),
    # the math kernel does not keep its output, which o_proj's adapter then saves: -1.3%
    ("mistral-7b", 8, "all", "qlora", False, "sdpa", (2, 512)),
    # a 4-bit matmul's input, casts and product beside the weight it dequantizes: -1.8%
    ("mistral-7b", 8, "qv", "qlora", False, "sdpa", (1, 256)),
    # Phi-3's fused gate_up_proj, larger than down_proj, dequantized before the MLP's
    # intermediates exist: +1.9%
    ("phi3-mini", 8, "all", "qlora", True, "sdpa", (1, 256)),
]


def test_estimator_agrees_with_trace_on_the_worst_cells():
    _check(WORST_CELLS)


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_estimator_agrees_with_trace_full_grid(name):
    _check([c for c in full_grid() if c[0] == name])


@pytest.mark.parametrize("name", [*ARCHITECTURES, "gemma2-9b", "gpt2"])
@pytest.mark.parametrize("dtype_bytes", [2, 4])
def test_emulated_sdpa_kernel_is_the_estimators(name, dtype_bytes):
    """The trace's CUDA-emulation picks the SDPA kernel the estimator assumes."""
    from lorasize.trace.emulation import sdpa_kernel

    try:
        spec = resolve_model(name)
    except Exception:
        pytest.skip(f"{name} is not in the catalog")
    grouped = spec.num_heads != spec.num_kv_heads
    assert sdpa_kernel(dtype_bytes, spec.head_dim, grouped, masked=False) == sdpa_backend(
        spec, dtype_bytes)


@pytest.mark.parametrize("dtype_bytes,head_dim,grouped,kernel", [
    (2, 128, True, "flash"), (2, 256, False, "flash"), (2, 320, False, "efficient"),
    (2, 320, True, "math"), (4, 64, False, "efficient"), (4, 64, True, "math")])
def test_sdpa_kernel_rule(dtype_bytes, head_dim, grouped, kernel):
    from lorasize.trace.emulation import sdpa_kernel

    assert sdpa_kernel(dtype_bytes, head_dim, grouped, masked=False) == kernel
