"""Input files made of API requests rather than plain rows: OpenAI Batch and the hosted Llama 2 body.

Each request becomes one or more rows with a prompt source (text or messages) and the sampling
parameters the request asked for, so existing batch files run on herd unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OPENAI_CHAT_URL = "/v1/chat/completions"
OPENAI_COMPLETIONS_URL = "/v1/completions"


class RequestError(ValueError):
    """The request line is not a valid request of its format; the message names the field."""


@dataclass
class PromptSource:
    """What a prompt is built from: one user text, or a list of messages."""

    text: str | None = None
    messages: list[dict[str, Any]] | None = None
    whole_prompt: bool = False  # OpenAI /v1/completions: the text is the entire prompt, no chat format


@dataclass
class ParsedRequest:
    row_id: str | None  # None: the caller makes a positional id
    source: PromptSource
    overrides: dict[str, Any] = field(default_factory=dict)  # sampling fields, herd's names
    model: str | None = None  # the model the request names: the job's (by any name) or one of its adapters


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text is supported
        texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        if len(texts) == len(content) and all(isinstance(text, str) for text in texts):
            return "".join(texts)
    raise RequestError(f"{where}: expected text content (a string or text parts)")


# Every field of a request body is honoured, or refused for its line: none is dropped silently (a
# `tools` request answered as plain chat would be a wrong answer, not a degraded one).
_BODY_FIELDS = {
    OPENAI_CHAT_URL: {"messages", "logprobs", "top_logprobs", "max_completion_tokens"},
    OPENAI_COMPLETIONS_URL: {"prompt", "logprobs", "echo"},
}
_SHARED_FIELDS = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "response_format",
    # No effect on the generated text; accepted as the API accepts them.
    "user",
    "metadata",
    "store",
    "stream",
    "stream_options",  # only with stream, which a batch request cannot use
    "service_tier",  # the hosted API's pricing and routing
    "parallel_tool_calls",  # only with tools, which are refused
}
# Fields accepted with the value that asks for what herd does anyway.
_DEFAULT_VALUES = {"modalities": ["text"], "tool_choice": "none"}
_REFUSED_WHY = {
    "tools": "tool calls are not supported",
    "tool_choice": "tool calls are not supported",
    "functions": "function calls are not supported",
    "function_call": "function calls are not supported",
    "suffix": "insertion (suffix) is not supported",
    "best_of": "best_of is not supported; use n",
    "audio": "only text output is supported",
    "modalities": "only text output is supported",
}


def _check_fields(body: dict[str, Any], url: str) -> None:
    for name, value in body.items():
        # null is the API's "not given" (clients that serialize every field send it).
        if value is None or name in _SHARED_FIELDS or name in _BODY_FIELDS[url]:
            continue
        if name in _DEFAULT_VALUES and value == _DEFAULT_VALUES[name]:
            continue
        why = _REFUSED_WHY.get(name, "not a field herd honours for this endpoint")
        raise RequestError(f"body.{name}: {why}; the request is refused rather than answered without it")
    if body.get("stream"):
        raise RequestError("body.stream: a batch request cannot stream; remove it or set it to false")


def _openai_overrides(body: dict[str, Any], url: str) -> dict[str, Any]:
    _check_fields(body, url)
    overrides: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        overrides["max_new_tokens"] = max_tokens
    for name in ("temperature", "top_p", "n", "seed", "presence_penalty", "frequency_penalty", "logit_bias"):
        if body.get(name) is not None:
            overrides[name] = body[name]
    stop = body.get("stop")
    if stop is not None:
        overrides["stop"] = [stop] if isinstance(stop, str) else stop
    logprobs = body.get("logprobs")
    if url == OPENAI_COMPLETIONS_URL:
        # /v1/completions: logprobs is how many alternatives to list (0 to 5); echo prepends the prompt.
        if logprobs is not None:
            overrides["logprobs"], overrides["top_logprobs"] = True, logprobs
        if body.get("echo"):
            overrides["return_full_text"] = True
    else:
        if logprobs:
            overrides["logprobs"] = True
        if body.get("top_logprobs") is not None:
            overrides["top_logprobs"] = body["top_logprobs"]
    response_format = body.get("response_format") or {"type": "text"}
    if not isinstance(response_format, dict):
        raise RequestError('body.response_format: expected an object such as {"type": "json_object"}')
    kind = response_format.get("type")
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise RequestError("body.response_format.json_schema.schema: expected a JSON schema object")
        overrides["structured"] = {"json_schema": schema}
    elif kind == "json_object":
        overrides["structured"] = {"json_object": True}
    elif kind != "text":
        raise RequestError(f"body.response_format.type: expected text, json_object or json_schema, got {kind!r}")
    return overrides


def openai_batch_request(line: dict[str, Any]) -> ParsedRequest:
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise RequestError("custom_id: expected a non-empty string")
    if line.get("method", "POST") != "POST":
        raise RequestError(f"method: expected POST, got {line.get('method')!r}")
    body = line.get("body")
    if not isinstance(body, dict):
        raise RequestError("body: expected an object")
    url = line.get("url")
    if url == OPENAI_CHAT_URL:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("body.messages: expected a non-empty list")
        parsed = []
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise RequestError(f"body.messages[{index}]: expected an object")
            role = message.get("role")
            role = "system" if role == "developer" else role
            parsed.append({"role": role, "content": _content_text(message.get("content"), f"body.messages[{index}]")})
        source = PromptSource(messages=parsed)
    elif url == OPENAI_COMPLETIONS_URL:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError("body.prompt: expected a string (one prompt per request)")
        source = PromptSource(text=prompt, whole_prompt=True)
    else:
        raise RequestError(f"url: expected {OPENAI_CHAT_URL} or {OPENAI_COMPLETIONS_URL}, got {url!r}")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("body.model: expected a string")
    return ParsedRequest(custom_id, source, _openai_overrides(body, url), model)


# The hosted Llama 2 endpoint's parameter names are herd's own sampling names.
_HOSTED_PARAMETERS = ("temperature", "top_p", "top_k", "max_new_tokens", "do_sample", "return_full_text", "ignore_eos")


def llama2_hosted_requests(line: dict[str, Any]) -> list[ParsedRequest]:
    """{"input_data": {"input_string": [...], "parameters": {...}}}: one row per input string."""
    data = line.get("input_data")
    if not isinstance(data, dict):
        raise RequestError("input_data: expected an object")
    strings = data.get("input_string")
    if not isinstance(strings, list) or not strings:
        raise RequestError("input_data.input_string: expected a non-empty list of strings")
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError("input_data.parameters: expected an object")
    unknown = sorted(set(parameters) - set(_HOSTED_PARAMETERS))
    if unknown:
        raise RequestError(f"input_data.parameters: unknown {unknown}; allowed: {', '.join(_HOSTED_PARAMETERS)}")
    requests = []
    for index, text in enumerate(strings):
        if not isinstance(text, str):
            raise RequestError(f"input_data.input_string[{index}]: expected a string")
        requests.append(ParsedRequest(None, PromptSource(text=text), dict(parameters)))
    return requests


def requests_in_line(line: dict[str, Any], input_format: str) -> list[ParsedRequest]:
    if input_format == "openai-batch":
        return [openai_batch_request(line)]
    return llama2_hosted_requests(line)
