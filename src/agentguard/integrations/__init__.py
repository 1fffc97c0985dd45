"""Adapters that translate a framework's events into agentguard's guard calls.

Each adapter is an optional extra and imports its framework lazily, when its module is
imported: `agentguard.integrations.langchain` needs `pip install 'agentguard[langchain]'`.
"""

from __future__ import annotations

__all__: list[str] = []
