"""The caching allocator model against the rules of ``c10/cuda/CUDACachingAllocator.cpp``.

Each case is worked out by hand from the allocator's source (round_size, get_allocation_size,
get_free_block, should_split, try_merge_blocks); see lorasize/memory/caching_allocator.py.
"""

from __future__ import annotations

import pytest

from lorasize.memory.caching_allocator import CachingAllocator, round_size, segment_size

MIB = 1 << 20


def test_rounding_and_segment_sizes():
    assert [round_size(n) for n in (1, 512, 513, 4096)] == [512, 512, 1024, 4096]
    assert segment_size(512) == segment_size(MIB) == 2 * MIB  # kSmallBuffer
    assert segment_size(MIB + 512) == segment_size(10 * MIB - 512) == 20 * MIB  # kLargeBuffer
    assert segment_size(10 * MIB) == 10 * MIB and segment_size(11 * MIB + 1) == 12 * MIB


def test_small_requests_share_a_2mib_segment():
    a = CachingAllocator()
    a.malloc("x", 1000)
    a.malloc("y", 1000)
    assert (a.allocated, a.reserved, a.segments) == (2048, 2 * MIB, 1)


def test_a_large_segment_is_split_and_shared():
    a = CachingAllocator()
    a.malloc("x", 5 * MIB)
    a.malloc("y", 5 * MIB)  # the 15 MiB rest of the first 20 MiB segment was split off
    assert (a.allocated, a.reserved, a.segments) == (10 * MIB, 20 * MIB, 1)


def test_a_rest_of_one_mib_or_less_is_not_split_off():
    a = CachingAllocator()
    a.malloc("x", 9 * MIB + MIB // 2)  # 20 MiB segment; the 10.5 MiB rest is split off
    a.malloc("y", 10 * MIB)  # takes the 10.5 MiB block whole (0.5 MiB <= kSmallSize)
    assert a.allocated == 20 * MIB and a.reserved == 20 * MIB


def test_freed_neighbours_merge_and_are_reused():
    a = CachingAllocator()
    a.malloc("x", 5 * MIB)
    a.malloc("y", 5 * MIB)
    a.free("x")
    a.free("y")  # x, y and the rest merge back into one 20 MiB block
    a.malloc("z", 19 * MIB)  # fits the merged block: no new segment
    assert (a.reserved, a.segments) == (20 * MIB, 1)


def test_fragmentation_reserves_a_new_segment():
    a = CachingAllocator()
    a.malloc("x", 8 * MIB)
    a.malloc("y", 8 * MIB)  # rest 4 MiB
    a.free("x")  # an 8 MiB hole before y
    a.malloc("z", 9 * MIB)  # fits neither the hole nor the rest
    assert (a.allocated, a.reserved, a.segments) == (17 * MIB, 40 * MIB, 2)
    assert a.peak_reserved == 40 * MIB


def test_the_smallest_block_that_fits_is_taken():
    a = CachingAllocator()
    for key, size in (("big", 64 * MIB), ("mid", 32 * MIB), ("small", 16 * MIB)):
        a.malloc(key, size)
    for key in ("big", "mid", "small"):
        a.free(key)
    a.malloc("x", 30 * MIB)  # the 32 MiB segment, not the 64 MiB one
    a.malloc("y", 60 * MIB)  # so the 64 MiB one is still there
    assert a.reserved == (64 + 32 + 16) * MIB


def test_peaks_reset_and_bad_keys():
    a = CachingAllocator()
    a.malloc("x", 30 * MIB)
    a.free("x")
    a.reset_peak()
    assert (a.peak_allocated, a.peak_reserved) == (0, 30 * MIB)
    a.malloc("x", 0)  # no block for no bytes
    a.free("never")  # nothing to free
    a.malloc("y", 1)
    with pytest.raises(ValueError):
        a.malloc("y", 1)


def test_a_trace_reports_what_the_allocator_would_reserve():
    """The trace tier replays its allocations: reserved covers the allocated peak and is the
    same on every run (the replay is deterministic)."""
    from lorasize import LoraSpec, ModelSpec, TrainSpec
    from lorasize.trace import trace

    spec = ModelSpec.from_hf_config(dict(model_type="llama", vocab_size=256, hidden_size=64,
                                         intermediate_size=160, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2),
                                    name="tiny-llama")
    args = (spec, LoraSpec(r=8, targets=("all",)), TrainSpec(seq_len=32, batch_size=2))
    first = trace(*args)
    assert first.reserved_bytes >= first.peak_bytes > 0
    assert first.reserved_bytes % (2 * MIB) == 0  # whole segments
    assert trace(*args).reserved_bytes == first.reserved_bytes
