"""A live-storage tracker: every byte torch's CUDA caching allocator would hand out, counted.

A ``TorchDispatchMode`` sees the output of every aten op. Each output's ``UntypedStorage`` is
recorded once, rounded up to the allocator's 512-byte blocks (``c10/cuda/CUDACachingAllocator.cpp``
``kMinBlockSize``), and a weakref finalizer on the storage's Python object subtracts it when the
StorageImpl dies, which is when the allocator gets the block back. It works the same on real
tensors and on ``FakeTensor``s, so a tiny real run proves it exact (tests) and a fake run sizes a
70B model. What it reports corresponds to ``torch.cuda.max_memory_allocated``.

Categories: ``weights`` (frozen parameters, buffers, quantization state), ``trainable``,
``gradients``, ``optimizer``, ``activations`` (allocated in forward), ``temporaries`` (allocated
in backward or the optimizer step that are not gradients or state), ``inputs``.
"""

from __future__ import annotations

import collections
import itertools
import weakref
from functools import partial
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from ..memory.allocator import MIN_BLOCK_BYTES

PHASE_CATEGORY = {"forward": "activations", "backward": "temporaries", "optimizer": "temporaries",
                  "setup": "inputs"}


class LiveBytesTracker(TorchDispatchMode):
    """Counts live storage bytes by category and keeps the peak.

    Args:
        round_to: allocation granularity (512 as on CUDA; 1 for exact bytes).
        workspace: ``(func, args, kwargs, out) -> bytes`` a kernel allocates and frees inside one
            op, which fake kernels cannot show (see :mod:`lorasize.trace.emulation`).
        allocator: a :class:`~lorasize.memory.caching_allocator.CachingAllocator` that every
            allocation and free is replayed through (its ``reserved`` is what the CUDA caching
            allocator would reserve), or None.
    """

    def __init__(self, round_to: int = MIN_BLOCK_BYTES,
                 workspace: Callable[..., int] | None = None, allocator=None):
        super().__init__()
        self.round_to = max(1, int(round_to))
        self.workspace = workspace
        self.allocator = allocator
        self._keys = itertools.count()
        self._records = WeakIdKeyDictionary()
        self.live: collections.Counter = collections.Counter()
        self.total = 0
        self.peak = 0
        self.peak_breakdown: dict[str, int] = {}
        self.peak_op = ""
        self.phase = "setup"
        self.phase_peaks: dict[str, int] = {}
        self.ops = 0
        self.history: list[tuple[int, int, str]] | None = None  # (op, live bytes, phase) if kept

    def _round(self, nbytes: int) -> int:
        return -(-nbytes // self.round_to) * self.round_to if nbytes > 0 else 0

    def _free(self, record: list, _ref) -> None:
        self.live[record[1]] -= record[0]
        self.total -= record[0]
        if self.allocator is not None:
            self.allocator.free(record[2])

    def add(self, tensor, category: str) -> None:
        """Start counting a tensor's storage under ``category`` (once per storage)."""
        if not isinstance(tensor, torch.Tensor):
            return
        storage = tensor.untyped_storage()
        if storage in self._records:
            return
        record = [self._round(storage.nbytes()), category, next(self._keys)]
        self._records[storage] = (record, weakref.ref(storage, partial(self._free, record)))
        self.live[category] += record[0]
        self.total += record[0]
        if self.allocator is not None:
            self.allocator.malloc(record[2], storage.nbytes())

    def recategorize(self, tensor, category: str) -> None:
        """Move a tensor's storage to another category (a gradient, optimizer state)."""
        if not isinstance(tensor, torch.Tensor):
            return
        entry = self._records.get(tensor.untyped_storage())
        if entry is None:
            self.add(tensor, category)
            return
        record = entry[0]
        if record[1] != category:
            self.live[record[1]] -= record[0]
            self.live[category] += record[0]
            record[1] = category

    def forget(self, tensor) -> None:
        """Stop counting a tensor's storage (it would live in host memory on a GPU)."""
        if not isinstance(tensor, torch.Tensor):
            return
        entry = self._records.get(tensor.untyped_storage())
        if entry is not None and entry[0][0]:
            record = entry[0]
            self.live[record[1]] -= record[0]
            self.total -= record[0]
            record[0] = 0  # the finalizer then subtracts nothing
            if self.allocator is not None:
                self.allocator.free(record[2])

    def track_model(self, model: torch.nn.Module) -> None:
        """Count parameters and buffers; mark gradients as they are accumulated."""
        for param in model.parameters():
            self.add(param, "trainable" if param.requires_grad else "weights")
            if param.requires_grad:
                param.register_post_accumulate_grad_hook(
                    lambda p: self.recategorize(p.grad, "gradients"))
        for buffer in model.buffers():
            self.add(buffer, "weights")
        for module in model.modules():  # real bitsandbytes keeps QuantState tensors as attributes
            state = getattr(getattr(module, "weight", None), "quant_state", None)
            if state is not None:
                for tensor in _quant_state_tensors(state):
                    self.add(tensor, "weights")

    def track_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Recategorize every tensor of the optimizer's state."""
        for state in optimizer.state.values():
            for value in state.values():
                self.recategorize(value, "optimizer")

    def reset_peak(self) -> None:
        """Start a new peak measurement from the bytes live now."""
        self.peak = self.total
        self.peak_breakdown = {k: v for k, v in self.live.items() if v}
        self.phase_peaks = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        category = PHASE_CATEGORY.get(self.phase, "temporaries")
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self.add(tensor, category)
        extra = self._round(int(self.workspace(func, args, kwargs, out) or 0)) if self.workspace else 0
        if extra and self.allocator is not None:  # a kernel's workspace: taken and given back
            key = ("workspace", next(self._keys))
            self.allocator.malloc(key, extra)
            self.allocator.free(key)
        now = self.total + extra
        if self.history is not None:
            self.history.append((self.ops, now, self.phase))
        if now > self.phase_peaks.get(self.phase, 0):
            self.phase_peaks[self.phase] = now
        if now > self.peak:
            self.peak = now
            self.peak_breakdown = {k: v for k, v in self.live.items() if v}
            if extra:
                self.peak_breakdown["workspace"] = extra
            self.peak_op = f"{self.phase}:{func}"
        return out


def _quant_state_tensors(state) -> list:
    tensors = [state.absmax, state.code, getattr(state, "offset", None)]
    if getattr(state, "state2", None) is not None:
        tensors += [state.state2.absmax, state.state2.code]
    return [t for t in tensors if isinstance(t, torch.Tensor)]
