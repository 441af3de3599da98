"""How a number reads to a person: the one formatter every table, tuple, message and
progress line goes through (JSON keeps raw numbers; shell commands and the files tuner
writes keep what the kernel reads).

Counts and sizes are grouped by thousands ("1,048,576", "4,096 131,072 6,291,456");
ports, PIDs, addresses and paths are names, not quantities, and stay as they are.
Stdlib only: probes/ (progress lines, worker messages) uses it too.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Union

# Units whose values are names, not amounts: never grouped.
NAME_UNITS = frozenset({"ports", "port", "pid", "mode"})


def number(value: Any, decimals: int = 0) -> str:
    """An amount: 1048576 -> '1,048,576'; 12.345 (decimals=2) -> '12.35'; None -> '-'.
    A digit string (a sysctl as read) is grouped like the int it holds; other text
    (yes/no, 'unlimited') is shown as it is."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if decimals == 0 and value.is_integer():
            return f"{int(value):,}"
        return f"{value:,.{decimals}f}"
    text = str(value)
    digits = text[1:] if text[:1] == "-" else text
    if digits.isdigit():
        return f"{int(text):,}"
    return text


def values(vals: Union[None, str, Iterable[Any]], unit: str = "") -> str:
    """A tuple of amounts as one cell: [4096, 131072, 6291456] or the sysctl text
    '4096\\t131072\\t6291456' -> '4,096 131,072 6,291,456'. A single byte amount reads
    as a size ('21.8 GiB'); ports ('32768 60999') and other names stay ungrouped."""
    if vals is None:
        return "-"
    items = vals.split() if isinstance(vals, str) else list(vals)
    if not items and isinstance(vals, str):
        return vals
    if unit in NAME_UNITS:
        return " ".join(str(v) for v in items)
    if unit == "bytes" and len(items) == 1 and isinstance(items[0], int):
        return size(items[0])
    return " ".join(number(v) for v in items)


def size(nbytes: Optional[float]) -> str:
    """Bytes in binary units: '512 B', '8.0 KiB', '21.8 GiB'."""
    if nbytes is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024:
            return f"{nbytes:,.0f} {unit}" if unit == "B" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:,.1f} TiB"


def seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{number(float(value), 2)} s"


def millis(value: Optional[float]) -> str:
    """A latency in milliseconds, to about three figures: '212 ms', '12.4 ms', '0.38 ms'."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{number(round(value))} ms"
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def rate(value: Optional[float]) -> str:
    """Connections per second, whole: '26,282/s'."""
    return "-" if value is None else f"{number(round(value))}/s"


def of(done: int, total: Optional[int]) -> str:
    """Progress of a counted job: '1,024/20,000' (or just '1,024' when open-ended)."""
    return number(done) + (f"/{number(total)}" if total else "")


# A count's suffixes as a command line takes them (tuner/inputs.py: parse_target) and
# spells them back (target_word): one table for both ways.
COUNT_SUFFIXES = {"": 1, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9}


def target_word(value: int) -> str:
    """A count of connections as a command line spells it (parse_target's inverse,
    shortest form): 1000000 -> '1M', 100000 -> '100k', 1234 -> '1234'."""
    for suffix in ("g", "m", "k"):
        unit = COUNT_SUFFIXES[suffix]
        if value >= unit and value % unit == 0:
            return f"{value // unit}{suffix.upper() if suffix != 'k' else suffix}"
    return str(value)
