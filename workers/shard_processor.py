"""One shard, start to finish, inside a replica: read, render, generate, write.

Every input row ends as output rows (one per sample) or as one error row; the shard commits even
when some rows fail. Prompts that cannot fit the context become error rows before submission,
because one such prompt makes vLLM reject the whole batch.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from common.layout import OutputLayout
from common.retry import is_transient
from common.storage import Storage
from schemas.job import JobSpec
from schemas.results import OUTPUT_COLUMNS
from schemas.shard import OutputObject, Shard, ShardResult
from workers.engine import Engine, Request, Sample, row_seed
from workers.rendering import RenderError, fit_to_context, render_token_ids
from workers.shard_io import InputRow, encode_errors, encode_rows, error_row, read_shard


class ShardInputError(Exception):
    """The shard's file cannot be read at all (truncated Parquet, missing object): retrying won't help."""


@dataclass
class _Prompt:
    row: InputRow
    ids: list[int]


def _render_all(rows: list[InputRow], job: JobSpec, engine: Engine, shard: Shard, errors: list) -> list[_Prompt]:
    prompts = []
    for row in rows:
        try:
            ids = render_token_ids(row.values, job.input, job.prompt, engine.tokenizer)
            ids = fit_to_context(ids, job.sampling.max_new_tokens, engine.max_model_len, job.prompt)
        except RenderError as error:
            errors.append(error_row(shard, row.row_id, row.position, "render", str(error)))
            continue
        prompts.append(_Prompt(row, ids))
    return prompts


def _generate_all(
    prompts: list[_Prompt], job: JobSpec, engine: Engine, shard: Shard, errors: list
) -> list[tuple[_Prompt, list[Sample]]]:
    requests = [Request(prompt.ids, row_seed(job.sampling.seed, prompt.row.row_id)) for prompt in prompts]
    try:
        return list(zip(prompts, engine.generate(requests, job.sampling), strict=True))
    except Exception:  # noqa: BLE001 - one bad request fails vLLM's whole batch; find it below
        pass
    # Retry one by one so that only the rows that really fail become error rows.
    generated = []
    for prompt, request in zip(prompts, requests, strict=True):
        try:
            generated.append((prompt, engine.generate([request], job.sampling)[0]))
        except Exception as error:  # noqa: BLE001 - reported as this row's error
            errors.append(
                error_row(shard, prompt.row.row_id, prompt.row.position, "generate", f"{type(error).__name__}: {error}")
            )
    return generated


def _output_rows(generated: list[tuple[_Prompt, list[Sample]]], job: JobSpec, engine: Engine) -> list[dict[str, Any]]:
    rows = []
    for prompt, samples in generated:
        prefix = ""
        if job.sampling.return_full_text:
            prefix = engine.tokenizer.decode(prompt.ids, skip_special_tokens=True)
        kept = {column: prompt.row.values.get(column) for column in job.input.keep_columns}
        for index, sample in enumerate(samples):
            rows.append(
                {
                    "id": prompt.row.row_id,
                    **kept,
                    "sample_index": index,
                    "completion": prefix + sample.text,
                    "finish_reason": sample.finish_reason,
                    "prompt_tokens": len(prompt.ids),
                    "completion_tokens": len(sample.token_ids),
                    "model": job.model.path,
                }
            )
    return rows


def process_shard(shard: Shard, job: JobSpec, engine: Engine, storage: Storage, replica: str) -> ShardResult:
    started = time.perf_counter()
    try:
        read = read_shard(shard, job.input, storage)
    except Exception as error:
        if _is_input_error(error):
            raise ShardInputError(f"{shard.file_label}: cannot read rows {shard.start}-{shard.end}: {error}") from None
        raise
    rows_in = len(read.rows) + len(read.errors)
    errors = read.errors
    prompts = _render_all(read.rows, job, engine, shard, errors)
    generate_started = time.perf_counter()
    generated = _generate_all(prompts, job, engine, shard, errors)
    generate_seconds = time.perf_counter() - generate_started
    rows = _output_rows(generated, job, engine)
    columns = ["id", *job.input.keep_columns, *OUTPUT_COLUMNS]

    layout = OutputLayout(job.output.path)
    token = uuid.uuid4().hex[:12]
    outputs = []
    data_url = layout.data_file(shard.shard_id, token, job.output.format)
    size = storage.write_atomic(data_url, encode_rows(rows, columns, job.output.format))
    outputs.append(OutputObject(url=data_url, bytes=size, rows=len(rows)))
    if errors:
        errors.sort(key=lambda error: error["row"])
        errors_url = layout.errors_file(shard.shard_id, token, job.output.format)
        size = storage.write_atomic(errors_url, encode_errors(errors, job.output.format))
        outputs.append(OutputObject(url=errors_url, bytes=size, rows=len(errors)))

    return ShardResult(
        shard_id=shard.shard_id,
        rows_in=rows_in,
        rows_out=len(rows),
        error_rows=len(errors),
        prompt_tokens=sum(len(prompt.ids) for prompt, _ in generated),
        completion_tokens=sum(row["completion_tokens"] for row in rows),
        generate_seconds=generate_seconds,
        shard_seconds=time.perf_counter() - started,
        outputs=outputs,
        replica=replica,
    )


def _is_input_error(error: Exception) -> bool:
    return isinstance(error, (OSError, pa.ArrowInvalid)) and not is_transient(error)
