"""What we may record of a value: by default its type, length and a short hash, never the value.

`configure(record_values=True)` opts in to clear (truncated) values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from . import _config

__all__ = ["describe", "describe_args", "short_hash"]


def short_hash(value: Any) -> str:
    """A stable 8-hex-digit hash of a value's repr (enough to spot a loop or a paraphrase)."""
    text = value if isinstance(value, str) else repr(value)
    return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=4).hexdigest()


def describe(value: Any, limit: int = 80) -> str:
    """`<str len=12 #1a2b3c4d>` by default; the truncated repr when values are recorded."""
    if _config.get_config().record_values:
        text = repr(value)
        return text if len(text) <= limit else text[: limit - 3] + "..."
    if value is None or isinstance(value, bool):
        return repr(value)
    try:
        length = f" len={len(value)}"
    except TypeError:
        length = ""
    return f"<{type(value).__name__}{length} #{short_hash(value)}>"


def describe_args(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """The arguments of a call, each described as above: `(a, b=<str len=3 #...>)`."""
    parts = [describe(a) for a in args]
    parts += [f"{k}={describe(v)}" for k, v in kwargs.items()]
    return "(" + ", ".join(parts) + ")"
