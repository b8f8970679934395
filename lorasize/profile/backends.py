"""Where the memory figures come from: a small interface with a GPU and a CPU implementation.

- :class:`CudaBackend`: ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` per
  phase, and the device's used memory sampled by pynvml in a background thread (what nvidia-smi
  shows: CUDA context and memory outside torch included).
- :class:`TrackerBackend`: the CPU. The trace tier's live-storage tracker counts the real CPU
  tensors of the run, so the whole profiling path runs for real in tests; there is no
  caching allocator and no device, so reserved equals allocated and the device figures are None.
"""

from __future__ import annotations

import os
import threading
import time

from ..errors import LorasizeError

NVML_SAMPLE_SECONDS = 0.005


class MemoryBackend:
    """Per-phase peaks of allocated and reserved bytes, and the device's used-memory peak."""

    kind = "none"

    def start(self) -> None:
        pass

    def begin_phase(self, name: str) -> None:
        pass

    def end_phase(self, name: str) -> dict:
        return {}

    def stop(self) -> dict:
        return {}

    def timeline(self) -> tuple[str, list[tuple[float, int, str]]]:
        """(x-axis label, [(x, live or used bytes, phase)]) sampled during the run."""
        return "", []

    def context(self):
        """A context manager the measured steps run inside."""
        from contextlib import nullcontext
        return nullcontext()


class TrackerBackend(MemoryBackend):
    """CPU: the live-storage tracker over real tensors (exact allocated bytes)."""

    kind = "cpu"

    def __init__(self, model, tracker_class=None):
        from ..trace.tracker import LiveBytesTracker

        self.tracker = (tracker_class or LiveBytesTracker)(round_to=1)
        self.tracker.track_model(model)
        self.tracker.history = []
        self.peaks: dict[str, int] = {}

    def timeline(self):
        return "operations", [(float(op), live, phase) for op, live, phase in self.tracker.history]

    def context(self):
        return self.tracker

    def live_bytes(self) -> int:
        """Bytes live now (tensors created inside :meth:`context` and the tracked model)."""
        return self.tracker.total

    def begin_phase(self, name: str) -> None:
        self.tracker.phase = {"optimizer": "optimizer"}.get(name, name)
        self.tracker.reset_peak()

    def end_phase(self, name: str) -> dict:
        peak = self.tracker.peak
        self.peaks[name] = max(self.peaks.get(name, 0), peak)
        return {"peak_allocated_bytes": peak, "peak_reserved_bytes": peak}

    def stop(self) -> dict:
        top = max(self.peaks.values(), default=0)
        return {"peak_allocated_bytes": top, "peak_reserved_bytes": top, "device_peak_bytes": None,
                "context_bytes": None}


def nvml_index(index: int, visible: str | None) -> int:
    """NVML's index of torch's CUDA device ``index``: NVML counts every GPU of the machine, torch
    only those ``CUDA_VISIBLE_DEVICES`` lists (as schedulers such as SLURM set it). Entries that
    are UUIDs are left to the caller's index."""
    entries = [entry.strip() for entry in (visible or "").split(",") if entry.strip()]
    if index < len(entries) and entries[index].isdigit():
        return int(entries[index])
    return index


def nvml_handle(index: int = 0):
    """pynvml's handle for torch's CUDA device ``index``, or a one-line error when there is
    none."""
    try:
        import pynvml
    except ImportError:
        raise LorasizeError("reading GPU memory needs nvidia-ml-py: pip install \"lorasize[gpu]\"",
                            source="--device") from None
    try:
        pynvml.nvmlInit()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(nvml_index(index, visible))
    except pynvml.NVMLError as exc:
        raise LorasizeError(f"no NVIDIA GPU can be read ({exc}); profile on the CPU with "
                            f"--device cpu", source="--device") from None


class CudaBackend(MemoryBackend):
    """GPU: torch.cuda statistics per phase, pynvml sampling of the whole device."""

    kind = "cuda"

    def __init__(self, index: int = 0):
        import torch

        self.torch = torch
        self.pynvml, self.handle = nvml_handle(index)
        self._samples_peak = 0
        self._samples: list[tuple[float, int, str]] = []
        self._phase = "setup"
        self._start = time.perf_counter()
        self._running = False
        self.peaks: dict[str, tuple[int, int]] = {}
        torch.cuda.init()
        self.context_bytes = self._used()

    def live_bytes(self) -> int:
        """Bytes torch holds allocated on the GPU now."""
        return int(self.torch.cuda.memory_allocated())

    def _used(self) -> int:
        return int(self.pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def _sample(self) -> None:
        while self._running:
            used = self._used()
            self._samples_peak = max(self._samples_peak, used)
            self._samples.append((time.perf_counter() - self._start, used, self._phase))
            time.sleep(NVML_SAMPLE_SECONDS)

    def timeline(self):
        return "seconds", list(self._samples)

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def begin_phase(self, name: str) -> None:
        self.torch.cuda.synchronize()
        self.torch.cuda.reset_peak_memory_stats()
        self._phase = name

    def end_phase(self, name: str) -> dict:
        self.torch.cuda.synchronize()
        allocated = int(self.torch.cuda.max_memory_allocated())
        reserved = int(self.torch.cuda.max_memory_reserved())
        old = self.peaks.get(name, (0, 0))
        self.peaks[name] = (max(old[0], allocated), max(old[1], reserved))
        return {"peak_allocated_bytes": allocated, "peak_reserved_bytes": reserved}

    def stop(self) -> dict:
        self._running = False
        self._thread.join()
        return {"peak_allocated_bytes": max((a for a, _ in self.peaks.values()), default=0),
                "peak_reserved_bytes": max((r for _, r in self.peaks.values()), default=0),
                "device_peak_bytes": self._samples_peak, "context_bytes": self.context_bytes}
