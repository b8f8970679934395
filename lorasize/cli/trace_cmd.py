"""``lorasize trace``: the exact tensor memory of a real training step, GPU-free."""

from __future__ import annotations

from dataclasses import replace

import json

import click

from ..memory.allocator import cublas_workspace_bytes
from ..estimate import estimate as run_estimate
from ..plan.render import table
from ..trace import trace as run_trace
from ..units import DTYPE_BYTES, format_bytes
from .estimate_cmd import build_specs, refuse_other_transformers
from .options import (lora_options, model_options, output_options, recipe_option, recipe_used,
                      train_options)

# Trace categories -> estimate components they correspond to.
COMPARED = (
    ("frozen weights + quantization", ("weights",), ("weights", "quant_constants")),
    ("trainable weights", ("trainable",), ("adapter",)),
    ("gradients", ("gradients",), ("gradients",)),
    ("optimizer state", ("optimizer",), ("optimizer",)),
    ("activations, logits, temporaries", ("activations", "temporaries", "inputs", "workspace"),
     ("activations", "logits", "temporaries")),
)


def compare(traced: dict, estimate) -> list[dict]:
    """Per component: traced bytes, estimated bytes, difference (the estimate without the cuBLAS
    workspace, which the trace cannot see)."""
    rows = []
    for label, trace_keys, estimate_keys in COMPARED:
        got = sum(traced["breakdown"].get(k, 0) for k in trace_keys)
        want = sum(estimate.breakdown[k] for k in estimate_keys)
        if estimate_keys[0] == "activations":
            want -= cublas_workspace_bytes(estimate.gpu.arch if estimate.gpu else None)
        rows.append({"component": label, "trace_bytes": got, "estimate_bytes": want,
                     "difference_bytes": want - got})
    return rows


@click.command()
@recipe_option
@model_options
@lora_options
@train_options
@output_options
@click.pass_context
def trace(ctx: click.Context, as_json: bool, **p) -> int:
    """Trace one real training step of the real model and PEFT adapter under fake tensors:
    the exact peak of tensor memory, on a CPU, next to the analytic estimate.

    Needs the torch extra: pip install "lorasize[torch]".

    \b
    Examples:
      lorasize trace --model llama2-7b --r 8 --targets qv --batch-size 1 --seq-len 512
      lorasize trace --model llama3-8b --method qlora --r 16 --targets all --seq-len 2048 \\
          --grad-checkpointing --json
    """
    p.setdefault("adapter_dtype", "fp32")
    model, lora, train = build_specs(ctx, p)
    refuse_other_transformers(model, train, "trace")
    recipe, given = recipe_used(ctx)
    traced = run_trace(model, lora, train).to_dict()
    # the trace runs no autocast (CPU fake tensors): the estimate it is held to is that step's
    est = run_estimate(model, lora, replace(train, autocast=False))
    rows = compare(traced, est)
    estimated_peak = est.allocated_bytes - cublas_workspace_bytes(None)
    estimated_reserved = est.reserved_bytes - cublas_workspace_bytes(None)
    if as_json:
        data = {k: traced[k] for k in ("peak_bytes", "reserved_bytes", "breakdown", "peak_op",
                                        "phase_peaks", "trainable_params", "seconds", "emulation")}
        data["estimate"] = {"allocated_bytes_without_cublas": estimated_peak,
                            "reserved_bytes_without_cublas": estimated_reserved,
                            "peak_moment": est.peak_moment, "components": rows}
        if recipe is not None:
            data["recipe"] = recipe.to_dict(given)
        click.echo(json.dumps(data, indent=2))
        return 0
    error = 100 * (estimated_peak / traced["peak_bytes"] - 1) if traced["peak_bytes"] else 0.0
    if recipe is not None:
        from ..recipes import render_recipe

        click.echo(render_recipe(recipe, given, {q.name for q in ctx.command.params},
                                 ctx.params) + "\n")
    out = [f"{model.name}: traced in {traced['seconds']:.1f} s ({traced['emulation']} emulation)",
           f"peak of allocated tensor memory: {traced['peak_bytes']:,} B "
           f"({format_bytes(traced['peak_bytes'])}) at {traced['peak_op']}",
           "phase peaks: " + ", ".join(f"{k} {format_bytes(v)}"
                                       for k, v in traced["phase_peaks"].items()),
           "at the peak: " + ", ".join(f"{k} {format_bytes(v)}"
                                       for k, v in traced["breakdown"].items() if v),
           f"estimate (without cuBLAS workspace, without autocast, as traced): "
           f"{format_bytes(estimated_peak)} ({error:+.2f}%) at {est.peak_moment}",
           *_fake_accumulation_note(model, train, traced),
           f"reserved, the traced steps replayed through the caching allocator: "
           f"{format_bytes(traced['reserved_bytes'])} (estimate: "
           f"{format_bytes(estimated_reserved)})", "",
           table([(r["component"], format_bytes(r["trace_bytes"]), format_bytes(r["estimate_bytes"]),
                   format_bytes(r["difference_bytes"])) for r in rows],
                 ("component at the peak", "trace", "estimate", "estimate - trace"), "lrrr")]
    click.echo("\n".join(out))
    return 0


def _fake_accumulation_note(model, train, traced: dict) -> list[str]:
    """A tied head's and the embedding's gradient shares meet in the autograd engine's input
    buffer; a GPU adds them in place, fake tensors cannot (torch's ``can_accumulate_inplace``
    refuses tensor subclasses), so the trace holds one embedding gradient more there."""
    if (train.method == "full" and model.tie_embeddings
            and traced["peak_op"] == "backward:aten.add.Tensor"):
        extra = model.vocab_size * model.hidden_size * int(DTYPE_BYTES[train.dtype])
        return [f"note: this peak holds one tied embedding gradient ({format_bytes(extra)}) more "
                f"than a GPU would: fake tensors cannot add the head's and the embedding's "
                f"gradient shares in place"]
    return []

