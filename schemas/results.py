"""The output contract: output and error row columns, and the run summary."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from schemas.columns import OUTPUT_COLUMNS, ROW_ID_COLUMN, STRUCTURED_VALID_COLUMN, TOKEN_LOGPROBS_COLUMN
from schemas.job import JobSpec


def reason_key(error: dict) -> str:
    """An error row's stage and reason, with its numbers as N: "render: prompt is N tokens; ..."."""
    import re

    return f"{error['stage']}: {re.sub(r'[0-9]+', 'N', str(error['reason']))[:160]}"


def throughput_text(tokens_per_s: float, shards_run: int, wall_seconds: float) -> str:
    """The run's speed as the summary lines say it: a run that found every shard done by earlier
    runs generated nothing, which 0.0 tokens/s beside the output's token totals would hide."""
    speed = f"{tokens_per_s:.1f} tokens/s" if shards_run else "nothing left to run"
    return f"{speed}, wall {wall_seconds:.1f}s"


def output_columns(job: JobSpec) -> list[str]:
    """The columns of this job's output files; the optional ones only when the job can fill them."""
    columns = [ROW_ID_COLUMN, *job.input.kept_columns.values(), *OUTPUT_COLUMNS]
    if job.sampling.logprobs or job.input.is_request_file:
        columns.append(TOKEN_LOGPROBS_COLUMN)
    if job.sampling.structured is not None or job.input.is_request_file:
        columns.append(STRUCTURED_VALID_COLUMN)
    return columns


class RunTotals(BaseModel):
    """What one run did (an output's totals add up every run's)."""

    model_config = ConfigDict(extra="forbid")

    files_added: list[str]  # input files new since the previous run (input.new_files: process)
    shards_run: int
    rows_in: int
    rows_out: int
    error_rows: int
    completion_tokens: int


class RunSummary(BaseModel):
    """The output's totals over every run, and this run's own figures."""

    model_config = ConfigDict(extra="forbid")

    job: str
    status: str  # succeeded | errors_over_threshold | shards_failed | no_capacity
    output: str
    model: str
    rows_in: int
    rows_out: int
    error_rows: int
    reused_rows: int  # answered from an identical prompt's generation (optimize.dedupe_prompts)
    prompt_tokens: int
    completion_tokens: int
    tokens_per_s: float  # completion tokens over the wall time of this run
    wall_seconds: float
    shards: int
    shards_run: int
    shards_skipped: int  # committed by an earlier run of the same job
    shards_failed: list[str]
    attempts: int
    replicas: int
    replicas_replaced: int
    this_run: RunTotals
    errors_by_stage: dict[str, int]  # read | render | generate -> error rows
    top_error_reasons: list[dict[str, object]]  # {stage, reason, rows}, most rows first (numbers as N)
    tokens_per_s_by_replica: dict[str, float]  # this run: generated tokens over the time each generated
    time_to_first_shard_s: float | None  # this run: from its start to its first committed shard
