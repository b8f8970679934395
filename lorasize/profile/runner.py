"""Run real training steps and measure them: the profiler.

The model is built from its config with random weights (memory does not depend on the values)
or loaded from a local weights folder, quantized and wrapped with PEFT as the spec says, then
trained for ``warmup + steps`` steps on synthetic token batches of exactly batch x seq. Each
phase (forward, backward, optimizer) of each step is measured by a :mod:`backend
<lorasize.profile.backends>`; an out-of-memory error is a result, not a crash.
"""

from __future__ import annotations

import gc
import platform
import time
from dataclasses import asdict
from importlib import metadata

from .. import __version__
from ..arch.lora import LoraSpec
from ..arch.model import ModelSpec
from ..specs import TrainSpec
from .backends import CudaBackend, TrackerBackend
from .schema import SCHEMA_VERSION

PHASES = ("forward", "backward", "optimizer")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _versions(backend) -> dict:
    versions = {name: _version(name) for name in ("torch", "transformers", "peft", "bitsandbytes")}
    versions.update(lorasize=__version__, python=platform.python_version())
    if backend is not None and backend.kind == "cuda":
        versions["driver"] = backend.pynvml.nvmlSystemGetDriverVersion()
    return versions


def _device(backend, index: int = 0) -> dict:
    if backend is not None and backend.kind == "cuda":
        import torch
        props = torch.cuda.get_device_properties(index)
        return {"kind": "cuda", "name": props.name, "memory_bytes": int(props.total_memory)}
    return {"kind": "cpu", "name": platform.processor() or platform.machine(), "memory_bytes": None}


def profile_training(model: ModelSpec, lora: LoraSpec, train: TrainSpec, steps: int = 3,
                     warmup: int = 1, device: str = "cpu", timeline: str | None = None,
                     memory_snapshot: str | None = None) -> dict:
    """Profile ``steps`` measured training steps after ``warmup`` ones; returns the profile.

    ``timeline``: write the memory timeline there (plotly HTML). ``memory_snapshot``: save
    torch's CUDA memory snapshot there (GPU only) for PyTorch's memory viewer.
    """
    import torch

    from ..trace.build import build
    from ..trace.run import _optimizer, step_inputs

    torch.manual_seed(0)
    backend = CudaBackend() if device == "cuda" else None  # fail before the slow build
    config = {"model": {"name": model.name, "hf_config": model.hf_config}, "lora": asdict(lora),
              "train": asdict(train), "steps": steps, "warmup": warmup, "gpus": 1,
              "sharding": "none"}
    load_start = time.perf_counter()
    try:
        network = build(model, lora, train, fake_mode=None, real_bnb=train.quantized)
        if device == "cuda":
            network = network.to("cuda")
    except Exception as exc:
        if not is_oom(exc):
            raise
        # the model itself does not fit: a result (oom), with no step measured
        network = None
        return {"schema_version": SCHEMA_VERSION, "versions": _versions(backend),
                "device": _device(backend), "config": config,
                "measurements": {"oom": True, "oom_at": "load", "phases": {}}}
    if device != "cuda":
        backend = TrackerBackend(network)
    load_seconds = time.perf_counter() - load_start
    measurements: dict = {"oom": False, "load_seconds": round(load_seconds, 4), "phases": {}}
    ids = torch.randint(0, model.vocab_size, (train.batch_size, train.seq_len), device=device)
    optimizer = _optimizer(train, [p for p in network.parameters() if p.requires_grad])
    if memory_snapshot:
        if device != "cuda":
            from ..errors import LorasizeError
            raise LorasizeError("a CUDA memory snapshot needs a GPU (--device cuda)",
                                source="--memory-snapshot")
        torch.cuda.memory._record_memory_history(max_entries=100_000)
    try:
        step_times = run_steps(network, optimizer, step_inputs(ids, train), backend,
                               measurements, steps, warmup,
                               sync=torch.cuda.synchronize if device == "cuda" else None,
                               grad_accum=train.grad_accum)
    finally:
        if memory_snapshot:
            torch.cuda.memory._dump_snapshot(memory_snapshot)
            torch.cuda.memory._record_memory_history(enabled=None)
    if timeline:
        from .timeline import write_timeline
        axis, samples = backend.timeline()
        write_timeline(samples, axis, f"{model.name}: memory over {warmup + steps} training steps",
                       timeline)
    network = optimizer = None
    if device == "cuda":
        torch.cuda.empty_cache()
    finish(measurements, step_times, train.tokens * train.grad_accum)
    return {"schema_version": SCHEMA_VERSION, "versions": _versions(backend),
            "device": _device(backend), "config": config, "measurements": measurements}


def run_steps(network, optimizer, inputs: dict, backend, measurements: dict, steps: int,
              warmup: int, sync=None, grad_accum: int = 1, no_sync=None) -> list[float]:
    """Run ``warmup + steps`` training steps on ``inputs`` (a micro-batch's keyword arguments:
    :func:`lorasize.trace.run.step_inputs`), each phase measured by ``backend``.

    Each step runs ``grad_accum`` micro-batches (forward and backward, gradients accumulating)
    before the optimizer; ``no_sync(final)`` is called before each micro-batch (data parallel:
    gradients are reduced on the last one only). Fills ``measurements``: ``phases`` (per-phase
    peaks over the measured steps), ``oom``, ``steady_bytes`` (bytes live at the end of every
    measured step, the least of them: weights, optimizer state and whatever else persists), and
    the backend's summary. ``sync``
    runs at the end of each step (a device synchronize). Returns the measured steps' durations
    in seconds.
    """
    from ..trace.build import quiet

    step_times: list[float] = []
    backend.start()
    schedule = [phase for _ in range(grad_accum) for phase in PHASES[:2]] + [PHASES[2]]
    try:
        with backend.context(), quiet():
            for step in range(warmup + steps):
                begin = time.perf_counter()
                micro = 0
                for phase in schedule:
                    backend.begin_phase(phase)
                    if phase == "forward":
                        micro += 1
                        if no_sync is not None:
                            no_sync(micro == grad_accum)
                        loss = network(**inputs).loss
                    elif phase == "backward":
                        loss.backward()
                        del loss
                    else:
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        if backend.kind == "cpu":
                            backend.tracker.track_optimizer(optimizer)
                    figures = backend.end_phase(phase)
                    if step >= warmup:
                        kept = measurements["phases"].setdefault(phase, {})
                        for key, value in figures.items():
                            kept[key] = max(kept.get(key, 0), value)
                if sync is not None:
                    sync()
                if step >= warmup:
                    step_times.append(time.perf_counter() - begin)
                    if backend.kind == "cpu":
                        # Tensors held only by reference cycles (FSDP's and autograd's hooks)
                        # die when Python's collector runs, at no fixed time: collect first, so
                        # the bytes between steps do not depend on when it last ran.
                        gc.collect()
                    # what persists is live at every step's end: the least of them (a
                    # collective's buffer still in flight at one step's end is not steady)
                    live = int(backend.live_bytes())
                    measurements["steady_bytes"] = min(measurements.get("steady_bytes", live),
                                                       live)
    except Exception as exc:
        if not is_oom(exc):
            raise
        measurements["oom"] = True
    finally:
        measurements.update(backend.stop())
    return step_times


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` says the device ran out of memory: CUDA's OutOfMemoryError, Python's
    MemoryError, or torch's CPU allocator refusing (``DefaultCPUAllocator: can't allocate
    memory``)."""
    import torch

    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def finish(measurements: dict, step_times: list[float], tokens: int) -> None:
    """Median step time and tokens per second, when the run did not run out of memory."""
    if not measurements["oom"] and step_times:
        step = sorted(step_times)[len(step_times) // 2]
        measurements.update(step_seconds=round(step, 6), tokens_per_s=round(tokens / step, 3))


def inference_backend(kind: str):
    """The backend measuring live bytes for :func:`lorasize.profile.inference.profile_inference`."""
    if kind == "cuda":
        return CudaBackend()
    from ..trace.tracker import LiveBytesTracker

    class _Tracker:
        def __init__(self):
            self.tracker = LiveBytesTracker(round_to=1)

        def context(self):
            return self.tracker

        def live_bytes(self) -> int:
            return self.tracker.total

    return _Tracker()
