"""``lorasize estimate``."""

from __future__ import annotations

import json

import click
from click.core import ParameterSource

from ..memory.calibrated import load_calibration
from ..arch.catalog import gpu_from_catalog
from ..errors import LorasizeError
from ..estimate import estimate as run_estimate
from ..gpu import GpuSpec, with_memory
from ..arch.lora import LoraSpec, split_targets
from ..plan.render import render_estimate
from ..arch.resolve import read_adapter_config, resolve_model
from ..memory.sharding import ShardSpec, launch_commands
from ..specs import ServeSpec, TrainSpec
from .options import (gpu_options, lora_options, model_options, output_options, recipe_option,
                      recipe_used, shard_options, train_options)


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def build_shard(p: dict) -> ShardSpec:
    """The :class:`ShardSpec` of --gpus, --sharding and --offload."""
    return ShardSpec(p["gpus"], (p["sharding"] or "none").lower(), p["offload"].lower())


def refuse_other_transformers(model, train, command: str) -> None:
    """``trace`` and ``profile`` run the installed transformers: a release that built the model
    otherwise (transformers 4's per-expert linears) is refused rather than mislabelled."""
    from ..errors import LorasizeError
    from ..memory.stacks import as_built

    if as_built(model, train).expert_modules:
        raise LorasizeError(f"{command} runs the installed transformers, which fuses the experts; "
                            f"{train.stack_release} built one nn.Linear per expert: estimate it, "
                            f"or {command} without --stack-release", source="--stack-release")


def build_specs(ctx: click.Context, p: dict):
    """Specs from the flags, with an adapter_config.json filling what the flags leave out."""
    adapter = read_adapter_config(p["adapter"]) if p.get("adapter") else None
    model_text = p.get("model") or (adapter.base_model if adapter else None)
    if not model_text:
        raise LorasizeError("which model? give --model NAME (see 'lorasize models') or --adapter "
                            "with a base_model_name_or_path", source="--model")
    model = resolve_model(model_text, "--model" if p.get("model") else "--adapter")
    r, targets, dropout, dora = p["r"], split_targets(p["targets"]), p["lora_dropout"], p["dora"]
    alpha = p["alpha"]
    if adapter:
        r = adapter.r if adapter.r is not None and not _given(ctx, "r") else r
        targets = adapter.targets if adapter.targets and not _given(ctx, "targets") else targets
        dropout = adapter.dropout if adapter.dropout is not None and not _given(
            ctx, "lora_dropout") else dropout
        dora = adapter.dora if not _given(ctx, "dora") else dora
        alpha = adapter.alpha if adapter.alpha is not None and alpha is None else alpha
    variant = (p.get("variant") or "lora").lower()
    if adapter and not _given(ctx, "variant"):
        variant = adapter.variant
    if p["method"].lower() == "full":
        ignored = [f"--{n.replace('_', '-')}" for n in ("r", "targets", "dora", "variant",
                                                         "lora_dropout", "alpha", "adapter")
                   if n in p and _given(ctx, n)]
        if ignored:
            from . import defer_note

            defer_note(f"{', '.join(ignored)} do not apply to --method full (every weight "
                       f"trains) and are ignored")
    lora = LoraSpec(r=r, alpha=float(alpha if alpha is not None else 2 * r),
                    targets=targets, dropout=float(dropout or 0.0), dora=dora, variant=variant)
    # commands without the training flags (serve) get TrainSpec's defaults for them
    train = TrainSpec(
        method=p["method"].lower(), quant=p["quant"].lower() if p["quant"] else None,
        double_quant=p["double_quant"], dtype=p["dtype"].lower(),
        optimizer=p.get("optimizer", "adamw").lower(), batch_size=p.get("batch_size", 1),
        seq_len=p.get("seq_len", 512), grad_checkpointing=p.get("grad_checkpointing"),
        attn=p.get("attn", "sdpa").lower(), kbit_prep=p.get("kbit_prep"),
        stack=p.get("stack", "hf-peft").lower(),
        adapter_train_dtype=(p.get("adapter_train_dtype") or "").lower() or None,
        grad_accum=1 if p.get("grad_accum") is None else p["grad_accum"],
        kernels=(p.get("kernels") or "eager").lower(), autocast=p.get("autocast", True),
        stack_release=(p.get("stack_release") or "").strip(),
        bnb_release=(p.get("bnb_release") or "").strip(), padded=bool(p.get("padded")),
    )
    return model, lora, train


def build_gpu(p: dict) -> GpuSpec | None:
    """The GPU from --gpu (catalog) and/or --gpu-mem (overrides the memory)."""
    gpu = gpu_from_catalog(p["gpu"]) if p.get("gpu") else None
    if p.get("gpu_mem"):
        gpu = with_memory(gpu, p["gpu_mem"])
    return gpu


@click.command()
@recipe_option
@model_options
@lora_options
@train_options
@gpu_options
@shard_options
@output_options
@click.pass_context
def estimate(ctx: click.Context, as_json: bool, **p) -> int:
    """Estimate trainable parameters, adapter size and training memory (no GPU, no torch).

    With --gpu (or --gpu-mem), also say whether the step fits and how many adapters of this
    shape fit beside the base model for serving. Exits 1 when it does not fit, and then names
    the smallest multi-GPU setup that fits with its launch command. With --gpus and --sharding,
    memory is per GPU and offloaded bytes are host memory.

    \b
    Examples:
      lorasize estimate --model llama2-7b --r 64 --targets all
      lorasize estimate --model llama3-8b --method qlora --r 16 --targets all \\
          --batch-size 4 --seq-len 2048 --grad-checkpointing --gpu rtx-4090
      lorasize estimate --model ./my-model/config.json --r 8 --targets q_proj,v_proj --json
      lorasize estimate --adapter ./my-adapter --gpu a100-40gb
      lorasize estimate --model llama2-70b --method full --grad-checkpointing \\
          --gpus 8 --sharding zero3 --offload optimizer --gpu a100-80gb
      lorasize estimate --recipe axolotl/examples/llama-3/qlora.yml --gpu rtx-4090
    """
    model, lora, train = build_specs(ctx, p)
    recipe, given = recipe_used(ctx)
    gpu = build_gpu(p)
    serve = ServeSpec(dtype=p["serve_dtype"].lower(), kv_tokens=p["serve_tokens"])
    calibration = load_calibration(p["calibration"]) if p.get("calibration") else None
    shard = build_shard(p)
    result = run_estimate(model, lora, train, gpu=gpu, serve=serve,
                          adapter_dtype=p["adapter_dtype"].lower(), calibration=calibration,
                          shard=shard)
    timing = _timing(p, result, gpu)
    suggestions = _suggestions(model, lora, train, gpu) \
        if result.fits is False and shard.sharding == "none" else []
    setups = _setups(model, lora, train, gpu, shard, calibration) if result.fits is False else []
    if as_json:
        data = result.to_dict()
        data["time"] = timing.to_dict() if timing else None
        data["suggestions"] = suggestions
        data["multi_gpu"] = setups
        if recipe is not None:
            data["recipe"] = recipe.to_dict(given)
        click.echo(json.dumps(data, indent=2))
    else:
        if recipe is not None:
            from ..recipes import render_recipe

            click.echo(render_recipe(recipe, given, {q.name for q in ctx.command.params},
                                     ctx.params) + "\n")
        click.echo(render_estimate(result))
        if suggestions:
            click.echo(f"To fit {gpu.name}: " + "; or ".join(suggestions))
        for setup in setups:
            click.echo(f"{setup['why']}: {setup['gpus']} x {gpu.name} with {setup['sharding']}"
                       + (f" and {setup['offload']} offload" if setup["offload"] != "none" else "")
                       + f", {setup['train_peak_bytes'] / 2**30:.2f} GiB per GPU"
                       + (f", {setup['host_offload_bytes'] / 2**30:.2f} GiB host per GPU"
                          if setup["host_offload_bytes"] else ""))
            click.echo(f"  {setup['launch']['accelerate']}")
            click.echo(f"  {setup['launch']['torchrun']}")
        if result.fits is False and not setups:
            click.echo(f"No setup of up to {_MAX_SHOWN_GPUS} GPUs fits {gpu.name}.")
        if timing:
            from ..plan.render import render_time

            each = " per GPU" if shard.gpus > 1 else ""
            line = (f"Throughput on {gpu.name}: {timing.tokens_per_s:,.0f} tokens/s{each}, "
                    f"{timing.step_seconds:.2f} s a step")
            if timing.hours is not None:
                on = f" on {shard.gpus} GPUs" if shard.gpus > 1 else ""
                line += (f"; {p['epochs']:g} epoch(s) of {p['dataset_tokens']:,} tokens{on}: "
                         f"{timing.hours:,.1f} h, {timing.optimizer_steps:,} optimizer steps of "
                         f"{train.effective_batch_size * shard.gpus} sequences")
                if timing.usd is not None:
                    line += f", ${timing.usd:,.0f}"
            click.echo(line)
            click.echo(render_time(timing))
    return 1 if result.fits is False else 0


_MAX_SHOWN_GPUS = 256


def _setups(model, lora, train, gpu, shard, calibration) -> list[dict]:
    """The smallest multi-GPU setups that fit: the first of ddp, zero1, zero2, fsdp, zero3 and
    the offloads at the given --gpus (or the fewest GPUs), and the fewest GPUs for the given
    --sharding."""
    from ..plan.solve import fewest_gpus, fit_setup

    found = []
    given = shard.gpus if shard.gpus > 1 else None
    walk = fit_setup(model, lora, train, gpu, given, calibration)
    if walk:
        why = f"Smallest setup on {given} GPUs" if given else "Fewest GPUs that fit"
        found.append((why, *walk))
    if shard.sharding != "none":
        fewest = fewest_gpus(model, lora, train, gpu, shard.sharding, shard.offload,
                             _MAX_SHOWN_GPUS, calibration)
        if fewest and (not walk or fewest[0] != walk[0]):
            found.append((f"Fewest GPUs with {shard.sharding}", *fewest))
    return [{"why": why, "gpus": s.gpus, "sharding": s.sharding, "offload": s.offload,
             "train_peak_bytes": e.peak_bytes, "host_offload_bytes": e.host_bytes,
             "launch": launch_commands(s, train)} for why, s, e in found]


def _timing(p: dict, result, gpu):
    """Step time and hours, when the GPU's throughput is known. With several data-parallel GPUs
    each works through its share of the tokens (hours are wall-clock, the cost is all GPUs')."""
    from ..perf.timing import estimate_time

    # --mfu, else the calibration's (fitted from GPU profiles), else the step-time model.
    calibrated = result.calibration.mfu if result.calibration is not None else None
    mfu = next((m for m in (p.get("mfu"), calibrated) if m is not None), None)
    if mfu is not None and not 0 < mfu <= 1:
        raise LorasizeError(f"must be in (0, 1], got {mfu}", source="--mfu")
    for flag in ("dataset_tokens", "epochs", "usd_per_gpu_hour"):
        value = p.get(flag)
        if value is not None and value <= 0:
            raise LorasizeError(f"must be above 0, got {value}", source="--" + flag.replace("_", "-"))
    if gpu is None:
        if p.get("dataset_tokens"):
            raise LorasizeError("hours need a GPU: give --gpu NAME", source="--dataset-tokens")
        return None
    tokens, price, gpus = p.get("dataset_tokens"), p.get("usd_per_gpu_hour"), result.shard.gpus
    return estimate_time(result, gpu, mfu, -(-tokens // gpus) if tokens else tokens,
                         p.get("epochs") or 1.0, price * gpus if price is not None else None,
                         params=_timing_params(p))


def _timing_params(p: dict):
    """The step-time figures of --timing-params, or None for the shipped fit."""
    if not p.get("timing_params"):
        return None
    from ..perf.steptime import load_params

    return load_params(p["timing_params"])


def _suggestions(model, lora, train, gpu) -> list[str]:
    """The nearest settings that fit: a smaller batch or sequence, checkpointing, quantization,
    or autocast."""
    from dataclasses import replace

    from ..plan.solve import solve

    found = []
    for field, flag in (("batch-size", "--batch-size"), ("seq-len", "--seq-len")):
        current = train.batch_size if field == "batch-size" else train.seq_len
        value, _ = solve(model, lora, train, gpu, field)
        if value and value < current:
            found.append(f"{flag} {value}")
    if not train.checkpointing:
        checkpointed = replace(train, grad_checkpointing=True)
        if run_estimate(model, lora, checkpointed, gpu=gpu).fits:
            found.append("--grad-checkpointing")
    if train.method == "lora":
        quantized = replace(train, method="qlora", quant=None)
        if run_estimate(model, lora, quantized, gpu=gpu).fits:
            found.append("--method qlora")
    if not train.autocast and run_estimate(model, lora, replace(train, autocast=True),
                                           gpu=gpu).fits:
        found.append("--autocast (the Trainer's bf16=True: flash attention on fp32 activations)")
    if not found:
        found.append("nothing smaller in batch, sequence, checkpointing or quantization is "
                     "enough on one GPU")
    return found
