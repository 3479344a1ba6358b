"""One shard (or a pack of small ones), start to finish, inside a replica: read, render, generate, write.

Every input row ends as output rows (one per sample) or as one error row; the shard commits even
when some rows fail. Prompts that cannot fit the context become error rows before submission,
because one such prompt makes vLLM reject the whole batch.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from common.layout import OutputLayout
from common.output_codec import RequestRows, encode_data, encode_errors, file_extension
from common.retry import is_transient
from common.storage import Storage
from schemas.job import JobSpec, SamplingSpec
from schemas.openai_batch import ResultKind
from schemas.results import output_columns, reason_key
from schemas.shard import AnyShard, OutputObject, Shard, ShardPack, ShardResult
from workers.answer_cache import Answer, AnswerCache, prompt_key
from workers.engine import Engine, EngineDead, EngineRequest, Sample, row_seed
from workers.error_retry import earlier_data_outputs, narrow_to_retried
from workers.rendering import (
    RenderError,
    fit_to_context,
    render_token_ids,
    row_adapter,
    row_sampling,
    source_from_row,
)
from workers.shard_io import InputRow, ShardInputError, ShardRows, error_row, read_shard
from workers.structured import completion_is_valid

# The most of a pack's members read at once, however many small requests the storage takes. 256 small
# files on moto behind 20 ms a request (by hand, 2026-12-05): 8 at once 3.2-3.3 s, 32 at once 1.4-1.7 s,
# 128 (S3's small requests at once) 3.0 s and 17 s, the machine's 2 cores swamped.
_MOST_MEMBER_READS_AT_ONCE = 32


@dataclass
class _Prompt:
    shard: Shard  # the shard its row is of (a member, in a pack)
    row: InputRow
    ids: list[int]
    sampling: SamplingSpec
    result_kind: ResultKind  # the OpenAI object its answer is written as, in the openai format
    adapter: str | None  # the LoRA adapter that answers it; None: the base model


def _render_all(rows: list[InputRow], job: JobSpec, engine: Engine, shard: Shard, errors: list) -> list[_Prompt]:
    prompts = []
    for row in rows:
        try:
            source = row.source or source_from_row(row.values, job.input, job.prompt)
            sampling = row_sampling(job, row.overrides)
            adapter = row_adapter(job, row.values, row.requested_model)
            ids = render_token_ids(source, job.prompt, engine.tokenizer)
            ids = fit_to_context(ids, sampling.max_new_tokens, engine.max_model_len, job.prompt)
        except RenderError as error:
            errors.append(error_row(shard, row.row_id, row.position, "render", str(error)))
            continue
        except Exception as error:  # noqa: BLE001 - what one row's values make a tokenizer raise is that row's error
            errors.append(error_row(shard, row.row_id, row.position, "render", f"{type(error).__name__}: {error}"))
            continue
        prompts.append(_Prompt(shard, row, ids, sampling, source.result_kind, adapter))
    return prompts


def _engine_requests(prompts: list[_Prompt], dedupe: bool) -> tuple[list[EngineRequest], list[str], list[int]]:
    """The distinct requests, their keys, and for each prompt the index of the request answering it.
    Without dedupe every prompt is its own request, seeded by its row id."""
    requests: list[EngineRequest] = []
    keys: list[str] = []
    answered_by: list[int] = []
    index_of: dict[str, int] = {}
    for prompt in prompts:
        if not dedupe:
            answered_by.append(len(requests))
            seed = row_seed(prompt.sampling.seed, prompt.row.row_id)
            requests.append(EngineRequest(prompt.ids, seed, prompt.sampling, prompt.adapter))
            continue
        key = prompt_key(prompt.ids, prompt.sampling, prompt.adapter)
        if key not in index_of:
            index_of[key] = len(requests)
            keys.append(key)
            seed = row_seed(prompt.sampling.seed, key)
            requests.append(EngineRequest(prompt.ids, seed, prompt.sampling, prompt.adapter))
        answered_by.append(index_of[key])
    return requests, keys, answered_by


def _generate_requests(requests: list[EngineRequest], engine: Engine) -> list[list[Sample] | str]:
    """Each request's samples, or the reason it failed. One bad request fails vLLM's whole call (it
    refuses the request as it is added): the call is halved until each failing request stands alone,
    and the halves are sent at once, so that the others still share the engine's batches. Retried one
    at a time instead, a shard of a thousand rows with one bad row took a thousand requests' time in
    turn (`python -m bench refused_request`)."""
    try:
        return list(engine.generate(requests))
    except EngineDead:
        raise  # no row is at fault: the shard goes to another replica
    except Exception as error:  # noqa: BLE001 - one request's, or one of them fails the whole call
        if len(requests) == 1:
            return [f"{type(error).__name__}: {error}"]
    middle = len(requests) // 2
    with ThreadPoolExecutor(2, thread_name_prefix="halves") as threads:
        halves = [threads.submit(_generate_requests, half, engine) for half in (requests[:middle], requests[middle:])]
    return halves[0].result() + halves[1].result()


def _generate_all(
    prompts: list[_Prompt], job: JobSpec, engine: Engine, errors: list, answers: AnswerCache
) -> tuple[list[tuple[_Prompt, list[Sample]]], int]:
    """The prompts that generated, with their samples; and how many of them the engine ran."""
    dedupe = job.optimize.dedupe_prompts
    requests, keys, answered_by = _engine_requests(prompts, dedupe)
    claims = [answers.claim(key) for key in keys]
    to_run = [index for index, (_, mine) in enumerate(claims) if mine] if dedupe else list(range(len(requests)))
    results: list[Answer | None] = [None] * len(requests)
    try:
        generated_now = _generate_requests([requests[index] for index in to_run], engine)
    except BaseException as error:
        # No other shard may wait forever for an answer this one claimed.
        for index in to_run if dedupe else []:
            answers.abandon(keys[index], claims[index][0], error)
        raise
    for index, result in zip(to_run, generated_now, strict=True):
        results[index] = result
        if dedupe:
            answers.fulfil(keys[index], claims[index][0], result)
    # Only after generating its own: waiting first could deadlock two shards on each other's prompts.
    for index, (answer, mine) in enumerate(claims):
        if not mine:
            results[index] = answer.result()
    generated = []
    for prompt, index in zip(prompts, answered_by, strict=True):
        result = results[index]
        if isinstance(result, str):
            errors.append(error_row(prompt.shard, prompt.row.row_id, prompt.row.position, "generate", result))
        elif result is not None:  # every request has a result by now
            generated.append((prompt, result))
    return generated, len(to_run)


def _output_rows(generated: list[tuple[_Prompt, list[Sample]]], job: JobSpec, engine: Engine) -> list[dict[str, Any]]:
    rows = []
    kept_columns = job.input.kept_columns
    for prompt, samples in generated:
        prefix = ""
        if prompt.sampling.return_full_text:
            prefix = engine.tokenizer.decode(prompt.ids, skip_special_tokens=True)
        kept = {name: prompt.row.values.get(column) for column, name in kept_columns.items()}
        structured = prompt.sampling.structured
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
                    "model": prompt.adapter or job.model.output_name,
                    "token_logprobs": sample.logprobs,
                    # For OpenAI result lines: each token with its bytes and the alternatives.
                    "token_details": _token_details(sample, engine.tokenizer) if sample.logprobs is not None else None,
                    "structured_valid": completion_is_valid(sample.text, structured) if structured else None,
                }
            )
    return rows


def _token_details(sample: Sample, tokenizer: Any) -> list[dict[str, Any]]:
    """Each generated token as OpenAI's logprobs list it: its text, log probability, UTF-8 bytes and
    the most likely alternatives. A token that is part of a multi-byte character decodes to U+FFFD."""

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    steps = sample.top_logprobs or [[] for _ in sample.token_ids]
    return [
        {**entry(token_id, logprob), "top_logprobs": [entry(*alternative) for alternative in alternatives]}
        for token_id, logprob, alternatives in zip(sample.token_ids, sample.logprobs or [], steps, strict=True)
    ]


def _by_request(generated: list[tuple[_Prompt, list[Sample]]], rows: list[dict[str, Any]]) -> list[RequestRows]:
    """The output rows grouped by the prompt they answer (each prompt's samples are consecutive)."""
    requests, cursor = [], 0
    for prompt, samples in generated:
        requests.append(RequestRows(prompt.row.row_id, rows[cursor : cursor + len(samples)], prompt.result_kind))
        cursor += len(samples)
    return requests


@dataclass
class ReplicaContext:
    """What a replica's shards in flight share besides the engine."""

    name: str
    # The prompt tokenizer is not thread safe: shards take turns rendering and counting with it.
    tokenizer_turn: AbstractContextManager[Any] = field(default_factory=threading.Lock)
    answers: AnswerCache = field(default_factory=AnswerCache)
    # When a shard here last moved on a stage (monotonic clock): with the engine's own steps, what
    # tells a slow replica from a stalled one (resources.stall_timeout_s).
    last_activity: float = field(default_factory=time.monotonic)

    def moved_on(self) -> None:
        self.last_activity = time.monotonic()


def _read(shard: Shard, job: JobSpec, storage: Storage) -> ShardRows:
    try:
        return read_shard(shard, job.input, storage)
    except ShardInputError:
        raise
    except Exception as error:
        if isinstance(error, (OSError, pa.ArrowInvalid)) and not is_transient(error):
            raise ShardInputError(f"{shard.file_label}: cannot read rows {shard.start}-{shard.end}: {error}") from None
        raise


def _read_all(members: tuple[Shard, ...], job: JobSpec, storage: Storage) -> list[ShardRows]:
    """Each member's rows. A pack's members are small, and on an object store their reads are mostly
    waiting (a few requests of tens of milliseconds each): read as many at once as the storage takes
    small requests (one at a time from local disk, where a small read is a fraction of a millisecond)."""
    at_once = min(len(members), storage.small_requests_at_once(members[0].file_url), _MOST_MEMBER_READS_AT_ONCE)
    if at_once <= 1:
        return [_read(member, job, storage) for member in members]
    with ThreadPoolExecutor(at_once, thread_name_prefix="member-read") as threads:
        return list(threads.map(lambda member: _read(member, job, storage), members))


def _kept_types(members: tuple[Shard, ...], reads: list[ShardRows], job: JobSpec) -> dict[str, pa.DataType]:
    """The kept columns' types as the input files have them (Parquet), for the data file. The files of
    a pack must agree, since their rows share one file: raised before generating when they do not (the
    driver then runs the pack's shards one by one, each with its own types)."""
    kept: dict[str, tuple[pa.DataType, str]] = {}
    for member, read in zip(members, reads, strict=True):
        for column, name in job.input.kept_columns.items():
            if column not in read.column_types:
                continue
            seen = kept.setdefault(name, (read.column_types[column], member.file_label))
            if seen[0] != read.column_types[column]:
                raise ValueError(
                    f"input.keep_columns: {column} is {seen[0]} in {seen[1]} but {read.column_types[column]} in "
                    f"{member.file_label}: files packed together must agree"
                )
    return {name: column_type for name, (column_type, _) in kept.items()}


def process_shard(
    shard: AnyShard, job: JobSpec, engine: Engine, storage: Storage, replica: ReplicaContext
) -> ShardResult:
    """A replica runs several shards at once: their requests share the engine's batches while
    others are read, rendered and written. A pack's members are read, sent to the engine and written
    together, as one shard."""
    started, started_at = time.perf_counter(), time.time()
    members = shard.members if isinstance(shard, ShardPack) else (shard,)
    reads = _read_all(members, job, storage)
    kept_types = _kept_types(members, reads, job)
    replica.moved_on()
    kept_errors: list[dict[str, Any]] = []
    if shard.retry is not None:
        kept_errors = narrow_to_retried(list(zip(members, reads, strict=True)), shard.retry, storage)
    rows_in = sum(len(read.rows) + len(read.errors) for read in reads)
    errors = [error for read in reads for error in read.errors]
    with replica.tokenizer_turn:
        prompts = [
            prompt
            for member, read in zip(members, reads, strict=True)
            for prompt in _render_all(read.rows, job, engine, member, errors)
        ]
    replica.moved_on()
    generate_started, generate_started_at = time.perf_counter(), time.time()
    generated, requests_run = _generate_all(prompts, job, engine, errors, replica.answers)
    generate_seconds = time.perf_counter() - generate_started
    replica.moved_on()
    with replica.tokenizer_turn:
        rows = _output_rows(generated, job, engine)
    replica.moved_on()

    layout = OutputLayout(job.output.path)
    token = uuid.uuid4().hex[:12]
    extension = file_extension(job.output.format)
    data_url = layout.data_file(shard.shard_id, token, extension)
    outputs = earlier_data_outputs(shard) if shard.retry is not None else []
    if rows:
        encoded = encode_data(
            _by_request(generated, rows), output_columns(job), job.output.format, job.model.output_name, kept_types
        )
        size = storage.write_atomic(data_url, encoded)
        outputs.append(OutputObject(url=data_url, bytes=size, rows=len(rows)))
        replica.moved_on()
    errors = kept_errors + errors
    if errors:
        errors.sort(key=lambda error: (error["file"] or "", error["row"] is None, error["row"] or 0))
        errors_url = layout.errors_file(shard.shard_id, token, extension)
        size = storage.write_atomic(errors_url, encode_errors(errors, job.output.format))
        outputs.append(OutputObject(url=errors_url, bytes=size, rows=len(errors)))

    previous = shard.retry.previous if shard.retry is not None else None
    return ShardResult(
        shard_id=shard.shard_id,
        rows_in=previous.rows_in if previous else rows_in,
        rows_out=len(rows) + (previous.rows_out if previous else 0),
        error_rows=len(errors),
        reused_rows=len(prompts) - requests_run + (previous.reused_rows if previous else 0),
        prompt_tokens=sum(len(prompt.ids) for prompt, _ in generated) + (previous.prompt_tokens if previous else 0),
        completion_tokens=sum(row["completion_tokens"] for row in rows)
        + (previous.completion_tokens if previous else 0),
        generate_started_at=generate_started_at,
        generate_seconds=generate_seconds,
        shard_seconds=time.perf_counter() - started,
        started_at=started_at,
        finished_at=time.time(),
        outputs=outputs,
        replica=replica.name,
        members=[member.shard_id for member in members] if isinstance(shard, ShardPack) else [],
        error_reasons=dict(Counter(reason_key(error) for error in errors)),
    )
