"""Plain-text tables and number formats for the CLI reports."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

__all__ = ["render_table", "fmt_time", "fmt_duration", "fmt_money", "fmt_num"]


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> str:
    """Columns left-aligned to their widest cell, two spaces apart; long cells are cut."""
    cells = [[str(c) for c in columns]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = []
    for row in cells:
        lines.append(
            indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def _cell(value: Any, limit: int = 100) -> str:
    text = "-" if value is None else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fmt_time(ts: float | None, *, seconds: bool = False) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.localtime(ts))


def fmt_duration(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f}us"
    if value < 1:
        return f"{value * 1e3:.1f}ms"
    if value < 120:
        return f"{value:.2f}s"
    return f"{value / 60:.1f}min"


def fmt_money(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.4f}" if value < 100 else f"${value:,.0f}"


def fmt_num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4g}"


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 run`, `2 runs`, `0 anomalies` (pass `many` for irregular plurals)."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"
