"""Numbers as text, in one place: the formatters, the command line's fixed-width table, the CSV writer.

Every formatter turns None into DASH: a figure that was not measured reads "-" everywhere.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence

DASH = "-"
MIB, GIB = 2 ** 20, 2 ** 30


def fixed(value: float | None, digits: int = 1, scale: float = 1.0, unit: str = "") -> str:
    """`value * scale` with `digits` decimals, then `unit`."""
    return DASH if value is None else f"{value * scale:.{digits}f}{unit}"


def ms(seconds: float | None, digits: int = 1, unit: str = "") -> str:
    """Seconds as milliseconds."""
    return fixed(seconds, digits, 1000, unit)


def ms_range(low: float | None, high: float | None, digits: int = 2) -> str:
    """A (min, max) pair of seconds as "low-high" milliseconds."""
    return DASH if low is None or high is None else f"{ms(low, digits)}-{ms(high, digits)}"


def gib(nbytes: int | None, digits: int = 2) -> str:
    return fixed(nbytes, digits, 1 / GIB)


def mib(nbytes: int | None, digits: int = 0) -> str:
    return fixed(nbytes, digits, 1 / MIB)


def percent(share: float | None) -> str:
    """A share as a percentage: one decimal below 10% (a small model's MBU on a CPU is a fraction of a percent)."""
    if share is None:
        return DASH
    return f"{share:.1%}" if share < 0.1 else f"{share:.0%}"


def duration(seconds: float | None) -> str:
    """Seconds in the unit that reads best: 12.3 ms, 123 ms, 1.23 s."""
    if seconds is None:
        return DASH
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return ms(seconds, 1 if seconds < 0.1 else 0, " ms")


def size(nbytes: int | None) -> str:
    """Bytes as GiB from one GiB up, else as MiB."""
    if nbytes is None:
        return DASH
    return gib(nbytes, 2) + " GiB" if nbytes >= GIB else mib(nbytes) + " MiB"


def size_digits(nbytes: int | None, digits: int = 3) -> str:
    """Bytes to `digits` significant digits in the largest unit they fill: 409 MiB, 1.05 MiB, 580 KiB."""
    if nbytes is None:
        return DASH
    unit, scale = next(((u, s) for u, s in (("GiB", GIB), ("MiB", MIB), ("KiB", 2 ** 10)) if nbytes >= s), ("B", 1))
    value = nbytes / scale
    decimals = max(digits - 1 - math.floor(math.log10(value)), 0) if value > 0 else 0
    return f"{value:.{decimals}f} {unit}"


def ratio(value: float | None, digits: int = 2) -> str:
    """A ratio (a speedup) with `digits` decimals and an x: 8.67x."""
    return fixed(value, digits, unit="x")


def share(value: float | None) -> str:
    """A share as a whole percentage: 30%."""
    return fixed(value, 0, 100, "%")


def general(value, scale: float = 1.0) -> str:
    """A table cell: floats (and scaled integers) to four significant digits, anything else as text."""
    if value is None:
        return DASH
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool) and scale != 1.0):
        return f"{value * scale:.4g}"
    return str(value)


def fixed_width(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells, the first one the header, as left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def csv_text(rows: Iterable[Mapping], fields: Sequence[str] | None = None) -> str:
    """Rows as CSV under a header of `fields` (None: every key, in the order first met); other keys are left out."""
    rows = list(rows)
    if fields is None:
        fields = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
