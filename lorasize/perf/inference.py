"""Serving speed: decode latency per token, prefill time, throughput with adapters batched, and
adapter load time, through the same roofline as training (:mod:`lorasize.perf.steptime`).

A decode step runs the model forward for one new token of every request in the batch: each
weight is read once (memory-bound at small batches; Pope et al. 2022, "Efficiently Scaling
Transformer Inference", section 3), each request's KV cache is read once, and an unmerged
adapter adds its two skinny GEMMs and elementwise ops per adapted matrix (PEFT's
``lora.Linear.forward``); a merged one adds nothing. Prefill runs the prompt's tokens forward
at once (compute-bound).

How engines batch adapters:

- ``peft`` (transformers ``generate`` on a ``PeftModel``): one active adapter per forward;
  requests of different adapters do not share a batch, so ``n`` adapters split the concurrency
  into ``n`` batches that run one after the other. Every kernel is launched from Python.
- ``vllm``, ``sglang``, ``lorax``: one batch holds requests of many adapters; the multi-LoRA
  kernels (Punica's SGMV / BGMV, S-LoRA's MBGMM) read each distinct adapter's weights once a
  step. Decode runs as CUDA graphs: one launch a layer (:data:`GRAPH_KERNELS_PER_LAYER`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..arch.layout import copies
from ..arch.lora import Target
from ..arch.model import ModelSpec
from ..gpu import GpuSpec
from ..serving.serve import kv_cache_bytes
from .steptime import TimeParams, combine, default_params, terms
from .work import (EAGER_TOUCHES, QUANT_KERNELS, Gemm, StepWork, adapter_kernels,
                   decoder_linears, layer_bytes, layer_kernels, quantized_weights)

BATCHING_ENGINES = ("vllm", "sglang", "lorax")
# A CUDA-graph replay launches the captured kernels without Python: about one launch's CPU cost
# a layer (vLLM captures decode for batch sizes up to 512; SGLang and LoRAX likewise).
GRAPH_KERNELS_PER_LAYER = 1
# transformers' generate adds per token, beyond the model's forward: the logits processors,
# stopping criteria, the cache update (two cat kernels a layer) and the next-input bookkeeping.
GENERATE_KERNELS_PER_TOKEN = 30
GENERATE_KERNELS_PER_LAYER = 2
# bitsandbytes 0.50 runs inference on a 4-bit weight (no gradient) through its fused
# ``gemm_4bit`` kernel, which reads the packed weight and dequantizes in registers, whenever the
# input has at most this many rows (``_GEMM_4BIT_CUSTOM_FLOOR_M``, ``backends/cuda/ops.py``);
# above it a per-card heuristic often dequantizes the whole weight first, which is what is
# counted there.
BNB_FUSED_MAX_ROWS = 4
# bytes a weight element is read at by the fused kernel: NF4's half byte and its fp32 absolute
# maximum per block of 64 (bitsandbytes' default blocksize)
NF4_READ_BYTES = 0.5 + 4 / 64


@dataclass(frozen=True)
class ServingPerformance:
    """What a served request costs in time (milliseconds and tokens per second)."""

    decode_ms_per_token: dict
    prefill_ms: float
    throughput_tokens_per_s: dict
    adapter_load_s: float
    bound: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        def r(v):
            return round(v, 3) if isinstance(v, float) else {k: r(x) for k, x in v.items()}

        return {"decode_ms_per_token": r(self.decode_ms_per_token),
                "prefill_ms": round(self.prefill_ms, 3),
                "throughput_tokens_per_s": r(self.throughput_tokens_per_s),
                "adapter_load_s": round(self.adapter_load_s, 4), "bound": self.bound,
                "notes": list(self.notes)}


def forward_work(model: ModelSpec, targets: tuple[Target, ...], rows: int, context: int,
                 *, adapters: int = 1, merged: bool = False, quantized: bool = False,
                 engine: str = "peft", dtype: str = "bf16", prompt: int = 1) -> StepWork:
    """One forward pass over ``rows`` tokens (a decode step: one per request; a prefill: the
    prompt's), each request reading ``context`` cached tokens, with ``adapters`` distinct
    adapters in the batch (none when ``merged`` or ``targets`` is empty)."""
    gemms = []
    fused = quantized and rows <= BNB_FUSED_MAX_ROWS  # no dequantized copy of any weight
    for m in decoder_linears(model):
        n = copies(model, m)
        read = NF4_READ_BYTES if fused and m.quantizable else None
        if m.experts:
            touched = min(m.experts, rows * max(model.experts_per_token, 1))
            gemms.append(Gemm(rows * max(model.experts_per_token, 1) / touched, m.out_features,
                              m.in_features, n * touched, "base", weight_bytes=read))
        else:
            gemms.append(Gemm(rows, m.out_features, m.in_features, n, "base", weight_bytes=read))
    gemms.append(Gemm(rows / prompt, model.vocab_size, model.hidden_size, 1, "head"))
    unmerged = () if merged else tuple(t for t in targets if not t.linear.prefix)
    per_adapter = rows / max(adapters, 1)
    for t in unmerged:
        lin, n = t.linear, t.copies * max(t.linear.experts, 1)
        gemms += [Gemm(per_adapter, t.rank, lin.in_features, n * adapters, "adapter"),
                  Gemm(per_adapter, lin.out_features, t.rank, n * adapters, "adapter")]
    per_layer = layer_bytes(model, dict(EAGER_TOUCHES, layout=0))  # decode: no layout copies
    lora = sum(u.copies * EAGER_TOUCHES["lora_out"] * u.linear.out_features for u in unmerged)
    q = model.q_dim
    kv_read = kv_cache_bytes(model, (rows / prompt) * context, dtype)  # each request's cache
    elementwise = rows * (per_layer * model.num_layers + lora) + kv_read
    attention = 4.0 * rows * (context + prompt / 2) * q * model.num_layers  # QK^T and PV
    if engine in BATCHING_ENGINES:
        kernels = GRAPH_KERNELS_PER_LAYER * model.num_layers
    else:
        layer = layer_kernels(model) + GENERATE_KERNELS_PER_LAYER
        kernels = layer * model.num_layers + GENERATE_KERNELS_PER_TOKEN
        # PeftModel.from_pretrained keeps the adapters fp32 (autocast_adapter_dtype=True), and
        # generate runs without autocast
        lora, _ = adapter_kernels("hf-peft", "fp32", dtype, autocast=False)
        kernels += lora * sum(u.copies for u in unmerged)
        if quantized and not fused:
            kernels += QUANT_KERNELS * quantized_weights(model)[1]
    dequant = quantized_weights(model)[0] if quantized and not fused else 0
    return StepWork(tokens=rows, gemms=tuple(gemms), attention_flops=attention,
                    elementwise_bytes=elementwise, dequant_weights=dequant, optimizer_bytes=0.0,
                    grad_accum=1, kernels=kernels, comms=(), gpus=1,
                    forward_share=1.0, quant="nf4" if quantized else "none")


def _seconds(work: StepWork, gpu: GpuSpec, params: TimeParams):
    return combine(terms(work, gpu), params)


def serving_performance(model: ModelSpec, targets: tuple[Target, ...], gpu: GpuSpec, *,
                        engine: str = "peft", batch: int = 1, concurrency: int = 1,
                        adapters: int = 1, prompt_tokens: int = 512, context: int = 512,
                        output_tokens: int = 256, quantized: bool = False, dtype: str = "bf16",
                        adapter_bytes: int = 0,
                        params: TimeParams | None = None) -> ServingPerformance | None:
    """Decode latency, prefill, throughput and load time on ``gpu``; None when the GPU's
    throughput or bandwidth is unknown.

    Args:
        batch: requests decoded together for the latency at a batch.
        concurrency: requests in flight for the throughput.
        adapters: distinct resident adapters the requests spread over.
        prompt_tokens: prompt length (prefill); context: cached tokens each decode step reads.
        output_tokens: tokens generated per request: the throughput counts them over the whole
            run, each request's prefill included (an engine's scheduler spends steps on
            prefills between decode steps).
        adapter_bytes: one adapter's file, for the load time.
    """
    from ..serving.hotswap import swap_seconds

    if not (gpu.bf16_tflops and gpu.bandwidth_gbps):
        return None
    p = params or default_params()
    kw = dict(quantized=quantized, engine=engine, dtype=dtype)

    def decode(rows, merged, n=1, which=targets):
        work = forward_work(model, which, rows, context, adapters=n, merged=merged, **kw)
        return _seconds(work, gpu, p)

    latency = {}
    for b in sorted({1, batch}):
        latency[f"batch_{b}"] = {"base": 1e3 * decode(b, True, which=()).seconds,
                                 "merged": 1e3 * decode(b, True).seconds,
                                 "unmerged": 1e3 * decode(b, False).seconds}
    def prefill_seconds(which=targets):
        work = forward_work(model, which, prompt_tokens, 0, prompt=prompt_tokens, **kw)
        return _seconds(work, gpu, p).seconds

    prefill = prefill_seconds()

    def generated_per_second(rows, step, prefill_s):
        """Tokens generated per second by ``rows`` requests decoding together, each request's
        prefill (one prompt's forward, as batched prefills cost) in the run's time."""
        out = max(output_tokens, 1)
        return rows * out / (out * step + rows * prefill_s)

    base = generated_per_second(concurrency, decode(concurrency, True, which=()).seconds,
                                prefill_seconds(()))
    n = max(1, min(adapters, concurrency))
    if engine in BATCHING_ENGINES:
        with_adapters = generated_per_second(concurrency, decode(concurrency, False, n).seconds,
                                             prefill)
    else:  # one adapter a forward: n batches of concurrency / n requests, one after another
        share = max(1, concurrency // n)
        with_adapters = generated_per_second(share, decode(share, False).seconds, prefill)
    timed = decode(batch, False)
    notes = []
    if timed.bound == "launch":
        notes.append(f"decoding at batch {batch} is bound by kernel launches "
                     f"({timed.cpu_seconds * 1e3:.1f} ms of CPU against {timed.gpu_seconds * 1e3:.1f} ms "
                     f"of GPU a token): a larger batch costs little more per step")
    return ServingPerformance(
        decode_ms_per_token=latency, prefill_ms=1e3 * prefill,
        throughput_tokens_per_s={"base": base, "adapters": with_adapters},
        adapter_load_s=swap_seconds(adapter_bytes) if adapter_bytes else 0.0,
        bound=timed.bound, notes=tuple(notes))
