"""Catalog entry 6: the cascade. A swallowed error surfaces far away, naming the wrong function.

A nightly research pipeline: load prices -> extract features -> backtest -> report. The
price feed's key expired, so it returns no rows. `extract_features` wraps its body in a broad
`try/except` that returns None, and the crash happens two steps later in `backtest`, whose
traceback says nothing about prices or features. With `@ag.contract` at each boundary, the
run fails at the producer, with a message that names it. (`ruff` with BLE001 flags the broad
`except` itself; see docs/cascade.md.)
"""

from __future__ import annotations

import traceback

import agentguard as ag


def load_prices(symbol: str) -> list[float]:
    """The feed answers 200 with an empty list: its API key expired last night."""
    return []


# -- before: the usual code ---------------------------------------------------------------------


def extract_features(prices: list[float]) -> dict[str, float] | None:
    try:
        momentum = (prices[-1] - prices[0]) / prices[0]
        volatility = max(prices) - min(prices)
        return {"momentum": momentum, "volatility": volatility}
    except Exception:  # noqa: BLE001 - the anti-pattern this example shows
        return None


def backtest(features: dict[str, float]) -> float:
    signals = len(features)  # TypeError: object of type 'NoneType' has no len()
    return signals * features["momentum"]


def report(pnl: float) -> str:
    return f"PnL {pnl:+.2%}"


# -- after: contracts at the boundaries ---------------------------------------------------------


@ag.contract(not_empty=True)
def load_prices_checked(symbol: str) -> list[float]:
    return load_prices(symbol)


@ag.contract(required_keys=("momentum", "volatility"))
def extract_features_checked(prices: list[float]) -> dict[str, float]:
    momentum = (prices[-1] - prices[0]) / prices[0]
    volatility = max(prices) - min(prices)
    return {"momentum": momentum, "volatility": volatility}


def _last_frame(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{frame.name}() line {frame.lineno}"


def main() -> None:
    print("Before: a broad except returns None, and the error surfaces two steps later.")
    try:
        features = extract_features(load_prices("ACME"))
        report(backtest(features))  # type: ignore[arg-type]
    except TypeError as exc:
        print(f"  TypeError in {_last_frame(exc)}: {exc}")
        print("  -> the traceback points at backtest(); the cause is an empty price feed.")

    print("\nAfter: @ag.contract at each boundary fails at the producer.")
    with ag.BudgetPool(name="nightly-research") as pool:
        try:
            features = extract_features_checked(load_prices_checked("ACME"))
            report(backtest(features))
        except ag.ContractViolation as exc:
            print(f"  ContractViolation from {exc.function!r}: {exc.reason}")
            print(f"  expected: {exc.expected}; received: {exc.received!r}")
        rows = [r for r in pool.ledger if r.kind == "contract"]
        print(f"  ledger: {len(rows)} contract row(s), guard {rows[0].detail['guard_id']!r}")  # type: ignore[index]

    print("\nAnd when the feed is fine but a feature is missing, the contract says which:")
    try:
        ag.contract(required_keys=("momentum", "volatility"))(lambda: {"momentum": 0.1})()
    except ag.ContractViolation as exc:
        print(f"  {exc.reason}")


if __name__ == "__main__":
    main()
