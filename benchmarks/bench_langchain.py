"""What the LangChain adapters add to one tool call and one model call (real LangChain objects).

Baselines in each section: the same call with no callbacks, and with a no-op callback handler
(the cost of LangChain's own callback machinery, which any handler pays).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.prebuilt.tool_node import ToolCallRequest

import agentguard as ag
from agentguard.integrations.langchain import AgentGuardMiddleware, BudgetCallbackHandler


class _NoOp(BaseCallbackHandler):
    raise_error = True
    run_inline = True

    def on_tool_start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_tool_end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Model(GenericFakeChatModel):
    model_name: str = "fake-gpt"


def _answers() -> Any:
    message = AIMessage(
        content="ok", usage_metadata={"input_tokens": 10, "output_tokens": 2, "total_tokens": 12}
    )
    while True:
        yield message


def run(measure: Callable[..., float]) -> list[tuple[str, list[tuple[str, float]]]]:
    @tool
    def lookup(order_id: str) -> str:
        """Look up an order."""
        return "shipped"

    ids = count()
    noop = {"callbacks": [_NoOp()]}
    guarded = {"callbacks": [BudgetCallbackHandler()]}
    model = _Model(messages=_answers())
    middleware = AgentGuardMiddleware()
    reply = ToolMessage(content="shipped", tool_call_id="x", name="lookup")

    def tool_request() -> ToolCallRequest:
        return ToolCallRequest(
            tool_call={"name": "lookup", "args": {"order_id": f"o{next(ids)}"}, "id": "x"},
            tool=lookup,
            state={},
            runtime=None,  # type: ignore[arg-type]
        )

    def passthrough(request: ToolCallRequest) -> ToolMessage:
        return reply

    from uuid import uuid4

    from langchain_core.messages import HumanMessage
    from langchain_core.outputs import ChatGeneration, LLMResult

    handler = BudgetCallbackHandler()
    nothing = _NoOp()
    run_id = uuid4()
    messages = [[HumanMessage("where is my order?")]]
    meta = {"ls_model_name": "fake-gpt", "ls_provider": "fake", "ls_max_tokens": 64}
    result = LLMResult(generations=[[ChatGeneration(message=next(_answers()))]])

    def tool_events(h: BaseCallbackHandler) -> Callable[[], None]:
        def events() -> None:
            h.on_tool_start(
                {"name": "lookup"}, "1", run_id=run_id, inputs={"order_id": "1"}, tool_call_id=None
            )
            h.on_tool_end("shipped", run_id=run_id)

        return events

    def model_events(h: BaseCallbackHandler) -> Callable[[], None]:
        def events() -> None:
            h.on_chat_model_start({}, messages, run_id=run_id, metadata=meta)
            h.on_llm_end(result, run_id=run_id)

        return events

    with ag.BudgetPool(loop_limit=None):
        event_rows = [
            ("tool start+end: no-op handler", measure(tool_events(nothing), number=20_000)),
            ("tool start+end: BudgetCallbackHandler", measure(tool_events(handler), number=20_000)),
            (
                "model start+end: BudgetCallbackHandler",
                measure(model_events(handler), number=20_000),
            ),
        ]
        tool_rows = [
            (
                "tool.invoke, no callbacks",
                measure(lambda: lookup.invoke({"order_id": "1"}), number=2000),
            ),
            (
                "tool.invoke + no-op handler",
                measure(lambda: lookup.invoke({"order_id": "1"}, config=noop), number=2000),
            ),
            (
                "tool.invoke + BudgetCallbackHandler",
                measure(lambda: lookup.invoke({"order_id": "1"}, config=guarded), number=2000),
            ),
        ]
        model_rows = [
            ("model.invoke, no callbacks", measure(lambda: model.invoke("q"), number=1000)),
            (
                "model.invoke + no-op handler",
                measure(lambda: model.invoke("q", config=noop), number=1000),
            ),
            (
                "model.invoke + BudgetCallbackHandler",
                measure(lambda: model.invoke("q", config=guarded), number=1000),
            ),
        ]
        mw_rows = [
            (
                "wrap_tool_call: passthrough",
                measure(lambda: passthrough(tool_request()), number=20_000),
            ),
            (
                "wrap_tool_call: AgentGuardMiddleware",
                measure(
                    lambda: middleware.wrap_tool_call(tool_request(), passthrough), number=20_000
                ),
            ),
        ]
    return [
        ("LangChain callback handler: its own events, called directly", event_rows),
        ("LangChain tool call (callback handler)", tool_rows),
        ("LangChain chat model call (callback handler, fake model)", model_rows),
        ("create_agent tool wrapper (middleware, direct call)", mw_rows),
    ]


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import measure as _measure
    from bench import print_table

    for title, rows in run(_measure):
        print_table(title, rows)
