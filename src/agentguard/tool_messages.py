"""Tool-calling messages for plain-Python agents: the schema you send, the error you send back.

```python
schema = ag.tool_schema(escalate_to_human, style="openai")       # tools=[schema]
try:
    result = escalate_to_human(**json.loads(call.function.arguments))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": str(result)})
except ag.ToolArgumentError as err:                                # the model can fix this
    messages.append(ag.tool_error_message(err, tool_call_id=call.id, style="openai"))
```

`CorrectionsExhausted` is not sent to the model: it ends the run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter
from typing_extensions import NotRequired, TypedDict

from ._argcheck import caller_namespace, resolve_hints
from .errors import ConfigurationError, CorrectionsExhausted, ToolArgumentError

__all__ = ["tool_error_message", "tool_schema", "Style"]

Style = Literal["openai", "openai-responses", "anthropic"]
_STYLES = ("openai", "openai-responses", "anthropic")


def _check_style(style: str) -> None:
    if style not in _STYLES:
        raise ConfigurationError(
            f"style={style!r} is not a known tool-calling style; expected one of "
            f"{', '.join(repr(s) for s in _STYLES)}."
        )


def tool_error_message(
    err: ToolArgumentError, *, tool_call_id: str, style: Style = "openai"
) -> dict[str, Any]:
    """The tool-result message that hands `err.model_message` back to the model.

    - `openai` (Chat Completions): `{"role": "tool", "tool_call_id": ..., "content": ...}`
    - `openai-responses`: `{"type": "function_call_output", "call_id": ..., "output": ...}`
    - `anthropic`: a `tool_result` content block with `is_error: True`; put it in the
      `content` list of the next `{"role": "user", ...}` message.

    Raises `ConfigurationError` for `CorrectionsExhausted` (not meant for the model: stop the
    run) or any other non-`ToolArgumentError`, and for an unknown style.
    """
    if isinstance(err, CorrectionsExhausted) or not isinstance(err, ToolArgumentError):
        raise ConfigurationError(
            f"tool_error_message() takes a ToolArgumentError, got {type(err).__name__}. "
            f"CorrectionsExhausted is a hard failure: stop the run and report it instead of "
            f"sending it to the model."
        )
    _check_style(style)
    text = err.model_message
    if style == "anthropic":
        return {
            "type": "tool_result",
            "tool_use_id": tool_call_id,
            "content": text,
            "is_error": True,
        }
    if style == "openai-responses":
        return {"type": "function_call_output", "call_id": tool_call_id, "output": text}
    return {"role": "tool", "tool_call_id": tool_call_id, "content": text}


def _strip_titles(schema: dict[str, Any]) -> dict[str, Any]:
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        if isinstance(prop, dict):
            prop.pop("title", None)
    return schema


def tool_schema(
    fn: Callable[..., Any],
    *,
    style: Style = "openai",
    name: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """The tool definition of `fn` for a provider's `tools=[...]`, from its signature.

    Parameters with validators carry the validators' descriptions (and `format`, bounds) in
    their JSON schema, so the model reads what `@ag.tool_call` will check. The name is the
    `@ag.tool_call` name (else the function's), the description its docstring. `*args` and
    `**kwargs` are skipped; unannotated parameters accept any JSON value.
    Raises `ConfigurationError` for an unknown style or an annotation that has no JSON schema.
    """
    _check_style(style)
    meta = getattr(fn, "__agentguard__", None)
    tool = name or (meta.get("name") if isinstance(meta, dict) else None) or fn.__name__
    target = inspect.unwrap(fn)
    try:
        hints = resolve_hints(fn, None)
    except NameError:
        hints = resolve_hints(fn, caller_namespace())
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name, Any)
        fields[param.name] = annotation if param.default is param.empty else NotRequired[annotation]
    arguments = TypedDict(f"{tool}_arguments", fields)  # type: ignore[misc]
    arguments.__pydantic_config__ = ConfigDict(arbitrary_types_allowed=True)  # type: ignore[attr-defined]
    try:
        parameters = _strip_titles(TypeAdapter(arguments).json_schema())
    except Exception as exc:  # re-raised: pydantic has several schema error types
        raise ConfigurationError(
            f"tool_schema({tool!r}): an argument's type has no JSON schema ({exc}). Fix: "
            f"annotate the tool's arguments with JSON-compatible types."
        ) from exc
    text = description if description is not None else (inspect.getdoc(target) or "")
    text = text.split("\n\n")[0].strip()
    if style == "anthropic":
        return {"name": tool, "description": text, "input_schema": parameters}
    if style == "openai-responses":
        return {"type": "function", "name": tool, "description": text, "parameters": parameters}
    return {
        "type": "function",
        "function": {"name": tool, "description": text, "parameters": parameters},
    }
