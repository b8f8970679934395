"""Seconds for one micro-batch on a GPU: a :class:`StepWork` through a roofline.

- **GEMMs** run at the larger of their compute time (FLOPs over the bf16 peak times the GEMM
  efficiency, lowered by wave quantization: 128 x 128 output tiles over the GPU's SMs, NVIDIA's
  "Matrix Multiplication Background User's Guide") and their memory time (both operands and the
  result over the bandwidth). Rank-r adapter GEMMs and micro-batches of a few hundred tokens are
  bandwidth-bound this way; large base GEMMs compute-bound.
- **Attention** (flash / memory-efficient kernels) at its own efficiency of the peak.
- **Memory-bound work** (norms, residuals, activations, rope, the loss, LoRA's elementwise ops,
  eager attention's scores) and the **optimizer step** (once per ``grad_accum`` micro-batches)
  at the bandwidth times its efficiency.
- **Dequantization**: bitsandbytes dequantizes every 4-bit weight in each forward and backward;
  its cost per weight is fitted (the kernel is far from the bandwidth's bound).
- **Communication**: ring collectives over NVLink / Infinity Fabric, PCIe, or (beyond one server
  of 8) the network; each hidden behind the compute of the pass it overlaps, the rest exposed.
- **Launch overhead**: the CPU issues every kernel (Python, the framework, the CUDA launch) at
  one cost a kernel, whichever framework calls it: frameworks differ in the kernels they launch
  and in the host work they add (lit-gpt before 0.3.1 builds an index tensor from a Python list
  in every layer's forward). When the CPU takes longer than the GPU's work the step is
  launch-bound and the difference is the ``overhead`` term. A framework that waits for the GPU
  inside every layer (the same lit-gpt) cannot hide a collective behind the CPU's launches.

The breakdown sums to the step. The efficiencies and per-kernel CPU times are
:class:`TimeParams`, fitted from published throughput (``lorasize/data/timing_params.json``,
written by ``python -m lorasize.calibrate.timing_fit``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from ..gpu import GpuSpec
from .work import StepWork

PARAMS_FILE = Path(__file__).resolve().parent.parent / "data" / "timing_params.json"
TILE = 128  # cuBLAS / CUTLASS output tile of large bf16 GEMMs
DEFAULT_SMS = 108  # an A100's, for a custom GPU
# One server holds 8 GPUs; beyond it collectives cross the network: 8 x 200 Gb/s HDR InfiniBand
# per DGX A100 (25 GB/s a GPU), 8 x 400 Gb/s NDR per DGX H100 (50 GB/s a GPU) (NVIDIA DGX
# datasheets).
GPUS_PER_NODE = 8
NETWORK_GBPS = {"ampere": 25.0, "hopper": 50.0, "blackwell": 50.0}
DEFAULT_NETWORK_GBPS = 25.0
# Tensor cores need GEMM dimensions in multiples of 8 (2-byte types); otherwise cuBLAS picks
# slower kernels (NVIDIA, "Matrix Multiplication Background User's Guide", "Tensor Core
# Requirements"; nanoGPT's vocabulary padded from 50,257 to 50,304 for the same reason).
TENSOR_CORE_MULTIPLE = 8
MISALIGNED_EFFICIENCY = 0.25
# A GPU without an fp32 figure: fp32 at a sixteenth of the bf16 tensor peak (A100, H100).
FP32_FALLBACK_RATIO = 16.0
# Unified-memory page migration (a paged optimizer's state paged in on demand and evicted again)
# reaches about 40% of the PCIe link (NVIDIA, "Maximizing Unified Memory Performance in CUDA",
# 2017: on-demand migration at about 5-6 GB/s against PCIe 3's 12 GB/s achieved).
UVM_LINK_FRACTION = 0.4
# LLM.int8 dequantizes and runs outlier decomposition: about twice NF4's work per weight.
INT8_DEQUANT_FACTOR = 2.0
# CPU microseconds to make a tensor from one Python int (``torch.tensor(list)``): 2.27 ms for
# 8,192 ints, 275-280 ns each from 2,048 to 16,384 (median of 200, torch 2.13 on an AMD EPYC
# core, December 2026). The list lit-gpt rebuilt every forward (Lightning-AI/litgpt #770).
HOST_INDEX_US = 0.28
# FlashAttention-2, forward and backward, head dim 128, 8k tokens, no causal mask: 201 TFLOPS on
# an A100 80GB, 335 on an H100 SXM (the flash-attention README's benchmark figures,
# assets/flash2_a100_fwd_bwd_benchmark.png and flash2_h100_fwd_bwd_benchmark.png,
# Dao-AILab/flash-attention @4f285b35, July 2023). Hopper runs FA2's Ampere code "using no special
# instructions" (FA2 paper, section 4.1; "only 35% utilization on the H100", FA3 paper's
# abstract), so against each card's matmul rate Hopper's attention reaches a smaller share than
# Ampere's: :func:`ampere_kernel_slowdown`. No such figure for other architectures (Ada runs the
# kernels natively; Blackwell unmeasured): they keep Ampere's share.
FA2_TFLOPS = {"ampere": ("a100-80gb", 201.0), "hopper": ("h100-80gb", 335.0)}
BREAKDOWN_KEYS = ("matmuls", "adapter_matmuls", "attention", "memory_bound", "dequantization",
                  "optimizer", "communication", "overhead")


@dataclass(frozen=True)
class TimeParams:
    """The fitted figures of the step-time model.

    Attributes:
        gemm_efficiency: fraction of the card's measured matmul rate (:func:`matmul_tflops`)
            a GEMM with a long reduction reaches: 1 by that rate's definition, and not fitted
            (published throughput cannot tell it from ``gemm_k0``: the fit trades one for the
            other at an equal loss).
        gemm_k0: the fixed cost of each output tile (loading its operands' first slices,
            writing the result), as reduction steps: a GEMM over ``k`` runs ``1 + gemm_k0 / k``
            times longer than its FLOPs at ``gemm_efficiency`` say (small hidden sizes, rank-r
            adapter GEMMs).
        attention_efficiency: fraction of the measured matmul rate flash / memory-efficient
            attention reaches.
        bandwidth_efficiency: fraction of the datasheet bandwidth memory-bound kernels reach.
        dequant_bytes: seconds per dequantized 4-bit weight, as bytes at the full bandwidth.
        comm_efficiency: fraction of the link's bandwidth a ring collective reaches, per link
            (``nvlink``, ``pcie``, ``network``).
        launch_us: CPU microseconds per kernel launch (Python, the dispatcher, the CUDA launch),
            one figure for every training stack: they differ in what they launch.
        gather_us: CPU microseconds each FSDP / ZeRO-3 unit's gather costs beyond its bytes
            (the unit's hooks in Python, stream waits).
        comm_overlap: the share of a pass's compute a collective can hide behind (NCCL kernels
            compete for SMs and memory; through host memory, for the CPU as well).
        overlap: how much of the CPU's launch time hides behind the GPU's work (1: all of it,
            the step takes the longer of the two; 0: none, they add).
        source: how the figures were fitted.
    """

    gemm_efficiency: float = 1.0
    gemm_k0: float = 128.0
    attention_efficiency: float = 0.5
    bandwidth_efficiency: float = 0.8
    dequant_bytes: float = 4.5
    comm_efficiency: dict = field(default_factory=lambda: {"nvlink": 0.7, "pcie": 0.5,
                                                           "network": 0.7})
    launch_us: float = 30.0
    gather_us: float = 100.0
    comm_overlap: float = 0.9
    overlap: float = 1.0
    source: str = "unfitted defaults"

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=1)
def default_params() -> TimeParams:
    """The shipped fit (``lorasize/data/timing_params.json``)."""
    return load_params(PARAMS_FILE)


def load_params(path) -> TimeParams:
    """Step-time figures from a file ``lorasize calibrate --timing`` wrote.

    Raises:
        LorasizeError: unreadable, or a figure missing or not a positive number.
    """
    from ..errors import LorasizeError
    from ..files import read_json

    data = read_json(path)
    fields = {}
    for name, spec in TimeParams.__dataclass_fields__.items():
        if name == "source":
            fields[name] = str(data.get("source", path))
            continue
        value = data.get(name) if isinstance(data, dict) else None
        # files of earlier releases held a launch cost per stack and no tile cost (their
        # figures were fitted without one)
        if name == "launch_us" and isinstance(value, dict):
            value = value.get("hf-peft")
        if name == "gemm_k0" and value is None:
            fields[name] = 0.0
            continue
        numbers = value.values() if isinstance(value, dict) else [value]
        if value is None or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                    and v > 0 for v in numbers):
            raise LorasizeError(f"field '{name}' must be a positive number (or a mapping of them)",
                                source=str(path))
        fields[name] = value
    return TimeParams(**fields)


@dataclass(frozen=True)
class StepTime:
    """One micro-batch's seconds by component (they sum to ``seconds``) and what bounds it."""

    seconds: float
    breakdown: dict
    bound: str  # "compute", "memory", "launch", "communication", "dequantization"
    gpu_seconds: float
    cpu_seconds: float


@dataclass(frozen=True)
class Terms:
    """A step's work in seconds on one GPU at efficiency 1: what the fitted figures scale.

    ``gemms`` holds (breakdown key, compute seconds, memory seconds, reduction length) per GEMM
    shape;
    ``comms`` (link, seconds, hidden by) per collective."""

    gemms: tuple
    attention: float
    memory: float
    dequant: float  # seconds per dequantized byte-equivalent of every weight
    optimizer: float
    comms: tuple
    gathers: float
    kernels: float
    forward_share: float
    host_seconds: float = 0.0  # the CPU's own work beyond launches (no fitted figure)
    syncs: bool = False


@lru_cache(maxsize=1)
def measured_matmul_ratio() -> float:
    """The median, over the catalog cards with a measured matmul rate, of that rate over the
    datasheet peak: what a card without a measurement is taken to reach."""
    from statistics import median

    from ..arch.catalog import gpu_entries

    return median(e["matmul_tflops"] / e["bf16_tflops"] for e in gpu_entries()
                  if e.get("matmul_tflops") and e.get("bf16_tflops"))


def matmul_tflops(gpu: GpuSpec) -> float:
    """Dense bf16 (fp16 where the card has no bf16) matmul TFLOP/s the card reaches: its
    measured rate (the catalog's ``matmul_tflops``), else its datasheet peak times
    :func:`measured_matmul_ratio`. Real clocks differ from the rated boost both ways: GeForce
    cards run above it, data-center cards under their power cap below it."""
    return gpu.matmul_tflops or gpu.bf16_tflops * measured_matmul_ratio()


@lru_cache(maxsize=None)
def ampere_kernel_slowdown(arch: str | None) -> float:
    """How much longer an attention kernel written for Ampere (flash-attn 2, SDPA's
    memory-efficient kernel) takes on ``arch`` than its FLOPs at the attention efficiency of the
    card's matmul rate say: FlashAttention-2's share of the matmul rate on an A100 over its share
    on the architecture's reference card (:data:`FA2_TFLOPS`); 1 where there is no figure."""
    from ..arch.catalog import gpu_from_catalog

    if arch not in FA2_TFLOPS or arch == "ampere":
        return 1.0

    def share(name: str, tflops: float) -> float:
        return tflops / matmul_tflops(gpu_from_catalog(name))

    return share(*FA2_TFLOPS["ampere"]) / share(*FA2_TFLOPS[arch])


def _gemm_terms(g, gpu: GpuSpec) -> tuple[str, float, float, float]:
    sms = gpu.sms or DEFAULT_SMS
    tiles = math.ceil(g.m / TILE) * math.ceil(g.n / TILE) * (g.count if g.what == "attention" else 1)
    util = tiles / (math.ceil(tiles / sms) * sms)
    leading = (g.m, g.n) if g.reduces_tokens else (g.n, g.k)
    # the alignment rule is the tensor cores': an fp32 GEMM (torch's allow_tf32=False default)
    # runs on the CUDA cores whatever its shape
    if not g.fp32 and any(int(d) % TENSOR_CORE_MULTIPLE for d in leading):
        util *= MISALIGNED_EFFICIENCY
    tensor = matmul_tflops(gpu)
    peak = (gpu.fp32_tflops or gpu.bf16_tflops / FP32_FALLBACK_RATIO) if g.fp32 else tensor
    compute = g.flops / (peak * 1e12 * util)
    element = 4.0 if g.fp32 else 2.0
    weight = element if g.weight_bytes is None else g.weight_bytes
    memory = (element * (g.m * g.k + g.m * g.n) + weight * g.k * g.n) * g.count / (
        gpu.bandwidth_gbps * 1e9)
    key = {"adapter": "adapter_matmuls", "attention": "attention"}.get(g.what, "matmuls")
    # the tile's fixed cost is counted in steps of the bf16 tensor-core mainloop: an fp32 GEMM's
    # steps are slower by the ratio of the peaks, its fixed cost relatively smaller
    return key, compute, memory, float(g.k) * (tensor / peak)


def _link(gpu: GpuSpec, gpus: int, link: str) -> tuple[str, float]:
    """The link class and its bandwidth in GB/s, one direction."""
    if link == "host":
        return "pcie", gpu.pcie_gbps or 16.0
    if link == "paging":
        return "paging", (gpu.pcie_gbps or 16.0) * UVM_LINK_FRACTION
    if gpus > GPUS_PER_NODE:
        return "network", NETWORK_GBPS.get(gpu.arch or "", DEFAULT_NETWORK_GBPS)
    if gpu.link in ("nvlink", "xgmi") and gpu.link_gbps:
        return "nvlink", gpu.link_gbps
    return "pcie", gpu.pcie_gbps or 16.0


def terms(work: StepWork, gpu: GpuSpec) -> Terms:
    """The hardware side of ``work`` on ``gpu`` (needs its bf16 peak and bandwidth)."""
    bw = gpu.bandwidth_gbps * 1e9
    factor = INT8_DEQUANT_FACTOR if work.quant == "int8" else 1.0
    comms = []
    for c in work.comms:
        kind, gbps = _link(gpu, work.gpus, c.link)
        comms.append((kind, c.bytes / (gbps * 1e9), c.hidden_by))
    return Terms(gemms=tuple(_gemm_terms(g, gpu) for g in work.gemms),
                 attention=(work.attention_flops + (ampere_kernel_slowdown(gpu.arch) - 1)
                            * work.ampere_attention_flops) / (matmul_tflops(gpu) * 1e12),
                 memory=work.elementwise_bytes / bw, dequant=work.dequant_weights * factor / bw,
                 optimizer=work.optimizer_bytes / bw / work.grad_accum, comms=tuple(comms),
                 gathers=work.gathers, kernels=work.kernels, forward_share=work.forward_share,
                 host_seconds=work.host_indices * HOST_INDEX_US * 1e-6, syncs=work.syncs)


def combine(t: Terms, p: TimeParams) -> StepTime:
    """Seconds of a step from its :class:`Terms` and the fitted figures."""
    parts = dict.fromkeys(BREAKDOWN_KEYS, 0.0)
    streaming = 0.0  # GEMM time bound by reading the operands rather than by the FLOPs
    for key, compute, memory, k in t.gemms:
        compute *= 1 + p.gemm_k0 / k
        seconds = max(compute / p.gemm_efficiency, memory / p.bandwidth_efficiency)
        parts[key] += seconds
        if memory / p.bandwidth_efficiency > compute / p.gemm_efficiency:
            streaming += seconds
    parts["attention"] += t.attention / p.attention_efficiency
    parts["memory_bound"] = t.memory / p.bandwidth_efficiency
    parts["dequantization"] = t.dequant * p.dequant_bytes
    parts["optimizer"] = t.optimizer / p.bandwidth_efficiency
    compute = sum(parts.values())
    forward = compute * t.forward_share
    hideable = {"forward": forward, "backward": compute - forward, "none": 0.0}
    hideable = {k: v * p.comm_overlap for k, v in hideable.items()}
    exposed = 0.0
    for kind, seconds, hidden_by in t.comms:
        seconds /= p.comm_efficiency.get(kind, 1.0)  # paging: its fraction is in the link
        hidden = 0.0 if t.syncs else min(seconds, hideable[hidden_by])
        hideable[hidden_by] -= hidden
        exposed += seconds - hidden
    parts["communication"] = exposed
    gpu_seconds = compute + exposed
    cpu_seconds = (t.kernels * p.launch_us + t.gathers * p.gather_us) * 1e-6 + t.host_seconds
    # a CPU that waits for the GPU in every layer waits for that layer's collectives too: they
    # hide behind neither the GPU's compute nor the CPU's launches
    busy = compute if t.syncs else gpu_seconds
    parts["overhead"] = cpu_seconds - p.overlap * min(cpu_seconds, busy)
    seconds = sum(parts.values())
    return StepTime(seconds, parts, _bound(parts, compute, streaming), gpu_seconds, cpu_seconds)


def step_time(work: StepWork, gpu: GpuSpec, params: TimeParams | None = None) -> StepTime:
    """Seconds of one micro-batch of ``work`` on ``gpu`` (needs its bf16 peak and bandwidth)."""
    return combine(terms(work, gpu), params or default_params())


def _bound(parts: dict, compute: float, streaming: float) -> str:
    if parts["overhead"] > 0.5 * compute:
        return "launch"
    if parts["communication"] > 0.5 * compute:
        return "communication"
    if parts["dequantization"] > 0.5 * compute:
        return "dequantization"
    memory = parts["memory_bound"] + parts["optimizer"] + streaming
    if memory > compute - memory:
        return "memory"
    return "compute"
