"""Runs the batches: validates each, answers it as a herd job, and writes its output and error files.

Batches are taken fairly (the owner served longest ago goes first, so one key's 50 batches do not
starve another's one), at most `limits.max_concurrent_batches` at once and one per served model at a
time (a model's warm engines serve one job at a time). A batch that has had its model for
`limits.turn_s` while another owner's batch waits gives it up at a shard boundary and resumes on its
next turn, so a team's 10-line batch does not wait out another's million lines.

Everything is read from the root, so a server started again, or a second server on the same root,
picks up what is unfinished: herd's lease on each job's output lets only one of them run it, and its
manifest lets a batch resume where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic import ValidationError

from common.jsonl import jsonl_lines
from common.layout import OutputLayout
from common.output_codec import decode_data, decode_errors, encode_errors
from jobs.committed import committed_shards
from schemas.errors import OutputBusy, ShardsFailed
from schemas.job import SamplingSpec
from schemas.shard import AnyShard, ShardRecord, output_folder_and_name
from service.config import ServedModel, ServiceSpec
from service.metrics import ServiceMetrics
from service.objects import TERMINAL, BatchError, BatchErrors, BatchRecord, BatchUsage, FileObject, FileRecord
from service.store import Store, output_file_id
from service.webhooks import WebhookSender
from workers.request_formats import RequestError, openai_batch_request

log = logging.getLogger("herd.service")

_POLL_S = 1.0
_CLOSE_WAIT_S = 60.0  # the most close() waits for each running batch, and for the look for work
# How much of a finished batch's answers finalize reads at once (into memory, in one round trip).
_SHARD_FILES_READ_AT_ONCE = 64
_SHARD_BYTES_READ_AT_ONCE = 16 * 1024 * 1024
_SWEEP_S = 60.0  # how often expired files are looked for (they read as gone from the moment they expire)
_MAX_LISTED_ERRORS = 100  # OpenAI lists a failed batch's line errors; a file of 50k bad lines lists these
# A look for work not done for this long (every one failed, or one hangs on storage): the service is not
# doing its work, and GET /health says so. Storage calls retry for minutes; a blip is not an outage.
UNHEALTHY_AFTER_S = 60.0


def now() -> int:
    return int(time.time())


class BatchWorker:
    def __init__(self, spec: ServiceSpec, store: Store, webhooks: WebhookSender | None) -> None:
        self.spec = spec
        self.store = store
        self.webhooks = webhooks
        # What its looks found and the batches it ended, for GET /metrics; its last look, for /health.
        self.metrics = ServiceMetrics()
        self._running: dict[str, threading.Thread] = {}
        self._models_busy: set[str] = set()
        self._last_served: dict[str, float] = {}  # owner: when a batch of theirs last took a model
        # The owners with a batch waiting, by the model it waits for (None: not validated yet, so any).
        self._owners_waiting: dict[str | None, set[str]] = {}
        # Batches stopped to give their model to another owner's: when they did.
        self._gave_way: dict[str, float] = {}
        self._validating: dict[str, str] = {}  # batch id: owner, of the batches being validated now
        self._told_elsewhere: set[str] = set()  # batches whose running on another server was logged
        self._job_sampling = job_sampling_of(spec)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._stops: dict[str, threading.Event] = {}
        self._thread = threading.Thread(target=self._loop, name="herd-batches", daemon=True)

    def health_problem(self) -> str | None:
        """Why the service cannot do its work now, or None: what GET /health answers. Says nothing of
        any owner's batches (a load balancer asks without a key)."""
        if not self._thread.is_alive():
            return "the batch worker is not running"
        waited = self.metrics.last_look_age_s()
        if waited is None:
            return "starting: the state root has not been read yet"
        if waited > UNHEALTHY_AFTER_S:
            return f"the state root has not been readable for {waited:.0f} s"
        return None

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stops taking batches and asks the running ones to stop (their committed shards are kept;
        the next server on this root resumes them); waits for them and for the look for work, each
        for a bounded time (a call hanging on storage does not hold shutdown for its retries)."""
        self._closing.set()
        with self._lock:  # no batch starts after this: _take_batches looks at _closing under the lock
            stops, running = list(self._stops.values()), list(self._running.values())
        for stop in stops:
            stop.set()
        for thread in running:
            thread.join(timeout=_CLOSE_WAIT_S)
        if self._thread.is_alive():
            self._thread.join(timeout=_CLOSE_WAIT_S)

    def _loop(self) -> None:
        swept = -_SWEEP_S
        while not self._closing.is_set():
            try:
                waiting = self.store.open_batches()
                if time.monotonic() - swept >= _SWEEP_S:
                    running_inputs = {record.batch.input_file_id for record in waiting}
                    gone = self.store.delete_expired_files(keep=running_inputs.__contains__)
                    if gone:
                        log.info("deleted %d expired files", len(gone))
                    swept = time.monotonic()
                self._take_batches(waiting)
                self.metrics.looked(waiting)
            except Exception:
                log.exception("could not look for batches; trying again")
            self._closing.wait(_POLL_S)

    def _take_batches(self, waiting: list[BatchRecord]) -> None:
        with self._lock:
            if self._closing.is_set():  # a look that began before close() found these
                return
            for thread_id in [key for key, thread in self._running.items() if not thread.is_alive()]:
                del self._running[thread_id]
                self._validating.pop(thread_id, None)
            waiting = [record for record in waiting if record.batch.id not in self._running]
            owners_waiting = _owners_waiting(waiting)
            # A batch being validated will want a model next: one that gave way does not take it back first.
            owners_waiting.setdefault(None, set()).update(self._validating.values())
            for record in fair_order(waiting, self._last_served):
                if len(self._running) >= self.spec.limits.max_concurrent_batches:
                    break
                model = self._model_of(record)
                if model is not None and model.name in self._models_busy:
                    continue
                gave_way_at = self._gave_way.get(record.batch.id)
                # Cancelled since, it only needs finalizing: no turn to wait for.
                if gave_way_at is not None and model is not None and record.batch.status == "in_progress":
                    others = _other_owners_waiting(owners_waiting, record.owner, model.name)
                    if any(self._last_served.get(other, 0.0) < gave_way_at for other in others):
                        continue  # until each owner it gave way to has had a turn (a stream of theirs: one)
                self._gave_way.pop(record.batch.id, None)
                if model is not None:  # validating takes no model, and no turn
                    self._last_served[record.owner] = time.monotonic()
                    self._models_busy.add(model.name)
                else:
                    self._validating[record.batch.id] = record.owner
                thread = threading.Thread(target=self._run, args=(record, model), daemon=True)
                self._running[record.batch.id] = thread
                thread.start()
            self._owners_waiting = _owners_waiting(
                [record for record in waiting if record.batch.id not in self._running]
            )

    def _model_of(self, record: BatchRecord) -> ServedModel | None:
        if record.served_model is None:
            return None  # not validated yet: it runs no engine until it is
        return next((model for model in self.spec.models if model.name == record.served_model), None)

    def _run(self, record: BatchRecord, model: ServedModel | None) -> None:
        try:
            self._advance(record)
        except Exception as error:
            log.exception("batch %s failed", record.batch.id)
            self._fail(record, "server_error", f"{type(error).__name__}: {error}")
        finally:
            with self._lock:
                if model is not None:
                    self._models_busy.discard(model.name)

    def _advance(self, record: BatchRecord) -> None:
        """Takes the batch from where its record says it is to a terminal status, or leaves it for
        a later pass (another server holds it)."""
        batch_id, owner = record.batch.id, record.owner
        if record.batch.status == "validating":
            # Validated (or failed): a model now runs it, on a later pass when that model is free.
            self._validate(record)
            return
        if record.batch.status == "in_progress":
            ran = self._generate(record)
            if not ran or self._closing.is_set():
                return  # another server runs it, or this one stops: the next one resumes it
        record = self.store.batch(owner, batch_id) or record
        self._finalize(record)

    # Validating

    def _validate(self, record: BatchRecord) -> BatchRecord:
        """Every line checked before any engine time is spent: the batch fails listing each bad line."""
        batch = record.batch
        file = self.store.file(record.owner, batch.input_file_id)
        if file is None:
            return self._fail(record, "invalid_file", f"input_file_id {batch.input_file_id}: no such file")
        # Read a range at a time, as lines: a 200 MB input is never whole in memory.
        errors, models, total = check_lines(self.store.file_lines(record.owner, file.file.id), self._job_sampling)
        served = {name: self.spec.model_named(name) for name in models}
        unknown = sorted(name for name, model in served.items() if model is None)
        names = sorted({model.name for model in served.values() if model is not None})
        if unknown:
            errors.insert(0, BatchError(code="model_not_found", message=f"no served model is named {unknown[0]!r}"))
        elif len(names) > 1:
            message = f"a batch runs one model; its lines name {', '.join(names)}"
            errors.insert(0, BatchError(code="invalid_request", message=message))
        if not total:
            errors.append(BatchError(code="empty_file", message="the input file holds no request"))
        if errors:
            return self._fail(record, errors[0].code, errors[0].message, errors)
        model = next(model for model in self.spec.models if model.name == names[0])
        chat_line = None
        if model.chat_unavailable is not None:
            chat_line = _first_chat_line(self.store.file_lines(record.owner, file.file.id))
        if chat_line is not None:
            error = BatchError(code="invalid_request", message=model.chat_unavailable, param="url", line=chat_line)
            return self._fail(record, error.code, error.message, [error])

        def start(current: BatchRecord) -> bool:
            if current.batch.status != "validating":
                return False
            current.batch.status, current.batch.in_progress_at = "in_progress", now()
            current.batch.request_counts.total = total
            current.batch.model = model.name
            current.served_model = model.name
            return True

        return self.store.update_batch(record.owner, batch.id, start)

    # Generating

    def _generate(self, record: BatchRecord) -> bool:
        """Runs the batch's herd job until it is done, cancelled or expired; False when another server
        holds it."""
        model = self._model_of(record)
        assert model is not None, "an in-progress batch has its model"
        batch = record.batch
        job = model.job_for(
            self.store.file_content_url(record.owner, batch.input_file_id), self.store.job_root(batch.id)
        )
        stop = threading.Event()
        self._stops[batch.id] = stop
        if self._closing.is_set():  # close() came between this batch's start and now
            stop.set()
        counts = _Counts(self.store, record)
        watch = threading.Thread(target=self._watch, args=(record, model, counts, stop), daemon=True)
        watch.start()
        try:
            import herd

            herd.run(job, progress=counts, keep_engines=True, stop=stop)
        except OutputBusy:
            # Said once: the worker finds it again every second for as long as the other server runs it.
            if batch.id not in self._told_elsewhere:
                self._told_elsewhere.add(batch.id)
                log.info("batch %s runs on another server; leaving it (said once)", batch.id)
            return False
        except ShardsFailed:
            if not stop.is_set():
                raise
            if batch.id in self._gave_way:
                log.info(
                    "batch %s gives %s to another owner's batch; it resumes on its next turn", batch.id, model.name
                )
                return False
        finally:
            stop.set()  # ends the watch
            self._stops.pop(batch.id, None)
        self._gave_way.pop(batch.id, None)  # done, or cancelled or expired, whatever its turn was
        return True

    def _watch(self, record: BatchRecord, model: ServedModel, counts: _Counts, stop: threading.Event) -> None:
        """Sets `stop` when the batch is cancelled (from any server), its window ends, or its turn
        with the model is over and another owner's batch waits for it. A turn commits at least one
        shard, however long the job takes to start: each one moves its batch on."""
        turn_ends = time.monotonic() + self.spec.limits.turn_s
        while not stop.wait(0.5):
            current = self.store.batch(record.owner, record.batch.id)
            expired = current is not None and current.batch.expires_at is not None and now() >= current.batch.expires_at
            if current is None or current.batch.status == "cancelling" or expired or self._closing.is_set():
                stop.set()
            elif (
                time.monotonic() >= turn_ends
                and counts.committed_this_run > 0
                and _other_owners_waiting(self._owners_waiting, record.owner, model.name)
            ):
                self._gave_way[record.batch.id] = time.monotonic()
                stop.set()

    # Finalizing

    def _finalize(self, record: BatchRecord) -> None:
        """The output and error files from what the job committed; a request left unanswered (the
        batch was cancelled or expired) gets an error line."""
        batch = record.batch
        if batch.status in TERMINAL:
            return

        def finalizing(current: BatchRecord) -> bool:
            if current.batch.status in TERMINAL:
                return False
            if current.batch.status != "cancelling":
                current.batch.status = "finalizing"
            current.batch.finalizing_at = current.batch.finalizing_at or now()
            return True

        record = self.store.update_batch(record.owner, batch.id, finalizing)
        committed = committed_shards(self.store.storage, OutputLayout(self.store.job_root(batch.id)))
        prompt_tokens, completion_tokens = committed.total("prompt_tokens"), committed.total("completion_tokens")
        # The answers go through local files, so a batch of 50k long answers is never whole in memory.
        with (
            tempfile.TemporaryDirectory(prefix="herd-finalize-") as spool,
            _Spool(os.path.join(spool, "output")) as outputs,
            _Spool(os.path.join(spool, "errors")) as errors,
        ):
            answered = self._gather_answers(committed.output_urls(), committed.output_sizes(), outputs, errors)
            requests: list[str] = []
            if record.served_model is not None:  # validated: its lines are requests
                requests = custom_ids_in(self.store.file_lines(record.owner, batch.input_file_id))
            unanswered = [custom_id for custom_id in requests if custom_id not in answered]
            ending = "completed"
            if record.batch.status == "cancelling":
                ending = "cancelled"
            elif unanswered and batch.expires_at is not None and now() >= batch.expires_at:
                ending = "expired"
            if unanswered:
                reason = {
                    "cancelled": "the batch was cancelled before this request ran",
                    "expired": "the batch's completion window ended before this request ran",
                }.get(ending, "the request was not answered")
                code = {"cancelled": "batch_cancelled", "expired": "batch_expired"}.get(ending, "batch_failed")
                lines = encode_errors(
                    [{"id": custom_id, "stage": "generate", "reason": reason} for custom_id in unanswered], "openai"
                )
                errors.add(lines.replace(b'"herd_generate_error"', json.dumps(code).encode()))
            failed = errors.lines
            output_id = self._save_output(record, "output", outputs) if outputs.lines else None
            error_id = self._save_output(record, "errors", errors) if errors.lines else None

        def done(current: BatchRecord) -> bool:
            if current.batch.status in TERMINAL:
                return False
            current.batch.status = ending
            setattr(current.batch, f"{ending}_at", now())
            current.batch.output_file_id, current.batch.error_file_id = output_id, error_id
            total = current.batch.request_counts.total = len(requests)
            current.batch.request_counts.failed = failed
            current.batch.request_counts.completed = total - failed
            current.batch.usage = BatchUsage(
                input_tokens=prompt_tokens,
                output_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            )
            return True

        record = self._end(record, done)
        log.info("batch %s %s: %s", batch.id, record.batch.status, record.batch.request_counts.model_dump())

    def _gather_answers(self, urls: list[str], sizes: list[int], outputs: _Spool, errors: _Spool) -> set[str]:
        """The job's data and error files gathered into the batch's output and error files; returns
        the custom_ids they answer. Shard files are read a group at a time: one round trip on S3 per
        group, not per shard, and no more than a group in memory."""
        answered: set[str] = set()
        for group in _groups(urls, sizes):
            contents = self.store.storage.read_many(group)
            for url in group:  # in the manifest's order: two servers finalizing write the same bytes
                content = contents.pop(url)  # let go as it is written, not when the next group is read
                if output_folder_and_name(url)[0] == "errors":
                    errors.add(content)
                    answered.update(str(error["id"]) for error in decode_errors(content, url, ""))
                else:
                    outputs.add(content)
                    answered.update(str(row["id"]) for row in decode_data(content, url, ["id"]))
        return answered

    def _save_output(self, record: BatchRecord, kind: str, spool: _Spool) -> str:
        """An output file of the batch (its id comes from the batch's: see output_file_id)."""
        file_id = output_file_id(record.batch.id, kind)
        spool.close()
        self.store.upload_file_content(record.owner, file_id, spool.path)
        created = now()
        lasts = record.output_expires_after_s
        self.store.save_file(
            FileRecord(
                owner=record.owner,
                file=FileObject(
                    id=file_id,
                    bytes=spool.bytes,
                    created_at=created,
                    filename=f"{record.batch.id}_{kind}.jsonl",
                    purpose="batch_output",
                    expires_at=created + lasts if lasts is not None else None,
                ),
                lines=spool.lines,
            )
        )
        return file_id

    def _fail(
        self, record: BatchRecord, code: str, message: str, errors: list[BatchError] | None = None
    ) -> BatchRecord:
        listed = (errors or [BatchError(code=code, message=message)])[:_MAX_LISTED_ERRORS]

        def failed(current: BatchRecord) -> bool:
            if current.batch.status in TERMINAL:
                return False
            current.batch.status, current.batch.failed_at = "failed", now()
            current.batch.errors = BatchErrors(data=listed)
            return True

        record = self._end(record, failed)
        log.info("batch %s failed: %s", record.batch.id, message)
        return record

    def _end(self, record: BatchRecord, change: Callable[[BatchRecord], bool]) -> BatchRecord:
        """Applies `change`, which ends the batch or returns False where it has ended already, and
        counts the end and sends its webhook only when this update is the one that ended it: a failure
        racing a cancel, or two servers finishing one batch, tell the world once."""
        ended_here = False

        def once(current: BatchRecord) -> bool:
            nonlocal ended_here
            ended_here = change(current)  # the last call is the one whose write stood
            return ended_here

        record = self.store.update_batch(record.owner, record.batch.id, once)
        if ended_here:
            self.metrics.batch_ended(record)
            if self.webhooks is not None:
                self.webhooks.send(f"batch.{record.batch.status}", {"id": record.batch.id})
        return record


class _Counts:
    """Told of every committed shard (herd's progress interface): keeps request_counts current."""

    def __init__(self, store: Store, record: BatchRecord) -> None:
        self.store, self.owner, self.batch_id = store, record.owner, record.batch.id
        self.committed_this_run = 0

    def start(self, shards: list[AnyShard]) -> None:
        """The counts from what is committed already (a batch resumed after a restart)."""
        layout = OutputLayout(self.store.job_root(self.batch_id))
        done = committed_shards(self.store.storage, layout)
        failed = done.total("error_rows")
        self._update(done.total("rows_in") - failed, failed, since_zero=True)

    def committed(self, record: ShardRecord, shard: AnyShard) -> None:
        self.committed_this_run += 1
        self._update(record.rows_in - record.error_rows, record.error_rows)

    def _update(self, completed: int, failed: int, since_zero: bool = False) -> None:
        def add(current: BatchRecord) -> bool:
            if current.batch.status in TERMINAL:
                return False
            counts = current.batch.request_counts
            counts.completed = completed + (0 if since_zero else counts.completed)
            counts.failed = failed + (0 if since_zero else counts.failed)
            return True

        self.store.update_batch(self.owner, self.batch_id, add)

    def failed(self) -> None:
        pass

    def replicas(self, up: int) -> None:
        pass

    def close(self) -> None:
        pass


def _groups(urls: list[str], sizes: list[int]) -> Iterator[list[str]]:
    """The files in groups of at most _SHARD_FILES_READ_AT_ONCE files and _SHARD_BYTES_READ_AT_ONCE
    bytes (a file larger than that alone), in their order."""
    group: list[str] = []
    held = 0
    for url, size in zip(urls, sizes, strict=True):
        if group and (len(group) == _SHARD_FILES_READ_AT_ONCE or held + size > _SHARD_BYTES_READ_AT_ONCE):
            yield group
            group, held = [], 0
        group.append(url)
        held += size
    if group:
        yield group


class _Spool:
    """A local file that an output file is gathered in, with its size and its lines counted."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed before the upload, and on leaving its with
        self.bytes = self.lines = 0

    def add(self, lines: bytes) -> None:
        self._file.write(lines)
        self.bytes += len(lines)
        self.lines += len(jsonl_lines(lines.decode("utf-8")))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> _Spool:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()


def _owners_waiting(waiting: list[BatchRecord]) -> dict[str | None, set[str]]:
    """The owners of these batches by the model each waits for (None: not validated yet, so any)."""
    owners: dict[str | None, set[str]] = {}
    for record in waiting:
        owners.setdefault(record.served_model, set()).add(record.owner)
    return owners


def _other_owners_waiting(owners_waiting: dict[str | None, set[str]], owner: str, model_name: str) -> set[str]:
    """The owners other than `owner` with a batch waiting for this model, or for validation (any model)."""
    return (owners_waiting.get(model_name, set()) | owners_waiting.get(None, set())) - {owner}


def fair_order(waiting: list[BatchRecord], last_served: dict[str, float]) -> list[BatchRecord]:
    """The batches of the owner served longest ago (or never) first; an owner's own batches oldest
    first (ids sort by the time they were made)."""
    return sorted(waiting, key=lambda record: (last_served.get(record.owner, 0.0), record.batch.id))


def _defaults_sampling(model_name: str) -> dict[str, Any]:
    return SamplingSpec().model_dump()


def job_sampling_of(spec: ServiceSpec) -> Callable[[str], dict[str, Any]]:
    """The sampling a line's parameters are laid over, by the model name it gives: its served model's
    job's (as workers/rendering.row_sampling lays them at run time), else herd's defaults."""
    known: dict[str | None, dict[str, Any]] = {}  # by served model: lines may give any number of names

    def sampling(model_name: str) -> dict[str, Any]:
        model = spec.model_named(model_name)
        served = model.name if model is not None else None
        if served not in known:
            known[served] = (model.shared_job.sampling if model is not None else SamplingSpec()).model_dump()
        return known[served]

    return sampling


def check_lines(
    lines: Iterable[bytes], job_sampling: Callable[[str], dict[str, Any]] = _defaults_sampling
) -> tuple[list[BatchError], set[str], int]:
    """Each line's problems (with its 1-based line number), the models the lines name, and how many
    requests there are. A line is checked as herd will read it (workers/request_formats.py), its
    sampling parameters over `job_sampling(its model)`, as the run lays them. Lines may mix
    /v1/chat/completions, /v1/completions and /v1/responses: herd answers all in one job."""
    errors: list[BatchError] = []
    models: set[str] = set()
    seen: dict[str, int] = {}
    total = 0
    for number, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            message = f"the file is not UTF-8 text: line {number}: {error}"
            return [BatchError(code="invalid_file", message=message, line=number)], models, 0
        if not line.strip():
            continue
        total += 1

        def problem(message: str, param: str | None = None, code: str = "invalid_request", at: int = number) -> None:
            errors.append(BatchError(code=code, message=message, param=param, line=at))

        try:
            # Bytes, as herd's reader parses a line: a UTF-8 BOM (Windows tools write one) is skipped.
            request = json.loads(line)
        except ValueError as error:
            problem(f"not valid JSON: {error}", code="invalid_json_line")
            continue
        if not isinstance(request, dict):
            problem("expected a JSON object")
            continue
        try:
            parsed = openai_batch_request(request)
            named = request["body"].get("model")
            SamplingSpec.model_validate({**job_sampling(named if isinstance(named, str) else ""), **parsed.overrides})
        except RequestError as error:
            problem(str(error), str(error).split(":", 1)[0])
            continue
        except ValidationError as error:
            first = error.errors()[0]
            where = _request_field(".".join(str(part) for part in first["loc"]), request.get("body") or {})
            param = f"body.{where}" if where else "body"
            problem(f"{param}: {first['msg'].removeprefix('Value error, ')}", param)
            continue
        custom_id = request["custom_id"]
        if custom_id in seen:
            problem(f"custom_id {custom_id!r} is also on line {seen[custom_id]}", "custom_id", "duplicate_custom_id")
            continue
        seen[custom_id] = number
        model = request["body"].get("model")
        if not isinstance(model, str) or not model:
            problem("body.model: expected the name of a served model", "body.model")
            continue
        models.add(model)
    return errors, models, total


def custom_ids_in(lines: Iterable[bytes]) -> list[str]:
    return [json.loads(line)["custom_id"] for line in lines if line.strip()]


def _request_field(field: str, body: dict[str, Any]) -> str:
    """A sampling field as the request line names it: herd validates `max_new_tokens`, which a line
    gives as `max_tokens`, `max_completion_tokens` or `max_output_tokens`; the other names are the same."""
    if field.split(".", 1)[0] != "max_new_tokens":
        return field
    given = ("max_completion_tokens", "max_output_tokens")
    return next((name for name in given if body.get(name) is not None), "max_tokens")


def _first_chat_line(lines: Iterable[bytes]) -> int | None:
    """The number of the first line made of messages (/v1/chat/completions, /v1/responses) of a file
    whose lines check_lines passed: as the request codec reads it, which knows which endpoints those are."""
    for number, line in enumerate(lines, start=1):
        if line.strip() and openai_batch_request(json.loads(line)).source.messages is not None:
            return number
    return None
