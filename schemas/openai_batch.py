"""OpenAI Batch result lines as typed models, the shape tools that read OpenAI batch results expect
(vLLM's `BatchRequestOutput` is the model followed): one line per request, `response` or `error`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The OpenAI object a request is answered as: /v1/chat/completions, /v1/completions, /v1/responses.
ResultKind = Literal["chat", "completion", "response"]


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


class OutputText(_Line):
    type: Literal["output_text"] = "output_text"
    text: str = Field(description="The completion.")
    annotations: list[dict] = Field(default_factory=list, description="Always empty: no tools cite anything.")
    logprobs: list[TokenLogprob] | None = Field(
        default=None,
        description='Each generated token, when the request asked (include "message.output_text.logprobs").',
    )


class OutputMessage(_Line):
    """One sample of a /v1/responses request (a request has one unless the job's sampling.n says more)."""

    type: Literal["message"] = "message"
    id: str
    status: Literal["completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class IncompleteDetails(_Line):
    reason: Literal["max_output_tokens"]


class InputTokensDetails(_Line):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(_Line):
    reasoning_tokens: int = 0


class ResponseUsage(_Line):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = Field(description="Over every output message of the request.")
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseBody(_Line):
    """A /v1/responses request's answer: OpenAI's Response object, with text output only."""

    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(description="Unix time the result was written.")
    status: Literal["completed", "incomplete"] = Field(description="incomplete: max_output_tokens was reached.")
    incomplete_details: IncompleteDetails | None = None
    error: None = None
    model: str
    output: list[OutputMessage]
    parallel_tool_calls: bool = False
    tool_choice: Literal["none"] = "none"
    tools: list[dict] = Field(default_factory=list)
    usage: ResponseUsage


class BatchResponse(_Line):
    status_code: int = 200
    request_id: str
    body: CompletionBody | ResponseBody = Field(discriminator="object")


class BatchError(_Line):
    code: str = Field(description="herd_<stage>_error: the stage (read, render, generate) that failed.")
    message: str = Field(description="Why, for a person.")


class BatchResultLine(_Line):
    """One request's answer: `response` when it generated, else `error`."""

    id: str = Field(description="batch_req_<digest>: stable for the same request.")
    custom_id: str = Field(description="The request's custom_id (or herd's row id).")
    response: BatchResponse | None = None
    error: BatchError | None = None
