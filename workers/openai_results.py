"""Results in the OpenAI Batch output format, so tools that read OpenAI batch results read herd's.

One line per request: {id, custom_id, response: {status_code, request_id, body}, error}; the body is a
chat.completion (or text_completion) with one choice per sample and the usage counts.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def result_line(custom_id: str, samples: list[dict[str, Any]], chat: bool, model: str) -> dict[str, Any]:
    """`samples` are herd's output rows of one request, in sample_index order."""
    choices = []
    for row in samples:
        choice: dict[str, Any] = {"index": row["sample_index"], "finish_reason": row["finish_reason"]}
        if chat:
            choice["message"] = {"role": "assistant", "content": row["completion"]}
        else:
            choice["text"] = row["completion"]
        if row.get("token_logprobs") is not None:
            choice["logprobs"] = {"content": [{"logprob": value} for value in row["token_logprobs"]]}
        choices.append(choice)
    prompt_tokens = samples[0]["prompt_tokens"]
    completion_tokens = sum(row["completion_tokens"] for row in samples)
    request_id = _short_hash(f"{custom_id}|{model}")
    return {
        "id": f"batch_req_{request_id}",
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "request_id": request_id,
            "body": {
                "id": f"chatcmpl-{request_id}" if chat else f"cmpl-{request_id}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        },
        "error": None,
    }


def error_line(error: dict[str, Any]) -> dict[str, Any]:
    """An herd error row as an OpenAI batch error line."""
    return {
        "id": f"batch_req_{_short_hash(str(error['id']))}",
        "custom_id": error["id"],
        "response": None,
        "error": {"code": f"herd_{error['stage']}_error", "message": error["reason"]},
    }
