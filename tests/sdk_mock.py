"""An offline OpenAI + Anthropic server behind `httpx2.MockTransport`, for the real SDK clients.

It answers what the real APIs answer (JSON bodies, SSE streams with their final usage event),
counts every request that reaches the transport, and can be told to fail with a status.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2 as httpx  # the http library both SDKs use (an httpx fork)
import openai

USAGE_IN = 42
USAGE_OUT = 7


def _sse(events: list[tuple[str | None, dict[str, Any]]], done: bool = False) -> bytes:
    out = []
    for name, data in events:
        if name:
            out.append(f"event: {name}\n")
        out.append(f"data: {json.dumps(data)}\n\n")
    if done:
        out.append("data: [DONE]\n\n")
    return "".join(out).encode()


def chat_json(model: str, inp: int = USAGE_IN, out: int = USAGE_OUT) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": f"{model}-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": '{"answer": "42"}', "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out},
    }


def chat_sse(model: str, usage: bool, inp: int = USAGE_IN, out: int = USAGE_OUT) -> bytes:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000}
    base["model"] = f"{model}-2024-07-18"
    chunks: list[tuple[str | None, dict[str, Any]]] = [
        (None, {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        (None, {**base, "choices": [{"index": 0, "delta": {"content": "Hello"}}]}),
        (None, {**base, "choices": [{"index": 0, "delta": {"content": " there"}}]}),
        (None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    ]
    if usage:
        block = {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out}
        chunks.append((None, {**base, "choices": [], "usage": block}))
    return _sse(chunks, done=True)


def _response_obj(model: str, status: str, inp: int, out: int, done: bool) -> dict[str, Any]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hello", "annotations": []}],
    }
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1700000000,
        "status": status,
        "model": f"{model}-2024-07-18",
        "output": [message] if done else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": (
            {
                "input_tokens": inp,
                "output_tokens": out,
                "total_tokens": inp + out,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            }
            if done
            else None
        ),
    }


def responses_json(model: str, inp: int = USAGE_IN, out: int = USAGE_OUT) -> dict[str, Any]:
    return _response_obj(model, "completed", inp, out, True)


def responses_sse(model: str, inp: int = USAGE_IN, out: int = USAGE_OUT) -> bytes:
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress"}
    part = {"type": "output_text", "text": "", "annotations": []}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": _response_obj(model, "in_progress", 0, 0, False)},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}},
        {
            "type": "response.content_part.added",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "part": part,
        },
        {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hello",
            "logprobs": [],
        },
        {
            "type": "response.output_text.done",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "text": "Hello",
            "logprobs": [],
        },
        {
            "type": "response.content_part.done",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "part": {**part, "text": "Hello"},
        },
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": {
                **item,
                "status": "completed",
                "content": [{**part, "text": "Hello"}],
            },
        },
        {
            "type": "response.completed",
            "response": _response_obj(model, "completed", inp, out, True),
        },
    ]
    for n, event in enumerate(events):
        event["sequence_number"] = n
    return _sse([(e["type"], e) for e in events])


def embeddings_json(model: str, inp: int = USAGE_IN) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
        "model": model,
        "usage": {"prompt_tokens": inp, "total_tokens": inp},
    }


def message_json(model: str, inp: int = USAGE_IN, out: int = USAGE_OUT) -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hello there"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": inp,
            "output_tokens": out,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def message_sse(model: str, inp: int = USAGE_IN, out: int = USAGE_OUT, end: bool = True) -> bytes:
    start = message_json(model, inp, 1)
    start["content"] = []
    start["stop_reason"] = None
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
    ]
    if end:
        events += [
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": out},
            },
            {"type": "message_stop"},
        ]
    return _sse([(e["type"], e) for e in events])


Handler = Callable[[httpx.Request, dict[str, Any]], httpx.Response]


class Provider:
    """The fake API: records every request, answers like the real service."""

    def __init__(self, *, stream_usage: bool = True) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[dict[str, Any]] = []
        self.fail_with: list[int] = []  # status codes for the next requests, in order
        self.always_fail: int | None = None
        self.stream_usage = stream_usage
        self.message_stream_ends = True
        self.lock = threading.Lock()

    # -- answers ----------------------------------------------------------------------------

    def answer(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        with self.lock:
            self.requests.append(request)
            self.bodies.append(body)
            status = self.fail_with.pop(0) if self.fail_with else self.always_fail
        if status is not None:
            return httpx.Response(
                status,
                json={"error": {"message": "upstream overloaded", "type": "server_error"}},
                headers={"retry-after-ms": "1"},
            )
        path = request.url.path
        model = body.get("model", "gpt-4o-mini")
        sse = {"content-type": "text/event-stream"}
        if path.endswith("/chat/completions"):
            if body.get("stream"):
                include = (body.get("stream_options") or {}).get("include_usage", False)
                return httpx.Response(200, content=chat_sse(model, include), headers=sse)
            return httpx.Response(200, json=chat_json(model))
        if path.endswith("/responses"):
            if body.get("stream"):
                return httpx.Response(200, content=responses_sse(model), headers=sse)
            return httpx.Response(200, json=responses_json(model))
        if path.endswith("/embeddings"):
            return httpx.Response(200, json=embeddings_json(model))
        if path.endswith("/v1/messages/count_tokens"):
            return httpx.Response(200, json={"input_tokens": USAGE_IN})
        if path.endswith("/v1/messages"):
            if body.get("stream"):
                content = message_sse(model, end=self.message_stream_ends)
                return httpx.Response(200, content=content, headers=sse)
            return httpx.Response(200, json=message_json(model))
        if path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": []})
        return httpx.Response(404, json={"error": {"message": f"no route {path}"}})

    async def aanswer(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)  # let concurrent calls interleave like real I/O
        await request.aread()
        response = self.answer(request)
        await asyncio.sleep(0)
        return response

    @property
    def sent(self) -> int:
        return len(self.requests)

    # -- clients ----------------------------------------------------------------------------

    def openai(self, max_retries: int = 0) -> openai.OpenAI:
        http = httpx.Client(transport=httpx.MockTransport(self.answer))
        return openai.OpenAI(api_key="test", http_client=http, max_retries=max_retries)

    def async_openai(self, max_retries: int = 0) -> openai.AsyncOpenAI:
        http = httpx.AsyncClient(transport=httpx.MockTransport(self.aanswer))
        return openai.AsyncOpenAI(api_key="test", http_client=http, max_retries=max_retries)

    def anthropic(self, max_retries: int = 0, **kwargs: Any) -> anthropic.Anthropic:
        http = httpx.Client(transport=httpx.MockTransport(self.answer))
        return anthropic.Anthropic(
            api_key="test", http_client=http, max_retries=max_retries, **kwargs
        )

    def async_anthropic(self, max_retries: int = 0, **kwargs: Any) -> anthropic.AsyncAnthropic:
        http = httpx.AsyncClient(transport=httpx.MockTransport(self.aanswer))
        return anthropic.AsyncAnthropic(
            api_key="test", http_client=http, max_retries=max_retries, **kwargs
        )


# -- the SDK's request-making surface, for the "no silent gap" tests ------------------------


def resource_surface(package: str) -> dict[str, set[str]]:
    """Every resource class of an SDK -> its public methods (sync and async merged).

    Keys are `module.Class` with the `Async` prefix removed, so a method the async client
    gains without the sync one is seen too.
    """
    import importlib
    import inspect
    import pkgutil

    resources = importlib.import_module(f"{package}.resources")
    base = importlib.import_module(f"{package}._resource")
    bases = (base.SyncAPIResource, base.AsyncAPIResource)
    surface: dict[str, set[str]] = {}
    for info in pkgutil.walk_packages(resources.__path__, resources.__name__ + "."):
        module = importlib.import_module(info.name)
        for name, cls in vars(module).items():
            if not (inspect.isclass(cls) and issubclass(cls, bases)) or cls in bases:
                continue
            if cls.__module__ != module.__name__:
                continue
            key = f"{module.__name__}.{name[5:] if name.startswith('Async') else name}"
            methods = {
                n for n, v in vars(cls).items() if not n.startswith("_") and inspect.isfunction(v)
            }
            surface.setdefault(key, set()).update(methods)
    return surface


def surface_gaps(
    package: str,
    generation: dict[str, dict[str, str]],
    out_of_scope: dict[str, tuple[str, str]],
) -> list[str]:
    """What the installed SDK has that the tables do not account for (empty: no gap).

    `generation`: classes that call models, every public method listed with "charged" or the
    reason it is not. `out_of_scope`: module prefixes -> (reason, the method names seen under
    them); a new class outside every prefix, or a new method name under one, is a gap.
    """
    gaps: list[str] = []
    for cls, methods in sorted(resource_surface(package).items()):
        if cls in generation:
            listed = set(generation[cls])
            for m in sorted(methods - listed):
                gaps.append(f"{cls}.{m}: new method on a generation resource")
            for m in sorted(listed - methods):
                gaps.append(f"{cls}.{m}: listed but gone from the SDK")
            continue
        prefix = next((p for p in out_of_scope if cls == p or cls.startswith(p + ".")), None)
        if prefix is None:
            gaps.append(f"{cls} {sorted(methods)}: new resource class, not classified")
            continue
        known = set(out_of_scope[prefix][1].split())
        for m in sorted(methods - known):
            gaps.append(f"{cls}.{m}: new method under out-of-scope {prefix!r}")
    return gaps
