"""Hot-swapping adapters through K resident slots with LRU eviction.

N adapters receive requests with a popularity law; K of them stay resident on the GPU and a
request for any other one swaps it in, evicting the least recently used. The simulation is
seeded, so the same inputs give the same answer. For uniform traffic the steady-state hit rate
of LRU (of any policy, in fact) is exactly K / N, which the tests hold the simulation to; for
skewed (Zipf) traffic no closed form is exact. Beyond :data:`SIMULATE_MAX_ADAPTERS` adapters (or
when the simulation's warm-up cannot fill the slots) the hit rate comes from Che's
characteristic-time approximation of LRU (Che, Tung and Wang 2002; Fricker, Robert and Roberts
2012 show it accurate for Zipf popularity): the cache's characteristic time T solves
sum_i (1 - exp(-p_i T)) = K, and the hit rate is sum_i p_i (1 - exp(-p_i T)). Zipf popularity is
held as geometric rank buckets, never as one weight per adapter, so memory and time stay bounded
whatever N is.

Swap-in time = adapter bytes / disk read bandwidth + adapter bytes / host-to-device bandwidth
+ a fixed per-load overhead. The defaults are named below and configurable.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..errors import LorasizeError

# NVMe SSD sequential read, a PCIe 4.0 drive's typical 3 to 7 GB/s (vendor datasheets): 3 GB/s.
DEFAULT_DISK_BYTES_PER_S = 3e9
# Host-to-device copy over PCIe 4.0 x16: 32 GB/s raw, about 25 GB/s achieved from pinned memory
# (NVIDIA bandwidthTest); pageable memory is slower, so 12 GB/s by default.
DEFAULT_H2D_BYTES_PER_S = 12e9
# Per-load overhead of PEFT's load_adapter beyond the bytes: building modules, safetensors header.
# TrueFoundry measured 200-300 ms to reload an r=64 adapter of about 256 MiB (seed 004).
DEFAULT_LOAD_OVERHEAD_S = 0.15
DEFAULT_REQUESTS = 200_000
DEFAULT_SEED = 0
# Above this many adapters the closed form answers (the simulation needs a weight per adapter
# and a warm-up longer than the slots).
SIMULATE_MAX_ADAPTERS = 20_000
# Zipf ranks are grouped into buckets whose first and last weights differ by at most this
# ratio (each bucket's requests are summed exactly; its members share the bucket's mean).
BUCKET_RATIO = 1.001
MAX_ADAPTERS = 10**12


@dataclass(frozen=True)
class Popularity:
    """Request probabilities of N adapters, most popular first: explicit ``weights`` (a CSV),
    or a law (``zipf`` with ``exponent``, or ``uniform``) over ``n`` adapters."""

    name: str
    weights: tuple[float, ...] = ()
    n: int = 0
    exponent: float = 0.0

    @property
    def adapters(self) -> int:
        return len(self.weights) or self.n

    def explicit(self) -> tuple[float, ...]:
        """One weight per adapter (for the simulation; only for up to
        :data:`SIMULATE_MAX_ADAPTERS`)."""
        if self.weights:
            return self.weights
        if self.exponent:
            return tuple(1.0 / rank ** self.exponent for rank in range(1, self.n + 1))
        return (1.0,) * self.n

    def buckets(self) -> list[tuple[float, float]]:
        """(probability of one member, members) groups summing to probability 1."""
        if self.weights:
            total = sum(self.weights)
            return [(w / total, 1.0) for w in self.weights]
        if not self.exponent:
            return [(1.0 / self.n, float(self.n))]
        groups, rank = [], 1
        while rank <= self.n:
            last = min(self.n, max(rank, int(rank * BUCKET_RATIO ** (1 / self.exponent))))
            mass = _zipf_mass(rank, last, self.exponent)
            groups.append((mass / (last - rank + 1), float(last - rank + 1)))
            rank = last + 1
        total = sum(p * c for p, c in groups)
        return [(p / total, c) for p, c in groups]


def _zipf_mass(first: int, last: int, s: float) -> float:
    """sum_{k=first}^{last} k^-s: exact for short runs, the Euler-Maclaurin integral beyond."""
    if last - first < 64:
        return sum(k ** -s for k in range(first, last + 1))
    if s == 1:
        integral = math.log(last / first)
    else:
        integral = (last ** (1 - s) - first ** (1 - s)) / (1 - s)
    return integral + (first ** -s + last ** -s) / 2


def che_hit_rate(popularity: Popularity, slots: int) -> float:
    """LRU's steady-state hit rate with ``slots`` resident, by Che's approximation."""
    if slots >= popularity.adapters:
        return 1.0
    if slots <= 0:
        return 0.0
    groups = popularity.buckets()
    return _hit(groups, _characteristic_time(groups, slots))


def che_slots(popularity: Popularity, target_hit_rate: float) -> tuple[int, float]:
    """The fewest slots whose Che hit rate reaches ``target_hit_rate``, and that hit rate."""
    groups = popularity.buckets()
    if target_hit_rate >= 1:
        return popularity.adapters, 1.0
    t = _solve_time(lambda time: _hit(groups, time), target_hit_rate)
    slots = min(popularity.adapters, math.ceil(_occupancy(groups, t) - 1e-9))
    return slots, che_hit_rate(popularity, slots)


def _occupancy(groups, t: float) -> float:
    return sum(c * -math.expm1(-p * t) for p, c in groups)


def _hit(groups, t: float) -> float:
    return sum(p * c * -math.expm1(-p * t) for p, c in groups)


def _characteristic_time(groups, slots: int) -> float:
    return _solve_time(lambda time: _occupancy(groups, time), slots)


def _solve_time(rising, target: float) -> float:
    """The smallest time where ``rising`` (increasing in time) reaches ``target``: doubling,
    then bisection to float precision."""
    low, high = 0.0, 1.0
    while rising(high) < target:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if rising(middle) < target:
            low = middle
        else:
            high = middle
    return high


def parse_traffic(text: str, adapters: int | None) -> Popularity:
    """``zipf:S``, ``uniform`` or a CSV of request counts per adapter.

    Raises:
        LorasizeError: unknown law, a bad exponent, or a CSV with negative or no counts.
    """
    text = str(text).strip()
    if text == "uniform" or text.startswith("zipf:"):
        if adapters is None or adapters <= 0:
            raise LorasizeError(f"must be a positive number of adapters with --traffic {text}",
                                source="--adapters")
        if adapters > MAX_ADAPTERS:
            raise LorasizeError(f"at most {MAX_ADAPTERS:,} adapters", source="--adapters")
        if text == "uniform":
            return Popularity("uniform", n=adapters)
        try:
            exponent = float(text.split(":", 1)[1])
        except ValueError:
            raise LorasizeError(f"zipf needs a number, as in zipf:1.1, got {text!r}",
                                source="--traffic") from None
        if not exponent > 0 or math.isinf(exponent):
            raise LorasizeError("the zipf exponent must be above 0", source="--traffic")
        return Popularity(text, n=adapters, exponent=exponent)
    path = Path(text)
    if not path.is_file():
        raise LorasizeError("expected zipf:S, uniform or a CSV file of request counts",
                            source="--traffic")
    counts = _read_counts(path)
    return Popularity(path.name, tuple(sorted(counts, reverse=True)))


def _read_counts(path: Path) -> list[float]:
    counts = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if not row or not "".join(row).strip():
                    continue
                cell = row[-1].strip()
                try:
                    value = float(cell)
                except ValueError:
                    if number == 1:
                        continue  # a header
                    raise LorasizeError(f"line {number}: '{cell}' is not a count",
                                        source=str(path)) from None
                if value < 0 or math.isnan(value) or math.isinf(value):
                    raise LorasizeError(f"line {number}: counts must be 0 or more, got {cell}",
                                        source=str(path))
                counts.append(value)
    except (OSError, UnicodeDecodeError) as exc:
        raise LorasizeError(f"cannot read ({exc})", source=str(path)) from None
    if not counts or sum(counts) <= 0:
        raise LorasizeError("no request counts above 0", source=str(path))
    return counts


@dataclass(frozen=True)
class SwapResult:
    """What K resident slots give under this traffic."""

    slots: int
    hit_rate: float
    requests: int
    method: str = "simulation"  # or "che" (the closed form)


def simulates(popularity: Popularity, slots: int, requests: int) -> bool:
    """Whether the simulation can answer: few enough adapters, and a warm-up (a tenth of the
    requests) long enough to fill the slots several times over."""
    return popularity.adapters <= SIMULATE_MAX_ADAPTERS and requests // 10 >= 5 * slots


def simulate_lru(popularity: Popularity, slots: int, requests: int = DEFAULT_REQUESTS,
                 seed: int = DEFAULT_SEED) -> SwapResult:
    """Hit rate of an LRU cache of ``slots`` adapters, measured after a warm-up; by Che's
    closed form when the simulation cannot reach its steady state (:func:`simulates`).

    The first ``requests // 10`` requests fill the cache and are not counted.
    """
    n = popularity.adapters
    if slots >= n:
        return SwapResult(slots, 1.0, requests)
    if slots <= 0:
        return SwapResult(slots, 0.0, requests)
    if not simulates(popularity, slots, requests):
        return SwapResult(slots, che_hit_rate(popularity, slots), requests, "che")
    rng = random.Random(seed)
    cumulative, total = [], 0.0
    for weight in popularity.explicit():
        total += weight
        cumulative.append(total)
    cache: OrderedDict[int, None] = OrderedDict()
    warmup = requests // 10
    hits = 0
    for index in range(warmup + requests):
        adapter = bisect.bisect_left(cumulative, rng.random() * total)
        if adapter in cache:
            cache.move_to_end(adapter)
            if index >= warmup:
                hits += 1
        else:
            cache[adapter] = None
            if len(cache) > slots:
                cache.popitem(last=False)
    return SwapResult(slots, hits / requests, requests)


def smallest_slots(popularity: Popularity, target_hit_rate: float, limit: int,
                   requests: int = DEFAULT_REQUESTS, seed: int = DEFAULT_SEED) -> SwapResult | None:
    """The fewest slots (up to ``limit``) reaching ``target_hit_rate``; None if none does.

    The hit rate grows with the slots, so a binary search over the seeded simulation finds it.
    """
    if not 0 < target_hit_rate <= 1:
        raise LorasizeError(f"must be in (0, 1], got {target_hit_rate}", source="--hit-rate")
    if not simulates(popularity, min(limit, popularity.adapters), requests):
        slots, rate = che_slots(popularity, target_hit_rate)
        return SwapResult(slots, rate, requests, "che") if slots <= limit else None
    low, high = 1, min(limit, popularity.adapters)
    if high < 1 or simulate_lru(popularity, high, requests, seed).hit_rate < target_hit_rate:
        return None
    while low < high:
        middle = (low + high) // 2
        if simulate_lru(popularity, middle, requests, seed).hit_rate >= target_hit_rate:
            high = middle
        else:
            low = middle + 1
    return simulate_lru(popularity, low, requests, seed)


def swap_seconds(adapter_bytes: int, disk_bytes_per_s: float = DEFAULT_DISK_BYTES_PER_S,
                 h2d_bytes_per_s: float = DEFAULT_H2D_BYTES_PER_S,
                 overhead_s: float = DEFAULT_LOAD_OVERHEAD_S) -> float:
    """Seconds to swap one adapter in: read from disk, copy to the GPU, build the modules."""
    return adapter_bytes / disk_bytes_per_s + adapter_bytes / h2d_bytes_per_s + overhead_s
