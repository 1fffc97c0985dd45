"""Real LangChain fakes for the adapter tests: a scripted chat model that emits real tool calls.

`ScriptedChatModel` is LangChain's own `GenericFakeChatModel` with three additions: it binds
tools (returns itself), it streams tool calls and usage as one `AIMessageChunk` (so
`stream_mode="messages"` keeps them), and it counts how often its provider side ran.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolCallChunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import Field

USAGE = {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120}


class ScriptedChatModel(GenericFakeChatModel):
    """A fake chat model with a model name, max_tokens, tools binding and a provider counter."""

    model_name: str = "fake-gpt"
    max_tokens: int | None = 50
    provider_calls: list[int] = Field(default_factory=list)
    on_generate: Callable[[], None] | None = None

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.provider_calls.append(1)
        if self.on_generate is not None:
            self.on_generate()
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        result = self._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
        message = result.generations[0].message
        assert isinstance(message, AIMessage)
        chunk = AIMessageChunk(
            content=message.content,
            id=message.id,
            tool_call_chunks=[
                ToolCallChunk(name=tc["name"], args=_json(tc["args"]), id=tc["id"], index=i)
                for i, tc in enumerate(message.tool_calls)
            ],
            usage_metadata=message.usage_metadata,
            response_metadata=message.response_metadata,
            chunk_position="last",
        )
        gen = ChatGenerationChunk(message=chunk)
        if run_manager:
            run_manager.on_llm_new_token("", chunk=gen)
        yield gen


def _json(args: dict[str, Any]) -> str:
    import json

    return json.dumps(args)


def tool_call_script(
    n: int,
    tool: str = "lookup_order",
    arg: str = "order_id",
    per_message: int = 1,
    usage: dict[str, int] | None = USAGE,
    final: str = "all done",
    prefix: str = "c",
) -> Iterator[AIMessage]:
    """`n` tool calls with distinct arguments, `per_message` per AI message, then a final answer."""
    i = 0
    while i < n:
        calls = []
        for _ in range(min(per_message, n - i)):
            calls.append({"name": tool, "args": {arg: f"o-{prefix}{i}"}, "id": f"{prefix}{i}"})
            i += 1
        yield AIMessage(content="", tool_calls=calls, usage_metadata=usage)  # type: ignore[arg-type]
    yield AIMessage(content=final, usage_metadata=usage)  # type: ignore[arg-type]


class BodyCounter:
    """Counts tool bodies that really ran (thread-safe)."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self._lock = threading.Lock()

    def hit(self, value: Any) -> None:
        with self._lock:
            self.calls.append(value)

    def __len__(self) -> int:
        return len(self.calls)
