"""The one output codec: every format written and read back the same, the OpenAI lines typed."""

from __future__ import annotations

import io
import json

import pyarrow.json as pajson
import pytest

from common.output_codec import RequestRows, decode_data, decode_errors, encode_data, encode_errors, file_extension
from schemas.openai_batch import BatchResultLine

COLUMNS = ["id", "topic", "sample_index", "completion", "finish_reason", "prompt_tokens", "completion_tokens", "model"]


def _rows(row_id: str, samples: int, topic: object = "t") -> list[dict]:
    return [
        {
            "id": row_id,
            "topic": topic,
            "sample_index": index,
            "completion": f"answer {index} \u2028 caf\u00e9 \U0001f999",
            "finish_reason": "length" if index else "stop",
            "prompt_tokens": 5,
            "completion_tokens": 3,
            "model": "m",
        }
        for index in range(samples)
    ]


ERRORS = [
    {"id": "k9", "file": "in.jsonl", "row": 120, "stage": "render", "reason": "prompt is 900 tokens \u0085 too long"},
    {"id": "k10", "file": "in.jsonl", "row": 130, "stage": "generate", "reason": "engine said no"},
]


@pytest.mark.parametrize("output_format", ["parquet", "jsonl"])
def test_data_and_error_rows_round_trip_in_herds_own_formats(output_format):
    requests = [
        RequestRows("k1", _rows("k1", 2), kind="completion"),
        RequestRows("k2", _rows("k2", 1, topic=7), kind="completion"),
    ]
    url = f"out/data/s.tok.{file_extension(output_format)}"
    decoded = decode_data(encode_data(requests, COLUMNS, output_format, "m"), url)
    expected = [row for request in requests for row in request.rows]
    # A column of mixed types (text here, a number there) is kept whole, every value as JSON text, in Parquet.
    if output_format == "parquet":
        expected = [{**row, "topic": json.dumps(row["topic"])} for row in expected]
    assert decoded == expected
    assert decode_data(encode_data(requests, COLUMNS, output_format, "m"), url, ["id", "finish_reason"]) == [
        {"id": "k1", "finish_reason": "stop"},
        {"id": "k1", "finish_reason": "length"},
        {"id": "k2", "finish_reason": "stop"},
    ]
    errors_url = f"out/errors/s.tok.{file_extension(output_format)}"
    assert decode_errors(encode_errors(ERRORS, output_format), errors_url, "in.jsonl") == ERRORS


# Three generated tokens as the shard processor details them for OpenAI lines (a multi-byte one first).
TOKEN_DETAILS = [
    {"token": word, "logprob": value, "bytes": list(word.encode()), "top_logprobs": top}
    for word, value, top in (
        (" caf\u00e9", -0.5, [{"token": " caf\u00e9", "logprob": -0.5, "bytes": [32, 99, 97, 102, 195, 169]}]),
        (" ok", -1.0, []),
        ("!", -2.0, []),
    )
]


def test_openai_lines_are_typed_one_per_request_and_read_back_as_herd_rows():
    details = TOKEN_DETAILS
    requests = [
        RequestRows("req-1", _rows("req-1", 2), kind="chat"),
        RequestRows(
            "req-2",
            [{**_rows("req-2", 1)[0], "token_logprobs": [-0.5, -1.0, -2.0], "token_details": details}],
            kind="completion",
        ),
        RequestRows(
            "req-3",
            [{**_rows("req-3", 1)[0], "token_logprobs": [-0.5, -1.0, -2.0], "token_details": details}],
            kind="chat",
        ),
    ]
    data = encode_data(requests, COLUMNS, "openai", "m")
    lines = [BatchResultLine.model_validate_json(line) for line in data.decode().split("\n") if line]
    assert [line.custom_id for line in lines] == ["req-1", "req-2", "req-3"]
    chat, text, chat_logprobs = (line.response.body for line in lines)
    assert chat.object == "chat.completion" and [choice.index for choice in chat.choices] == [0, 1]
    assert chat.choices[1].message.content == "answer 1 \u2028 caf\u00e9 \U0001f999"
    assert chat.usage.completion_tokens == 6 and chat.usage.total_tokens == 11
    # Logprobs in OpenAI's two shapes: the legacy completions lists, and chat's per-token objects.
    legacy = text.choices[0].logprobs
    assert text.object == "text_completion" and legacy.tokens == [" caf\u00e9", " ok", "!"]
    assert legacy.token_logprobs == [-0.5, -1.0, -2.0] and legacy.text_offset == [0, 5, 8]
    assert legacy.top_logprobs[0] == {" caf\u00e9": -0.5}
    [first_token, *_] = chat_logprobs.choices[0].logprobs.content
    assert first_token.token == " caf\u00e9" and first_token.bytes == [32, 99, 97, 102, 195, 169]
    assert first_token.top_logprobs[0].logprob == -0.5
    assert all(line.error is None for line in lines)
    rows = decode_data(data, "out/data/s.tok.jsonl")
    assert [(row["id"], row["sample_index"], row["completion_tokens"]) for row in rows] == [
        ("req-1", 0, 3),
        ("req-1", 1, 3),
        ("req-2", 0, 3),
        ("req-3", 0, 3),
    ]
    assert rows[2]["token_logprobs"] == rows[3]["token_logprobs"] == [-0.5, -1.0, -2.0]
    errors = encode_errors(ERRORS, "openai")
    first = json.loads(errors.decode().split("\n")[0])
    assert first["response"] is None and first["error"] == {"code": "herd_render_error", "message": ERRORS[0]["reason"]}
    assert decode_errors(errors, "out/errors/s.tok.jsonl", "in.jsonl") == [
        {**error, "row": None, "file": "in.jsonl"} for error in ERRORS
    ]


def test_responses_lines_are_openais_response_objects_and_read_back_as_herd_rows():
    from openai.types.responses import Response

    finished = RequestRows("resp-1", _rows("resp-1", 1), kind="response")  # finish_reason stop
    cut = RequestRows("resp-2", _rows("resp-2", 2), kind="response")  # its second sample hit the limit
    logprobs = [{**_rows("resp-3", 1)[0], "token_logprobs": [-0.5, -1.0, -2.0], "token_details": TOKEN_DETAILS}]
    with_logprobs = RequestRows("resp-3", logprobs, kind="response")  # include: message.output_text.logprobs
    data = encode_data([finished, cut, with_logprobs], COLUMNS, "openai", "m")
    lines = [json.loads(line) for line in data.decode().split("\n") if line]
    bodies = [Response.model_validate(line["response"]["body"]) for line in lines]  # the SDK's own type
    assert [body.status for body in bodies] == ["completed", "incomplete", "completed"]
    assert bodies[0].output[0].content[0].logprobs is None
    [first_token, *_] = bodies[2].output[0].content[0].logprobs
    assert first_token.token == " caf\u00e9" and first_token.bytes == [32, 99, 97, 102, 195, 169]
    assert first_token.logprob == -0.5 and first_token.top_logprobs[0].token == " caf\u00e9"
    assert bodies[0].incomplete_details is None and bodies[1].incomplete_details.reason == "max_output_tokens"
    assert bodies[0].output_text == "answer 0 \u2028 caf\u00e9 \U0001f999"  # the SDK's join of the output text
    assert [message.status for message in bodies[1].output] == ["completed", "incomplete"]
    assert (
        bodies[1].usage.input_tokens == 5 and bodies[1].usage.output_tokens == 6 and bodies[1].usage.total_tokens == 11
    )
    assert bodies[0].id.startswith("resp_") and bodies[0].object == "response" and bodies[0].model == "m"
    rows = decode_data(data, "out/data/s.tok.jsonl")
    assert [(row["id"], row["sample_index"], row["finish_reason"], row["completion_tokens"]) for row in rows] == [
        ("resp-1", 0, "stop", 3),
        ("resp-2", 0, "stop", 3),
        ("resp-2", 1, "length", 3),
        ("resp-3", 0, "stop", 3),
    ]
    assert [row["token_logprobs"] for row in rows] == [None, None, None, [-0.5, -1.0, -2.0]]
    assert rows[2]["completion"] == "answer 1 \u2028 caf\u00e9 \U0001f999" and rows[0]["prompt_tokens"] == 5


def test_every_jsonl_file_the_codec_writes_is_one_pyarrow_reads():
    data = encode_data([RequestRows("k1", _rows("k1", 1), kind="completion")], COLUMNS, "jsonl", "m")
    assert pajson.read_json(io.BytesIO(data)).num_rows == 1


def test_the_codec_types_every_column_herd_writes_and_nothing_else():
    """The column names (schemas/columns.py, which the job spec checks kept columns against) and the
    codec's types are two tables: a column added to one only would be untyped or unchecked."""
    from common.output_codec import DATA_COLUMN_TYPES, ERROR_COLUMN_TYPES
    from schemas.columns import ERROR_COLUMNS, HERD_OUTPUT_COLUMNS

    assert sorted(DATA_COLUMN_TYPES) == sorted(HERD_OUTPUT_COLUMNS)
    assert tuple(ERROR_COLUMN_TYPES) == ERROR_COLUMNS


def test_jsonl_is_strict_json_with_typed_values_in_their_usual_text_forms():
    """A kept Parquet value JSON has no type for becomes text in the form readers parse (ISO 8601 times
    and durations, base64 bytes, a decimal's exact digits), and a NaN or an infinity, at any depth, is
    null: Python's json would write the bare words NaN and Infinity, which DuckDB, Spark and jq refuse."""
    import datetime
    import decimal

    kept = {
        "at": datetime.datetime(2024, 1, 1, 10, 0, 0, 250000, tzinfo=datetime.UTC),
        "day": datetime.date(2024, 1, 2),
        "wait": datetime.timedelta(days=2, seconds=3661, microseconds=500000),
        "late": -datetime.timedelta(seconds=90),
        "blob": b"\x00\xff",
        "price": decimal.Decimal("12.50"),
        "score": float("nan"),
        "nested": {"high": float("inf"), "values": [1.5, float("-inf")]},
    }
    rows = [{**row, **kept} for row in _rows("k1", 1)]
    data = encode_data([RequestRows("k1", rows, kind="completion")], [*COLUMNS, *kept], "jsonl", "m")

    def strict(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    (line,) = [json.loads(text, parse_constant=strict) for text in data.decode().split("\n") if text]
    assert {name: line[name] for name in kept} == {
        "at": "2024-01-01T10:00:00.250000+00:00",
        "day": "2024-01-02",
        "wait": "P2DT1H1M1.5S",
        "late": "-P0DT0H1M30S",
        "blob": "AP8=",
        "price": "12.50",
        "score": None,
        "nested": {"high": None, "values": [1.5, None]},
    }
    assert line["completion"] == rows[0]["completion"]
