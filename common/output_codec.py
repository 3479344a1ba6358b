"""herd's output files, written and read in one place: data and error files in Parquet, JSONL and
OpenAI Batch result lines. Replicas write them; the driver (report, --retry-errors), the Python API
and whatever reads an output read them back through the same functions.

A file is never written for no rows: an empty JSON Lines file is one pyarrow's reader refuses.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from common.jsonl import decode_jsonl, encode_jsonl, json_text
from schemas.columns import ERROR_COLUMNS
from schemas.openai_batch import (
    BatchError,
    BatchResponse,
    BatchResultLine,
    ChatChoice,
    ChatMessage,
    ChoiceLogprobs,
    CompletionBody,
    IncompleteDetails,
    OutputMessage,
    OutputText,
    ResponseBody,
    ResponseUsage,
    ResultKind,
    TextChoice,
    TextLogprobs,
    TokenLogprob,
    Usage,
)

OutputFormat = Literal["parquet", "jsonl", "openai"]


def file_extension(output_format: OutputFormat) -> str:
    """OpenAI result lines are JSON Lines files."""
    return "jsonl" if output_format == "openai" else output_format


@dataclass
class RequestRows:
    """One request's output rows (one per sample, in sample order), for the OpenAI format."""

    custom_id: str
    rows: list[dict[str, Any]]
    kind: ResultKind


# herd's own columns have one type in every file; so do kept columns read from Parquet (their input
# type). Otherwise every shard's file would carry the types its own values suggest: a kept column with
# no value in a shard would be of Arrow's null type there, and pyarrow, DuckDB and Spark refuse a
# folder whose first file says null and another string; a decimal's precision would vary by shard.
DATA_COLUMN_TYPES: dict[str, pa.DataType] = {
    "id": pa.string(),
    "sample_index": pa.int64(),
    "completion": pa.string(),
    "finish_reason": pa.string(),
    "prompt_tokens": pa.int64(),
    "completion_tokens": pa.int64(),
    "model": pa.string(),
    "token_logprobs": pa.list_(pa.float64()),
    "structured_valid": pa.bool_(),
}
ERROR_COLUMN_TYPES: dict[str, pa.DataType] = {
    "id": pa.string(),
    "file": pa.string(),
    "row": pa.int64(),
    "stage": pa.string(),
    "reason": pa.string(),
}


def _column(values: list[Any], known_type: pa.DataType | None) -> pa.Array:
    if known_type is not None:
        try:
            return pa.array(values, type=known_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
            pass  # a type Python values cannot be turned back into: the values' own, as below
    try:
        column = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Mixed types across rows (a number here, text there): keep them all, as JSON text.
        return pa.array([None if value is None else json_text(value) for value in values])
    # No value at all in this file (a JSON Lines input has no schema to say what there would be):
    # text, which readers cast to whatever other files hold; they cannot cast anything to null.
    return column.cast(pa.string()) if pa.types.is_null(column.type) else column


def _encode_table(
    rows: list[dict[str, Any]], columns: list[str], file_format: str, types: dict[str, pa.DataType]
) -> bytes:
    if file_format != "parquet":
        return encode_jsonl([{name: row.get(name) for name in columns} for row in rows])
    table = pa.table({name: _column([row.get(name) for row in rows], types.get(name)) for name in columns})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def encode_data(
    requests: list[RequestRows],
    columns: list[str],
    output_format: OutputFormat,
    model: str,
    kept_types: dict[str, pa.DataType] | None = None,
) -> bytes:
    """A data file: herd's rows with `columns` (Parquet or JSONL), or one OpenAI result line per request.
    `kept_types`: by output name, the Arrow types the kept columns have in the input where it has
    types (Parquet)."""
    if output_format == "openai":
        return encode_jsonl([result_line(request, model).model_dump(mode="json") for request in requests])
    rows = [row for request in requests for row in request.rows]
    return _encode_table(rows, columns, output_format, {**(kept_types or {}), **DATA_COLUMN_TYPES})


def encode_errors(errors: list[dict[str, Any]], output_format: OutputFormat) -> bytes:
    """An error file: herd's error rows (id, file, row, stage, reason), or OpenAI error lines."""
    if output_format == "openai":
        return encode_jsonl([error_line(error).model_dump(mode="json") for error in errors])
    return _encode_table(errors, list(ERROR_COLUMNS), output_format, ERROR_COLUMN_TYPES)


def decode_data(data: bytes, url: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """A data file's rows in herd's own shape (id, kept columns, sample_index, completion, ...), only
    `columns` where given; OpenAI result lines are taken apart into one row per choice (usage shared
    out evenly over the choices)."""
    if url.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data), columns=columns).to_pylist()
    rows = _decode_data_lines(data)
    return rows if columns is None else [{name: row.get(name) for name in columns} for row in rows]


def _decode_data_lines(data: bytes) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for line in decode_jsonl(data):
        if "response" not in line:
            rows.append(line)
            continue
        parsed = BatchResultLine.model_validate(line)
        if parsed.response is None:
            continue
        body = parsed.response.body
        if isinstance(body, ResponseBody):
            rows += _response_rows(parsed.custom_id, body)
            continue
        for choice in body.choices:
            rows.append(
                {
                    "id": parsed.custom_id,
                    "sample_index": choice.index,
                    "completion": choice.message.content if isinstance(choice, ChatChoice) else choice.text,
                    "finish_reason": choice.finish_reason,
                    "prompt_tokens": body.usage.prompt_tokens,
                    "completion_tokens": body.usage.completion_tokens // max(1, len(body.choices)),
                    "model": body.model,
                    "token_logprobs": _token_logprobs(choice),
                }
            )
    return rows


def _response_rows(custom_id: str, body: ResponseBody) -> list[dict[str, Any]]:
    return [
        {
            "id": custom_id,
            "sample_index": index,  # the output messages are the samples, in order
            "completion": "".join(part.text for part in message.content),
            "finish_reason": "length" if message.status == "incomplete" else "stop",
            "prompt_tokens": body.usage.input_tokens,
            "completion_tokens": body.usage.output_tokens // max(1, len(body.output)),
            "model": body.model,
            "token_logprobs": _output_logprobs(message),
        }
        for index, message in enumerate(body.output)
    ]


def _output_logprobs(message: OutputMessage) -> list[float] | None:
    if all(part.logprobs is None for part in message.content):
        return None
    return [token.logprob for part in message.content for token in part.logprobs or []]


def _token_logprobs(choice: ChatChoice | TextChoice) -> list[float] | None:
    if choice.logprobs is None:
        return None
    if isinstance(choice.logprobs, ChoiceLogprobs):
        return [item.logprob for item in choice.logprobs.content]
    return choice.logprobs.token_logprobs


def decode_errors(data: bytes, url: str, file_label: str | None) -> list[dict[str, Any]]:
    """An error file's rows in herd's own shape (id, file, row, stage, reason), whatever the output
    format wrote. OpenAI error lines keep the custom_id and the stage (in the code), not the file or
    the row: `file_label` is given as their file (None where it is not known)."""
    if url.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pylist()
    rows = []
    for line in decode_jsonl(data):
        if "stage" in line:
            rows.append(line)
            continue
        error = BatchResultLine.model_validate(line).error
        assert error is not None, f"{url}: an error file holds a line without an error"
        stage = error.code.removeprefix("herd_").removesuffix("_error")
        rows.append({"id": line["custom_id"], "file": file_label, "row": None, "stage": stage, "reason": error.message})
    return rows


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def result_line(request: RequestRows, model: str) -> BatchResultLine:
    """A request's samples as one OpenAI result line: a chat or text completion with one choice per
    sample, or a Response with one output message per sample."""
    model = request.rows[0].get("model") or model  # an adapter's name when one answered
    prompt_tokens = request.rows[0]["prompt_tokens"]
    completion_tokens = sum(row["completion_tokens"] for row in request.rows)
    request_id = _short_hash(f"{request.custom_id}|{model}")
    body: CompletionBody | ResponseBody
    if request.kind == "response":
        body = _response_body(request, request_id, model, prompt_tokens, completion_tokens)
    else:
        body = CompletionBody(
            id=f"chatcmpl-{request_id}" if request.kind == "chat" else f"cmpl-{request_id}",
            object="chat.completion" if request.kind == "chat" else "text_completion",
            created=int(time.time()),
            model=model,
            choices=[_choice(row, request.kind == "chat") for row in request.rows],
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )
    return BatchResultLine(
        id=f"batch_req_{request_id}",
        custom_id=request.custom_id,
        response=BatchResponse(request_id=request_id, body=body),
    )


def _token_logprobs_listed(details: list[dict[str, Any]] | None) -> list[TokenLogprob] | None:
    """Each generated token with its alternatives, as chat's logprobs.content and a Response's output
    text list them."""
    return [TokenLogprob(**token) for token in details] if details else None


def _choice(row: dict[str, Any], chat: bool) -> ChatChoice | TextChoice:
    common = {"index": row["sample_index"], "finish_reason": row["finish_reason"]}
    details = row.get("token_details")
    if chat:
        listed = _token_logprobs_listed(details)
        logprobs = ChoiceLogprobs(content=listed) if listed is not None else None
        return ChatChoice(message=ChatMessage(content=row["completion"]), logprobs=logprobs, **common)
    return TextChoice(text=row["completion"], logprobs=_text_logprobs(details), **common)


def _response_body(
    request: RequestRows, request_id: str, model: str, prompt_tokens: int, completion_tokens: int
) -> ResponseBody:
    # A sample cut by its token limit makes the Response incomplete, as the hosted API says of it.
    cut = any(row["finish_reason"] == "length" for row in request.rows)
    output = [
        OutputMessage(
            id=f"msg_{request_id}_{row['sample_index']}",
            status="incomplete" if row["finish_reason"] == "length" else "completed",
            content=[OutputText(text=row["completion"], logprobs=_token_logprobs_listed(row.get("token_details")))],
        )
        for row in request.rows
    ]
    return ResponseBody(
        id=f"resp_{request_id}",
        created_at=int(time.time()),
        status="incomplete" if cut else "completed",
        incomplete_details=IncompleteDetails(reason="max_output_tokens") if cut else None,
        model=model,
        output=output,
        usage=ResponseUsage(
            input_tokens=prompt_tokens,
            output_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    )


def _text_logprobs(details: list[dict[str, Any]] | None) -> TextLogprobs | None:
    """The legacy /v1/completions shape: parallel lists, alternatives as token -> logprob."""
    if not details:
        return None
    offsets, offset = [], 0
    for token in details:
        offsets.append(offset)
        offset += len(token["token"])
    return TextLogprobs(
        tokens=[token["token"] for token in details],
        token_logprobs=[token["logprob"] for token in details],
        top_logprobs=[{item["token"]: item["logprob"] for item in token["top_logprobs"]} for token in details],
        text_offset=offsets,
    )


def error_line(error: dict[str, Any]) -> BatchResultLine:
    """A herd error row as an OpenAI batch error line."""
    return BatchResultLine(
        id=f"batch_req_{_short_hash(str(error['id']))}",
        custom_id=str(error["id"]),
        error=BatchError(code=f"herd_{error['stage']}_error", message=error["reason"]),
    )
