"""Runs one job: plan, skip what is committed, dispatch the rest, then the summary and _SUCCESS."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow.compute as pc
import ray

from common.layout import OutputLayout
from common.retry import storage_problem
from common.storage import FileInfo, Storage
from common.versions import herd_version
from jobs.capacity import choose_device, cluster_shape, describe_cluster, replica_count, replicas_up_now
from jobs.committed import CommittedShards, ManifestWriter, committed_shards
from jobs.dispatch import Dispatcher, DispatchOutcome
from jobs.lease import Lease, acquire_lease
from jobs.manifest import OutputClaim, check_claim, record_run, remove_uncommitted_files, take_claim
from jobs.packing import packed_to_run
from jobs.planner import list_inputs, plan_shards, with_absolute_paths
from jobs.progress import Progress
from jobs.ray_auth import use_token_for_drivers
from jobs.replicas import ReplicaPool
from jobs.report import write_report
from jobs.run_stats import errors_by_stage, tokens_per_s_by_replica, top_error_reasons
from schemas.errors import ExitCode, OutputBusy, SpecError, UnplannableFiles
from schemas.job import JobSpec
from schemas.results import RunSummary, RunTotals
from schemas.shard import AnyShard, ErrorRetry, Shard, ShardPack, ShardRecord, planned_count
from workers.replica import EngineFactory, build_vllm_engine

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    summary: RunSummary
    exit_code: ExitCode


_STARTING_RAY = threading.Lock()


def ensure_ray(quiet: bool = False) -> None:
    """Joins the Ray named by RAY_ADDRESS, or starts an embedded local one. `quiet`: the workers'
    output does not stream to this terminal, and Ray says only what goes wrong. Safe from any thread,
    and from several at once (a web app's, a notebook's): one of them starts Ray."""
    with _STARTING_RAY:
        if ray.is_initialized():
            return
        if threading.current_thread() is threading.main_thread():
            _start_ray(quiet)
        else:
            _start_ray_on_a_lasting_thread(quiet)


def _start_ray_on_a_lasting_thread(quiet: bool) -> None:
    """Ray binds its processes (GCS, raylet) to the thread that starts them (Linux's parent-death
    signal follows the thread, not the process): started on a caller's thread, the embedded cluster
    would die when that thread ends, under every later call. A thread that lasts as long as the
    process starts it instead."""
    started, failed = threading.Event(), []

    def parent() -> None:
        try:
            _start_ray(quiet)
        except BaseException as error:  # noqa: BLE001 - handed to the caller, which raises it
            failed.append(error)
            return
        finally:
            started.set()
        threading.Event().wait()  # never set: Ray's processes live until the process ends

    threading.Thread(target=parent, name="herd-ray-processes", daemon=True).start()
    started.wait()
    if failed:
        raise failed[0]


def _start_ray(quiet: bool) -> None:
    # ray.init replaces the SIGTERM handler with one that exits at once (code 15); keep the
    # caller's, so that the CLI can stop its replicas and exit with "interrupted".
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    address = os.environ.get("RAY_ADDRESS")
    options: dict = {"log_to_driver": not quiet, "logging_level": logging.ERROR if quiet else logging.INFO}
    try:
        if address:
            use_token_for_drivers()
            ray.init(address=address, **options)
        else:
            ray.init(include_dashboard=False, **options)
    except SystemExit as exit_:
        # A SIGTERM that came while Ray was starting met Ray's handler: hand it to the caller's.
        if exit_.code == signal.SIGTERM and callable(sigterm_handler):
            sigterm_handler(signal.SIGTERM, None)
        raise
    finally:
        if threading.current_thread() is threading.main_thread() and sigterm_handler is not None:
            signal.signal(signal.SIGTERM, sigterm_handler)


def run_job(
    job: JobSpec,
    *,
    overwrite: bool = False,
    pool: ReplicaPool | None = None,
    engine_factory: EngineFactory = build_vllm_engine,
    retry_errors: str | None = None,
    progress: Progress | None = None,
    quiet: bool = False,
    stop: threading.Event | None = None,
) -> RunOutcome:
    """Plans, claims the output, runs the shards not committed yet and writes the summary. Without
    `pool`, the run starts its own replicas, while it plans when there is more than one file to plan.
    `pool` lets several jobs on the same model share warm engines (tests, notebooks).
    `retry_errors` ("generate" or "all") also runs again the error rows of those stages in shards
    committed earlier. `progress` shows the run as it goes; `quiet` keeps the replicas' output in
    their log files. `stop`, once set, ends the run early: running shards finish and commit, the
    others are left for a later run (the outcome is then shards_failed)."""
    started = time.perf_counter()
    job = with_absolute_paths(job)
    storage = Storage(job.storage, job.retry)
    layout = OutputLayout(job.output.path)

    files = list_inputs(storage, job).files
    # The first file's plan checks the input against a real file (its columns, its format).
    first, rest = _first_file_planned(job, files, storage), files[1:]
    own_pool = pool is None
    if pool is not None and not pool.serves(job.model):
        raise SpecError("the replica pool given serves a different model configuration")
    # A run that starts its replicas while it plans takes the output's lease first: on an output
    # another live run holds, it exits busy before any engine loads (on GPUs, minutes of weights onto
    # GPUs the live run may need). Otherwise the lease waits for the plan, so that an input that
    # refuses the job leaves nothing at the output.
    starts_while_planning = own_pool and any(info.size for info in rest)
    lease: Lease | None = _lease_of(storage, layout, job) if starts_while_planning else None
    claim: OutputClaim | None = None
    try:
        if starts_while_planning:
            # Replicas load their engines while the driver reads the other files' footers, once
            # nothing cheap refuses the job (the model's and adapters' files, the output's owner).
            claim = check_claim(storage, layout, job, files, overwrite)
            pool = replicas_started_while_planning(job, engine_factory, quiet)
        try:
            shards = first + plan_shards(job.input, rest, storage, job.prompt)
            if not shards and job.input.require_rows:
                raise SpecError(
                    f"input.path: the {len(files)} input file(s) matching {job.input.path!r} hold no rows "
                    "(input.require_rows is set)"
                )
            if lease is None:  # no replica started while planning: the lease and the claim come now
                lease = _lease_of(storage, layout, job)
                claim = check_claim(storage, layout, job, files, overwrite)
            run = _Run(job, storage, layout, files, shards, claim, lease, started)
            options = _Options(pool, own_pool, engine_factory, quiet, retry_errors, progress, stop)
            return _run_holding_the_lease(run, options)
        finally:
            if own_pool and pool is not None:
                pool.shutdown()
    finally:
        if lease is not None:
            lease.release()


# Past a first file that cannot be planned, this many more are planned to name the others that
# cannot be: all of 100,000 would cost minutes of footers before the error.
FILES_CHECKED_AFTER_A_BAD_FIRST = 1000


def _first_file_planned(job: JobSpec, files: list[FileInfo], storage: Storage) -> list[Shard]:
    """The first file's shards. If it cannot be planned, the next files are planned too (no engine
    has started) so that the error names the others that cannot be, not only the first."""
    try:
        return plan_shards(job.input, files[:1], storage, job.prompt)
    except UnplannableFiles as first_problem:
        problems = [first_problem]
        try:
            plan_shards(job.input, files[1 : 1 + FILES_CHECKED_AFTER_A_BAD_FIRST], storage, job.prompt)
        except UnplannableFiles as more:
            problems.append(more)
        unchecked = len(files) > 1 + FILES_CHECKED_AFTER_A_BAD_FIRST
        if len(problems) == 1 and not unchecked:
            raise
        raise UnplannableFiles.joined(problems, stopped=unchecked) from None


def _lease_of(storage: Storage, layout: OutputLayout, job: JobSpec) -> Lease:
    try:
        return acquire_lease(storage, layout, job.output.lease_ttl_s)
    except (SpecError, OutputBusy):
        raise
    except Exception as error:  # noqa: BLE001 - a denied or absent bucket, or storage that keeps failing
        raise storage_problem(f"output.path: cannot write to {job.output.path}", error) from None


def warm_replica_pool(job: JobSpec, engine_factory: EngineFactory, quiet: bool) -> ReplicaPool:
    """As many replicas as the cluster holds or can add for the job, on the device the job and the
    cluster choose, kept warm for the jobs to come (notebooks, the batch service). Its actors start
    when a dispatcher first runs."""
    ensure_ray(quiet)
    shape = cluster_shape()
    device = choose_device(job.resources.accelerator, shape)
    count = replica_count(job, shape, device, sys.maxsize)
    log.info("%d replica(s) on %s kept warm; the cluster: %s", count, device, describe_cluster(shape, device))
    return ReplicaPool(job.model, job, count, engine_factory, quiet=quiet, device=device)


def replicas_started_while_planning(job: JobSpec, engine_factory: EngineFactory, quiet: bool) -> ReplicaPool:
    """A run's own replicas, started once its first input file is planned and before the rest are:
    as many as the nodes up now hold for the job (replicas_up_now), so that their engines load while
    the driver reads the other files' footers. The plan then sizes the pool (_sized_to_plan)."""
    ensure_ray(quiet)
    shape = cluster_shape()
    device = choose_device(job.resources.accelerator, shape)
    count = replicas_up_now(job, shape, device)
    if count:  # none where every node would have to be added: the plan decides how many to ask for
        log.info(
            "starting %d replica(s) on %s while planning; the cluster: %s",
            count,
            device,
            describe_cluster(shape, device),
        )
    pool = ReplicaPool(job.model, job, count, engine_factory, quiet=quiet, device=device)
    pool.start_missing()
    return pool


def _sized_to_plan(
    job: JobSpec, pool: ReplicaPool | None, shards_to_run: int, engine_factory: EngineFactory, quiet: bool
) -> ReplicaPool | None:
    """The run's own pool, as many replicas as its shards to run can use: of those started while
    planning, the ones beyond that end, and those the nodes up now could not hold are asked for (the
    autoscaler's cue); with nothing to run, none."""
    if not shards_to_run:
        if pool is not None:
            pool.shutdown()
        return pool
    ensure_ray(quiet)
    shape = cluster_shape()
    device = pool.device if pool is not None else choose_device(job.resources.accelerator, shape)
    count = replica_count(job, shape, device, shards_to_run)
    log.info(
        "%d replica(s) on %s for %d shard(s) to run; the cluster: %s",
        count,
        device,
        shards_to_run,
        describe_cluster(shape, device),
    )
    if pool is None:
        return ReplicaPool(job.model, job, count, engine_factory, quiet=quiet, device=device)
    pool.resize(count)
    return pool


@dataclass(frozen=True)
class _Run:
    """What a run has decided before it generates: the job, where it writes, what it plans."""

    job: JobSpec
    storage: Storage
    layout: OutputLayout
    files: list[FileInfo]
    shards: list[Shard]
    claim: OutputClaim
    lease: Lease
    started: float  # time.perf_counter() at the start


@dataclass(frozen=True)
class _Options:
    """How the caller wants it run (see run_job)."""

    pool: ReplicaPool | None  # the caller's, or this run's own started while it planned (or not yet)
    own_pool: bool  # started for this run: sized to its plan, ended after its shards
    engine_factory: EngineFactory
    quiet: bool
    retry_errors: str | None
    progress: Progress | None
    stop: threading.Event | None


def _run_holding_the_lease(run: _Run, options: _Options) -> RunOutcome:
    job, storage, layout, shards, lease = run.job, run.storage, run.layout, run.shards, run.lease
    pool, progress = options.pool, options.progress
    take_claim(storage, layout, job, run.claim)
    files_added = run.claim.files_added
    if files_added:
        log.info("%d input file(s) new since the last run: %s", len(files_added), ", ".join(files_added[:5]))
    committed = committed_shards(storage, layout)
    planned_ids = {shard.shard_id for shard in shards}
    left = [shard for shard in shards if shard.shard_id not in committed]
    log.info("%d shards planned, %d already committed, %d to run", len(shards), len(shards) - len(left), len(left))
    todo = packed_to_run(job, left)
    if len(todo) < len(left):
        log.info("small shards packed: %d shards run as %d", len(left), len(todo))
    if options.retry_errors is not None:
        retried = _error_retries(shards, committed, options.retry_errors)
        log.info("%d committed shard(s) with error rows to run again (stages: %s)", len(retried), options.retry_errors)
        todo += retried

    manifest = ManifestWriter(storage, layout)

    def commit(records: list[ShardRecord]) -> list[Exception | None]:
        lease.check()  # a run whose lease was taken over commits nothing more
        return manifest.commit_all(records)

    outcome = DispatchOutcome()
    replicas = 0
    if options.own_pool:
        pool = _sized_to_plan(job, pool, len(todo), options.engine_factory, options.quiet)
    if todo:
        assert pool is not None
        replicas = pool.size
        if progress is not None:
            progress.start(todo)
        try:
            outcome = Dispatcher(job, pool, commit, progress, options.stop).run(todo)
        finally:
            if progress is not None:
                progress.close()
            if options.own_pool:
                pool.shutdown()  # now, not after the summary and report: their GPUs are free

    lease.check()
    # The manifest as stored decides what is done, not what this driver saw: a commit whose write
    # landed although its answer was lost counts, and keeps its files.
    manifest.finish()
    stored = committed_shards(storage, layout)
    records = stored.only(planned_ids)
    landed = [shard_id for shard_id in outcome.failed if shard_id in records]
    if landed:
        log.info("%d shard(s) whose commit seemed to fail were committed after all (its answer was lost)", len(landed))
        outcome.failed = {shard_id: why for shard_id, why in outcome.failed.items() if shard_id not in records}
        outcome.committed.update(landed)
    removed = remove_uncommitted_files(storage, layout, stored)
    if removed:
        log.info("removed %d files left by attempts that did not commit", removed)
    wall = time.perf_counter() - run.started
    skipped = len(shards) - planned_count(todo)
    summary = _summarize(job, records, outcome, len(shards), skipped, replicas, wall, files_added)
    exit_code = _exit_code(summary)
    record_run(
        storage,
        layout,
        {
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "herd": herd_version(),
            "status": summary.status,
            **summary.this_run.model_dump(),
        },
    )
    storage.write_text(layout.summary, json.dumps(summary.model_dump(mode="json"), indent=2))
    try:
        write_report(storage, layout, stored, summary.model_dump(mode="json"))
    except Exception as error:  # noqa: BLE001 - the report is for people; the run's outcome stands without it
        log.warning("could not write %s: %s: %s", layout.report, type(error).__name__, error)
    if exit_code == ExitCode.SUCCESS:
        storage.write_text(layout.success_marker, "")
    return RunOutcome(summary, exit_code)


RETRY_STAGES = {"generate": ("generate",), "all": ("read", "render", "generate")}


def _error_retries(shards: list[Shard], committed: CommittedShards, stages: str) -> list[AnyShard]:
    """The committed shards and packs with error rows, each to run its error rows of `stages` again.
    A pack is run as the pack it was committed as, its members taken from the plan."""
    with_errors = committed.with_error_rows()
    planned = {shard.shard_id: shard for shard in shards}
    retried: list[AnyShard] = []
    for record_id in sorted(with_errors):
        record = committed[record_id]
        retry = ErrorRetry(stages=RETRY_STAGES[stages], previous=record)
        if not record.members:
            if record_id in planned:
                retried.append(planned[record_id].with_retry(retry))
        elif all(member in planned for member in record.members):
            retried.append(ShardPack(tuple(planned[member] for member in record.members), retry))
        else:  # not from herd: a committed pack's files are in the job's fingerprint, so planned again
            log.warning("not running the error rows of %s again: not all of its shards are planned", record_id)
    return retried


def _summarize(
    job: JobSpec,
    records: CommittedShards,
    outcome: DispatchOutcome,
    shards: int,
    skipped: int,
    replicas: int,
    wall_seconds: float,
    files_added: list[str],
) -> RunSummary:
    total = records.total
    this_run = records.only(outcome.committed)
    completion_tokens_this_run = this_run.total("completion_tokens")
    reasons = records.error_reasons()
    first_finished = pc.min(this_run.table.column("finished_at")).as_py()  # None: nothing ran
    rows_in, error_rows = total("rows_in"), total("error_rows")
    status = "succeeded"
    if outcome.failed:
        status = "no_capacity" if outcome.no_capacity else "shards_failed"
    elif rows_in and error_rows / rows_in > job.max_error_fraction:
        status = "errors_over_threshold"
    return RunSummary(
        job=job.name,
        status=status,
        output=job.output.path,
        model=job.model.path,
        rows_in=rows_in,
        rows_out=total("rows_out"),
        error_rows=error_rows,
        reused_rows=total("reused_rows"),
        prompt_tokens=total("prompt_tokens"),
        completion_tokens=total("completion_tokens"),
        tokens_per_s=round(completion_tokens_this_run / wall_seconds, 2) if wall_seconds > 0 else 0.0,
        wall_seconds=round(wall_seconds, 3),
        shards=shards,
        shards_run=len(outcome.committed),
        shards_skipped=skipped,
        shards_failed=sorted(f"{shard_id}: {reason}" for shard_id, reason in outcome.failed.items()),
        attempts=outcome.attempts,
        replicas=replicas,
        replicas_replaced=outcome.replicas_replaced,
        errors_by_stage=errors_by_stage(reasons),
        top_error_reasons=top_error_reasons(reasons),
        tokens_per_s_by_replica=tokens_per_s_by_replica(this_run.table),
        time_to_first_shard_s=None
        if first_finished is None
        else round(first_finished - (time.time() - wall_seconds), 2),
        this_run=RunTotals(
            files_added=files_added,
            shards_run=len(outcome.committed),
            rows_in=this_run.total("rows_in"),
            rows_out=this_run.total("rows_out"),
            error_rows=this_run.total("error_rows"),
            completion_tokens=completion_tokens_this_run,
        ),
    )


def _exit_code(summary: RunSummary) -> ExitCode:
    if summary.status == "shards_failed":
        return ExitCode.SHARDS_FAILED
    if summary.status == "no_capacity":
        return ExitCode.NO_CAPACITY
    if summary.status == "errors_over_threshold":
        return ExitCode.ERRORS_OVER_THRESHOLD
    return ExitCode.SUCCESS
