"""PyTorch's CUDA caching allocator, replayed: how many bytes a sequence of allocations reserves.

A model of ``DeviceCachingAllocator`` in ``c10/cuda/CUDACachingAllocator.cpp`` (PyTorch 2.x) with
its default configuration (no ``max_split_size_mb``, no ``roundup_power2_divisions``, no
``expandable_segments``, no garbage-collection threshold) on one stream, with memory to spare
(no out-of-memory path, so cached blocks are never released):

- ``round_size``: a request becomes a multiple of ``kMinBlockSize`` (512 bytes);
- two pools: blocks of up to ``kSmallSize`` (1 MiB) come from 2 MiB segments
  (``kSmallBuffer``), larger ones from 20 MiB segments (``kLargeBuffer``) below ``kMinLargeAlloc``
  (10 MiB), or from a segment of their own rounded up to ``kRoundLarge`` (2 MiB)
  (``get_allocation_size``);
- ``get_free_block``: the cached block of the pool that is the smallest at least as large, the
  lowest address first among equals (the pool is a set ordered by size, then address);
- ``should_split``: the rest of a block is split off when it is at least ``kMinBlockSize`` in
  the small pool, or larger than ``kSmallSize`` in the large pool;
- ``free_block`` / ``try_merge_blocks``: a freed block merges with free neighbours of its
  segment and goes back to its pool; segments stay reserved (``empty_cache`` is never called).

Reserved bytes only grow, so a run's peak reserved is its reserved bytes at the end. Used by
the trace tier (``lorasize trace`` replays the traced step's allocations) and by
``benchmarks/torchtune_reserved``, which replays torchtune's own code.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .allocator import LARGE_SEGMENT_BYTES, MIN_BLOCK_BYTES, SMALL_SEGMENT_BYTES

SMALL_REQUEST_BYTES = 1 << 20  # kSmallSize: the small pool's largest block
MIN_LARGE_ALLOC_BYTES = 10 << 20  # kMinLargeAlloc: from here a request gets its own segment
ROUND_LARGE_BYTES = 2 << 20  # kRoundLarge


def round_size(nbytes: int) -> int:
    """``round_size``: the block a request of ``nbytes`` takes."""
    if nbytes < MIN_BLOCK_BYTES:
        return MIN_BLOCK_BYTES
    return MIN_BLOCK_BYTES * -(-nbytes // MIN_BLOCK_BYTES)


def segment_size(block: int) -> int:
    """``get_allocation_size``: the segment ``cudaMalloc`` reserves when no cached block fits."""
    if block <= SMALL_REQUEST_BYTES:
        return SMALL_SEGMENT_BYTES
    if block < MIN_LARGE_ALLOC_BYTES:
        return LARGE_SEGMENT_BYTES
    return ROUND_LARGE_BYTES * -(-block // ROUND_LARGE_BYTES)


@dataclass(eq=False)
class _Block:
    address: int
    size: int
    small: bool
    allocated: bool = False
    prev: "_Block | None" = None
    next: "_Block | None" = None


@dataclass
class _Pool:
    keys: list = field(default_factory=list)  # (size, address), sorted
    blocks: dict = field(default_factory=dict)

    def insert(self, block: _Block) -> None:
        key = (block.size, block.address)
        bisect.insort(self.keys, key)
        self.blocks[key] = block

    def remove(self, block: _Block) -> None:
        key = (block.size, block.address)
        del self.keys[bisect.bisect_left(self.keys, key)]
        del self.blocks[key]

    def best_fit(self, size: int) -> _Block | None:
        i = bisect.bisect_left(self.keys, (size, -1))
        if i == len(self.keys):
            return None
        block = self.blocks[self.keys[i]]
        self.remove(block)
        return block


class CachingAllocator:
    """Replays allocations and frees; ``allocated`` / ``reserved`` and their peaks are what
    ``torch.cuda.memory_allocated`` / ``memory_reserved`` and the ``max_`` forms would say.
    Keys are the caller's names for live allocations."""

    def __init__(self) -> None:
        self._pools = {True: _Pool(), False: _Pool()}
        self._live: dict = {}
        self._next_address = 0
        self.allocated = self.reserved = 0
        self.peak_allocated = self.peak_reserved = 0
        self.segments = 0

    def malloc(self, key, nbytes: int) -> None:
        """Allocate ``nbytes`` under ``key`` (nothing for 0 bytes, as CUDA tensors of no
        elements take no block)."""
        if nbytes <= 0:
            return
        if key in self._live:
            raise ValueError(f"{key!r} is already allocated")
        size = round_size(nbytes)
        small = size <= SMALL_REQUEST_BYTES
        pool = self._pools[small]
        block = pool.best_fit(size)
        if block is None:
            reserve = segment_size(size)
            block = _Block(self._next_address, reserve, small)
            self._next_address += reserve + ROUND_LARGE_BYTES  # segments never touch
            self.reserved += reserve
            self.segments += 1
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        rest = block.size - size
        if rest >= MIN_BLOCK_BYTES if small else rest > SMALL_REQUEST_BYTES:
            tail = _Block(block.address + size, rest, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = tail
            block.next, block.size = tail, size
            pool.insert(tail)
        block.allocated = True
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self._live[key] = block

    def free(self, key) -> None:
        """Free the allocation under ``key`` (nothing if there is none)."""
        block = self._live.pop(key, None)
        if block is None:
            return
        block.allocated = False
        self.allocated -= block.size
        pool = self._pools[block.small]
        for neighbour in (block.prev, block.next):
            if neighbour is None or neighbour.allocated:
                continue
            pool.remove(neighbour)
            if neighbour is block.prev:
                block.address, block.prev = neighbour.address, neighbour.prev
                if neighbour.prev is not None:
                    neighbour.prev.next = block
            else:
                block.next = neighbour.next
                if neighbour.next is not None:
                    neighbour.next.prev = block
            block.size += neighbour.size
        pool.insert(block)

    def reset_peak(self) -> None:
        """``torch.cuda.reset_peak_memory_stats``."""
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved
