"""pytest plugin: memory budgets for test bodies (registered through the ``pytest11`` entry point).

::

    @pytest.mark.memory_budget("14 GiB")
    def test_step(lorasize_memory):
        lorasize_memory.track(model)      # count a model built before the body (optional)
        ...                               # the body's peak is measured

The peak is what the test body allocates at its highest point, plus the tensors passed to
``track()``; over the budget, the test fails with the breakdown at the peak. Backends, behind
:class:`MemoryBackend`:

- ``cuda``: ``torch.cuda.max_memory_allocated`` (peak statistics reset when the body starts);
- ``tracker``: on the CPU, the trace tier's live-storage tracker (a ``TorchDispatchMode`` that
  counts every storage an op creates, rounded to the CUDA allocator's 512-byte blocks), so real
  CPU tensors are measured as a GPU would hold them, in CPU-only CI.

``--lorasize-baseline FILE`` compares each measured test with its stored peak (per backend) and
fails one that grew beyond ``--lorasize-tolerance``; ``--lorasize-update`` rewrites the file
(atomically) with the peaks measured now. Torch is imported only when a test asks to be measured.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

MARKER = "memory_budget"
BASELINE_FORMAT = 1
DEFAULT_TOLERANCE = 0.01  # as lorasize check's default
_STASH_METER = pytest.StashKey["LorasizeMemory"]()


@dataclass(frozen=True)
class Measurement:
    """A measured peak in bytes, the breakdown at that peak, and the backend that measured it."""

    peak_bytes: int
    breakdown: dict[str, int]
    backend: str


class MemoryBackend(Protocol):
    """What measures a test body: ``start`` before it, ``stop`` after it (also on failure)."""

    name: str

    def start(self) -> None: ...

    def track(self, *objects) -> None: ...

    def stop(self) -> Measurement: ...


def _tensors(objects):
    """Tensors of the given tensors, modules (parameters and buffers) and optimizers (state)."""
    import torch

    for item in objects:
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, torch.nn.Module):
            yield from item.parameters()
            yield from item.buffers()
        elif isinstance(item, torch.optim.Optimizer):
            for state in item.state.values():
                yield from (v for v in state.values() if isinstance(v, torch.Tensor))
        elif isinstance(item, (list, tuple)):
            yield from _tensors(item)
        else:
            raise TypeError(f"lorasize_memory.track() takes tensors, modules and optimizers, "
                            f"not {type(item).__name__}")


class CudaBackend:
    """``torch.cuda`` allocator statistics of the current device."""

    name = "cuda"

    def __init__(self):
        import torch

        self._torch = torch
        self._start = 0
        self._tracked: dict[int, int] = {}

    def start(self) -> None:
        cuda = self._torch.cuda
        cuda.synchronize()
        cuda.reset_peak_memory_stats()
        self._start = cuda.memory_allocated()

    def track(self, *objects) -> None:
        for tensor in _tensors(objects):
            if tensor.is_cuda:
                storage = tensor.untyped_storage()
                self._tracked[storage.data_ptr()] = storage.nbytes()

    def stop(self) -> Measurement:
        cuda = self._torch.cuda
        cuda.synchronize()
        body = max(0, cuda.max_memory_allocated() - self._start)
        tracked = sum(self._tracked.values())
        breakdown = {"allocated by the test": body}
        if tracked:
            breakdown["tracked before the test"] = tracked
        return Measurement(body + tracked, breakdown, self.name)


class TrackerBackend:
    """The trace tier's :class:`lorasize.trace.tracker.LiveBytesTracker` on real tensors."""

    name = "tracker"

    def __init__(self):
        from ..trace.tracker import LiveBytesTracker

        self._tracker = LiveBytesTracker()
        self._tracker.phase = "forward"  # what the body allocates counts as activations
        self._entered = False

    def start(self) -> None:
        self._tracker.reset_peak()
        self._tracker.__enter__()
        self._entered = True

    def track(self, *objects) -> None:
        import torch

        for item in objects:
            if isinstance(item, torch.nn.Module):
                self._tracker.track_model(item)
            elif isinstance(item, torch.optim.Optimizer):
                self._tracker.track_optimizer(item)
            else:
                for tensor in _tensors([item]):
                    self._tracker.add(tensor, "inputs")
        if self._tracker.total > self._tracker.peak:
            self._tracker.peak = self._tracker.total
            self._tracker.peak_breakdown = {k: v for k, v in self._tracker.live.items() if v}

    def phase(self, name: str) -> None:
        self._tracker.phase = name

    def stop(self) -> Measurement:
        if self._entered:
            self._tracker.__exit__(None, None, None)
            self._entered = False
        return Measurement(int(self._tracker.peak), dict(self._tracker.peak_breakdown), self.name)


BACKENDS = ("auto", "cuda", "tracker")


def select_backend(name: str = "auto") -> MemoryBackend:
    """The backend called ``name``; ``auto`` is cuda when a GPU is visible, else the tracker.

    Raises:
        pytest.skip.Exception: torch (or, for the tracker, the trace tier) is not installed.
    """
    if importlib.util.find_spec("torch") is None:
        pytest.skip("lorasize_memory needs torch: pip install \"lorasize[torch]\"")
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            pytest.skip("--lorasize-backend cuda: no CUDA device")
        return CudaBackend()
    if importlib.util.find_spec("lorasize.trace.tracker") is None:
        pytest.skip("no CUDA device and no lorasize trace tier to measure with on the CPU")
    return TrackerBackend()


@dataclass
class LorasizeMemory:
    """The ``lorasize_memory`` fixture: the budget, the backend, and after the body the
    measurement."""

    backend: MemoryBackend
    budget_bytes: int | None = None
    budget_text: str | None = None
    measurement: Measurement | None = None
    notes: list[str] = field(default_factory=list)

    def track(self, *objects) -> None:
        """Count tensors, modules or optimizers that exist before the body (built in fixtures)."""
        self.backend.track(*objects)

    def phase(self, name: str) -> None:
        """Name what the body does next (``forward``, ``backward``, ``optimizer``), for the
        tracker's breakdown; no effect on CUDA."""
        if hasattr(self.backend, "phase"):
            self.backend.phase(name)

    @property
    def peak_bytes(self) -> int | None:
        return self.measurement.peak_bytes if self.measurement else None


def _parse_size(value, where: str) -> int:
    from ..units import parse_bytes

    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    try:
        size = parse_bytes(str(value))
    except ValueError:
        size = 0
    if size <= 0:
        pytest.fail(f"{where}: expected a size such as \"14 GiB\" or a byte count, got {value!r}",
                    pytrace=False)
    return size


def _parse_tolerance(text: str) -> float:
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*", str(text))
    if not match:
        raise pytest.UsageError(f"--lorasize-tolerance: write a percentage such as 1%, got {text!r}")
    return float(match.group(1)) / 100


# --- hooks ------------------------------------------------------------------------------------

def pytest_addoption(parser):
    group = parser.getgroup("lorasize", "lorasize memory budgets")
    group.addoption("--lorasize-baseline", metavar="FILE", default=None,
                    help="JSON file of stored peaks to compare measured tests against.")
    group.addoption("--lorasize-update", action="store_true", default=False,
                    help="Rewrite --lorasize-baseline with the peaks measured in this run.")
    group.addoption("--lorasize-tolerance", metavar="PERCENT", default="1%",
                    help="How far above its stored peak a test may go (default 1%%).")
    group.addoption("--lorasize-backend", choices=BACKENDS, default="auto",
                    help="Measure with torch.cuda or the trace tier's tracker (default: cuda "
                         "when a GPU is visible).")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"{MARKER}(size): fail the test when the peak memory its body allocates "
                   "(torch.cuda on a GPU, lorasize's tracker on the CPU) is above size, e.g. "
                   "\"14 GiB\"")
    baseline = config.getoption("lorasize_baseline", None)
    if config.getoption("lorasize_update", False) and not baseline:
        raise pytest.UsageError("--lorasize-update needs --lorasize-baseline FILE")
    config.stash[_STATE] = _State(
        path=Path(baseline) if baseline else None,
        stored=_read_baseline(Path(baseline)) if baseline else {},
        tolerance=_parse_tolerance(config.getoption("lorasize_tolerance", "1%")),
        update=bool(config.getoption("lorasize_update", False)))


@dataclass
class _State:
    path: Path | None
    stored: dict[str, dict[str, int]]
    tolerance: float
    update: bool
    measured: dict[str, dict[str, int]] = field(default_factory=dict)


_STATE = pytest.StashKey[_State]()


def _read_baseline(path: Path) -> dict[str, dict[str, int]]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        peaks = data["peaks"]
        assert isinstance(peaks, dict) and all(
            isinstance(v, dict) and all(isinstance(b, int) for b in v.values())
            for v in peaks.values())
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise pytest.UsageError(f"--lorasize-baseline {path}: not a lorasize peaks file "
                                f"(a JSON object with 'peaks': {{test id: {{backend: bytes}}}})"
                                ) from None
    return peaks


def _wants_measuring(item) -> bool:
    return item.get_closest_marker(MARKER) is not None or \
        "lorasize_memory" in getattr(item, "fixturenames", ())


def _meter(item) -> LorasizeMemory:
    meter = item.stash.get(_STASH_METER, None)
    if meter is None:
        meter = LorasizeMemory(backend=select_backend(item.config.getoption("lorasize_backend")))
        marker = item.get_closest_marker(MARKER)
        if marker is not None:
            if len(marker.args) != 1 or marker.kwargs:
                pytest.fail(f"use @pytest.mark.{MARKER}(\"14 GiB\") (one size)", pytrace=False)
            meter.budget_bytes = _parse_size(marker.args[0], MARKER)
            meter.budget_text = str(marker.args[0])
        item.stash[_STASH_METER] = meter
    return meter


@pytest.fixture
def lorasize_memory(request) -> LorasizeMemory:
    """Measure the peak memory of this test's body; see :mod:`lorasize.ci.pytest_plugin`."""
    return _meter(request.node)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if _wants_measuring(item):
        _meter(item)  # choose the backend (or skip) before the fixtures run


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    if not _wants_measuring(item):
        return (yield)
    meter = _meter(item)
    meter.backend.start()
    try:
        outcome = yield
    finally:
        meter.measurement = meter.backend.stop()
    _judge(item, meter)
    return outcome


def _judge(item, meter: LorasizeMemory) -> None:
    from ..units import format_bytes

    state = item.config.stash[_STATE]
    got = meter.measurement
    state.measured.setdefault(item.nodeid, {})[got.backend] = got.peak_bytes
    problems = []
    if meter.budget_bytes is not None and got.peak_bytes > meter.budget_bytes:
        problems.append(f"memory budget exceeded: peak {format_bytes(got.peak_bytes)} "
                        f"({got.peak_bytes:,} bytes) > budget {meter.budget_text} "
                        f"[{got.backend}]")
    stored = state.stored.get(item.nodeid, {}).get(got.backend)
    if stored is not None and not state.update and got.peak_bytes > stored * (1 + state.tolerance):
        problems.append(f"memory regression: peak {format_bytes(got.peak_bytes)} is "
                        f"{100 * (got.peak_bytes - stored) / max(stored, 1):+.2f}% over the stored "
                        f"{format_bytes(stored)} (tolerance {state.tolerance * 100:g}%, "
                        f"{state.path}); run with --lorasize-update to accept it")
    if problems:
        width = max((len(k) for k in got.breakdown), default=0)
        lines = [f"  {k.ljust(width)}  {v:>16,}  {format_bytes(v)}"
                 for k, v in sorted(got.breakdown.items(), key=lambda kv: -kv[1])]
        pytest.fail("\n".join(problems + ["breakdown at the peak:"] + lines), pytrace=False)


def pytest_sessionfinish(session):
    state = session.config.stash.get(_STATE, None)
    if state is None or not state.update or state.path is None or not state.measured:
        return
    from ..files import write_atomic

    peaks = {k: dict(v) for k, v in state.stored.items()}
    for nodeid, by_backend in state.measured.items():
        peaks.setdefault(nodeid, {}).update(by_backend)
    data = {"format": BASELINE_FORMAT,
            "about": "peak bytes per test and backend, written by pytest --lorasize-update",
            "peaks": {k: dict(sorted(v.items())) for k, v in sorted(peaks.items())}}
    write_atomic(state.path, json.dumps(data, indent=2) + "\n")
