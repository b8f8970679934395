"""GPUs: memory as the driver reports it, throughput, bandwidth."""

from __future__ import annotations

from dataclasses import dataclass

from .units import BYTES_PER_MIB


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
    """

    name: str
    memory_bytes: int
    arch: str | None = None
    bf16_tflops: float | None = None
    bandwidth_gbps: float | None = None
    vendor: str = "nvidia"
    source: str = ""

    @classmethod
    def from_entry(cls, entry: dict) -> "GpuSpec":
        """Build from a catalog entry of :mod:`lorasize.arch.catalog._gpus`."""
        return cls(
            name=entry["name"], memory_bytes=entry["memory_mib"] * BYTES_PER_MIB,
            arch=entry.get("arch"), bf16_tflops=entry.get("bf16_tflops"),
            bandwidth_gbps=entry.get("bandwidth_gbps"), vendor=entry.get("vendor", "nvidia"),
            source=entry.get("source", ""),
        )
