"""``lorasize serve`` and ``lorasize fit``: serving capacity, hot swapping, fleet cost, inverse solving."""

from __future__ import annotations

import json
import math

import click

from ..errors import LorasizeError
from ..estimate import estimate as run_estimate
from ..serving.fleet import (DEFAULT_USD_PER_GPU_HOUR, gpus_for, gpus_for_load,
                             models_per_gpu, option)
from ..serving.hotswap import (DEFAULT_DISK_BYTES_PER_S, DEFAULT_H2D_BYTES_PER_S, DEFAULT_REQUESTS,
                       DEFAULT_SEED, parse_traffic, simulate_lru, smallest_slots, swap_seconds)
from ..plan.render import render_estimate, table
from ..arch.resolve import resolve_model
from ..plan.solve import SOLVABLE, solve
from ..specs import ENGINES, ServeSpec, TrainSpec
from ..units import format_bytes
from ..memory.weights import static_bytes
from .estimate_cmd import _given, build_gpu, build_shard, build_specs
from .options import (base_options, lora_options, model_options, output_options, recipe_option,
                      recipe_used, shard_options,
                      train_options)


def _require_gpu(p: dict):
    gpu = build_gpu(p)
    if gpu is None:
        raise LorasizeError("which GPU? give --gpu NAME (see 'lorasize gpus') or --gpu-mem SIZE",
                            source="--gpu")
    return gpu


def _gpu_options(func):
    func = click.option("--gpu-mem", metavar="SIZE", help="GPU memory instead of a catalog card.")(func)
    return click.option("--gpu", "-g", metavar="NAME", help="The GPU (lorasize gpus).")(func)


def _serve_options(func):
    options = [
        click.option("--engine", type=click.Choice(ENGINES, case_sensitive=False), default="peft",
                     show_default=True, help="Serving engine whose memory rules apply."),
        click.option("--max-seq-len", type=int, default=0, show_default=True,
                     help="Longest sequence served (prompt + generated), for the KV cache."),
        click.option("--concurrency", type=int, default=1, show_default=True,
                     help="Sequences served at once, for the KV cache."),
        click.option("--serve-dtype", type=click.Choice(("fp32", "bf16", "fp16")), default="fp32",
                     show_default=True, help="Adapter dtype with --engine peft."),
        click.option("--max-lora-rank", type=int, default=None,
                     help="vLLM/SGLang slot rank. [default: the adapter's, rounded up for vLLM]"),
        click.option("--gpu-memory-utilization", type=float, default=0.9, show_default=True,
                     help="Share of the GPU vLLM/SGLang may use."),
        click.option("--adapter-memory-fraction", type=float, default=0.1, show_default=True,
                     help="Share of the GPU LoRAX keeps for adapters."),
        click.option("--adapters", type=int, default=None,
                     help="Adapters in the fleet (N), for hot swapping."),
        click.option("--traffic", default=None, metavar="LAW",
                     help="Popularity of the adapters: zipf:S, uniform, or a CSV of request counts."),
        click.option("--rps", type=float, default=1.0, show_default=True,
                     help="Requests per second: to the adapters of the hot-swap simulation; with "
                          "--customers, given, the whole fleet's load (not given, the fleet is "
                          "sized by memory alone)."),
        click.option("--slots", type=int, default=None,
                     help="Resident adapters (K). [default: as many as fit]"),
        click.option("--hit-rate", type=float, default=0.95, show_default=True,
                     help="Target hit rate for the recommended slots."),
        click.option("--requests", type=int, default=DEFAULT_REQUESTS, show_default=True,
                     help="Simulated requests."),
        click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True),
        click.option("--disk-gbps", type=float, default=DEFAULT_DISK_BYTES_PER_S / 1e9,
                     show_default=True, help="Disk read bandwidth, GB/s."),
        click.option("--h2d-gbps", type=float, default=DEFAULT_H2D_BYTES_PER_S / 1e9,
                     show_default=True, help="Host-to-device bandwidth, GB/s."),
        click.option("--customers", type=int, default=None,
                     help="Customers, for the fleet cost comparison."),
        click.option("--tasks", type=int, default=1, show_default=True, help="Tasks per customer."),
        click.option("--small-model", default="llama3.2-1b", show_default=True,
                     help="The smaller base model of the fleet comparison."),
        click.option("--usd-per-gpu-hour", type=float, default=DEFAULT_USD_PER_GPU_HOUR,
                     show_default=True),
        click.option("--batch", type=int, default=1, show_default=True,
                     help="Requests decoded together, for the latency at a batch."),
        click.option("--prompt-tokens", type=int, default=512, show_default=True,
                     help="Prompt length, for prefill and the KV cache each decode step reads."),
        click.option("--output-tokens", type=int, default=256, show_default=True,
                     help="Tokens generated per request."),
    ]
    for opt in reversed(options):
        func = opt(func)
    return func


def _positive(value, flag: str) -> None:
    if value is not None and not (0 < value < math.inf):
        raise LorasizeError(f"must be a number above 0, got {value}", source=flag)


def _hot_swap(p: dict, capacity) -> dict | None:
    if p["adapters"] is None and p["traffic"] is None:
        return None
    _positive(p["adapters"], "--adapters")
    _positive(p["rps"], "--rps")
    _positive(p["requests"], "--requests")
    _positive(p["disk_gbps"], "--disk-gbps")
    _positive(p["h2d_gbps"], "--h2d-gbps")
    popularity = parse_traffic(p["traffic"] or "uniform", p["adapters"])
    fits = max(capacity.adapters, 0)
    slots = p["slots"] if p["slots"] is not None else fits
    if slots < 0:
        raise LorasizeError(f"must be 0 or more, got {slots}", source="--slots")
    result = simulate_lru(popularity, slots, p["requests"], p["seed"])
    swap_s = swap_seconds(capacity.adapter_bytes, p["disk_gbps"] * 1e9, p["h2d_gbps"] * 1e9)
    swaps_per_s = p["rps"] * (1 - result.hit_rate)
    recommended = smallest_slots(popularity, p["hit_rate"], popularity.adapters, p["requests"],
                                 p["seed"])
    needed_slots = recommended.slots if recommended else popularity.adapters
    needed_swaps = p["rps"] * (1 - (recommended.hit_rate if recommended else 1.0))
    gpus = max(math.ceil(needed_slots / fits) if fits else 0, math.ceil(needed_swaps * swap_s), 1) \
        if fits else None
    return {
        "adapters": popularity.adapters, "traffic": popularity.name, "slots": slots,
        "hit_rate": round(result.hit_rate, 5), "swap_ins_per_s": round(swaps_per_s, 4),
        "swap_seconds": round(swap_s, 4), "swap_busy_fraction": round(swaps_per_s * swap_s, 4),
        "target_hit_rate": p["hit_rate"], "recommended_slots": needed_slots,
        "gpus_needed": gpus, "requests_simulated": p["requests"], "seed": p["seed"],
        "hit_rate_method": result.method,
        "recommended_method": recommended.method if recommended else result.method,
    }


def _fleet(p: dict, model, lora, train, gpu, serve, loaded: bool = False) -> list[dict] | None:
    """The fleet options on the GPUs that hold the models, and with ``--rps`` given (``loaded``)
    on at least the GPUs that generate that traffic."""
    if p["customers"] is None:
        return None
    _positive(p["customers"], "--customers")
    _positive(p["tasks"], "--tasks")
    _positive(p["usd_per_gpu_hour"], "--usd-per-gpu-hour")
    if loaded:
        _positive(p["rps"], "--rps")
    models = p["customers"] * p["tasks"]
    price = p["usd_per_gpu_hour"]
    full_bytes = static_bytes(model, (), TrainSpec(dtype=train.dtype)).weights
    small = resolve_model(p["small_model"], "--small-model")
    small_bytes = static_bytes(small, (), TrainSpec(dtype=train.dtype)).weights
    lora_capacity = run_estimate(model, lora, TrainSpec(dtype=train.dtype), gpu=gpu,
                                 serve=serve)
    qlora_capacity = run_estimate(model, lora, TrainSpec(method="qlora", dtype=train.dtype),
                                  gpu=gpu, serve=serve)

    def sized(approach, memory_gpus, detail, tokens_per_s):
        """The option on the more GPUs of what holds it and what serves ``--rps``; none where
        not one adapter fits beside the base and the KV cache asked (``memory_gpus`` None)."""
        if memory_gpus is None:
            return option(approach, None, price, "no adapter fits beside the base and the KV "
                          "cache asked (--concurrency x --max-seq-len)")
        load = gpus_for_load(p["rps"], p["output_tokens"], tokens_per_s) if loaded else 0
        if load > memory_gpus:
            detail += (f"; {load:,} GPUs generate {p['rps']:,.6g} req/s of "
                       f"{p['output_tokens']:,} tokens at {tokens_per_s:,.0f} tokens/s each")
        return option(approach, max(memory_gpus, load), price, detail, memory_gpus=memory_gpus,
                      traffic_gpus=load if loaded else None, tokens_per_s=tokens_per_s)

    speed = _fleet_speeds(p, model, small, lora_capacity, qlora_capacity, train, gpu) \
        if loaded else dict.fromkeys(("full", "small", "lora", "qlora"))
    options = [
        sized(f"full fine-tuning of {model.name}", gpus_for(models, models_per_gpu(full_bytes, gpu)),
              f"{format_bytes(full_bytes, 'GiB')} per model", speed["full"]),
        sized(f"full fine-tuning of {small.name}", gpus_for(models, models_per_gpu(small_bytes, gpu)),
              f"{format_bytes(small_bytes, 'GiB')} per model", speed["small"]),
        sized("LoRA, every adapter resident", math.ceil(models / lora_capacity.adapters_fit)
              if lora_capacity.adapters_fit else None,
              f"{lora_capacity.adapters_fit:,} adapters per GPU", speed["lora"]),
    ]
    traffic = p["traffic"] or "zipf:1.1"
    popularity = parse_traffic(traffic, models) if traffic.startswith(("zipf:", "uniform")) else \
        parse_traffic(traffic, None)
    slots_per_gpu = qlora_capacity.adapters_fit
    recommended = smallest_slots(popularity, p["hit_rate"], popularity.adapters, p["requests"], p["seed"])
    needed = recommended.slots if recommended else popularity.adapters
    options.append(sized(f"QLoRA, hot swapping ({traffic}, hit rate {p['hit_rate']:g})",
                         math.ceil(needed / slots_per_gpu) if slots_per_gpu else None,
                         f"{needed:,} resident slots, {slots_per_gpu:,} per GPU", speed["qlora"]))
    return [o.to_dict() for o in options]


def _fleet_speeds(p: dict, model, small, lora_capacity, qlora_capacity, train, gpu) -> dict:
    """Tokens one GPU generates a second for each fleet option at ``--concurrency``
    (lorasize.perf.inference): a full copy serves its own requests (no batching across copies),
    the LoRA options batch the resident adapters on the engine."""
    from ..perf.inference import serving_performance

    kw = dict(engine=p["engine"].lower(), concurrency=max(p["concurrency"], 1),
              prompt_tokens=max(p["prompt_tokens"], 1),
              context=p["prompt_tokens"] + p["output_tokens"] // 2,
              output_tokens=max(p["output_tokens"], 1), dtype=train.dtype)

    def throughput(spec, targets, key, **extra):
        perf = serving_performance(spec, targets, gpu, **kw, **extra)
        return perf.throughput_tokens_per_s[key] if perf else None

    targets = lora_capacity.targets
    return {"full": throughput(model, (), "base"), "small": throughput(small, (), "base"),
            "lora": throughput(model, targets, "adapters",
                               adapters=max(lora_capacity.adapters_fit, 1)),
            "qlora": throughput(model, targets, "adapters", quantized=True,
                                adapters=max(qlora_capacity.adapters_fit, 1))}


@click.command()
@model_options
@lora_options
@base_options
@_gpu_options
@_serve_options
@output_options
@click.pass_context
def serve(ctx: click.Context, as_json: bool, **p) -> int:
    """How many adapters one GPU serves next to the base model, what hot swapping buys,
    and what a fleet costs.

    \b
    Examples:
      lorasize serve --model llama2-7b --r 64 --targets attn --gpu a100-40gb
      lorasize serve --model llama3-8b --quant nf4 --r 16 --targets all --gpu l4 \\
          --engine vllm --max-seq-len 4096 --concurrency 16
      lorasize serve --model llama2-7b --r 64 --targets attn --gpu a100-40gb \\
          --adapters 1000 --traffic zipf:1.1 --rps 50 --hit-rate 0.95
      lorasize serve --model llama2-7b --r 16 --targets attn --gpu a100-40gb --customers 1000
    """
    p.setdefault("adapter_dtype", "fp32")
    if p["quant"] and p["quant"].lower() != "none" and p["method"].lower() == "lora":
        p["method"] = "qlora"
    model, lora, train = build_specs(ctx, p)
    gpu = _require_gpu(p)
    for flag in ("max_seq_len", "concurrency"):
        if p[flag] < 0:
            raise LorasizeError(f"must be 0 or more, got {p[flag]}", source="--" + flag.replace("_", "-"))
    spec = ServeSpec(dtype=p["serve_dtype"], kv_tokens=p["max_seq_len"] * p["concurrency"],
                     engine=p["engine"].lower(), max_lora_rank=p["max_lora_rank"],
                     gpu_memory_utilization=p["gpu_memory_utilization"],
                     adapter_memory_fraction=p["adapter_memory_fraction"])
    _check_engine_rank(spec, lora, train)
    result = run_estimate(model, lora, train, gpu=gpu, serve=spec)
    capacity = result.serving
    data = dict(capacity.to_dict(), model=model.name, gpu=gpu.name,
                gpu_memory_bytes=gpu.memory_bytes, r=lora.r,
                targets=list(dict.fromkeys(t.linear.name for t in result.targets)))
    swap = _hot_swap(p, capacity)
    if swap:
        data.update(swap)
    fleet = _fleet(p, model, lora, train, gpu, spec, loaded=_given(ctx, "rps"))
    if fleet:
        data["fleet"] = fleet
    performance = _performance(p, model, result, train, gpu, capacity) \
        if capacity.adapters > 0 else None
    running, reason = (max(p["concurrency"], 1) if performance else None), None
    if performance is None and spec.engine in PAGED_ENGINES and capacity.adapters == 0:
        performance, running, reason = _performance_paged(p, model, lora, train, gpu, spec)
    data["performance"] = performance.to_dict() if performance else None
    data["concurrency_running"] = running
    data["fits"] = capacity.adapters > 0
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(_render_serve(data))
    if not data["fits"]:
        needed = capacity.base_bytes + capacity.kv_cache_bytes
        if needed >= gpu.memory_bytes:
            message = (f"does not fit {gpu.name}: the base and KV cache alone need "
                       f"{format_bytes(needed, 'GiB')} of its {format_bytes(gpu.memory_bytes, 'GiB')}")
        else:
            message = (f"no adapter fits {gpu.name}: the base ({format_bytes(capacity.base_bytes, 'GiB')}) "
                       f"and KV cache ({format_bytes(capacity.kv_cache_bytes, 'GiB')}) leave no room "
                       f"for one adapter ({format_bytes(capacity.adapter_bytes)})")
        if reason:
            message += f" ({reason})"
        click.echo(message, err=True)
        return 1
    return 0


def _check_engine_rank(spec: ServeSpec, lora, train) -> None:
    """What vLLM and SGLang would refuse at start-up or when loading the adapter."""
    from ..serving.serve import VLLM_LORA_RANKS

    rank = spec.max_lora_rank
    if rank is None or train.method == "full":
        return
    if spec.engine == "vllm" and rank not in VLLM_LORA_RANKS:
        raise LorasizeError(f"vLLM accepts {', '.join(map(str, VLLM_LORA_RANKS))} "
                            f"(vllm/config/lora.py), got {rank}", source="--max-lora-rank")
    if spec.engine in ("vllm", "sglang") and rank < lora.r:
        raise LorasizeError(f"{spec.engine} refuses an adapter of rank {lora.r} in slots of rank "
                            f"{rank}: give --max-lora-rank {lora.r} or more", source="--max-lora-rank")


# Engines whose KV cache is a pool of pages filled by the sequences actually running: when the
# pool cannot hold --concurrency sequences of --max-seq-len, their schedulers run as many as it
# holds and queue the rest (vLLM's and SGLang's block managers; LoRAX is built on TGI's paged
# attention) rather than refusing to start.
PAGED_ENGINES = ("vllm", "sglang", "lorax")


def _held_concurrency(p: dict, model, lora, train, gpu, spec):
    """The most sequences of ``--max-seq-len`` (below ``--concurrency``) a paged KV pool holds
    beside the base and one adapter, with the estimate there; None when not even one does."""
    from dataclasses import replace

    length, asked = p["max_seq_len"], max(p["concurrency"], 1)
    if length < 1:
        return None
    low, high, best = 1, asked - 1, None
    while low <= high:  # the largest concurrency that fits
        mid = (low + high) // 2
        result = run_estimate(model, lora, train, gpu=gpu, serve=replace(spec, kv_tokens=mid * length))
        if result.serving.adapters > 0:
            low, best = mid + 1, (mid, result)
        else:
            high = mid - 1
    return best


def _performance_paged(p: dict, model, lora, train, gpu, spec):
    """Performance at the most sequences of ``--max-seq-len`` the paged KV pool holds beside the
    base and one adapter, when ``--concurrency`` of them do not fit: what the engine's scheduler
    runs at once. Returns (performance, sequences running, why there is none)."""
    from dataclasses import replace

    length, asked = p["max_seq_len"], max(p["concurrency"], 1)
    best = _held_concurrency(p, model, lora, train, gpu, spec)
    if best is None:
        return None, None, (f"{spec.engine}'s KV pool cannot hold one sequence of {length:,} "
                            f"tokens beside the base and an adapter" if length >= 1 else None)
    held, result = best
    perf = _performance(dict(p, concurrency=held, batch=min(p["batch"], held)), model, result,
                        train, gpu, result.serving)
    if perf is None:
        return None, None, None
    note = (f"{spec.engine}'s KV pool holds {held:,} sequences of {length:,} tokens beside the "
            f"base and an adapter, not {asked:,}: its scheduler runs {held:,} at once and queues "
            f"the rest; the speed is at {held:,} (--concurrency {held:,} fits)")
    return replace(perf, notes=perf.notes + (note,)), held, None


def _performance(p: dict, model, result, train, gpu, capacity):
    """Decode latency, prefill, throughput and load time (lorasize.perf.inference)."""
    from ..perf.inference import serving_performance

    for flag in ("batch", "prompt_tokens", "output_tokens"):
        if p[flag] < 1:
            raise LorasizeError(f"must be 1 or more, got {p[flag]}",
                                source="--" + flag.replace("_", "-"))
    if not result.targets:
        return None
    resident = p["adapters"] or max(capacity.adapters, 1)
    return serving_performance(
        model, result.targets, gpu, engine=p["engine"].lower(), batch=p["batch"],
        concurrency=max(p["concurrency"], 1), adapters=resident, prompt_tokens=p["prompt_tokens"],
        context=p["prompt_tokens"] + p["output_tokens"] // 2,
        output_tokens=p["output_tokens"], quantized=train.quantized,
        dtype=train.dtype, adapter_bytes=result.adapter_file_bytes)


def _render_performance(perf: dict, engine: str) -> list[str]:
    rows = []
    for batch, v in perf["decode_ms_per_token"].items():
        b = batch.split("_")[1]
        rows.append((f"decode, batch {b}", f"{v['base']:.1f} ms", f"{v['merged']:.1f} ms",
                     f"{v['unmerged']:.1f} ms ({v['unmerged'] / v['base']:.2f}x)"))
    t = perf["throughput_tokens_per_s"]
    out = ["", f"Speed ({engine}; {perf['bound']}-bound decoding):",
           table(rows, ("per token", "base", "merged", "unmerged"), "lrrr"),
           f"prefill {perf['prefill_ms']:,.0f} ms; throughput {t['base']:,.0f} tokens/s base, "
           f"{t['adapters']:,.0f} with the adapters batched; loading an adapter "
           f"{perf['adapter_load_s'] * 1e3:,.0f} ms"]
    out += [f"note: {n}" for n in perf["notes"]]
    return out


def _render_serve(d: dict) -> str:
    rows = [("GPU", f"{d['gpu']} ({format_bytes(d['gpu_memory_bytes'], 'GiB')})"),
            ("engine", d["engine"]),
            ("base weights", format_bytes(d["base_bytes"], "GiB")),
            ("KV cache", format_bytes(d["kv_cache_bytes"], "GiB")),
            ("one adapter (as held)", format_bytes(d["adapter_bytes"])),
            ("adapters resident", f"{d['adapters_fit']:,}")]
    out = [f"{d['model']}: r={d['r']} on {', '.join(d['targets'])}", table(rows)]
    if d["engine_flags"]:
        out.append("engine settings: " + " ".join(d["engine_flags"]))
    if "hit_rate" in d:
        out += ["", f"Hot swapping {d['adapters']:,} adapters ({d['traffic']}) through "
                    f"{d['slots']:,} slots: hit rate {d['hit_rate']:.1%}, "
                    f"{d['swap_ins_per_s']:.2f} swap-ins/s of {d['swap_seconds'] * 1000:.0f} ms "
                    f"({d['swap_busy_fraction']:.0%} busy)",
                f"For a {d['target_hit_rate']:.0%} hit rate: {d['recommended_slots']:,} slots"
                + (" (Che's closed form: too many adapters to simulate)"
                   if d["recommended_method"] == "che" else "") + ", "
                + (f"{d['gpus_needed']} GPU(s)" if d["gpus_needed"] else
                   f"but not one adapter fits beside the base on {d['gpu']}")]
    if d.get("performance"):
        out += _render_performance(d["performance"], d["engine"])
    if "fleet" in d:
        out += ["", table([(f["approach"], "-" if f["gpus"] is None else f"{f['gpus']:,}",
                            "-" if f["usd_per_month"] is None else f"${f['usd_per_month']:,.0f}",
                            f["detail"]) for f in d["fleet"]],
                          ("approach", "GPUs", "per month", "detail"), "lrrl")]
    return "\n".join(out)


@click.command()
@recipe_option
@model_options
@lora_options
@train_options
@_gpu_options
@shard_options
@click.option("--solve", "field", type=click.Choice(SOLVABLE + ("fastest",)), required=True,
              help="The value to maximise.")
@click.option("--headroom", type=float, default=0.0, show_default=True,
              help="Share of GPU memory to keep free, e.g. 0.05.")
@output_options
@click.pass_context
def fit(ctx: click.Context, field: str, headroom: float, as_json: bool, **p) -> int:
    """Find the largest batch size, sequence length or rank that fits the GPU (each of
    --gpus GPUs under --sharding), and its throughput; or, with --solve fastest, the batch and
    checkpointing that fit and train fastest.

    Exits 1 when even 1 does not fit.

    \b
    Example:
      lorasize fit --model llama3-8b --method qlora --r 16 --targets all --gpu rtx-4090 --solve seq-len
      lorasize fit --model llama3-8b --method full --gpu a100-40gb --gpus 8 --sharding zero3 --solve seq-len
      lorasize fit --model llama3-8b --r 16 --targets all --seq-len 2048 --gpu a100-40gb --solve fastest
    """
    p.setdefault("adapter_dtype", "fp32")
    model, lora, train = build_specs(ctx, p)
    gpu = _require_gpu(p)
    shard = build_shard(p)
    recipe, given = recipe_used(ctx)
    if recipe is not None and not as_json:
        from ..recipes import render_recipe

        click.echo(render_recipe(recipe, given, {q.name for q in ctx.command.params},
                                 ctx.params) + "\n")
    if field == "fastest":
        return _fastest(model, lora, train, gpu, headroom, shard, as_json)
    value, result = solve(model, lora, train, gpu, field, headroom, shard)
    from ..perf.timing import estimate_time
    from ..plan.solve import search_limit

    timed = estimate_time(result) if value else None
    limit, limited_by = search_limit(field, model)
    capped = limited_by if value == limit else None
    if as_json:
        click.echo(json.dumps({"field": field, "solved": value, "headroom": headroom,
                               "capped_by": capped, "estimate": result.to_dict(),
                               "time": timed.to_dict() if timed else None,
                               "recipe": recipe.to_dict(given) if recipe else None}, indent=2))
    else:
        head = (f"largest {field} that fits {gpu.name} with {headroom:.0%} headroom: {value}"
                if value else f"nothing fits {gpu.name}: even {field} = 1 needs "
                              f"{format_bytes(result.peak_bytes, 'GiB')}")
        if capped:
            head += f"\n(capped at {capped}: memory is not what stops it)"
        click.echo(head + "\n\n" + render_estimate(result))
        if timed:
            click.echo(f"Throughput there: {timed.tokens_per_s:,.0f} tokens/s, "
                       f"{timed.step_seconds:.2f} s a step ({timed.bound}-bound)")
    return 0 if value else 1


def _fastest(model, lora, train, gpu, headroom, shard, as_json) -> int:
    from ..plan.solve import fastest

    found = fastest(model, lora, train, gpu, headroom, shard)
    if as_json:
        click.echo(json.dumps({"field": "fastest", "headroom": headroom,
                               "solved": found[0] if found else None, "candidates": found},
                              indent=2))
        return 0 if found else 1
    if not found:
        click.echo(f"nothing fits {gpu.name}, with or without gradient checkpointing, at batch 1")
        return 1
    best = found[0]
    click.echo(f"fastest that fits {gpu.name}: batch {best['batch_size']}"
               f"{' with' if best['grad_checkpointing'] else ' without'} gradient checkpointing, "
               f"{best['tokens_per_s']:,.0f} tokens/s ({best['bound']}-bound, "
               f"{format_bytes(best['train_peak_bytes'], 'GiB')} at the peak)")
    for other in found[1:]:
        click.echo(f"  {'with' if other['grad_checkpointing'] else 'without'} checkpointing: "
                   f"batch {other['batch_size']}, {other['tokens_per_s']:,.0f} tokens/s")
    for note in best["notes"]:
        click.echo(f"note: {note}")
    return 0
