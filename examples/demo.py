"""The agentguard demo: the catalog of silent failures, one at a time, offline.

Each section is a standalone example in this folder (run any of them on its own); this script
runs them in the catalog's order with a header for each.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (file, title): each file has a main() that prints its story.
SECTIONS: list[tuple[str, str]] = [
    ("empty_output_job.py", "1. Exit 0, empty output"),
    ("bypass_expiry.py", "2. The 'just this once' bypass that becomes permanent"),
    ("budget_leak.py", "3. Budget leaks through agent loops"),
    ("bad_arguments.py", "4. Tool arguments that are valid JSON and nonsense"),
    ("retry_visibility.py", "5. The 'successful' retry that hides repeated failure"),
    ("cascade.py", "6. The cascade: a swallowed error surfaces far away"),
    ("raw_sdk.py", "Integration: every raw OpenAI / Anthropic SDK call charged (ag.instrument)"),
    ("langgraph_agent.py", "Integrations: a LangChain / LangGraph agent, stopped and corrected"),
]


SUMMARY = [
    "1. exit 0 + empty output  -> `agentguard run` exits 3, the run and its anomalies are stored",
    "2. the permanent bypass   -> owner, reason, expiry; every use visible; back on by itself",
    "3. budget leaks           -> one pool charged at every innermost call: 20 means 20",
    "4. nonsense arguments     -> rejected before the tool runs, with a message the model fixes",
    "5. retries that hide      -> a span per attempt, attempts/call, p99 after retries, alerts",
    "6. the cascade            -> @ag.contract fails at the producer, not three steps later",
    "raw SDK calls, LangChain  -> charged and stopped the same way, no decorator to forget",
]


def _load(path: Path) -> object:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load example {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Short(logging.Formatter):
    """Alerts and warnings as one short line each, so the story stays readable."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage().replace("agentguard alert ", "ALERT ")
        return f"  [{record.levelname.lower()}] {text[:150]}{'...' if len(text) > 150 else ''}"


def main() -> int:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Short())
    logging.getLogger("agentguard").addHandler(handler)
    logging.getLogger("agentguard").propagate = False
    only = sys.argv[1:]
    for filename, title in SECTIONS:
        if only and not any(o in filename for o in only):
            continue
        bar = "=" * 78
        print(f"\n{bar}\n{title}\n{bar}")
        module = _load(HERE / filename)
        module.main()  # type: ignore[attr-defined]
    if not only:
        print(f"\n{'=' * 78}\nWhat each failure became\n{'=' * 78}")
        for line in SUMMARY:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
