"""Turns an input row into what the engine is asked: prompt token ids (raw text, the Llama 2 chat
format, or the model's template), and the sampling and adapter the row's request chose.

The ids go to vLLM as they are (token prompts), so what is counted, checked against the context and
generated from is exactly what was rendered here; nothing is re-tokenized from text. `plan` and the
replicas both render through here, so a plan's checks and bounds are the run's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol

from jinja2 import StrictUndefined, Template, TemplateError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ValidationError

from schemas.job import InputSpec, JobSpec, PromptSpec, SamplingSpec
from workers.request_formats import PromptSource, RequestError, content_text

# The reference chat_completion's delimiters (llama/generation.py of Meta's Llama 2 repository).
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")


class RenderError(ValueError):
    """This row cannot become a prompt; the message says which field and why."""


class Tokenizer(Protocol):
    bos_token_id: int | None
    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...


def llama2_chat_token_ids(dialog: Sequence[dict[str, str]], tokenizer: Tokenizer) -> list[int]:
    """The reference algorithm: system folded into the first user turn, BOS/EOS ids around each
    completed (user, assistant) pair, the final user turn with BOS and no EOS."""
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise RenderError("llama2-chat needs a tokenizer with BOS and EOS tokens")
    if any(tag in message["content"] for message in dialog for tag in SPECIAL_TAGS):
        raise RenderError(f"messages: special tags {', '.join(SPECIAL_TAGS)} are not allowed as part of the prompt")
    messages = list(dialog)
    roles = [message["role"] for message in messages]
    if "system" in roles[1:]:
        # Two system messages are common in requests made for other models (a Responses request's
        # instructions before a developer message): said as such, not as the folded roles below.
        raise RenderError(
            f"messages: Llama 2's chat format has one system prompt, the first message; got roles {roles}: "
            "join the system messages into one"
        )
    if messages and messages[0]["role"] == "system":
        if len(messages) < 2:
            raise RenderError("messages: a system message must be followed by a user message")
        messages = [
            {
                "role": messages[1]["role"],
                "content": B_SYS + messages[0]["content"] + E_SYS + messages[1]["content"],
            },
            *messages[2:],
        ]
    if not messages:
        raise RenderError("messages: the dialog is empty")
    expected = ["user" if index % 2 == 0 else "assistant" for index in range(len(messages))]
    roles = [message["role"] for message in messages]
    if roles != expected or roles[-1] != "user":
        raise RenderError(
            "messages: roles must be an optional system, then user/assistant alternating, ending "
            f"with user; got {roles}"
        )
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids: list[int] = []
    for prompt, answer in zip(messages[::2], messages[1::2], strict=False):
        text = f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} "
        ids += [bos, *tokenizer.encode(text, add_special_tokens=False), eos]
    last = f"{B_INST} {messages[-1]['content'].strip()} {E_INST}"
    ids += [bos, *tokenizer.encode(last, add_special_tokens=False)]
    return ids


# ShareGPT's turns ({from, value}; also SlimOrca's and OpenHermes's), as the roles they mean.
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def _validated_messages(value: Any, column: str) -> list[dict[str, str]]:
    if isinstance(value, str) and value.lstrip().startswith("["):
        # A conversation kept as JSON text: a CSV's field, a database's or Spark's string column.
        try:
            value = json.loads(value)
        except ValueError as error:
            raise RenderError(f"{column}: the text is not the JSON of a list of {{role, content}}: {error}") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise RenderError(
            f"{column}: expected a non-empty list of {{role, content}} (or its JSON text), got {_describe(value)}"
        )
    messages = []
    for index, message in enumerate(value):
        if isinstance(message, dict) and message.get("role") is None and message.get("from") is not None:
            role = SHAREGPT_ROLES.get(message["from"])
            if role is None:
                raise RenderError(
                    f"{column}[{index}].from: expected {', '.join(SHAREGPT_ROLES)}, got {message['from']!r}"
                )
            if not isinstance(message.get("value"), str):
                raise RenderError(f"{column}[{index}].value: expected text, got {_describe(message.get('value'))}")
            message = {"role": role, "content": message["value"]}
        if isinstance(message, dict) and isinstance(message.get("content"), (list, tuple)):
            # OpenAI's content parts, as newer chat datasets keep them: their text.
            try:
                message = {**message, "content": content_text(list(message["content"]), f"{column}[{index}].content")}
            except RequestError as error:
                raise RenderError(str(error)) from None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise RenderError(f"{column}[{index}]: expected {{role, content}} with text content")
        if message.get("role") not in ("system", "user", "assistant"):
            raise RenderError(
                f"{column}[{index}].role: expected system, user or assistant, got {message.get('role')!r}"
            )
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _conversation(value: Any, column: str, prompt: PromptSpec) -> list[dict[str, str]]:
    """A row's conversation, to be answered: a chat dataset's rows end with their answer, which
    prompt.regenerate_final_answer replaces; an answer after the answer is never what was meant."""
    messages = _validated_messages(value, column)
    if messages[-1]["role"] != "assistant":
        return messages
    if not any(message["role"] == "user" for message in messages):
        raise RenderError(f"{column}: the conversation has no user turn")
    if not prompt.regenerate_final_answer:
        raise RenderError(
            f"{column}: the conversation ends with an assistant turn (its answer); set "
            "prompt.regenerate_final_answer: true to generate a new answer in its place"
        )
    return messages[:-1]


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RenderError(f"{where}: expected text, got {_describe(value)}")
    if not value.strip():
        raise RenderError(f"{where}: the prompt is empty")
    return value


@lru_cache(maxsize=16)
def _compiled_template(source: str) -> Template:
    # Sandboxed: a template from a job file cannot reach Python internals.
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False).from_string(source)


def source_from_row(row: dict[str, Any], input_spec: InputSpec, prompt: PromptSpec) -> PromptSource:
    """The prompt source of a plain input row: its prompt column, its messages, or the template."""
    if prompt.template is not None:
        for name in prompt.template_columns():
            if isinstance(row.get(name), bytes):  # Jinja would write b'...' into the prompt
                raise RenderError(f"{name}: expected text, got {_describe(row[name])}")
        try:
            # The row as one mapping, not keywords: a column may be called `self`.
            text = _compiled_template(prompt.template).render(row)
        except UndefinedError as error:
            raise RenderError(f"prompt.template: {error}; the row has columns {sorted(row)}") from None
        except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError, RecursionError) as error:
            # What an expression can raise for one row's values, e.g. {{ 10 // n }} with n = 0.
            raise RenderError(f"prompt.template: {type(error).__name__}: {error}") from None
        return PromptSource(text=_text(text, "prompt.template"))
    if input_spec.messages_column is not None:
        column = input_spec.messages_column
        return PromptSource(messages=_conversation(_field(row, column), column, prompt))
    return PromptSource(text=_text(_field(row, input_spec.prompt_column), input_spec.prompt_column))


def _field(row: dict[str, Any], column: str) -> Any:
    """The row's value of `column`; a JSONL line may lack the field altogether (not the same as null)."""
    if column not in row:
        fields = sorted(row)
        listed = ", ".join(fields[:20]) + (f" and {len(fields) - 20} more" if len(fields) > 20 else "")
        raise RenderError(f"{column}: the row has no such field (its fields: {listed or 'none'})")
    return row[column]


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bytes):  # binary text columns are read as text where their bytes are UTF-8
        return f"bytes that are not UTF-8 text {str(value)[:40]}"
    return f"{type(value).__name__} {str(value)[:40]!r}"


def row_sampling(job: JobSpec, overrides: dict[str, Any]) -> SamplingSpec:
    """The sampling a row is generated with: the job's, with what its request asked for (an OpenAI
    batch line's max_tokens, n, temperature, ...)."""
    if not overrides:
        return job.sampling
    try:
        return SamplingSpec.model_validate({**job.sampling.model_dump(), **overrides})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors())
        raise RenderError(f"request parameters: {problems}") from None


def row_adapter(job: JobSpec, values: dict[str, Any], requested_model: str | None) -> str | None:
    """The LoRA adapter (of model.adapters) that answers a row: the one its adapter_column names, or
    the one a request's model names; None for the base model."""
    names = job.model.adapter_names()
    column = job.input.adapter_column
    if column is None:
        # A request names the job's model by whatever name its file uses, or one of its adapters.
        return requested_model if requested_model in names else None
    value = values.get(column)
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    if value not in names:
        raise RenderError(f"{column}: {value!r} is not one of model.adapters ({', '.join(names)})")
    return value


def render_token_ids(source: PromptSource, prompt: PromptSpec, tokenizer: Tokenizer) -> list[int]:
    if source.messages is None and (prompt.format == "raw" or source.whole_prompt):
        return tokenizer.encode(_text(source.text, "prompt"), add_special_tokens=True)
    if source.messages is not None:
        messages = _validated_messages(source.messages, "messages")
    else:
        messages = [{"role": "user", "content": _text(source.text, "prompt")}]
    if prompt.system_prompt is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": prompt.system_prompt})
    if prompt.format == "llama2-chat":
        return llama2_chat_token_ids(messages, tokenizer)
    try:
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except Exception as error:  # a template raises whatever its author chose
        raise RenderError(f"the model's chat template refused the messages: {error}") from None
    ids = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
    return list(ids)


def fit_to_context(ids: list[int], max_new_tokens: int, max_model_len: int, prompt: PromptSpec) -> list[int]:
    """Prompt + generation must fit the context: an error, or (if the job asks) keep the prompt's end."""
    room = max_model_len - max_new_tokens
    if room <= 0:
        # The job's own max_new_tokens is checked against the context up front; a request's own
        # (an OpenAI line's max_tokens) can ask for all of it, and truncating would send no prompt.
        raise RenderError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in max_model_len {max_model_len}"
        )
    if len(ids) <= room:
        return ids
    if prompt.on_overflow == "truncate":
        return ids[len(ids) - room :]
    raise RenderError(
        f"prompt is {len(ids)} tokens; with max_new_tokens {max_new_tokens} it exceeds "
        f"max_model_len {max_model_len} (set prompt.on_overflow: truncate to keep its last {room} tokens)"
    )
