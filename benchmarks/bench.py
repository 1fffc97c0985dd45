"""agentguard's per-call cost, side by side with tenacity, stamina and pydantic, in one process.

Run: `.venv/bin/python benchmarks/bench.py` (add `--quick` for fewer repeats). Each row is the
best of several repeats, in nanoseconds per call, with its ratio to a bare call. Sections
from other modules (`bench_*.py` beside this file) are appended when present.
"""

from __future__ import annotations

import importlib.util
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICK = "--quick" in sys.argv


def measure(fn: Callable[[], object], number: int = 100_000, repeat: int = 7) -> float:
    """Best-of-`repeat` nanoseconds per call of `fn`."""
    if QUICK:
        number, repeat = max(1000, number // 10), 3
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e9


def print_table(title: str, rows: list[tuple[str, float]], base: float | None = None) -> None:
    print(f"\n{title}")
    base = base if base is not None else rows[0][1]
    width = max(len(name) for name, _ in rows)
    for name, ns in rows:
        ratio = ns / base
        shown = f"{ratio:>7.2f}x" if ratio < 10 else f"{ratio:>7.1f}x"  # 1.05x, not 1.0x
        print(f"  {name:<{width}}  {ns:>10,.0f} ns   {shown}")


def main() -> None:
    sections = sorted(HERE.glob("bench_*.py"))
    for path in sections:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        for title, rows in module.run(measure):
            print_table(title, rows)
        for note in getattr(module, "NOTES", ()):  # e.g. paired overheads under the table
            print(note)


if __name__ == "__main__":
    main()
