"""``lorasize inspect``: what an existing adapter file holds, next to what we predict."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import click

from ..errors import LorasizeError
from ..estimate import adapter_file_bytes
from ..arch.lora import LoraSpec, resolve_targets
from ..plan.render import table
from ..arch.resolve import ADAPTER_CONFIG, read_adapter_config, resolve_model
from ..arch.safetensors_format import read_header
from ..units import format_bytes, format_count
from .options import output_options

ADAPTER_WEIGHTS = "adapter_model.safetensors"
_SAVE_DTYPES = {"F32": "fp32", "BF16": "bf16", "F16": "fp16"}


def _files(path: Path) -> tuple[Path, Path | None]:
    if path.is_dir():
        weights, config = path / ADAPTER_WEIGHTS, path / ADAPTER_CONFIG
        if not weights.is_file():
            raise LorasizeError(f"no {ADAPTER_WEIGHTS} in this folder", source=str(path))
        return weights, config if config.is_file() else None
    if not path.is_file():
        raise LorasizeError("no such file or folder", source=str(path))
    config = path.parent / ADAPTER_CONFIG
    return path, config if config.is_file() else None


def inspect_adapter(path: str, model: str | None = None) -> dict:
    """Read an adapter's safetensors header and, when its config allows, predict it too."""
    weights, config_path = _files(Path(path).expanduser())
    tensors, metadata = read_header(weights)
    dtypes = Counter(t.dtype for t in tensors)
    report = {
        "file": str(weights), "file_bytes": weights.stat().st_size, "tensors": len(tensors),
        "params": sum(t.numel for t in tensors), "data_bytes": sum(t.nbytes for t in tensors),
        "dtypes": dict(dtypes), "metadata": metadata, "predicted": None,
    }
    if config_path is None:
        return report
    adapter = read_adapter_config(config_path)
    base = model or adapter.base_model
    r = adapter.r if adapter.r is not None else (8 if adapter.variant == "ia3" else None)
    if not base or r is None or not adapter.targets:
        return report
    spec = resolve_model(base, "--model" if model else str(config_path))
    lora = LoraSpec(r=r, targets=adapter.targets, dora=adapter.dora, variant=adapter.variant)
    targets = resolve_targets(spec, lora)
    lora_dtypes = Counter(t.dtype for t in tensors if not t.name.endswith("base_layer.weight"))
    save_dtype = _SAVE_DTYPES.get(lora_dtypes.most_common(1)[0][0], "fp32") if lora_dtypes else "fp32"
    head = next((t for t in tensors if t.name.endswith("lm_head.base_layer.weight")), None)
    head_dtype = _SAVE_DTYPES.get(head.dtype, "bf16") if head else "bf16"
    report["predicted"] = {
        "model": spec.name, "r": adapter.r, "targets": list(adapter.targets),
        # What the file holds (AdaLoRA's ranknum trains but is not saved).
        "params": sum(math.prod(shape) * t.copies for t in targets
                      for name, shape in t.tensors(adapter.dora) if t.saved_key(name)),
        "file_bytes": adapter_file_bytes(spec, targets, save_dtype, adapter.dora, head_dtype),
        "dtype": save_dtype,
    }
    return report


@click.command()
@click.argument("path", metavar="PATH")
@click.option("--model", "-m", metavar="NAME|PATH",
              help="Base model, when adapter_config.json does not name one we can resolve.")
@output_options
def inspect(path: str, model: str | None, as_json: bool) -> int:
    """Show an adapter's tensors, parameters and bytes next to what lorasize predicts.

    PATH is a PEFT adapter folder (adapter_model.safetensors and adapter_config.json) or a
    .safetensors file. Only the header is read: no torch, any size.

    \b
    Example:
      lorasize inspect ./my-adapter
    """
    report = inspect_adapter(path, model)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return 0
    rows = [("tensors", f"{report['tensors']:,}"), ("parameters", format_count(report["params"])),
            ("dtypes", ", ".join(f"{k} x{v}" for k, v in report["dtypes"].items()) or "-"),
            ("file size", f"{report['file_bytes']:,} B ({format_bytes(report['file_bytes'])})")]
    predicted = report["predicted"]
    if predicted:
        same = predicted["file_bytes"] == report["file_bytes"]
        rows += [("predicted parameters", format_count(predicted["params"])),
                 ("predicted file size", f"{predicted['file_bytes']:,} B "
                                         f"({'exact match' if same else 'differs'})"),
                 ("predicted for", f"{predicted['model']}, r={predicted['r']}, "
                                   f"{','.join(predicted['targets'])}, {predicted['dtype']}")]
    click.echo(f"{report['file']}\n" + table(rows))
    return 0
