"""`submit.py plan`: will the job work, how long will it take, what will it cost; before any GPU time.

Without --calibrate this imports neither Ray nor vLLM nor torch: it lists and plans the inputs (every
file readable, every named column in every Parquet file), reads a sample of rows, renders and counts
them with the model's own tokenizer (a fast tokenizer, loaded without torch), and estimates from
there. --calibrate N also runs N sample rows on the real engine, in this process, to measure how many
tokens a row really generates and how fast.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from common.storage import FileInfo, Storage
from jobs.capacity import useful_replicas
from jobs.packing import packed_to_run
from jobs.planner import list_inputs, plan_shards
from schemas.errors import SpecError
from schemas.job import JobSpec, SamplingSpec
from schemas.shard import Shard
from workers.rendering import fit_to_context, render_token_ids, row_adapter, row_sampling, source_from_row
from workers.shard_io import read_shard

_EXAMPLES = 5
# Past this many input files, the plan reads the footers (and sizes) of this many, spread evenly,
# and estimates the rest from their sizes: 100,000 footers on S3 are minutes; a plan is a preview.
FILES_READ = 1000


def files_to_read(files: list[FileInfo], every_file: bool) -> list[FileInfo]:
    """Every file, or FILES_READ of them spread evenly over the listing (the first and last included)."""
    if every_file or len(files) <= FILES_READ:
        return files
    last = len(files) - 1
    return [files[round(index * last / (FILES_READ - 1))] for index in range(FILES_READ)]


def _sample(
    job: JobSpec, shards: list[Shard], storage: Storage, rows: int
) -> tuple[list[Any], list[str], list[str], float]:
    """Up to `rows` rows, from the start of each file first, with where each is for a person (file,
    row, id), and what was wrong with the others; and, for JSONL, how many rows the shards read held
    per row the planner estimated (it guesses from bytes)."""
    firsts: dict[str, Shard] = {}
    for shard in shards:
        firsts.setdefault(shard.file_url, shard)
    # Every file's first shard (a problem in any file shows), then the rest in order.
    order = [*firsts.values(), *(shard for shard in shards if firsts[shard.file_url] is not shard)]
    sampled: list[Any] = []
    places: list[str] = []
    errors: list[str] = []
    held, estimated = 0, 0
    for shard in order:
        if len(sampled) >= rows:
            break
        read = read_shard(shard, job.input, storage)
        taken = read.rows[: rows - len(sampled)]
        sampled += taken
        places += [f"{shard.file_label} {shard.where(row.position)} (id {row.row_id})" for row in taken]
        errors += [f"{error['file']} {shard.where(error['row'])}: {error['reason']}" for error in read.errors]
        if shard.format == "jsonl":
            held += len(read.rows) + len(read.errors)
            estimated += shard.estimated_rows
    return sampled, places, errors, held / estimated if estimated else 1.0


def _tokenizer(job: JobSpec, storage: Storage) -> Any:
    from transformers import PreTrainedTokenizerFast  # the fast tokenizer alone: no torch

    from workers.model_source import tokenizer_directory

    return PreTrainedTokenizerFast.from_pretrained(tokenizer_directory(job.model.path, storage))


def _adapter_problems(job: JobSpec, storage: Storage) -> list[str]:
    from workers.model_source import adapter_identity

    problems = []
    for adapter in job.model.adapters:
        try:
            adapter_identity(adapter, storage)
        except SpecError as error:
            problems.append(str(error))
    return problems


def dry_run(
    job: JobSpec,
    storage: Storage,
    sample_rows: int = 200,
    tokens_per_s: float | None = None,
    calibrate: int = 0,
    gpu_hour_cost: float | None = None,
    every_file: bool = False,
) -> dict[str, Any]:
    inputs = list_inputs(storage, job)
    read = files_to_read(inputs.files, every_file)
    shards = plan_shards(job.input, read, storage, job.prompt)
    # What the files read hold, scaled to all by bytes (1 when every file was read).
    scale = sum(info.size for info in inputs.files) / max(1, sum(info.size for info in read))
    problems: list[str] = []
    rows, places, errors, jsonl_ratio = _sample(job, shards, storage, sample_rows)
    problems += errors[:_EXAMPLES]
    problems += _adapter_problems(job, storage)
    tokenizer = _tokenizer(job, storage)

    prompt_tokens: list[int] = []
    over_context, render_failures = [], []
    # Each row as the run would generate it: its ids, and its sampling (a request file's lines set
    # their own max_tokens and n).
    rendered_rows: list[tuple[Any, list[int], SamplingSpec]] = []
    for row, place in zip(rows, places, strict=True):
        try:
            source = row.source or source_from_row(row.values, job.input, job.prompt)
            sampling = row_sampling(job, row.overrides)
            row_adapter(job, row.values, row.requested_model)
            ids = render_token_ids(source, job.prompt, tokenizer)
        except Exception as error:  # noqa: BLE001 - any row that cannot render is a problem to show
            render_failures.append(f"{place}: {error}")
            continue
        prompt_tokens.append(len(ids))
        try:
            ids = fit_to_context(ids, sampling.max_new_tokens, job.model.max_model_len, job.prompt)
        except ValueError as error:
            over_context.append(f"{place}: {error}")
            continue
        rendered_rows.append((row, ids, sampling))
    if over_context:
        problems.append(
            f"{len(over_context)} of {len(rows)} sampled prompts do not fit the context, e.g. {over_context[0]}"
        )
    if render_failures:
        problems.append(
            f"{len(render_failures)} of {len(rows)} sampled rows cannot be rendered, e.g. {render_failures[0]}"
        )
    duplicates = [row_id for row_id, count in Counter(row.row_id for row in rows).items() if count > 1]
    if duplicates:
        problems.append(f"ids are not unique in the sample: {', '.join(duplicates[:_EXAMPLES])}")
    warnings = _kept_columns_not_seen(job, rows)

    exact = all(shard.format == "parquet" for shard in shards)
    total_rows = sum(
        shard.estimated_rows if shard.format == "parquet" else round(shard.estimated_rows * jsonl_ratio)
        for shard in shards
    )
    if len(rows) < sample_rows:  # the sample ran out: every row was read, and counted
        exact, total_rows = True, len(rows) + len(errors)
    if len(read) < len(inputs.files):
        exact, total_rows = False, round(total_rows * scale)
    shard_count = round(len(shards) * scale)
    runs_as = round(len(packed_to_run(job, shards)) * scale)
    # The most a row generates (n x max_new_tokens), on average over the rows sampled.
    bounds = [sampling.n * sampling.max_new_tokens for _, _, sampling in rendered_rows]
    bound_per_row = sum(bounds) / len(bounds) if bounds else job.sampling.n * job.sampling.max_new_tokens
    upper = round(total_rows * bound_per_row)
    mean_prompt = sum(prompt_tokens) / len(prompt_tokens) if prompt_tokens else 0.0
    calibration = _calibrate(job, rendered_rows[:calibrate]) if calibrate and rendered_rows else None
    expected = round(total_rows * calibration["completion_tokens_per_row"]) if calibration else upper
    rate = calibration["tokens_per_s"] if calibration and tokens_per_s is None else tokens_per_s
    # The plan does not ask a cluster: `auto` counts as max_replicas when given, else one replica.
    wanted = job.resources.replicas
    replicas = useful_replicas(wanted if wanted != "auto" else job.resources.max_replicas or 1, runs_as)
    hours = expected / (rate * replicas) / 3600 if rate else None
    return {
        "files": len(inputs.files),
        # The files whose footers and sizes were read; when fewer than `files`, `shards` and `rows`
        # are estimated from them by bytes, and only they were checked for problems.
        "files_planned": len(read),
        "files_not_read": [f"{label} ({why})" for label, why in inputs.ignored],
        "shards": shard_count,
        "shards_run_as": runs_as,  # the small ones packed (jobs/packing.py): what replicas take
        "rows": total_rows,
        "rows_exact": exact,
        "sampled_rows": len(rows),
        "prompt_tokens": {
            "mean": round(mean_prompt, 1),
            "max": max(prompt_tokens, default=0),
            "estimated_total": round(mean_prompt * total_rows),
        },
        "prompts_over_context_in_sample": len(over_context),
        "generated_tokens": {
            "upper_bound": upper,
            "expected": expected,
            "expected_from": "calibration" if calibration else "the upper bound; run --calibrate N to measure",
        },
        "calibration": calibration,
        "tokens_per_s": rate,
        "replicas": replicas,
        "hours": round(hours, 3) if hours is not None else None,
        "cost": round(hours * replicas * job.model.tensor_parallel_size * gpu_hour_cost, 2)
        if hours is not None and gpu_hour_cost is not None
        else None,
        "problems": problems,
        "warnings": warnings,
    }


def _kept_columns_not_seen(job: JobSpec, rows: list[Any]) -> list[str]:
    """A JSON Lines row holds the fields it has: a kept column that no sampled row holds is most
    likely a typo, which would make an empty column (a Parquet file without it is refused instead).
    Not a problem: the field may come in later rows."""
    if not rows:
        return []
    fields = sorted({name for row in rows for name in row.values})
    listed = ", ".join(fields[:20]) + (f" and {len(fields) - 20} more" if len(fields) > 20 else "")
    return [
        f"keep_columns: no sampled row has {column!r} (their fields: {listed}); its output column "
        "stays empty unless later rows have it"
        for column in job.input.kept_columns
        if column not in fields
    ]


def _calibrate(job: JobSpec, rendered: list[tuple[Any, list[int], SamplingSpec]]) -> dict[str, Any]:
    """Runs these rows on the real engine here: what a row generates, and how fast."""
    import os

    from common.node_cache import cache_root
    from workers.engine import EngineRequest, VllmEngine, engine_variables_set, row_seed
    from workers.model_source import resolve_model, with_local_adapters
    from workers.output_capture import output_sent_to, start_failure_explained

    device = "cpu" if not _has_gpu() else "gpu"
    log_file = str(cache_root() / "logs" / f"calibrate-{os.getpid()}.log")
    # The engine gets the settings a replica's engine gets; vLLM's own lines stay out of the plan's output.
    with engine_variables_set(job.model, device), output_sent_to(log_file):
        storage = Storage(job.storage, job.retry)
        with start_failure_explained(log_file):
            engine = VllmEngine(resolve_model(job.model.path, storage), with_local_adapters(job.model, storage), device)
        requests = [
            EngineRequest(ids, row_seed(sampling.seed, row.row_id), sampling) for row, ids, sampling in rendered
        ]
        started = time.perf_counter()
        samples = engine.generate(requests)
        seconds = time.perf_counter() - started
        engine.close()
    tokens = sum(len(sample.token_ids) for result in samples for sample in result)
    return {
        "rows": len(rendered),
        "completion_tokens_per_row": tokens / len(rendered),
        "tokens_per_s": round(tokens / seconds, 1),
        "device": device,
        "engine_log": log_file,
    }


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
