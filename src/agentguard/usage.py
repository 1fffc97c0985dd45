"""Token usage read from the responses people actually get, and the price of a call.

`read_usage(response)` understands OpenAI (chat completions and responses API) and Anthropic
SDK objects and their dict forms, LangChain `AIMessage.usage_metadata` and `LLMResult`, and
any user-supplied extractor (`configure(usage_extractors=[...])` or `@ag.llm_call(usage=...)`).

Prices: `configure(price=fn)` with `fn(model, usage) -> float | None`, or `genai_price` from
the `agentguard[prices]` extra (the `genai-prices` package, offline). Unknown is `None`,
never zero: a pool that limits `cost_usd` refuses a call whose price is unknown unless a
`fallback_price` is configured.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .errors import ConfigurationError

__all__ = [
    "Usage",
    "Price",
    "PriceFunction",
    "UsageExtractor",
    "read_usage",
    "genai_price",
    "resolve_price",
]


@dataclass(frozen=True)
class Usage:
    """Tokens of one LLM call. `None` means unknown, which is not zero."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    model: str | None = None
    provider: str | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __init__(
        self,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        total_tokens: int | None = None,
        model: str | None = None,
        provider: str | None = None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> None:
        # The dataclass's generated frozen __init__ sets each field with object.__setattr__
        # (~0.8 us for seven); one dict update is ~0.3 us, and one Usage is made per call.
        self.__dict__.update(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=total_tokens,
            model=model,
            provider=provider,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
        )

    @property
    def total(self) -> int | None:
        if self.total_tokens is not None:
            return self.total_tokens
        if self.input_tokens is None or self.output_tokens is None:
            return None
        return self.input_tokens + self.output_tokens

    @property
    def known(self) -> bool:
        return self.input_tokens is not None and self.output_tokens is not None


@dataclass(frozen=True)
class Price:
    """A flat price in USD per million tokens (input, output)."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, usage: Usage) -> float:
        return (
            (usage.input_tokens or 0) * self.input_per_mtok
            + (usage.output_tokens or 0) * self.output_per_mtok
        ) / 1_000_000


PriceFunction = Callable[[str, Usage], float | None]
UsageExtractor = Callable[[Any], Usage | None]


def _get(obj: Any, name: str) -> Any:
    if type(obj) is dict:  # the common case, without the ABC instance check (~150 ns)
        return obj.get(name)
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _from_usage_block(block: Any, model: str | None, provider: str | None) -> Usage | None:
    """Read an OpenAI / Anthropic / LangChain usage block (object or dict)."""
    # A dict (an SDK model's __dict__, a JSON body) is read without the Mapping ABC check.
    get: Callable[[str], Any] = (
        block.get if type(block) is dict else functools.partial(_get, block)
    )

    inp = get("input_tokens")
    if inp is not None and type(inp) is not int:
        inp = _int(inp)
    out = get("output_tokens")
    if out is not None and type(out) is not int:
        out = _int(out)
    cache_read = 0
    cache_write = 0
    if inp is None and out is None:
        inp = get("prompt_tokens")  # OpenAI chat completions
        if inp is not None and type(inp) is not int:
            inp = _int(inp)
        out = get("completion_tokens")
        if out is not None and type(out) is not int:
            out = _int(out)
        details = get("prompt_tokens_details")
        if details is not None:
            cache_read = _int(_get(details, "cached_tokens")) or 0
        if inp is None and out is None:
            return None
        provider = provider or "openai"
    else:
        # Anthropic reports cache tokens outside input_tokens; budgets count them as input.
        cache_write = _int(get("cache_creation_input_tokens")) or 0
        cache_read_a = _int(get("cache_read_input_tokens"))
        if cache_read_a is not None:
            cache_read = cache_read_a
            inp = (inp or 0) + cache_read + cache_write
            provider = provider or "anthropic"
        details = get("input_tokens_details") or get("input_token_details")
        if details is not None:
            cache_read = _int(_get(details, "cached_tokens")) or _int(
                _get(details, "cache_read")
            ) or cache_read
    total = get("total_tokens")
    if total is not None and type(total) is not int:
        total = _int(total)
    usage = _new(Usage)  # `Usage(...)` without its Python frame: one per LLM call
    usage.__dict__.update(
        input_tokens=inp,
        output_tokens=out,
        total_tokens=total if total is not None else ((inp or 0) + (out or 0)),
        model=model,
        provider=provider,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )
    return usage


_new = object.__new__


def _model_of(response: Any) -> str | None:
    model = _get(response, "model")
    if isinstance(model, str):
        return model
    meta = _get(response, "response_metadata")
    if isinstance(meta, Mapping):
        name = meta.get("model_name") or meta.get("model")
        if isinstance(name, str):
            return name
    return None


def _builtin_extract(response: Any) -> Usage | None:
    if isinstance(response, Usage):
        return response
    if response is None or isinstance(response, (str, bytes, int, float, bool)):
        return None
    model = _model_of(response)
    # LangChain AIMessage / AIMessageChunk, or a dict carrying usage_metadata
    meta = _get(response, "usage_metadata")
    if meta is not None:
        usage = _from_usage_block(meta, model, None)
        if usage is not None:
            return usage
    # OpenAI / Anthropic SDK objects and dicts
    block = _get(response, "usage")
    if block is not None:
        usage = _from_usage_block(block, model, None)
        if usage is not None:
            return usage
    # LangChain LLMResult / ChatResult: generations[0][0].message.usage_metadata
    generations = _get(response, "generations")
    if isinstance(generations, list) and generations:
        first = generations[0]
        if isinstance(first, list) and first:
            first = first[0]
        message = _get(first, "message")
        if message is not None:
            usage = _builtin_extract(message)
            if usage is not None:
                return usage
        llm_output = _get(response, "llm_output")
        if isinstance(llm_output, Mapping):
            block = llm_output.get("token_usage") or llm_output.get("usage")
            if block is not None:
                name = llm_output.get("model_name")
                return _from_usage_block(block, name if isinstance(name, str) else None, None)
    return None


def read_usage(response: Any, extractors: tuple[UsageExtractor, ...] = ()) -> Usage | None:
    """The usage of a response, or `None` when no extractor recognises its shape.

    User extractors are tried first, in order; then the built-in shapes. An extractor that
    raises is a bug in it and propagates (it is not treated as "no usage").
    """
    for extractor in extractors:
        usage = extractor(response)
        if usage is not None:
            if not isinstance(usage, Usage):
                raise ConfigurationError(
                    f"usage extractor {extractor!r} returned {type(usage).__name__}; expected "
                    f"agentguard.Usage or None."
                )
            return usage
    return _builtin_extract(response)


# -- prices ---------------------------------------------------------------------------------

_price_cache: dict[tuple[str, str | None], Any] = {}
_linear_cache: dict[tuple[str, str | None, bool, bool], _LinearPrice | None] = {}
_price_lock = threading.Lock()
_MISSING = object()


class _LinearPrice:
    """A genai-prices model price as exact per-token coefficients (no tiers).

    genai-prices' Decimal coefficients are kept as integers over one power of ten, so a
    cost is integer arithmetic and one correctly rounded division: the same float as
    `float(ModelPrice.calc_price()[...])` (the same exact rational, rounded once), checked
    on a generic point when built, at ~0.2 us instead of ~45-70 us (and no decimal
    arithmetic on the hot path).
    """

    __slots__ = ("base", "cache_read", "cache_write", "denominator", "input", "output")

    def __init__(self, base: Any, inp: Any, out: Any, cache_read: Any, cache_write: Any) -> None:
        coefficients = [Decimal(c) for c in (base, inp, out, cache_read, cache_write)]
        exponent = min(int(c.as_tuple().exponent) for c in coefficients)
        shift = -exponent if exponent < 0 else 0
        self.denominator: int = 10**shift
        # scaleb moves the decimal point exactly: every coefficient becomes an integer.
        ints = [int(c.scaleb(shift)) for c in coefficients]
        self.base: int = ints[0]
        self.input: int = ints[1]
        self.output: int = ints[2]
        self.cache_read: int = ints[3]
        self.cache_write: int = ints[4]

    def cost(self, inp: int, out: int, cache_read: int, cache_write: int) -> float:
        total = self.base + self.input * inp + self.output * out
        if cache_read:
            total += self.cache_read * cache_read
        if cache_write:
            total += self.cache_write * cache_write
        return total / self.denominator  # int / int: exact rational, rounded once


def _genai_calc(model_price: Any, inp: int, out: int, read: int | None, write: int | None) -> Any:
    import genai_prices

    calc_usage = genai_prices.Usage(
        input_tokens=inp, output_tokens=out, cache_read_tokens=read, cache_write_tokens=write
    )
    return model_price.calc_price(calc_usage)["total_price"]


def _linear_price(model_price: Any, has_read: bool, has_write: bool) -> _LinearPrice | None:
    """Per-token coefficients of `model_price`, or None when its price is not linear.

    Derived from `calc_price` itself at a few probe points (so whatever genai-prices counts,
    it counts here too), then verified on a generic point; tiered prices (a rate that
    depends on the prompt size) are never linearised.
    """
    from genai_prices.types import TieredPrices

    if any(isinstance(v, TieredPrices) for v in vars(model_price).values()):
        return None
    r0 = 1 if has_read else None
    w0 = 1 if has_write else None
    i0 = (r0 or 0) + (w0 or 0)
    try:
        f0 = _genai_calc(model_price, i0, 0, r0, w0)
        a = _genai_calc(model_price, i0 + 1, 0, r0, w0) - f0
        b = _genai_calc(model_price, i0, 1, r0, w0) - f0
        r = _genai_calc(model_price, i0 + 1, 0, r0 + 1, w0) - f0 - a if r0 else 0 * a
        w = _genai_calc(model_price, i0 + 1, 0, r0, w0 + 1) - f0 - a if w0 else 0 * a
        linear = _LinearPrice(f0 - a * i0 - r * (r0 or 0) - w * (w0 or 0), a, b, r, w)
        cr, cw = (1009 if has_read else 0), (211 if has_write else 0)
        ci, co = 100_003 + cr + cw, 7919
        expected = _genai_calc(model_price, ci, co, cr or None, cw or None)
    except (ValueError, ArithmeticError, TypeError):
        return None  # a shape the probes cannot take: every call goes through calc_price
    if linear.cost(ci, co, cr, cw) != float(expected):
        return None
    return linear


def genai_price(model: str, usage: Usage) -> float | None:
    """The price of `usage` on `model` from the `genai-prices` package (offline).

    Resolves each (model, provider) once and caches it (the first lookup costs ~25 ms);
    a price without tiers is then kept as exact per-token coefficients (~0.2 us per call,
    equal to genai-prices' own `calc_price`), a tiered one costs ~45-70 us per call.
    Returns `None` for an unknown model. Needs `agentguard[prices]`.
    """
    inp = usage.input_tokens or 0
    read = usage.cache_read_tokens or 0
    write = usage.cache_write_tokens or 0
    lkey = (model, usage.provider, read > 0, write > 0)
    linear = _linear_cache.get(lkey, _MISSING)
    if type(linear) is _LinearPrice and read + write <= inp:
        return linear.cost(inp, usage.output_tokens or 0, read, write)
    try:
        import genai_prices
    except ImportError as exc:
        raise ConfigurationError(
            "genai_price needs the genai-prices package: pip install 'agentguard[prices]'"
        ) from exc
    key = (model, usage.provider)
    model_price = _price_cache.get(key, _MISSING)
    if model_price is _MISSING:
        with _price_lock:
            try:
                calc = genai_prices.calc_price(
                    genai_prices.Usage(input_tokens=1, output_tokens=1),
                    model_ref=model,
                    provider_id=usage.provider,
                )
                model_price = calc.model_price
            except LookupError:
                model_price = None
            _price_cache[key] = model_price
    if model_price is None:
        return None
    if linear is _MISSING:
        with _price_lock:
            _linear_cache[lkey] = _linear_price(model_price, read > 0, write > 0)
    out = usage.output_tokens or 0
    return float(_genai_calc(model_price, inp, out, read or None, write or None))


def _cached_linear_price(model: str, provider: str | None, inp: int, out: int) -> float | None:
    """`genai_price` of a usage without cache tokens when that model's linear price is
    already cached (no `Usage` built); None when it is not (the caller goes the long way)."""
    linear = _linear_cache.get((model, provider, False, False))
    if type(linear) is _LinearPrice:
        return linear.cost(inp, out, 0, 0)
    return None


def resolve_price(
    model: str | None,
    usage: Usage,
    price: PriceFunction | None,
    fallback: Price | None,
) -> float | None:
    """The cost of `usage`: the user's price function, else genai-prices if installed,
    else the fallback price; `None` when nothing knows the model."""
    if model is not None:
        if price is not None:
            value = price(model, usage)
            if value is not None:
                return float(value)
        elif _installed or _genai_prices_installed():
            value = genai_price(model, usage)
            if value is not None:
                return value
    if fallback is not None:
        return fallback.cost(usage)
    return None


_installed: bool | None = None


def _genai_prices_installed() -> bool:
    global _installed
    if _installed is None:
        import importlib.util

        _installed = importlib.util.find_spec("genai_prices") is not None
    return _installed
