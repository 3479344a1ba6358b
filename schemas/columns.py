"""The names of the columns herd writes: output rows and error rows."""

from __future__ import annotations

# Output rows: `id`, then the input columns the job keeps, then these, in this order.
ROW_ID_COLUMN = "id"
OUTPUT_COLUMNS = (
    "sample_index",
    "completion",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "model",
)
TOKEN_LOGPROBS_COLUMN = "token_logprobs"  # only when the job asks for logprobs
STRUCTURED_VALID_COLUMN = "structured_valid"  # only when the job constrains its output
OPTIONAL_OUTPUT_COLUMNS = (TOKEN_LOGPROBS_COLUMN, STRUCTURED_VALID_COLUMN)
HERD_OUTPUT_COLUMNS = (ROW_ID_COLUMN, *OUTPUT_COLUMNS, *OPTIONAL_OUTPUT_COLUMNS)
ERROR_COLUMNS = ("id", "file", "row", "stage", "reason")
