"""``lorasize profile``: measure real training steps and save a profile file."""

from __future__ import annotations

from dataclasses import replace

import json
import os
import re
import time
from pathlib import Path

import click

from ..memory.allocator import cublas_workspace_bytes
from ..errors import LorasizeError
from ..estimate import estimate as run_estimate
from ..profile.schema import write_profile
from ..trace import check_available
from ..units import format_bytes
from .estimate_cmd import build_specs, refuse_other_transformers
from .options import lora_options, model_options, output_options, shard_options, train_options

# What the profiler can run with several GPUs (DeepSpeed ZeRO and offload are estimated only).
PROFILED_SHARDINGS = ("fsdp", "fsdp-grad-op", "ddp")


def _device(choice: str) -> str:
    if choice != "auto":
        return choice
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


@click.command()
@model_options
@lora_options
@train_options
@shard_options
@click.option("--steps", type=int, default=3, show_default=True, help="Measured training steps.")
@click.option("--warmup", type=int, default=1, show_default=True,
              help="Steps run first and not measured (optimizer state appears in the first).")
@click.option("--device", type=click.Choice(("auto", "cuda", "cpu")), default="auto",
              show_default=True, help="cuda: torch.cuda and pynvml; cpu: the live-storage tracker.")
@click.option("--inference", "adapters", type=int, default=0, show_default=True, metavar="K",
              help="Also profile inference: load the adapter K times (memory per adapter, load, "
                   "swap and delete times) and time generation on the base, unmerged and merged.")
@click.option("--new-tokens", type=int, default=16, show_default=True,
              help="Tokens generated for the latency figures (with --inference).")
@click.option("--timeline", metavar="FILE.html",
              help="Write the memory over the steps, phases shaded, as a plotly page.")
@click.option("--memory-snapshot", metavar="FILE.pickle",
              help="Save torch's CUDA memory snapshot for PyTorch's memory viewer (GPU only).")
@click.option("--sweep", "sweep_file", metavar="FILE",
              help="Profile every point of a sweep file, each in its own process (one OOM does "
                   "not stop the sweep); prints a summary table.")
@click.option("--out", "-o", default="profiles", show_default=True, metavar="DIR",
              help="Folder the profile file is written to (atomically).")
@output_options
@click.pass_context
def profile(ctx: click.Context, steps: int, warmup: int, device: str, adapters: int,
            new_tokens: int, timeline: str | None, memory_snapshot: str | None,
            sweep_file: str | None, out: str, as_json: bool, **p) -> int:
    """Run real training steps (random weights of the model's real architecture) and record
    their memory per phase, step time and tokens per second as a profile file.

    On a GPU the figures come from torch.cuda and pynvml (the whole device, as nvidia-smi shows
    it); on the CPU from the trace tier's tracker over real tensors, so the path runs anywhere.
    With --gpus N and --sharding fsdp, fsdp-grad-op or ddp, N ranks run under torchrun (nccl on
    GPUs, gloo on the CPU) and the profile records every rank.

    \b
    Examples:
      lorasize profile --model llama2-7b --method qlora --r 16 --targets all \\
          --batch-size 4 --seq-len 1024 --steps 10 --out profiles/
      lorasize profile --model llama3-8b --r 16 --targets all --gpus 8 --sharding fsdp \\
          --batch-size 2 --seq-len 2048 --grad-checkpointing --out profiles/
    """
    check_available()
    if sweep_file:
        return _sweep(sweep_file, out, as_json, dict(steps=steps, warmup=warmup, device=device))
    if steps <= 0 or warmup < 0:
        raise LorasizeError("must be above 0 (and --warmup 0 or more)", source="--steps")
    p.setdefault("adapter_dtype", "fp32")
    model, lora, train = build_specs(ctx, p)
    refuse_other_transformers(model, train, "profile")
    from ..files import check_writable

    for flag, value in (("--timeline", timeline), ("--memory-snapshot", memory_snapshot)):
        if value:
            check_writable(value, flag)
    folder = _out_folder(out)
    from ..profile.runner import profile_training

    if adapters < 0 or new_tokens <= 0:
        raise LorasizeError("must be 0 or more (and --new-tokens above 0)", source="--inference")
    gpus, sharding = p["gpus"], (p["sharding"] or "none").lower()
    if gpus < 1:
        raise LorasizeError(f"must be 1 or more, got {gpus}", source="--gpus")
    if gpus > 1 or sharding != "none" or p["offload"].lower() != "none":
        return _distributed(model, lora, train, p, gpus, sharding, steps, warmup, _device(device),
                            folder, as_json, adapters, timeline, memory_snapshot)
    data = profile_training(model, lora, train, steps=steps, warmup=warmup, device=_device(device),
                            timeline=timeline, memory_snapshot=memory_snapshot)
    if adapters and not data["measurements"]["oom"]:
        from ..profile.inference import profile_inference
        from ..profile.runner import inference_backend

        data["measurements"]["inference"] = profile_inference(
            model, lora, train, adapters=adapters, new_tokens=new_tokens,
            backend=inference_backend(data["device"]["kind"]))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model.name}-{train.method}-r{lora.r}-"
                  f"b{train.batch_size}-s{train.seq_len}-{data['device']['kind']}-{int(time.time())}")
    path = folder / f"{name}.json"
    write_profile(data, path)
    m = data["measurements"]
    if as_json:
        click.echo(json.dumps(dict(data, path=str(path)), indent=2))
        return 1 if m["oom"] else 0  # out of memory: the step does not fit, as with estimate
    if m["oom"]:
        click.echo(f"out of memory: recorded in {path}")
        return 1
    # the profiler's loop runs no autocast: the estimate it is held to is that step's
    est = run_estimate(model, lora, replace(train, autocast=False))
    expected = est.allocated_bytes
    if data["device"]["kind"] == "cpu":
        expected -= cublas_workspace_bytes(None)  # no cuBLAS workspace on the CPU
    click.echo(f"wrote {path}\npeak allocated {format_bytes(m['peak_allocated_bytes'])} "
               f"(estimate {format_bytes(expected)}), {m['tokens_per_s']:,.0f} tokens/s "
               f"on {data['device']['name']}")
    return 0


def _distributed(model, lora, train, p: dict, gpus: int, sharding: str, steps: int, warmup: int,
                 device: str, folder: Path, as_json: bool, adapters: int, timeline: str | None,
                 memory_snapshot: str | None) -> int:
    """Profile ``gpus`` ranks under torchrun and write one profile with every rank."""
    from ..profile.distributed import RankFailed, profile_distributed

    if sharding == "none":
        raise LorasizeError(f"{gpus} GPUs need a way to share the model: fsdp, fsdp-grad-op or "
                            f"ddp", source="--sharding")
    if sharding not in PROFILED_SHARDINGS:
        raise LorasizeError(f"the profiler runs fsdp, fsdp-grad-op and ddp; {sharding} is "
                            f"estimated only (lorasize estimate)", source="--sharding")
    for flag, given in (("--offload", p["offload"].lower() != "none"), ("--inference", adapters),
                        ("--timeline", timeline), ("--memory-snapshot", memory_snapshot)):
        if given:
            raise LorasizeError("is not profiled with --gpus and --sharding yet", source=flag)
    if device == "cuda":
        import torch
        if torch.cuda.device_count() < gpus:
            raise LorasizeError(f"{gpus} ranks need {gpus} GPUs; {torch.cuda.device_count()} "
                                f"visible", source="--gpus")
    try:
        data = profile_distributed(model, lora, train, gpus, sharding, steps=steps, warmup=warmup,
                                   device=device)
    except RankFailed as exc:  # a result, not a crash: one line, exit 1
        click.echo(f"lorasize: profile: {exc}", err=True)
        return 1
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model.name}-{train.method}-r{lora.r}-"
                  f"b{train.batch_size}-s{train.seq_len}-{gpus}x{sharding}-{device}-"
                  f"{int(time.time())}")
    path = folder / f"{name}.json"
    write_profile(data, path)
    if as_json:
        click.echo(json.dumps(dict(data, path=str(path)), indent=2))
        return 0
    click.echo(f"wrote {path}")
    for rank in data["ranks"]:
        if rank["status"] != "ok":
            click.echo(f"rank {rank['rank']}: {'out of memory' if rank['oom'] else rank['status']}")
            continue
        click.echo(f"rank {rank['rank']}: peak allocated {format_bytes(rank['peak_allocated_bytes'])}"
                   f", between steps {format_bytes(rank['steady_bytes'])}, "
                   f"{rank['tokens_per_s']:,.0f} tokens/s")
    m = data["measurements"]
    if m["oom"]:
        click.echo("out of memory on at least one rank")
        return 1
    click.echo(f"{gpus} x {sharding} on {data['device']['name']}: {m['tokens_per_s']:,.0f} "
               f"tokens/s in all")
    return 0


def _out_folder(out: str) -> Path:
    """The output folder, created when missing (with its parents); one line when it cannot be."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise LorasizeError("exists and is not a folder", source="--out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LorasizeError(f"cannot create the folder ({exc.strerror})", source="--out") from None
    if not os.access(folder, os.W_OK):
        raise LorasizeError("the folder is not writable", source="--out")
    return folder


def _sweep(path: str, out: str, as_json: bool, defaults: dict) -> int:
    from ..profile.sweep import load_sweep, run_point
    from ..plan.render import table

    points, options = load_sweep(path)
    _out_folder(out)
    options = dict(defaults, **options)
    rows = []
    with click.progressbar(points, label="profiling", file=click.get_text_stream("stderr"),
                           item_show_func=lambda pt: pt and " ".join(f"{k}={v}" for k, v in pt.items())) as bar:
        for point in bar:
            rows.append(run_point(point, out, options))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(table([(" ".join(f"{k}={v}" for k, v in r["point"].items()), r["status"],
                           format_bytes(r["peak_allocated_bytes"]) if r.get("peak_allocated_bytes") else "-",
                           f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "-",
                           r.get("error", "")) for r in rows],
                         ("point", "status", "peak allocated", "tokens/s", "error"), "llrrl"))
    return 0 if all(r["status"] in ("ok", "oom") for r in rows) else 1
