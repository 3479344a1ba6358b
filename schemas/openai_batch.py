"""OpenAI Batch result lines as typed models, the shape tools that read OpenAI batch results expect
(vLLM's `BatchRequestOutput` is the model followed): one line per request, `response` or `error`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TopLogprob(_Line):
    token: str
    logprob: float
    bytes: list[int] | None = Field(default=None, description="The token's UTF-8 bytes.")


class TokenLogprob(_Line):
    token: str = Field(description="The generated token's text.")
    logprob: float = Field(description="The log probability of the generated token.")
    bytes: list[int] | None = Field(default=None, description="The token's UTF-8 bytes.")
    top_logprobs: list[TopLogprob] = Field(default_factory=list, description="The most likely tokens at this step.")


class ChoiceLogprobs(_Line):
    """A chat completion choice's logprobs."""

    content: list[TokenLogprob] = Field(description="One entry per generated token, in order.")


class TextLogprobs(_Line):
    """A (legacy) text completion choice's logprobs."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int]


class ChatMessage(_Line):
    role: Literal["assistant"] = "assistant"
    content: str = Field(description="The completion.")


class ChatChoice(_Line):
    index: int = Field(description="The sample's index (0 to n-1).")
    finish_reason: str = Field(description="stop or length.")
    message: ChatMessage
    logprobs: ChoiceLogprobs | None = None


class TextChoice(_Line):
    index: int = Field(description="The sample's index (0 to n-1).")
    finish_reason: str = Field(description="stop or length.")
    text: str = Field(description="The completion.")
    logprobs: TextLogprobs | None = None


class Usage(_Line):
    prompt_tokens: int
    completion_tokens: int = Field(description="Over every choice of the request.")
    total_tokens: int


class CompletionBody(_Line):
    id: str
    object: Literal["chat.completion", "text_completion"]
    created: int = Field(description="Unix time the result was written.")
    model: str
    choices: list[ChatChoice] | list[TextChoice]
    usage: Usage


class BatchResponse(_Line):
    status_code: int = 200
    request_id: str
    body: CompletionBody


class BatchError(_Line):
    code: str = Field(description="herd_<stage>_error: the stage (read, render, generate) that failed.")
    message: str = Field(description="Why, for a person.")


class BatchResultLine(_Line):
    """One request's answer: `response` when it generated, else `error`."""

    id: str = Field(description="batch_req_<digest>: stable for the same request.")
    custom_id: str = Field(description="The request's custom_id (or herd's row id).")
    response: BatchResponse | None = None
    error: BatchError | None = None
