"""Text rendering of estimates and catalogs for the terminal. JSON goes through ``to_dict``."""

from __future__ import annotations

from ..estimate import Estimate
from ..units import format_bytes, format_count

_LABELS = {
    "weights": "frozen base weights",
    "quant_constants": "quantization constants",
    "adapter": "adapter weights",
    "gradients": "gradients",
    "optimizer": "optimizer states",
    "activations": "activations",
    "logits": "logits and loss",
    "temporaries": "temporaries (workspace, dequant)",
    "communication": "communication (buckets, gathered layers)",
    "allocator": "allocator reserve",
    "cuda_context": "CUDA context",
    "paged_optimizer": "paged optimizer (unified memory)",
}


def table(rows: list[tuple[str, ...]], header: tuple[str, ...] | None = None,
          align: str | None = None, footer: list[tuple[str, ...]] | None = None) -> str:
    """A plain aligned table; ``align`` has one ``l``/``r`` per column; ``footer`` rows follow
    a rule (totals)."""
    all_rows = ([header] if header else []) + rows + (footer or [])
    widths = [max(len(str(row[i])) for row in all_rows) for i in range(len(all_rows[0]))]
    align = align or "l" * len(widths)
    rule = "  ".join("-" * w for w in widths)

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(row, widths, align)).rstrip()

    lines = []
    if header:
        lines += [line(header), rule]
    lines += [line(row) for row in rows]
    if footer:
        lines += [rule] + [line(row) for row in footer]
    return "\n".join(lines)


def _title(e: Estimate) -> str:
    train = e.train
    if train.method == "full":
        what = "full fine-tuning"
    else:
        names = ", ".join(dict.fromkeys(t.linear.name for t in e.targets))
        quant = f" on a {train.quant_type}{' double-quant' if train.double_quant else ''} base" \
            if train.quantized else ""
        kind = {"lora": "DoRA" if e.lora.dora else "LoRA", "rslora": "rsLoRA", "lora-fa": "LoRA-FA",
                "vera": "VeRA", "loraplus": "DoRA+" if e.lora.dora else "LoRA+",
                "adalora": "AdaLoRA", "loha": "LoHa", "lokr": "LoKr", "ia3": "IA3"}[e.lora.variant]
        rank = "" if e.lora.variant == "ia3" else f" r={e.lora.r}"  # IA3 trains vectors: no rank
        what = f"{kind}{rank} on {names}{quant}"
    ckpt = ", gradient checkpointing" if train.checkpointing else ""
    return (f"{e.model.name}: {what}\n{train.dtype}, {train.optimizer}, batch {train.batch_size} x "
            f"{train.seq_len} tokens{' (padded)' if train.padded else ''}, {train.attn} "
            f"attention{ckpt}")


def render_estimate(e: Estimate) -> str:
    """The human-readable report of ``lorasize estimate``."""
    out = [_title(e), ""]
    params = [
        ("base parameters", format_count(e.base_params)),
        ("trainable parameters", f"{format_count(e.trainable_params)}  {e.trainable_percent:.3f}%"),
    ]
    if e.adapter_file_bytes:
        params.append(("adapter file (safetensors)", format_bytes(e.adapter_file_bytes)))
    out += [table(params), ""]
    labels = dict(_LABELS, weights="model weights (trained)") if e.train.method == "full" else _LABELS
    rows = [(labels[k], f"{v:,}", format_bytes(v, "GiB")) for k, v in e.breakdown.items() if v]
    levels = [
        ("allocated  (max_memory_allocated)", e.allocated_bytes),
        ("reserved   (max_memory_reserved)", e.reserved_bytes),
        ("device     (nvidia-smi)", e.peak_bytes),
    ]
    per_gpu = f", per GPU of {e.shard.label}" if e.shard.sharding != "none" else ""
    out.append(f"Training memory at the peak ({e.peak_moment}{per_gpu}):")
    out.append(table(rows, ("component", "bytes", "GiB"), "lrr",
                     [(k, f"{v:,}", format_bytes(v, "GiB")) for k, v in levels]))
    if e.host_breakdown:
        host = [(_LABELS[k], f"{v:,}", format_bytes(v, "GiB")) for k, v in e.host_breakdown.items()
                if v]
        out += ["", "Offloaded to host (CPU) memory, per GPU process:",
                table(host, ("component", "bytes", "GiB"), "lrr",
                      [("host", f"{e.host_bytes:,}", format_bytes(e.host_bytes, "GiB"))])]
    if e.gpu is not None:
        verdict = "fits" if e.fits else "does NOT fit"
        out += ["", f"GPU {e.gpu.name} ({format_bytes(e.gpu.memory_bytes, 'GiB')}): {verdict}, "
                    f"headroom {format_bytes(e.headroom_bytes, 'GiB')}"]
        if e.adapters_fit is not None:
            serve = e.serve.dtype if e.serve else "fp32"
            out.append(f"Serving: {e.adapters_fit:,} adapters of {format_bytes(e.adapter_serve_bytes)} "
                       f"({serve}) fit beside the {format_bytes(e.serve_base_bytes, 'GiB')} base")
    if e.notes:
        out += [""] + [f"note: {n}" for n in e.notes]
    return "\n".join(out)


_TIME_LABELS = {
    "matmuls": "matmuls (base weights, head)",
    "adapter_matmuls": "adapter matmuls",
    "attention": "attention",
    "memory_bound": "memory-bound ops (norms, activations, loss)",
    "dequantization": "dequantization",
    "optimizer": "optimizer step",
    "communication": "communication, offload, paging (exposed)",
    "overhead": "launch overhead (CPU-bound)",
    "compute": "compute at the given MFU",
}
_BOUND = {"compute": "compute-bound", "memory": "memory-bound", "launch": "launch-bound",
          "communication": "communication-bound", "dequantization": "dequantization-bound"}


def render_time(timing) -> str:
    """The step's time breakdown (:class:`lorasize.perf.timing.TrainingTime`) as a table, what
    bounds it, and its notes."""
    step = timing.step_seconds
    rows = [(_TIME_LABELS.get(k, k), f"{1e3 * v:,.1f} ms", f"{100 * v / step:.0f}%")
            for k, v in timing.breakdown.items() if v > 0.0005 * step]
    how = ("step-time model" if timing.model == "step" else f"MFU {timing.mfu:g} given")
    out = [table(rows, ("one micro-batch", "time", "share"), "lrr",
                 [("step", f"{1e3 * step:,.1f} ms", "100%")]),
           f"{_BOUND.get(timing.bound, timing.bound)}, MFU {timing.mfu:.2f} ({how})"]
    out += [f"note: {n}" for n in timing.notes]
    return "\n".join(out)
