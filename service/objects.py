"""The OpenAI objects the service answers with (the shapes of the OpenAI Python SDK's types), and the
records it keeps: a file or a batch with its owner."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
TERMINAL = frozenset({"failed", "completed", "expired", "cancelled"})


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str = Field(description="As the client gave it: metadata, never a path.")
    purpose: Literal["batch", "batch_output"]
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = Field(default=None, description="1-based line of the input file.")


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    usage: BatchUsage | None = None
    metadata: dict[str, str] | None = None


class FileRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: str
    file: FileObject
    lines: int = Field(description="Lines holding a request (blank lines are not counted).")


class BatchRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: str
    batch: Batch
    served_model: str | None = Field(default=None, description="The served model answering it, once validated.")
    output_expires_after_s: int | None = Field(
        default=None, description="Its output and error files expire this long after they are written."
    )


class ExpiresAfter(BaseModel):
    """OpenAI's expiration policy of a file: gone this many seconds after it was made."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"] = Field(description="The time the policy counts from: the file's creation.")
    seconds: int = Field(ge=3600, le=2_592_000, description="From 1 hour to 30 days, as OpenAI's.")


class CreateBatch(BaseModel):
    """The body of POST /v1/batches."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        default=None, max_length=16, description="Up to 16 pairs, keys of up to 64 characters, values 512: OpenAI's."
    )
    output_expires_after: ExpiresAfter | None = Field(
        default=None, description="When the batch's output and error files expire, counted from their creation."
    )
