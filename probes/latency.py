"""Round-trip latency of the protocol's exchange on held connections, as an HDR-style
histogram: log-linear buckets of microseconds, fixed memory, no per-request list.

Values below 2 x SUB are exact; above, every power of two is cut into SUB buckets of
equal width, so a bucket is at most 1/SUB (3.1%) of its value wide whatever the value.
MAX_US bounds the range (over 70 minutes lands in the last bucket; the exact maximum is
kept apart).  Histograms merge by adding counts, so each worker keeps its own and sends
only its non-zero buckets over the report pipe (`encode`: chunks that each fit one
report line), and the orchestrator adds them up in any order.

Stdlib only: the probe's workers import it.
"""
from __future__ import annotations

from array import array
from typing import Dict, Iterable, List, Optional

SUB_BITS = 5
SUB = 1 << SUB_BITS                  # buckets per power of two
MAX_US = (1 << 32) - 1               # about 71 minutes
BUCKETS = ((MAX_US.bit_length() - SUB_BITS) + 1) * SUB
CHUNK = 150                          # buckets per encoded chunk: under 4,000 bytes, one report line
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))


def index_of(us: int) -> int:
    """The bucket of a value in microseconds (monotonic in the value)."""
    if us < 0:
        us = 0
    elif us > MAX_US:
        us = MAX_US
    shift = us.bit_length() - SUB_BITS - 1
    if shift <= 0:
        return us
    return shift * SUB + (us >> shift)


def highest_of(index: int) -> int:
    """The highest value that lands in a bucket (what a percentile reports: the true
    value is at most this)."""
    if index < 2 * SUB:
        return index
    shift, sub = divmod(index, SUB)
    shift -= 1
    return ((sub + SUB) << shift) + (1 << shift) - 1


class Histogram:
    __slots__ = ("counts", "count", "max_us")

    def __init__(self):
        self.counts = array("Q", bytes(8 * BUCKETS))
        self.count = 0
        self.max_us = 0

    def record(self, us: int) -> None:
        self.counts[index_of(us)] += 1
        self.count += 1
        if us > self.max_us:
            self.max_us = us

    def add(self, other: "Histogram") -> None:
        for i, c in enumerate(other.counts):
            if c:
                self.counts[i] += c
        self.count += other.count
        self.max_us = max(self.max_us, other.max_us)

    def clear(self) -> None:
        self.counts = array("Q", bytes(8 * BUCKETS))
        self.count = self.max_us = 0

    def percentile(self, q: float) -> Optional[int]:
        """The value (us) at or below which q percent of the recorded ones are; None when
        empty.  Never above the exact maximum."""
        if not self.count:
            return None
        rank = max(1, -(-int(q * self.count) // 100)) if q < 100 else self.count
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(highest_of(i), self.max_us)
        return self.max_us

    def summary_ms(self) -> Optional[Dict[str, float]]:
        """{p50, p90, p99, max} in milliseconds, or None when nothing was recorded."""
        if not self.count:
            return None
        out = {name: round(self.percentile(q) / 1000, 3) for name, q in PERCENTILES}
        out["max"] = round(self.max_us / 1000, 3)
        return out

    # -- over the report pipe ------------------------------------------------------------
    def encode(self) -> List[str]:
        """The non-zero buckets as 'i:c,i:c' chunks (at least one: '-' when empty) and the
        maximum in the first: 'max:us,i:c,...'.  Chunks are independent; decode adds."""
        pairs = [f"{i}:{c}" for i, c in enumerate(self.counts) if c]
        chunks = [",".join(pairs[j:j + CHUNK]) for j in range(0, len(pairs), CHUNK)] or [""]
        chunks[0] = f"max:{self.max_us}" + ("," + chunks[0] if chunks[0] else "")
        return chunks

    def decode(self, chunk: str) -> None:
        """Add one chunk of another histogram's encode() to this one."""
        for pair in chunk.split(","):
            key, _, value = pair.partition(":")
            if key == "max":
                self.max_us = max(self.max_us, int(value))
                continue
            i, c = int(key), int(value)
            if not 0 <= i < BUCKETS or c < 0:
                raise ValueError(f"bucket {pair!r} out of range")
            self.counts[i] += c
            self.count += c

    @classmethod
    def of(cls, values_us: Iterable[int]) -> "Histogram":
        h = cls()
        for v in values_us:
            h.record(v)
        return h
