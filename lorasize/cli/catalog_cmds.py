"""``lorasize models`` and ``lorasize gpus``: the catalogs."""

from __future__ import annotations

import json

import click

from ..arch.catalog import gpu_entries, model_entries, model_from_catalog
from ..arch.layout import total_params
from ..plan.render import table
from ..units import BYTES_PER_MIB, format_bytes
from .options import output_options


@click.command()
@output_options
def models(as_json: bool) -> int:
    """List the catalog models with their dimensions and where they came from.

    \b
    Example:
      lorasize models --json
    """
    rows = []
    for entry in model_entries():
        spec = model_from_catalog(entry["name"])  # a card model reads its card: no torch
        rows.append({
            "name": entry["name"], "hf_id": entry["hf_id"], "model_type": spec.model_type,
            "params": total_params(spec), "layers": spec.num_layers, "hidden": spec.hidden_size,
            "heads": spec.num_heads, "kv_heads": spec.num_kv_heads, "head_dim": spec.head_dim,
            "intermediate": spec.intermediate_size, "vocab": spec.vocab_size,
            "experts": spec.num_experts, "tied_embeddings": spec.tie_embeddings,
            "aliases": list(entry.get("aliases", ())), "source": entry["url"],
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    click.echo(table(
        [(r["name"], f"{r['params'] / 1e9:.2f}B", r["model_type"], str(r["layers"]), str(r["hidden"]),
          f"{r['heads']}/{r['kv_heads']}", str(r["vocab"]), r["hf_id"]) for r in rows],
        ("name", "params", "type", "layers", "hidden", "heads/kv", "vocab", "hub id"),
        "lrlrrrrl"))
    return 0


@click.command()
@output_options
def gpus(as_json: bool) -> int:
    """List the catalog GPUs: memory, datasheet and measured TFLOP/s, bandwidth.

    Memory is the total nvidia-smi reports; "bf16 TFLOP/s" the datasheet's dense peak;
    "measured" the bf16 matmul rate the card is measured to reach in public benchmarks, which
    the step-time model times GEMMs against ("-" where none is published: the datasheet times
    the median ratio of the measured cards).

    \b
    Example:
      lorasize gpus
    """
    rows = [dict(entry, memory_bytes=entry["memory_mib"] * BYTES_PER_MIB,
                 aliases=list(entry.get("aliases", ()))) for entry in gpu_entries()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    click.echo(table(
        [(r["name"], f"{r['memory_mib']:,} MiB", format_bytes(r["memory_bytes"], "GiB"), r["arch"],
          f"{r['bf16_tflops']:g}", f"{r['matmul_tflops']:g}" if r.get("matmul_tflops") else "-",
          f"{r['bandwidth_gbps']:g}") for r in rows],
        ("name", "memory", "", "arch", "bf16 TFLOP/s", "measured", "GB/s"), "lrrlrrr"))
    return 0
