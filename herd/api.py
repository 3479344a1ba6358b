"""The public Python API: run a job, plan one, or generate completions for a DataFrame.

All three go through jobs/runner.py, the path `herd run` takes: planned shards, a lease on the output,
per-shard commits, resume. Ray, vLLM and pyarrow load only when a call needs them.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from schemas.columns import OPTIONAL_OUTPUT_COLUMNS, OUTPUT_COLUMNS
from schemas.errors import ErrorsOverThreshold, ExitCode, NoCapacity, OutputBusy, ShardsFailed, SpecError
from schemas.job import JobSpec, load_job, parse_job
from schemas.results import RunSummary, output_columns

if TYPE_CHECKING:
    from jobs.progress import Progress
    from jobs.replicas import ReplicaPool
    from jobs.runner import RunOutcome
    from schemas.shard import Shard

JobLike = JobSpec | dict[str, Any] | str | Path
ProgressMode = Literal["auto", "live", "lines", "json", "none"]
Section = BaseModel | dict[str, Any] | None

# Engines kept warm between calls of this process (generate, run with keep_engines), one pool per
# model configuration; shutdown() or the end of the process ends them.
_WARM_POOLS: dict[str, ReplicaPool] = {}
# A warm pool's engines serve one job at a time: calls on its model from other threads wait their turn.
_POOLS_IN_USE: dict[str, threading.Lock] = {}
_MAKING_POOLS = threading.Lock()  # two threads' first calls on a model make one pool, not two
# The replicas' log files of warm pools: they outlive any one call's temporary output.
_ENGINE_LOGS: list[str] = []
# Columns generate adds to the caller's rows: the output's own, and the error of a row that failed.
_ADDED_COLUMNS = (*OUTPUT_COLUMNS, *OPTIONAL_OUTPUT_COLUMNS, "error")


def run(
    job: JobLike,
    *,
    output: str | None = None,
    overwrite: bool = False,
    retry_errors: Literal["generate", "all"] | None = None,
    progress: ProgressMode | Progress = "auto",
    progress_every_s: float = 30.0,
    verbose: bool = False,
    keep_engines: bool = False,
    stop: threading.Event | None = None,
) -> RunSummary:
    """Runs a job to the end and returns its summary (what summary.json holds).

    Args:
        job: a job file's path (YAML or JSON), the job as a dict, or a JobSpec.
        output: write here instead of the job's output.path (local or s3://).
        overwrite: replace the output of a different job at the output path.
        retry_errors: also run again the error rows of committed shards: those of stage "generate",
            or "all" of them; every row stays exactly once.
        progress: "live" (a display on the terminal), "lines" (a line every `progress_every_s`),
            "json" (a JSON object per line), "none"; "auto" is live on a terminal, else lines; or an
            object with the methods of jobs.progress.Progress (start, committed, failed, replicas,
            close; replicas_waiting too where it has one), told of every commit.
        progress_every_s: how often "lines" and "json" print.
        verbose: stream the replicas' own output (vLLM's) here instead of a log file per replica.
        keep_engines: keep the replicas running after the job, for the next call in this process on
            the same model (a notebook, a DAG's task running several jobs); see shutdown().
        stop: an Event another thread may set to end the run early: running shards finish and
            commit, the others are left for the next run (which resumes), and ShardsFailed is raised.

    Raises:
        SpecError: the job or its input is invalid (exit code 2); nothing was generated.
        OutputBusy: another run holds the output (5). StorageUnavailable: storage kept failing (6).
        ErrorsOverThreshold (3), ShardsFailed (4), NoCapacity (7): the run ended without succeeding;
            `error.summary` says what was done. Committed shards are kept: running again resumes.
    """
    spec = _as_job(job, output)
    from jobs.runner import run_job

    pool, in_use = _warm_pool(spec, verbose) if keep_engines else (None, contextlib.nullcontext())
    with in_use:
        outcome = run_job(
            spec,
            overwrite=overwrite,
            pool=pool,
            retry_errors=retry_errors,
            progress=_progress(progress, progress_every_s) if isinstance(progress, str) else progress,
            quiet=not verbose,
            stop=stop,
        )
    _raise_unless_succeeded(outcome, spec)
    return outcome.summary


def plan(
    job: JobLike,
    *,
    output: str | None = None,
    sample_rows: int = 200,
    tokens_per_s: float | None = None,
    calibrate: int = 0,
    gpu_hour_cost: float | None = None,
    list_shards: bool = False,
    every_file: bool = False,
) -> dict[str, Any]:
    """The dry run: lists the input, plans the shards, reads and renders a sample of rows, and
    estimates tokens, time and cost, without Ray or an engine (unless `calibrate`). Past 1,000 input
    files it plans from 1,000 of them, spread evenly, and estimates the rest by their sizes
    ("files_planned" says how many it read).

    Args:
        job: a job file's path, the job as a dict, or a JobSpec.
        output: look for committed shards here instead of the job's output.path.
        sample_rows: rows to read, render and count.
        tokens_per_s: generated tokens per second of one replica, to estimate the time.
        calibrate: run this many sampled rows on the real engine here to measure tokens per row and
            per second.
        gpu_hour_cost: the price of one GPU hour, to estimate the cost.
        list_shards: also return every shard under "shard_list" (id, format, range, rows, committed);
            this plans every file.
        every_file: read every file's footer and size, however many (exact shards and rows, and
            every file checked), instead of 1,000 of them past 1,000.

    Returns:
        What `herd plan --json` prints: files, shards, rows, token estimates, hours and cost, and
        "problems" (empty when the job can run), and "warnings" (what may be a mistake but need not
        be, e.g. a kept JSON Lines field that no sampled row has).
    """
    spec = _as_job(job, output)
    from common.layout import OutputLayout
    from common.storage import Storage
    from jobs.committed import committed_shards
    from jobs.dry_run import dry_run
    from jobs.planner import list_inputs, plan_shards, with_absolute_paths
    from schemas.shard import TO_END_OF_FILE

    spec = with_absolute_paths(spec)
    storage = Storage(spec.storage, spec.retry)
    report = dry_run(
        spec,
        storage,
        sample_rows=sample_rows,
        tokens_per_s=tokens_per_s,
        calibrate=calibrate,
        gpu_hour_cost=gpu_hour_cost,
        every_file=every_file or list_shards,
    )
    committed = committed_shards(storage, OutputLayout(spec.output.path))
    report["shards_committed"] = committed.planned_shards()
    if list_shards:
        report["shard_list"] = [
            {
                "id": shard.shard_id,
                "format": shard.format,
                "unit": _shard_unit(shard),
                "start": shard.start,
                "end": None if shard.end == TO_END_OF_FILE else shard.end,
                "estimated_rows": shard.estimated_rows,
                "committed": shard.shard_id in committed,
            }
            for shard in plan_shards(spec.input, list_inputs(storage, spec).files, storage, spec.prompt)
        ]
    return report


def _shard_unit(shard: Shard) -> str:
    """What a listed shard's start and end count."""
    if shard.format == "parquet":
        return "rows"
    if shard.compression is not None:
        return "bytes unpacked"
    return "bytes" if shard.copied_from is None else "bytes of its JSON Lines copy"


def generate(
    data: Any,
    *,
    model: str | Section,
    prompt_column: str | None = None,
    messages_column: str | None = None,
    id_column: str | None = None,
    keep_columns: list[str | dict[str, str]] | None = None,
    adapter_column: str | None = None,
    rows_per_shard: int | None = None,
    prompt: Section = None,
    sampling: Section = None,
    optimize: Section = None,
    resources: Section = None,
    storage: Section = None,
    retry: Section = None,
    output: str | None = None,
    output_format: Literal["parquet", "jsonl"] = "parquet",
    overwrite: bool = False,
    max_error_fraction: float = 1.0,
    name: str = "herd-generate",
    progress: ProgressMode = "auto",
    verbose: bool = False,
) -> Any:
    """Completions for every row of a pandas DataFrame, a pyarrow Table or a Hugging Face
    datasets.Dataset, as one of the same kind (another table that exports Arrow, such as a Polars
    DataFrame, gives a pyarrow Table).

    The rows run as a herd job (the same planning, commits and seeds as `herd run` on a Parquet file
    of the same rows), and the engines stay warm for the next call in this process (see shutdown()).
    The result holds the caller's rows in their order (under their own index labels, for pandas),
    each repeated once per sample, with the columns sample_index, completion, finish_reason,
    prompt_tokens, completion_tokens, model (and token_logprobs, structured_valid where the job fills
    them) and `error`: empty, or "stage: reason" for a row that failed (its other added columns are
    then empty). pandas gets them in its nullable dtypes (Int64, boolean, string: empty is pd.NA,
    whether or not any row failed), Arrow in herd's output types (empty is null). The run's summary is in
    `result.attrs["herd_summary"]` (pandas), the schema metadata b"herd_summary" (Arrow) or, as JSON,
    `result.info.description` (a Dataset, which keeps its own features: a ClassLabel stays one).

    Args:
        data: a pandas DataFrame, a pyarrow Table, a datasets.Dataset (its rows as they are after
            select, shuffle or filter; one split of a DatasetDict), or a table that exports Arrow's C
            stream (Polars, DuckDB; `polars.from_arrow(result)` turns the result back into Polars).
        model: the job file's model section, as a dict or a ModelSpec, or just its path
            ("demo:smollm2-135m-instruct", a local checkpoint, s3://...).
        prompt_column, messages_column, id_column, keep_columns, adapter_column, rows_per_shard: the
            job file's input options (exactly one prompt source: prompt_column, messages_column or
            prompt.template). With id_column, ids must be unique; they seed each row as in `run`.
            adapter_column names one of model's adapters per row (None or "": the base model).
        prompt, sampling, optimize, resources, storage, retry: the job file's sections, as dicts or
            the spec's models.
        output: keep the job's output here (local or s3://), so a call interrupted half way resumes
            when made again with the same rows; by default a temporary folder, removed afterwards.
        output_format: the format of the files under `output`.
        overwrite: as for run.
        max_error_fraction: raise ErrorsOverThreshold when more rows than this fraction failed; by
            default never (failed rows come back with their error).
        name: the job's name in logs and the summary.
        progress, verbose: as for run.

    Raises:
        SpecError: invalid options or data (a column missing, duplicate ids, a column named like one
            generate adds), before any engine starts. The other errors as for run.
    """
    import pyarrow as pa

    kind = _kind_of(data)
    if kind == "hugging face":
        # Its rows as they are seen (after select, shuffle, filter), as Arrow: no copy without those.
        table = _without_view_types(data.with_format("arrow")[:])
    else:
        table = None if kind == "pandas" else _without_view_types(data if kind == "arrow" else pa.table(data))
    names = list(map(str, data.columns)) if kind == "pandas" else table.column_names
    _check_added_columns(names)
    workdir = Path(tempfile.mkdtemp(prefix="herd-generate-"))
    try:
        sections = {
            "prompt": prompt,
            "sampling": sampling,
            "optimize": optimize,
            "resources": resources,
            "storage": storage,
            "retry": retry,
        }
        input_section: dict[str, Any] = {
            "path": "the rows given to herd.generate",  # until they are staged, below
            "format": "parquet",
            "prompt_column": prompt_column,
            "messages_column": messages_column,
            "id_column": id_column,
            "keep_columns": keep_columns or [],
            "adapter_column": adapter_column,
        }
        if rows_per_shard is not None:
            input_section["rows_per_shard"] = rows_per_shard
        raw_job = {
            "name": name,
            "input": input_section,
            "model": {"path": model} if isinstance(model, str) else _section(model),
            "output": {"path": output or str(workdir / "output"), "format": output_format},
            "max_error_fraction": max_error_fraction,
            **{key: _section(value) for key, value in sections.items() if value is not None},
        }
        spec = parse_job(raw_job, source="herd.generate")
        # Only the columns the job reads are staged: a wide frame (embeddings, documents) is not
        # written out for nothing, and a column Arrow cannot store is no obstacle unless it is read.
        missing = [column for column in spec.input.columns_read(set()) if column not in names]
        if missing:
            raise SpecError(
                f"herd.generate: no column {', '.join(map(repr, missing))}, which the job names "
                f"(the rows have: {', '.join(names)})"
            )
        # Template names that are not columns are the template's to handle (it may test `is defined`).
        read = [column for column in spec.input.columns_read(spec.prompt.template_columns()) if column in names]
        if not read:  # a template that reads no column: the rows still count, as their positions
            rows = _positions(len(data) if kind == "pandas" else table.num_rows)
        else:
            rows = _read_columns(data, read) if kind == "pandas" else table.select(read)
        position_of = _positions_by_id(rows, id_column)
        staged, staged_for_this_call = _stage_rows(rows, workdir if output is None else None, output)
        input_section["path"] = str(staged)
        spec = parse_job(raw_job, source="herd.generate")
        keep_staged = not staged_for_this_call  # a file an older herd staged stays: its outputs name it
        try:
            summary = run(spec, overwrite=overwrite, progress=progress, verbose=verbose, keep_engines=True)
        except OutputBusy:
            keep_staged = True  # the run that holds the output reads these rows
            raise
        finally:
            if not keep_staged:  # the same call again stages the same file: it resumes or finds the output done
                staged.unlink(missing_ok=True)
        return _with_completions(data, table, kind, spec, staged.name, position_of, summary)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def shutdown() -> None:
    """Ends the engines kept warm by generate() and run(keep_engines=True); the next call starts
    new ones. Called at the end of the process too."""
    ray = sys.modules.get("ray")  # loaded by whatever made a pool; never loaded here for nothing
    while _WARM_POOLS:
        key, pool = _WARM_POOLS.popitem()
        _POOLS_IN_USE.pop(key, None)
        # At the end of the process Ray's own exit hook (registered after this one, so run first) has
        # already ended this driver's actors; calling into its torn-down core worker is not safe.
        if ray is not None and ray.is_initialized():
            with contextlib.suppress(Exception):
                pool.shutdown()
    for directory in _ENGINE_LOGS:
        shutil.rmtree(directory, ignore_errors=True)
    _ENGINE_LOGS.clear()


atexit.register(shutdown)


def _as_job(job: JobLike, output: str | None) -> JobSpec:
    if isinstance(job, JobSpec):
        if output is None:
            return job
        return job.model_copy(update={"output": job.output.model_copy(update={"path": output})})
    if isinstance(job, dict):
        raw = dict(job)
        if output is not None:
            raw["output"] = {**(raw.get("output") or {}), "path": output}
        return parse_job(raw)
    return load_job(job, output_override=output)


def _section(value: Section) -> dict[str, Any]:
    return value.model_dump() if isinstance(value, BaseModel) else dict(value or {})


def _progress(mode: ProgressMode, every_s: float) -> Progress | None:
    if mode == "none":
        return None
    from jobs.progress import Progress

    if mode == "auto":
        mode = "live" if sys.stderr.isatty() else "lines"
    return Progress(mode, every_s=every_s)


def _warm_pool(spec: JobSpec, verbose: bool) -> tuple[ReplicaPool, threading.Lock]:
    """The warm replicas for the job's model, started with the first job that needs them, and the
    lock a job holds while it runs on them."""
    from jobs.planner import with_absolute_paths
    from jobs.runner import warm_replica_pool

    spec = with_absolute_paths(spec)
    key = json.dumps(spec.model.model_dump(mode="json"), sort_keys=True)
    with _MAKING_POOLS:
        if key not in _WARM_POOLS:
            _ENGINE_LOGS.append(tempfile.mkdtemp(prefix="herd-engines-"))
            owner = spec.model_copy(update={"output": spec.output.model_copy(update={"path": _ENGINE_LOGS[-1]})})
            # Sized for what the cluster gives, not for this job's shards: later jobs reuse it.
            _WARM_POOLS[key] = warm_replica_pool(owner, _engine_factory(), quiet=not verbose)
            _POOLS_IN_USE[key] = threading.Lock()
        return _WARM_POOLS[key], _POOLS_IN_USE[key]


def _engine_factory() -> Any:
    from workers.replica import build_vllm_engine

    return build_vllm_engine


def _raise_unless_succeeded(outcome: RunOutcome, spec: JobSpec) -> None:
    summary = outcome.summary
    if outcome.exit_code == ExitCode.ERRORS_OVER_THRESHOLD:
        raise ErrorsOverThreshold(
            f"{summary.error_rows} of {summary.rows_in} rows failed, over max_error_fraction "
            f"{spec.max_error_fraction}; see {summary.output}/errors",
            summary,
        )
    if outcome.exit_code == ExitCode.NO_CAPACITY:
        reason = summary.shards_failed[0].split(": ", 1)[-1]
        raise NoCapacity(f"{reason}; committed shards are kept: run again when the cluster has capacity", summary)
    if outcome.exit_code == ExitCode.SHARDS_FAILED:
        raise ShardsFailed(
            f"{len(summary.shards_failed)} shard(s) failed after every retry (first: {summary.shards_failed[0]}); "
            "committed shards are kept: run again to resume",
            summary,
        )


def _kind_of(data: Any) -> str:
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return "arrow"
    if type(data).__module__.startswith("pandas") and type(data).__name__ == "DataFrame":
        return "pandas"
    if type(data).__module__.startswith("datasets"):
        return _hugging_face_kind(data)
    if hasattr(data, "__arrow_c_stream__"):  # Arrow's C stream: Polars, DuckDB, Daft, nanoarrow...
        return "arrow stream"
    kind = f"{type(data).__module__}.{type(data).__qualname__}"
    lazy = " (collect it first)" if hasattr(data, "collect") else ""
    raise SpecError(
        "herd.generate takes a pandas DataFrame, a pyarrow Table, a datasets.Dataset or another table that "
        f"exports Arrow (a Polars DataFrame), got {kind}{lazy}"
    )


def _hugging_face_kind(data: Any) -> str:
    """A datasets.Dataset is rows in memory (or memory-mapped); its dicts and streams are refused,
    saying what to pass instead."""
    name = type(data).__name__
    if name == "Dataset":
        return "hugging face"
    if name.endswith("DatasetDict"):
        splits = ", ".join(map(repr, data))
        raise SpecError(f"herd.generate takes one split of a {name}, e.g. data[{next(iter(data))!r}] (it has {splits})")
    if name == "IterableDataset":
        raise SpecError(
            "herd.generate needs the rows at hand, and an IterableDataset (streaming=True) only streams them: "
            "load it without streaming=True, or run a job on its files with herd.run (Parquet, JSON Lines, "
            "or a save_to_disk folder)"
        )
    raise SpecError(f"herd.generate takes a datasets.Dataset, got datasets' {name}")


def _hugging_face_result(data: Any, table: Any, summary: RunSummary) -> Any:
    """The result as a datasets.Dataset: the caller's features (a ClassLabel stays one), the added
    columns' from their Arrow types, and the run's summary as JSON in its info's description."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    added = pa.schema([field for field in table.schema if field.name not in data.features])
    features = datasets.Features({**data.features, **datasets.Features.from_arrow_schema(added)})
    info = datasets.DatasetInfo(description=summary.model_dump_json(), features=features)
    return datasets.Dataset(InMemoryTable(table), info=info)


def _without_view_types(table: Any) -> Any:
    """Text and bytes as Arrow's plain string and binary: Polars exports text as string_view, which
    pyarrow's take (how the result repeats rows per sample) has no kernel for."""
    import pyarrow as pa

    plain = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}
    schema = pa.schema(
        [field.with_type(plain.get(field.type, field.type)) for field in table.schema], metadata=table.schema.metadata
    )
    return table if schema.equals(table.schema) else table.cast(schema)


def _check_added_columns(names: list[str]) -> None:
    taken = sorted(set(names) & set(_ADDED_COLUMNS))
    if taken:
        raise SpecError(
            f"herd.generate: the rows have column(s) {', '.join(taken)}, which generate adds to its result; rename them"
        )


def _positions(count: int) -> Any:
    import pyarrow as pa

    return pa.table({"row": pa.array(range(count), pa.int64())})


def _read_columns(frame: Any, columns: list[str]) -> Any:
    """The DataFrame's columns the job reads, as an Arrow table (column names as text, as Parquet has
    them)."""
    import pyarrow as pa

    by_name: dict[str, list[Any]] = {}
    for label in frame.columns:
        by_name.setdefault(str(label), []).append(label)
    chosen = []
    for column in columns:
        labels = by_name.get(column, [])
        if len(labels) > 1:
            raise SpecError(f"herd.generate: the rows have {len(labels)} columns named {column!r}; rename them")
        chosen.extend(labels)
    selected = frame[chosen]
    selected.columns = [str(label) for label in chosen]
    try:
        return pa.Table.from_pandas(selected, preserve_index=False)
    except (pa.ArrowException, ValueError) as error:
        raise _unstorable_column(selected, error) from None


def _unstorable_column(frame: Any, error: Exception) -> SpecError:
    """Which column Arrow could not store, and its first row of a type other than most rows'."""
    import pandas as pd
    import pyarrow as pa

    for name in frame.columns:
        try:
            pa.array(frame[name], from_pandas=True)
        except (pa.ArrowException, ValueError):
            pass
        else:
            continue
        first_row: dict[str, int] = {}
        counts: dict[str, int] = {}
        for position, value in enumerate(frame[name].tolist()):
            if pd.api.types.is_scalar(value) and pd.isna(value):  # None, NaN, NaT, pd.NA mix with anything
                continue
            kind = type(value).__name__
            first_row.setdefault(kind, position)
            counts[kind] = counts.get(kind, 0) + 1
        most = max(counts, key=counts.__getitem__, default=None)
        others = sorted((first_row[kind], kind) for kind in counts if kind != most)
        if most is not None and others:
            position, kind = others[0]
            label = frame.index[position : position + 1].tolist()[0]  # a Python value, shown plainly
            held = ", ".join(f"{count} {kind}" for kind, count in counts.items())
            return SpecError(
                f"herd.generate: column {name!r} mixes types ({held}): row {position} (index {label!r}) holds "
                f"{kind} {frame[name].iloc[position]!r:.80} where most rows hold {most}; make it one type "
                f"(data[{name!r}].astype(str), say) before calling generate"
            )
        return SpecError(f"herd.generate: column {name!r} cannot be stored as an Arrow column: {error}")
    return SpecError(f"herd.generate: the rows cannot be stored as an Arrow table: {error}")


def _positions_by_id(table: Any, id_column: str | None) -> dict[str, int]:
    """Each id's row, which its completions go back to; ids must be unique (empty ones are not ids)."""
    seen: dict[str, int] = {}
    if id_column is None:
        return seen
    for position, value in enumerate(table.column(id_column).to_pylist()):
        if value is None or value == "":
            continue
        if str(value) in seen:
            raise SpecError(
                f"id_column {id_column!r}: rows {seen[str(value)]} and {position} have the same id {value!r}; "
                "ids must be unique to match completions to rows"
            )
        seen[str(value)] = position
    return seen


# The modification time every staged file gets: a local file's version is its mtime, so the same rows
# staged again (after the file was deleted) are the same input to a kept output's fingerprint.
_STAGED_MTIME_NS = 946_684_800 * 10**9  # 2000-01-01


def _stage_rows(table: Any, workdir: Path | None, output: str | None) -> tuple[Path, bool]:
    """The rows as a Parquet file the replicas read, and whether it may be deleted after the call. For
    a kept output (`workdir` None) it is in the node's cache, named by its content and the output, with
    a fixed mtime: the same call stages the same file, so it resumes that output (or finds it done)."""
    import pyarrow.parquet as pq

    from common.node_cache import cache_root
    from common.storage import absolute

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    data = buffer.getvalue()
    content = hashlib.sha256(data).hexdigest()[:20]
    if workdir is not None:
        folder, name = workdir / "input", f"rows-{content}.parquet"
    else:
        folder = cache_root() / "generate-inputs"
        kept_before = folder / f"rows-{content}.parquet"  # how herd named them until 2026-12-04, kept for good
        if kept_before.exists():
            return kept_before, False  # the outputs written then name this file and its mtime
        output_key = hashlib.sha256(absolute(str(output)).rstrip("/").encode()).hexdigest()[:12]
        name = f"rows-{content}-{output_key}.parquet"
    path = folder / name
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.partial")
        partial.write_bytes(data)
        os.utime(partial, ns=(_STAGED_MTIME_NS, _STAGED_MTIME_NS))
        partial.replace(path)
    return path, True


def _with_completions(
    data: Any, table: Any, kind: str, spec: JobSpec, label: str, position_of: dict[str, int], summary: RunSummary
) -> Any:
    """The caller's rows, each once per sample, with the output columns; failed rows with `error`.
    `table`: the caller's rows as Arrow (None for pandas); `position_of`: the row of each id."""
    import pyarrow as pa

    from common.layout import OutputLayout
    from common.output_codec import DATA_COLUMN_TYPES, decode_data, decode_errors
    from common.storage import Storage
    from jobs.committed import committed_shards
    from jobs.planner import with_absolute_paths

    spec = with_absolute_paths(spec)
    storage = Storage(spec.storage, spec.retry)

    def position(row_id: str) -> int:
        found = position_of.get(row_id)
        return found if found is not None else int(row_id.removeprefix(f"{label}:"))

    added: list[tuple[int, int, dict[str, Any]]] = []
    for record in committed_shards(storage, OutputLayout(spec.output.path)).values():
        for stored in record.outputs:
            content = storage.read_bytes(stored.url)
            if stored.folder == "errors":
                for error in decode_errors(content, stored.url, label):
                    added.append((error["row"], -1, {"error": f"{error['stage']}: {error['reason']}"}))
            else:
                for row in decode_data(content, stored.url):
                    added.append((position(row["id"]), row["sample_index"], row))
    added.sort(key=lambda item: (item[0], item[1]))
    positions = [item[0] for item in added]
    # The job's columns, whether or not any row filled them (every row may have failed).
    columns = [name for name in output_columns(spec) if name in _ADDED_COLUMNS] + ["error"]
    values = {name: [item[2].get(name) for item in added] for name in columns}
    if kind == "pandas":
        import pandas as pd

        def nullable(arrow_type: pa.DataType) -> Any:
            # Pandas' nullable kinds (empty is pd.NA), whether or not any row failed: inferred from the
            # values, a column would be float or object, and `error` object of None when no row failed
            # but text when one did, so the same call's result written to Parquet would change schema.
            if pa.types.is_integer(arrow_type):
                return "Int64"
            if pa.types.is_boolean(arrow_type):
                return "boolean"
            return pd.StringDtype() if pa.types.is_string(arrow_type) else None

        # The caller's index labels stay, so that the result aligns with `data` (a column assigned
        # from it, a join).
        result = data.iloc[positions].copy()
        for name, column in values.items():
            dtype = nullable(DATA_COLUMN_TYPES.get(name, pa.string()))
            result[name] = pd.array(column, dtype=dtype) if dtype is not None else column
        result.attrs["herd_summary"] = summary.model_dump(mode="json")
        return result
    result = table.take(pa.array(positions, type=pa.int64()))
    for name, column in values.items():
        result = result.append_column(name, pa.array(column, type=DATA_COLUMN_TYPES.get(name, pa.string())))
    if kind == "hugging face":
        return _hugging_face_result(data, result, summary)
    metadata = {**(result.schema.metadata or {}), b"herd_summary": summary.model_dump_json().encode()}
    return result.replace_schema_metadata(metadata)
