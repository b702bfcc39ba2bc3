"""High-resolution latency histograms: log-linear (HDR-style) buckets over a rolling per-second window.

Rules of this module:
- Recording is integer arithmetic and one dict increment: values are whole microseconds; below 256 us a
  bucket is exact, above it each power of two is cut into 128 equal sub-buckets, so a bucket is never
  wider than 1/128 (0.78%) of the values it holds, from 1 us to beyond 60 s.
- The window is a ring of per-second slots (sparse dicts: only buckets that were hit). Reading merges
  slots with numpy off the request path; quantiles are reported at the bucket's midpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np

SUB_BITS = 7  # 128 sub-buckets per power of two
_EXACT = 1 << (SUB_BITS + 1)  # 256: values below are their own bucket
_SUB = 1 << SUB_BITS
WINDOW_S = 300  # the longest rolling window we answer for (5 minutes)


def bucket_of(us: int) -> int:
    if us < _EXACT:
        return us if us > 0 else 0
    shift = us.bit_length() - SUB_BITS - 1
    return _EXACT + (shift - 1) * _SUB + ((us >> shift) - _SUB)


def bucket_bounds(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower (inclusive) and upper (exclusive) bounds in microseconds of the given bucket indices."""
    index = np.asarray(index, dtype=np.int64)
    exact = index < _EXACT
    rel = np.maximum(index - _EXACT, 0)
    shift = rel // _SUB + 1
    lower = np.where(exact, index, ((rel % _SUB) + _SUB) << shift)
    width = np.where(exact, 1, np.left_shift(1, shift))
    return lower, lower + width


class RollingHistogram:
    """Counts per bucket since start and per second for the last WINDOW_S seconds."""

    __slots__ = ("_now", "_slots", "_stamp", "clock", "count", "max_us", "total")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._slots: list[dict[int, int]] = [{} for _ in range(WINDOW_S)]
        self._stamp = [-1] * WINDOW_S  # which second each slot holds
        self.total: dict[int, int] = {}
        self.count = 0
        self.max_us = 0

    def record(self, us: int) -> None:
        b = bucket_of(us)
        second = int(self.clock())
        i = second % WINDOW_S
        slot = self._slots[i]
        if self._stamp[i] != second:
            slot.clear()
            self._stamp[i] = second
        slot[b] = slot.get(b, 0) + 1
        total = self.total
        total[b] = total.get(b, 0) + 1
        self.count += 1
        if us > self.max_us:
            self.max_us = us

    def window(self, seconds: int | None) -> dict[int, int]:
        """Bucket counts over the last `seconds` seconds (None: since start)."""
        if seconds is None:
            return dict(self.total)
        now = int(self.clock())
        merged: dict[int, int] = {}
        for i, stamp in enumerate(self._stamp):
            if stamp >= 0 and now - stamp < seconds:
                for b, n in self._slots[i].items():
                    merged[b] = merged.get(b, 0) + n
        return merged


def merge(histograms: Iterable[dict[int, int]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for h in histograms:
        for b, n in h.items():
            merged[b] = merged.get(b, 0) + n
    return merged


def quantiles(counts: dict[int, int], qs: Iterable[float]) -> tuple[int, list[float | None], float | None]:
    """(count, the quantiles in microseconds at bucket midpoints, the upper bound of the top bucket)."""
    qs = list(qs)
    if not counts:
        return 0, [None] * len(qs), None
    idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    n = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
    order = np.argsort(idx)
    idx, n = idx[order], n[order]
    cum = np.cumsum(n)
    total = int(cum[-1])
    lower, upper = bucket_bounds(idx)
    mid = (lower + upper - 1) / 2.0
    result: list[float | None] = []
    for q in qs:
        rank = max(1, int(np.ceil(q * total)))
        result.append(float(mid[int(np.searchsorted(cum, rank))]))
    return total, result, float(upper[-1] - 1)
