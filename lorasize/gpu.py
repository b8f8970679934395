"""GPUs: memory as the driver reports it, throughput, bandwidth."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import LorasizeError
from .units import BYTES_PER_MIB, parse_bytes


# Architectures before Ampere have no bf16 tensor cores, and flash-attn 2 needs Ampere or newer
# (flash-attn's README: "Ampere, Ada, or Hopper GPUs"; NVIDIA's Turing and Volta whitepapers).
PRE_AMPERE = ("volta", "turing")


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model.

    Attributes:
        name: catalog name (``a100-40gb``) or ``custom``.
        memory_bytes: total device memory as nvidia-smi reports it.
        arch: architecture family (``ampere``, ``hopper`` ...), or None if unknown.
        bf16_tflops: dense bf16 tensor throughput, or None.
        bandwidth_gbps: memory bandwidth in GB/s, or None.
        vendor: ``nvidia`` or ``amd``.
        source: where the figures come from.
        fp32_tflops: fp32 throughput without tensor cores, or None.
        sms: streaming multiprocessors (AMD: compute units), or None.
        link: ``nvlink``, ``xgmi`` or ``pcie``: how GPUs of one server talk.
        link_gbps: NVLink / Infinity Fabric bandwidth per GPU, one direction, GB/s.
        pcie_gbps: the host link, one direction, GB/s.
    """

    name: str
    memory_bytes: int
    arch: str | None = None
    bf16_tflops: float | None = None
    bandwidth_gbps: float | None = None
    vendor: str = "nvidia"
    source: str = ""
    fp32_tflops: float | None = None
    sms: int | None = None
    link: str = "pcie"
    link_gbps: float | None = None
    pcie_gbps: float | None = None
    matmul_tflops: float | None = None

    @classmethod
    def from_entry(cls, entry: dict) -> "GpuSpec":
        """Build from a catalog entry of :mod:`lorasize.arch.catalog._gpus`."""
        return cls(
            name=entry["name"], memory_bytes=entry["memory_mib"] * BYTES_PER_MIB,
            arch=entry.get("arch"), bf16_tflops=entry.get("bf16_tflops"),
            bandwidth_gbps=entry.get("bandwidth_gbps"), vendor=entry.get("vendor", "nvidia"),
            source=entry.get("source", ""), sms=entry.get("sms"),
            fp32_tflops=entry.get("fp32_tflops"),
            link=entry.get("link", "pcie"), link_gbps=entry.get("link_gbps"),
            pcie_gbps=entry.get("pcie_gbps"), matmul_tflops=entry.get("matmul_tflops"),
        )


def with_memory(gpu: GpuSpec | None, text: str, source: str = "--gpu-mem") -> GpuSpec:
    """``gpu`` (a catalog card, or None for a custom one) with the memory ``text`` gives
    (``24GiB``, ``40GB``, ``81559MiB``): what ``--gpu-mem`` and a check scenario's ``gpu_mem``
    mean.

    Raises:
        LorasizeError: not a size, a bare number (it would be bytes), or not above 0.
    """
    text = str(text).strip()
    if re.fullmatch(r"[0-9.]+", text):
        raise LorasizeError(f"give a unit: {text}GiB, {text}GB or a size in MiB (a bare number "
                            f"would be bytes)", source=source)
    try:
        memory = parse_bytes(text)
    except ValueError as exc:
        raise LorasizeError(str(exc), source=source) from None
    if memory <= 0:
        raise LorasizeError("must be more than 0", source=source)
    if gpu is None:
        return GpuSpec(name="custom", memory_bytes=memory)
    return replace(gpu, memory_bytes=memory)
