"""Training time: FLOPs per token, step time, tokens per second, hours and cost.

FLOPs per token (Kaplan et al. 2020, "Scaling Laws", section 2.1; Narayanan et al. 2021,
"Efficient Large-Scale Language Model Training on GPU Clusters", appendix, for attention):

- a token through a weight (in, out): 2 in out forward; backward 2 in out for the input's
  gradient and 2 in out more only when the weight trains (frozen LoRA bases skip it);
- a LoRA branch of rank r: 2 r (in + out) forward, 4 r (in + out) backward;
- LoHa/LoKr: the whole delta weight per token, 2 in out forward and 4 in out backward;
- causal attention: 2 s q forward per layer (QK^T and PV over the unmasked half, which flash and
  memory-efficient kernels skip; eager and math kernels compute the full s x s: 4 s q), twice
  that backward;
- gradient checkpointing runs each block's forward again in backward;
- MoE layers run ``experts_per_token`` experts per token.

Step time comes from the step-time model (:mod:`lorasize.perf.work` counts the work,
:mod:`lorasize.perf.steptime` times it on the GPU: GEMMs by shape, attention, memory-bound work,
dequantization, the optimizer step, communication and launch overhead, each a term of the
breakdown). Given a model FLOPs utilisation (``--mfu``, or a calibration fitted from GPU
profiles), the step is instead FLOPs / (peak x MFU) plus the QLoRA dequantization, the single
constant lorasize used before the model existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..gpu import PRE_AMPERE, GpuSpec
from ..arch.layout import block_linears, copies
from ..memory.sharding import ShardSpec
from ..memory.stacks import as_built
from ..arch.lora import DELTA_WEIGHT_VARIANTS, Target
from ..arch.model import ModelSpec
from ..specs import TrainSpec

# Bytes moved per 4-bit weight per dequantization: read packed (0.5), write 16-bit (2), read it
# again in the matmul (2).
DEQUANT_BYTES_PER_WEIGHT = 4.5
SECONDS_PER_HOUR = 3600


@dataclass(frozen=True)
class TrainingTime:
    """Throughput and duration of training on one GPU.

    ``breakdown`` holds the seconds of one micro-batch by component (they sum to
    ``step_seconds``); ``bound`` names what limits it; ``mfu`` is the model FLOPs utilisation
    the step reaches (the one given, in the constant-MFU mode)."""

    flops_per_token: float
    tokens_per_s: float
    step_seconds: float
    mfu: float
    hours: float | None = None
    usd: float | None = None
    grad_accum: int = 1
    optimizer_steps: int | None = None
    breakdown: dict = field(default_factory=dict)
    bound: str = "compute"
    notes: tuple[str, ...] = ()
    model: str = "step"  # "step" (the step-time model) or "mfu" (a constant MFU)
    # the kernel each kind of layer's attention runs: (layers, kernel, masked)
    attention: tuple[tuple[int, str, bool], ...] = ()

    @property
    def optimizer_step_seconds(self) -> float:
        """One optimizer step: ``grad_accum`` micro-batch steps."""
        return self.step_seconds * self.grad_accum

    def to_dict(self) -> dict:
        return {"flops_per_token": round(self.flops_per_token), "tokens_per_s": round(self.tokens_per_s, 1),
                "step_seconds": round(self.step_seconds, 4), "mfu": round(self.mfu, 4),
                "grad_accum": self.grad_accum,
                "optimizer_step_seconds": round(self.optimizer_step_seconds, 4),
                "optimizer_steps": self.optimizer_steps,
                "hours": None if self.hours is None else round(self.hours, 3),
                "usd": None if self.usd is None else round(self.usd, 2),
                "breakdown": {k: round(v, 6) for k, v in self.breakdown.items()},
                "bound": self.bound, "model": self.model, "notes": list(self.notes),
                "attention": [{"layers": n, "kernel": k, "masked": m}
                              for n, k, m in self.attention]}


def flops_per_token(model: ModelSpec, targets: tuple[Target, ...], train: TrainSpec) -> float:
    """Training FLOPs per token of one step (forward, backward, recomputation)."""
    full = train.method == "full"
    linear = 0.0
    for m in block_linears(model):  # every copy of each matrix (layer kinds may differ)
        active = model.experts_per_token if m.experts else 1
        linear += 2 * m.in_features * m.out_features * active * copies(model, m)
    head = 2 * model.hidden_size * model.vocab_size
    causal = train.attn in ("sdpa", "flash")
    attention = (2 if causal else 4) * train.seq_len * model.q_dim * model.num_layers
    forward = linear + head + attention
    backward = (2 if full else 1) * (linear + head) + 2 * attention
    lora = sum(t.rank * max(t.linear.experts, 1) * (t.linear.in_features + t.linear.out_features)
               * t.copies for t in targets if t.variant not in (*DELTA_WEIGHT_VARIANTS, "ia3")) \
        if not full else 0  # IA3's elementwise scaling is negligible
    # LoHa/LoKr multiply each token by the whole delta weight (forward, input and weight
    # gradients: 6 in out per token, like a trained weight); building the delta once a step is
    # not per token and left out.
    lora += sum(t.linear.in_features * t.linear.out_features * t.copies for t in targets
                if t.variant in DELTA_WEIGHT_VARIANTS) if not full else 0
    recompute = linear + attention if train.checkpointing else 0
    return forward + backward + recompute + 6 * lora


def peak_compute_seconds(model: ModelSpec, targets: tuple[Target, ...], train: TrainSpec,
                         gpu: GpuSpec) -> float:
    """Seconds one micro-batch's FLOPs take at the GPU's peak bf16 throughput (MFU 1)."""
    return train.tokens * flops_per_token(model, targets, train) / (gpu.bf16_tflops * 1e12)


def dequant_seconds(model: ModelSpec, train: TrainSpec, gpu: GpuSpec) -> float:
    """Seconds per micro-batch spent dequantizing the 4-bit weights (memory-bound: once in
    forward, once in backward, once more in the recomputed forward); 0 without a quantized base
    or a known bandwidth."""
    if not (train.quantized and gpu.bandwidth_gbps):
        return 0.0
    model = as_built(model, train)
    quantized = sum(m.weight_numel * copies(model, m) for m in block_linears(model)
                    if m.quantizable)
    passes = 3 if train.checkpointing else 2
    return passes * quantized * DEQUANT_BYTES_PER_WEIGHT / (gpu.bandwidth_gbps * 1e9)


def training_time(model: ModelSpec, targets: tuple[Target, ...], train: TrainSpec, gpu: GpuSpec,
                  mfu: float | None = None, dataset_tokens: int | None = None, epochs: float = 1.0,
                  usd_per_gpu_hour: float | None = None, shard: ShardSpec | None = None,
                  dropout: float = 0.0, dora: bool = False, params=None,
                  paged_out_bytes: float = 0.0) -> TrainingTime | None:
    """Tokens per second and hours on ``gpu``; None when the GPU's throughput is unknown.

    Args:
        mfu: a model FLOPs utilisation to use instead of the step-time model.
        shard: GPUs and sharding (communication); one GPU if None.
        dropout, dora: the adapter's dropout and DoRA (their elementwise work).
        paged_out_bytes: paged optimizer state living in host memory (:func:`paged_out_bytes`).
        params: the step-time model's figures; the shipped fit if None.
    """
    if not gpu.bf16_tflops or (mfu is None and not gpu.bandwidth_gbps):
        return None
    per_token = flops_per_token(model, targets, train)
    notes: tuple[str, ...] = ()
    if mfu is not None:
        compute = peak_compute_seconds(model, targets, train, gpu) / mfu
        dequant = dequant_seconds(model, train, gpu)
        step, breakdown, bound, kind = compute + dequant, {"compute": compute,
                                                          "dequantization": dequant}, "compute", "mfu"
    else:
        from .steptime import HOST_INDEX_US, measured_matmul_ratio, step_time
        from .work import step_work

        work = step_work(model, targets, train, shard, dropout, dora, paged_out_bytes)
        timed = step_time(work, gpu, params)
        step, breakdown, bound, kind = timed.seconds, timed.breakdown, timed.bound, "step"
        if not gpu.matmul_tflops:
            notes += (f"no published matmul measurement for {gpu.name}: its GEMMs are timed at "
                      f"{measured_matmul_ratio():.0%} of its datasheet bf16 peak, the median of "
                      f"the measured cards ('lorasize gpus')",)
        if work.host_indices:
            notes += (f"{train.stack} {train.stack_release} rebuilds the q/k/v adapter's index "
                      f"from a Python list in every layer's forward and waits for the GPU there: "
                      f"{work.host_indices * HOST_INDEX_US / 1e3:,.0f} ms of CPU a micro-batch "
                      f"(litgpt 0.3.1 and later keep it on the GPU)",)
        if paged_out_bytes:
            notes += (f"{paged_out_bytes / 2**30:.1f} GiB of paged optimizer state does not fit "
                      f"on the GPU: each optimizer step migrates it over PCIe and back",)
        if shard is not None and shard.sharding == "zero3":
            notes += _zero3_note(model, targets, train, gpu, shard, dropout, dora, params, work,
                                 timed)
        notes += _attention_notes(model, targets, train, gpu, shard, dropout, dora, params,
                                  timed.seconds)
        if bound == "launch":
            notes += (_launch_note(model, targets, train, gpu, shard, dropout, dora, params, timed),)
        elif bound == "communication" and shard is not None and train.method != "full" \
                and shard.sharding in ("fsdp", "fsdp-grad-op", "zero3"):
            ddp = replace(shard, sharding="ddp", offload="none")
            seconds = step_time(step_work(model, targets, train, ddp, dropout, dora), gpu,
                                params).seconds
            notes += (f"{shard.sharding} gathers the frozen base weights every micro-batch; "
                     f"where the base fits on one GPU, --sharding ddp sends only the adapter's "
                     f"gradients: {train.tokens / seconds:,.0f} tokens/s per GPU",)
        mfu = train.tokens * per_token / (gpu.bf16_tflops * 1e12) / step
    tokens_per_s = train.tokens / step
    hours = usd = steps = None
    if dataset_tokens:
        hours = dataset_tokens * epochs / tokens_per_s / SECONDS_PER_HOUR
        # Gradient accumulation changes the number of optimizer steps, not the tokens per second.
        steps = math.ceil(dataset_tokens * epochs / (train.tokens * train.grad_accum))
        if usd_per_gpu_hour is not None:
            usd = hours * usd_per_gpu_hour
    return TrainingTime(per_token, tokens_per_s, step, mfu, hours, usd, train.grad_accum, steps,
                        breakdown, bound, notes, kind, attention_kernels(model, train))


def attention_kernels(model: ModelSpec, train: TrainSpec) -> tuple[tuple[int, str, bool], ...]:
    """(layers, kernel, masked) per kind of decoder layer: ``eager``, ``math``, ``flash`` or
    ``efficient``, and whether SDPA gets a mask there (:func:`lorasize.perf.work.
    attention_kinds`)."""
    from .work import attention_kinds

    return tuple((kind.num_layers, kernel, masked)
                 for kind, kernel, masked in attention_kinds(as_built(model, train), train))


# The share of a step another attention setting must save before the notes name it.
ATTENTION_NOTE_SHARE = 0.05


def _attention_notes(model, targets, train, gpu, shard, dropout, dora, params, step) -> tuple:
    """What the attention setting costs where another would be notably faster, each alternative
    timed as a step of its own: flash-attn 2 on Hopper (its Ampere code) against SDPA, whose
    unmasked kernel there is cuDNN's; a padded SDPA batch (the memory-efficient kernel over the
    whole square, and its mask's traffic) against packing and against flash-attn 2, which
    unpads."""
    from .steptime import ampere_kernel_slowdown, step_time
    from .work import step_work

    def rate(changed: TrainSpec) -> float | None:
        seconds = step_time(step_work(model, targets, changed, shard, dropout, dora), gpu,
                            params).seconds
        return changed.tokens / seconds if seconds < (1 - ATTENTION_NOTE_SHARE) * step else None

    if train.attn == "flash" and ampere_kernel_slowdown(gpu.arch) > 1.0:
        sdpa = rate(replace(train, attn="sdpa"))
        if sdpa:
            return (f"{gpu.name} runs flash-attn 2's Ampere kernels (no Hopper instructions): "
                    f"--attn sdpa, whose unmasked kernel on Hopper is cuDNN's (torch 2.11 and "
                    f"later), would run {sdpa:,.0f} tokens/s",)
    if train.attn != "sdpa":
        return ()
    from ..memory.activations import sliding_window
    from .work import attention_kinds

    masked = [kind for kind, _, is_masked in attention_kinds(as_built(model, train), train)
              if is_masked]
    if not masked:
        return ()
    sliding = [] if train.padded else masked
    packed = rate(replace(train, padded=False)) if train.padded else None
    flash = rate(replace(train, attn="flash")) if gpu.arch not in PRE_AMPERE else None
    options = [f"packed (no mask) {packed:,.0f}" if packed else "",
               f"--attn flash (which {'unpads' if train.padded else 'takes the window'}) "
               f"{flash:,.0f}" if flash else ""]
    if not any(options):
        return ()
    faster = "tokens/s " + ", ".join(o for o in options if o)
    if train.padded:
        return (f"padded batches, in time: {faster}",)
    layers = sum(v.num_layers for v in sliding)
    return (f"at {train.seq_len:,} tokens the sliding window ({sliding_window(sliding[0]):,}) "
            f"gives SDPA a mask in {layers} of {model.num_layers} layers, so it runs the "
            f"memory-efficient kernel over the whole seq x seq there: {faster}",)


# The share of a step the host's ZeRO-3 fetches must reach before the step's notes name them.
ZERO3_FETCH_NOTE_SHARE = 0.1


def _zero3_note(model, targets, train, gpu, shard, dropout, dora, params, work, timed) -> tuple:
    """Where DeepSpeed ZeRO-3's module-by-module fetches cost a notable share of the step: how
    many, their CPU time, and FSDP's throughput (a layer's gather at a time) on the same GPUs."""
    from .steptime import default_params, step_time
    from .work import step_work

    cpu = work.gathers * (params or default_params()).gather_us * 1e-6
    if cpu < ZERO3_FETCH_NOTE_SHARE * timed.seconds:
        return ()
    fsdp = replace(shard, sharding="fsdp", offload="params" if shard.offload == "params" else "none")
    seconds = step_time(step_work(model, targets, train, fsdp, dropout, dora), gpu, params).seconds
    return (f"DeepSpeed ZeRO-3 runs its fetch on every module the step calls, before its forward, "
            f"recompute and backward: {work.gathers:,.0f} fetches, {cpu * 1e3:,.0f} ms of CPU a "
            f"micro-batch at FSDP's cost a gather (Qwen's published ZeRO-3 runs took about twice "
            f"that: this step may be slower); FSDP gathers a layer at a time: "
            f"{train.tokens / seconds:,.0f} tokens/s per GPU with --sharding fsdp",)


def _launch_note(model, targets, train, gpu, shard, dropout, dora, params, timed) -> str:
    """What a launch-bound step means for the user: a larger batch costs little more time."""
    from .steptime import step_time
    from .work import step_work

    larger = replace(train, batch_size=train.batch_size * 4)
    seconds = step_time(step_work(model, targets, larger, shard, dropout, dora), gpu, params).seconds
    return (f"at batch {train.batch_size} this step is bound by kernel launches (the CPU issues "
            f"kernels for {timed.cpu_seconds * 1e3:,.0f} ms, the GPU works {timed.gpu_seconds * 1e3:,.0f} "
            f"ms): batch {larger.batch_size} takes {seconds / timed.seconds:.2f}x the time for 4x "
            f"the tokens")


def paged_out_bytes(estimate) -> int:
    """Paged optimizer state that cannot stay on the GPU beside the weights (an
    :class:`lorasize.estimate.Estimate` with a GPU). Only what must page whatever the recipe
    does with gradients and activations (torchtune's optimizer-in-backward frees each gradient
    at once) is counted: the weights, constants, CUDA context and paged state beyond the GPU's
    memory, up to the paged state itself."""
    paged = estimate.breakdown.get("paged_optimizer", 0)
    if not paged or estimate.gpu is None:
        return 0
    b = estimate.breakdown
    resident = b["weights"] + b["quant_constants"] + b["cuda_context"] + paged
    return min(paged, max(0, resident - estimate.gpu.memory_bytes))


def estimate_time(estimate, gpu: GpuSpec | None = None, mfu: float | None = None,
                  dataset_tokens: int | None = None, epochs: float = 1.0,
                  usd_per_gpu_hour: float | None = None, params=None) -> TrainingTime | None:
    """The time of the step an :class:`lorasize.estimate.Estimate` describes (its model,
    adapters, training, sharding, and the paged optimizer state its memory leaves off the GPU),
    on ``gpu`` (default: the estimate's); None without a GPU of known throughput. Every place
    that times an estimate (estimate, fit, sweeps, the report) comes through here."""
    gpu = gpu or estimate.gpu
    if gpu is None:
        return None
    return training_time(estimate.model, estimate.targets, estimate.train, gpu, mfu,
                         dataset_tokens, epochs, usd_per_gpu_hour, shard=estimate.shard,
                         dropout=estimate.lora.dropout, dora=estimate.lora.dora, params=params,
                         paged_out_bytes=paged_out_bytes(estimate))
