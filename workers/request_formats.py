"""Input files made of API requests rather than plain rows: OpenAI Batch and the hosted Llama 2 body.

Each request becomes one or more rows with a prompt source (text or messages) and the sampling
parameters the request asked for, so existing batch files run on herd unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.job import MAX_TOP_LOGPROBS
from schemas.openai_batch import ResultKind

OPENAI_CHAT_URL = "/v1/chat/completions"
OPENAI_COMPLETIONS_URL = "/v1/completions"
OPENAI_RESPONSES_URL = "/v1/responses"
OPENAI_URLS = (OPENAI_CHAT_URL, OPENAI_COMPLETIONS_URL, OPENAI_RESPONSES_URL)


class RequestError(ValueError):
    """The request line is not a valid request of its format; the message names the field."""


@dataclass
class PromptSource:
    """What a prompt is built from: one user text, or a list of messages."""

    text: str | None = None
    messages: list[dict[str, Any]] | None = None
    whole_prompt: bool = False  # OpenAI /v1/completions: the text is the entire prompt, no chat format
    response_object: bool = False  # OpenAI /v1/responses: answered as a Response, not a chat completion

    @property
    def result_kind(self) -> ResultKind:
        """The OpenAI object its answer is written as, in the openai output format."""
        if self.response_object:
            return "response"
        return "chat" if self.messages is not None or not self.whole_prompt else "completion"


@dataclass
class ParsedRequest:
    row_id: str | None  # None: the caller makes a positional id
    source: PromptSource
    overrides: dict[str, Any] = field(default_factory=dict)  # sampling fields, herd's names
    model: str | None = None  # the model the request names: the job's (by any name) or one of its adapters


# Text content parts: chat's, and the Responses API's (its input, and earlier answers in a history).
_TEXT_PARTS = ("text", "input_text", "output_text")


def content_text(content: Any, where: str) -> str:
    """A message's content as text: a string, or OpenAI's text parts joined (no other kind of part)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text is supported
        texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") in _TEXT_PARTS]
        if len(texts) == len(content) and all(isinstance(text, str) for text in texts):
            return "".join(texts)
    raise RequestError(f"{where}: expected text content (a string or text parts)")


# Every field of a request body is honoured, or refused for its line: none is dropped silently (a
# `tools` request answered as plain chat would be a wrong answer, not a degraded one).
_SHARED_FIELDS = {
    "model",
    "temperature",
    "top_p",
    # No effect on the generated text; accepted as the API accepts them.
    "user",
    "metadata",
    "store",
    "stream",
    "stream_options",  # only with stream, which a batch request cannot use
    "service_tier",  # the hosted API's pricing and routing
    "parallel_tool_calls",  # only with tools, which are refused
}
_COMPLETION_FIELDS = {
    "max_tokens",
    "n",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "response_format",
}
_BODY_FIELDS = {
    OPENAI_CHAT_URL: _COMPLETION_FIELDS | {"messages", "logprobs", "top_logprobs", "max_completion_tokens"},
    OPENAI_COMPLETIONS_URL: _COMPLETION_FIELDS | {"prompt", "logprobs", "echo"},
    OPENAI_RESPONSES_URL: {"input", "instructions", "max_output_tokens", "text", "include", "top_logprobs"},
}
# The one extra output of a Response herd can add: each output text's token logprobs.
RESPONSES_LOGPROBS = "message.output_text.logprobs"
# Fields accepted with the value that asks for what herd does anyway.
_DEFAULT_VALUES = {"modalities": ["text"], "tool_choice": "none", "truncation": "disabled", "include": []}
_REFUSED_WHY = {
    "tools": "tool calls are not supported",
    "tool_choice": "tool calls are not supported",
    "functions": "function calls are not supported",
    "function_call": "function calls are not supported",
    "suffix": "insertion (suffix) is not supported",
    "best_of": "best_of is not supported; use n",
    "audio": "only text output is supported",
    "modalities": "only text output is supported",
    "truncation": "only truncation: disabled is supported (the job's prompt.on_overflow decides)",
    "reasoning": "reasoning options are not supported",
    "previous_response_id": "a batch request cannot continue a stored response; send the whole input",
    "conversation": "a batch request cannot continue a stored conversation; send the whole input",
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


def _structured(response_format: Any, where: str, *, schema_nested: bool) -> dict[str, Any] | None:
    """herd's `structured` sampling for an OpenAI response format ({"type": ...}); None for text or
    none given. Chat's json_schema holds the schema under `json_schema` (`schema_nested`), the
    Responses API's beside its type."""
    if not response_format:
        return None
    if not isinstance(response_format, dict):
        raise RequestError(f'{where}: expected an object such as {{"type": "json_object"}}')
    kind = response_format.get("type")
    if kind == "json_schema":
        holder = (response_format.get("json_schema") or {}) if schema_nested else response_format
        if not isinstance(holder.get("schema"), dict):
            field = f"{where}.json_schema.schema" if schema_nested else f"{where}.schema"
            raise RequestError(f"{field}: expected a JSON schema object")
        return {"json_schema": holder["schema"]}
    if kind == "json_object":
        return {"json_object": True}
    if kind != "text":
        raise RequestError(f"{where}.type: expected text, json_object or json_schema, got {kind!r}")
    return None


def _responses_overrides(body: dict[str, Any]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if body.get("max_output_tokens") is not None:
        overrides["max_new_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            overrides[name] = body[name]
    text = body.get("text") or {}
    if not isinstance(text, dict):
        raise RequestError('body.text: expected an object such as {"format": {"type": "json_object"}}')
    unknown = sorted(name for name, value in text.items() if name != "format" and value is not None)
    if unknown:
        raise RequestError(f"body.text.{unknown[0]}: not a field herd honours; the request is refused")
    structured = _structured(text.get("format"), "body.text.format", schema_nested=False)
    if structured is not None:
        overrides["structured"] = structured
    include = body.get("include") or []
    if not isinstance(include, list):
        raise RequestError(f'body.include: expected a list such as ["{RESPONSES_LOGPROBS}"]')
    for index, item in enumerate(include):
        if item != RESPONSES_LOGPROBS:
            raise RequestError(f"body.include[{index}]: only {RESPONSES_LOGPROBS!r} is supported, got {item!r}")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None and (type(top_logprobs) is not int or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS):
        raise RequestError(f"body.top_logprobs: expected an integer from 0 to {MAX_TOP_LOGPROBS}, got {top_logprobs!r}")
    # As the hosted API does, a Response lists logprobs only when `include` asks; top_logprobs alone
    # changes nothing.
    if include:
        overrides["logprobs"] = True
        if top_logprobs is not None:
            overrides["top_logprobs"] = top_logprobs
    return overrides


def _openai_overrides(body: dict[str, Any], url: str) -> dict[str, Any]:
    _check_fields(body, url)
    if url == OPENAI_RESPONSES_URL:
        return _responses_overrides(body)
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
    structured = _structured(body.get("response_format"), "body.response_format", schema_nested=True)
    if structured is not None:
        overrides["structured"] = structured
    return overrides


def _chat_messages(messages: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"{where}: expected a non-empty list")
    parsed = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"{where}[{index}]: expected an object")
        if message.get("type", "message") != "message":  # Responses input items: tool calls and their outputs
            raise RequestError(f"{where}[{index}].type: only messages are supported, got {message.get('type')!r}")
        role = message.get("role")
        role = "system" if role == "developer" else role
        parsed.append({"role": role, "content": content_text(message.get("content"), f"{where}[{index}]")})
    return parsed


def _responses_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The Responses API's `input` (a text, or a list of messages) after its `instructions` (the
    system prompt), as chat messages."""
    given = body.get("input")
    if isinstance(given, str):
        messages = [{"role": "user", "content": given}]
    elif isinstance(given, list):
        messages = _chat_messages(given, "body.input")
    else:
        raise RequestError("body.input: expected a string or a non-empty list of messages")
    instructions = body.get("instructions")
    if instructions is None:
        return messages
    if not isinstance(instructions, str):
        raise RequestError("body.instructions: expected a string")
    return [{"role": "system", "content": instructions}, *messages]


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
        source = PromptSource(messages=_chat_messages(body.get("messages"), "body.messages"))
    elif url == OPENAI_COMPLETIONS_URL:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError("body.prompt: expected a string (one prompt per request)")
        source = PromptSource(text=prompt, whole_prompt=True)
    elif url == OPENAI_RESPONSES_URL:
        source = PromptSource(messages=_responses_messages(body), response_object=True)
    else:
        raise RequestError(f"url: expected one of {', '.join(OPENAI_URLS)}, got {url!r}")
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
