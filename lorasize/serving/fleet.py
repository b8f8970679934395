"""Fleet cost: GPUs and dollars a month to serve every customer's fine-tuned model.

Compares four ways to serve ``customers x tasks`` fine-tuned models (the comparison TrueFoundry
made by hand for 1,000 customers, seed 004):

1. full fine-tuning per model: every model is a full copy of the base, packed onto GPUs;
2. the same with a smaller base model;
3. LoRA with every adapter resident next to one 16-bit base per GPU;
4. QLoRA with hot swapping: a 4-bit base and the resident slots a target hit rate needs.

GPUs = the more of what holds the models (memory) and what generates the fleet's traffic
(``--rps`` requests of ``--output-tokens`` tokens a second over each option's serving
throughput: :func:`gpus_for_load`). Cost = GPUs x price per GPU-hour x hours per month. The default price is the one implied by the
seed's figures (350 A100-40GB for about $1M a month: about $4 per GPU-hour).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..memory.allocator import DEFAULT_CUDA_CONTEXT_BYTES
from ..gpu import GpuSpec

HOURS_PER_MONTH = 730  # 365 * 24 / 12
DEFAULT_USD_PER_GPU_HOUR = 4.0


@dataclass(frozen=True)
class FleetOption:
    """One way to serve the fleet."""

    approach: str
    gpus: int | None  # None: it cannot be served this way (the detail says why)
    usd_per_month: float | None
    detail: str
    memory_gpus: int | None = None  # the GPUs that hold the models
    traffic_gpus: int | None = None  # the GPUs that generate --rps (None: no traffic given)
    tokens_per_s: float | None = None  # one GPU's serving throughput

    def to_dict(self) -> dict:
        out = {"approach": self.approach, "gpus": self.gpus,
               "usd_per_month": None if self.usd_per_month is None
               else round(self.usd_per_month, 2), "detail": self.detail,
               "memory_gpus": self.memory_gpus if self.memory_gpus is not None else self.gpus,
               "traffic_gpus": self.traffic_gpus}
        if self.tokens_per_s is not None:
            out["tokens_per_s_per_gpu"] = round(self.tokens_per_s, 1)
        return out


def models_per_gpu(model_bytes: int, gpu: GpuSpec, context_bytes: int = DEFAULT_CUDA_CONTEXT_BYTES) -> float:
    """Whole model copies one GPU holds; below 1 when a model needs several GPUs."""
    usable = gpu.memory_bytes - context_bytes
    return usable / model_bytes


def gpus_for(models: int, per_gpu: float) -> int:
    """GPUs needed to hold ``models`` copies at ``per_gpu`` copies per GPU."""
    if per_gpu >= 1:
        return math.ceil(models / math.floor(per_gpu))
    return models * math.ceil(1 / per_gpu)


def gpus_for_load(rps: float, output_tokens: int, tokens_per_s: float | None) -> int:
    """GPUs that generate ``rps`` requests of ``output_tokens`` tokens a second when one GPU
    generates ``tokens_per_s`` (its serving throughput, prefills included); 0 when unknown."""
    if not tokens_per_s or rps <= 0:
        return 0
    return math.ceil(rps * output_tokens / tokens_per_s)


def option(approach: str, gpus: int | None, usd_per_gpu_hour: float, detail: str,
           **sizing) -> FleetOption:
    usd = None if gpus is None else gpus * usd_per_gpu_hour * HOURS_PER_MONTH
    return FleetOption(approach, gpus, usd, detail, **sizing)
