"""The batch service's state as a long-lived service has it, on disk and on S3 (moto): months of
batches and files under one root (the worker looks for work every second and a list is one request:
their cost must follow the batches running and the page asked for, not the root's history), files
that expire, and storage that is slow or down. No engine: requests go through the real app and the
real `openai` SDK, in process."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.testclient import TestClient

from common.storage import Storage
from schemas.errors import StorageUnavailable
from schemas.job import RetrySpec, StorageSpec
from service.app import build_app
from service.config import ServiceSpec
from service.keys import ApiKeys
from service.objects import Batch, BatchRecord, FileObject, FileRecord
from service.store import Store, new_id, output_file_id

OWNER = "team-a"


class Clock:
    """The store's clock: now, or as far ahead as a test moves it."""

    def __init__(self) -> None:
        self.ahead_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead_s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["disk", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Store:
    if request.param == "disk":
        return Store(str(tmp_path / "root"), Storage(StorageSpec(), RetrySpec()), clock=clock)
    endpoint = request.getfixturevalue("s3_endpoint")
    storage = Storage(StorageSpec(endpoint_url=endpoint), RetrySpec())
    return Store(f"s3://herd-test/service-{tmp_path.name}", storage, clock=clock)


class ReadCounter:
    """Counts the records a store reads, by the folder they are in (batches, files)."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: Counter[str] = Counter()
        folder = store.folder
        read_many, read_text, read_bytes = folder.read_many, folder.read_text, folder.read_bytes

        def counted(read: Any) -> Any:
            def call(name: Any, *rest: Any) -> Any:
                for each in [name] if isinstance(name, str) else name:
                    self.names[each.split("/")[0]] += 1
                return read(name, *rest)

            return call

        monkeypatch.setattr(folder, "read_many", counted(read_many))
        monkeypatch.setattr(folder, "read_text", counted(read_text))
        monkeypatch.setattr(folder, "read_bytes", counted(read_bytes))

    def take(self) -> Counter[str]:
        taken, self.names = self.names, Counter()
        return taken


def _batch(owner: str = OWNER, batch_id: str | None = None) -> BatchRecord:
    batch = Batch(
        id=batch_id or new_id("batch_"),
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        completion_window="24h",
        status="validating",
        created_at=int(time.time()),
    )
    return BatchRecord(owner=owner, batch=batch)


def _end(store: Store, record: BatchRecord, status: str = "completed") -> None:
    def ended(current: BatchRecord) -> None:
        current.batch.status = status

    store.update_batch(record.owner, record.batch.id, ended)


def test_the_worker_reads_only_the_batches_that_have_not_ended_and_a_list_only_its_page(store, monkeypatch):
    made = [_batch() for _ in range(60)] + [_batch("team-b") for _ in range(5)]
    for record in made:
        store.create_batch(record)
    open_ones = {made[3].batch.id, made[41].batch.id, made[62].batch.id}
    for record in made:
        if record.batch.id not in open_ones:
            _end(store, record, "cancelled" if record.owner == "team-b" else "completed")
    reads = ReadCounter(store, monkeypatch)

    assert [record.batch.id for record in store.open_batches()] == sorted(open_ones)
    assert reads.take() == {"batches": 3}
    assert [record.batch.id for record in store.open_batches(OWNER)] == sorted(open_ones - {made[62].batch.id})

    newest_first = sorted((record.batch.id for record in made if record.owner == OWNER), reverse=True)
    reads.take()
    page = store.batches_page(OWNER, after=None, limit=20)
    assert [record.batch.id for record in page.records] == newest_first[:20] and page.has_more
    assert reads.take() == {"batches": 20}
    last = store.batches_page(OWNER, after=newest_first[49], limit=20)
    assert [record.batch.id for record in last.records] == newest_first[50:] and not last.has_more


def test_a_marker_left_behind_is_cleaned_and_a_root_written_before_markers_is_indexed_once(store, monkeypatch):
    # A root as an older herd wrote it: records only, one batch still running.
    running, ended = _batch(), _batch()
    ended.batch.status = "completed"
    for record in (running, ended):
        store.folder.create_exclusive(f"batches/{store_folder(store, record)}.json", record.model_dump_json())
    assert store.open_batches() == []
    store.index_open_batches()
    assert [record.batch.id for record in store.open_batches()] == [running.batch.id]
    reads = ReadCounter(store, monkeypatch)
    store.index_open_batches()  # done once per root: no record is read again
    assert reads.take() == {}

    # A server that stopped between ending a batch and removing its marker: the next look removes it.
    store.folder.write_text(f"open/{store_folder(store, ended)}", "")
    assert [record.batch.id for record in store.open_batches()] == [running.batch.id]
    assert not store.folder.exists(f"open/{store_folder(store, ended)}")
    # A marker whose create stopped before its record: kept while the create may still be under way
    # (another server), removed once it is an hour old.
    young, old = _batch(), _batch(batch_id=f"batch_{time.time_ns() - 2 * 3600 * 10**9:016x}{'0' * 16}")
    for record in (young, old):
        store.folder.write_text(f"open/{store_folder(store, record)}", "")
    assert [record.batch.id for record in store.open_batches()] == [running.batch.id]
    assert store.folder.exists(f"open/{store_folder(store, young)}")
    assert not store.folder.exists(f"open/{store_folder(store, old)}")


def store_folder(store: Store, record: BatchRecord) -> str:
    """`<owner digest>/<batch id>`, as the store names a batch's record and its marker."""
    return store._batch(record.owner, record.batch.id).removeprefix("batches/").removesuffix(".json")


def _file(file_id: str) -> FileRecord:
    purpose = "batch_output" if file_id.endswith(("-output", "-errors")) else "batch"
    file = FileObject(id=file_id, bytes=3, created_at=int(time.time()), filename="f.jsonl", purpose=purpose)
    return FileRecord(owner=OWNER, file=file, lines=1)


@pytest.fixture
def sdk(store: Store) -> Any:
    """The OpenAI SDK against the service's app, in process (Starlette's TestClient is an httpx client)."""
    app = build_app(
        ServiceSpec(root=store.folder.root),
        store,
        ApiKeys.parse(f"{OWNER}:sk-team-a-0123456789abcdef", "keys"),
        health_problem=lambda: None,  # no worker: these tests are about requests
    )
    with TestClient(app, base_url="http://testserver") as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="sk-team-a-0123456789abcdef", http_client=http)


def test_files_list_as_openai_pages_it_by_purpose_and_order_and_after_a_deleted_file(store, sdk, monkeypatch):
    uploads = [new_id("file-") for _ in range(30)]
    outputs = [output_file_id(new_id("batch_"), kind) for kind in ("output", "errors") for _ in range(10)]
    for file_id in uploads + outputs:
        store.save_file(_file(file_id))
        store.write_file_content(OWNER, file_id, b"{}\n")
    reads = ReadCounter(store, monkeypatch)

    everything = sdk.files.list()  # OpenAI's default: up to 10,000 files on one page
    assert [file.id for file in everything.data] == sorted(uploads + outputs, reverse=True)
    assert not everything.has_more
    page = sdk.files.list(purpose="batch", limit=7, order="asc")
    assert [file.id for file in page.data] == sorted(uploads)[:7] and page.has_more
    assert reads.take()["files"] == 50 + 7
    assert {file.purpose for file in sdk.files.list(purpose="batch_output").data} == {"batch_output"}
    # The SDK follows the pages itself; a file deleted between two pages does not restart the list.
    walked = []
    for file in sdk.files.list(purpose="batch", limit=4):
        walked.append(file.id)
        if len(walked) == 4:
            sdk.files.delete(file.id)
    assert walked == sorted(uploads, reverse=True)
    with pytest.raises(openai.BadRequestError, match="order: expected asc or desc"):
        sdk.files.list(order="newest")
    with pytest.raises(openai.BadRequestError, match="from 1 to 10000"):
        sdk.files.list(limit=10_001)
    with pytest.raises(openai.BadRequestError, match="from 1 to 100,"):
        sdk.batches.list(limit=101)


def test_files_expire_as_openais_do_and_the_sweep_deletes_them_but_not_the_input_of_a_running_batch(store, sdk, clock):
    hour = {"anchor": "created_at", "seconds": 3600}
    expiring = sdk.files.create(file=("a.jsonl", b"{}\n"), purpose="batch", expires_after=hour)
    assert expiring.expires_at == expiring.created_at + 3600
    kept = sdk.files.create(file=("b.jsonl", b"{}\n"), purpose="batch")
    assert kept.expires_at is None
    read_by_a_batch = sdk.files.create(file=("c.jsonl", b"{}\n"), purpose="batch", expires_after=hour)
    batch = sdk.batches.create(
        input_file_id=read_by_a_batch.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert store.batch(OWNER, batch.id).output_expires_after_s == 7200
    deleted_early = sdk.files.create(file=("d.jsonl", b"{}\n"), purpose="batch", expires_after=hour)
    sdk.files.delete(deleted_early.id)  # its expiry goes with it
    for wrong, message in (
        (
            {"anchor": "created_at", "seconds": 60},
            "expires_after.seconds: Input should be greater than or equal to 3600",
        ),
        ({"anchor": "last_active_at", "seconds": 3600}, "expires_after.anchor: Input should be 'created_at'"),
    ):
        with pytest.raises(openai.BadRequestError, match=re.escape(message)):
            sdk.files.create(file=("e.jsonl", b"{}\n"), purpose="batch", expires_after=wrong)
    with pytest.raises(
        openai.BadRequestError, match=re.escape("output_expires_after.seconds: Input should be less than")
    ):
        sdk.batches.create(
            input_file_id=kept.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 90 * 86400},
        )
    with pytest.raises(openai.BadRequestError, match="colour: unknown field"):
        sdk.files.create(file=("f.jsonl", b"{}\n"), purpose="batch", extra_body={"colour": "blue"})

    assert store.delete_expired_files(keep=lambda file_id: False) == []  # nothing has expired yet
    clock.ahead_s = 3601
    for gone in (expiring.id, read_by_a_batch.id):
        with pytest.raises(openai.NotFoundError):
            sdk.files.retrieve(gone)
    assert [file.id for file in sdk.files.list()] == [kept.id]
    running_inputs = {record.batch.input_file_id for record in store.open_batches()}
    assert store.delete_expired_files(keep=running_inputs.__contains__) == [expiring.id]
    assert store.folder.find("files") == sorted(
        f"files/{digest}/{file_id}{suffix}"
        for digest in {store_folder(store, store.batch(OWNER, batch.id)).split("/")[0]}
        for file_id in (kept.id, read_by_a_batch.id)
        for suffix in (".json", ".jsonl")
    )
    _end(store, store.batch(OWNER, batch.id))  # its job no longer reads its input
    assert store.delete_expired_files(keep=lambda file_id: False) == [read_by_a_batch.id]
    assert store.folder.find("expiring") == []

    # A batch's output files expire with its job's files, which hold the same answers.
    job_files = ["data/part-00000.jsonl", "errors/part-00000.jsonl", "manifest/00000.json", "report.html"]
    for name in job_files:
        store.folder.write_text(f"jobs/{batch.id}/{name}", "answers")
    for kind in ("output", "errors"):
        output = FileObject(
            id=output_file_id(batch.id, kind),
            bytes=3,
            created_at=int(clock()),
            filename=f"{batch.id}_{kind}.jsonl",
            purpose="batch_output",
            expires_at=int(clock()) + 7200,
        )
        store.write_file_content(OWNER, output.id, b"{}\n")
        store.save_file(FileRecord(owner=OWNER, file=output, lines=1))
    clock.ahead_s += 3600
    assert store.delete_expired_files(keep=lambda file_id: False) == []
    assert len(store.folder.find(f"jobs/{batch.id}")) == len(job_files)
    clock.ahead_s += 3601
    expired = store.delete_expired_files(keep=lambda file_id: False)
    assert sorted(expired) == sorted(output_file_id(batch.id, kind) for kind in ("output", "errors"))
    assert store.folder.find("jobs") == [] and store.folder.find("expiring") == []

    # Deleting an output file through the API does the same; deleting an upload touches no job.
    other = _batch()
    store.create_batch(other)
    for name in job_files:
        store.folder.write_text(f"jobs/{other.batch.id}/{name}", "answers")
    store.save_file(_file(output_file_id(other.batch.id, "output")))
    store.write_file_content(OWNER, output_file_id(other.batch.id, "output"), b"{}\n")
    sdk.files.delete(kept.id)
    assert len(store.folder.find(f"jobs/{other.batch.id}")) == len(job_files)
    report = sdk.get(f"/batches/{other.batch.id}/report", cast_to=httpx.Response)
    assert report.status_code == 200
    sdk.files.delete(output_file_id(other.batch.id, "output"))
    assert store.folder.find("jobs") == [] and store.folder.find("files") == []
    _end(store, other)
    with pytest.raises(openai.NotFoundError, match="its job's files went with its deleted or expired output files"):
        sdk.get(f"/batches/{other.batch.id}/report", cast_to=httpx.Response)


def test_a_request_waiting_on_slow_storage_holds_up_only_itself_and_storage_down_is_a_503(store, sdk, monkeypatch):
    """A request whose storage call hangs (S3 slow or down, retried until the deadline) must not stop the
    server answering the others: the answer that comes first says so, without a clock."""
    made = _batch()
    store.create_batch(made)
    entered, release = threading.Event(), threading.Event()
    read_record = store.batch

    def slow_read(owner: str, batch_id: str) -> BatchRecord | None:
        entered.set()
        release.wait(timeout=30)  # released by the test; the timeout only ends a test that already failed
        return read_record(owner, batch_id)

    monkeypatch.setattr(store, "batch", slow_read)
    answered: list[str] = []
    waiting = threading.Thread(target=lambda: answered.append(sdk.batches.retrieve(made.batch.id).id))
    waiting.start()
    assert entered.wait(timeout=30)
    answered.append(sdk.files.list().object)  # another request, while the first still waits
    release.set()
    waiting.join(timeout=60)
    assert answered == ["list", made.batch.id]

    def unreachable(*arguments: Any, **options: Any) -> None:
        raise StorageUnavailable("list s3://bucket/files: S3 answered 503 SlowDown until the deadline")

    monkeypatch.setattr(store, "files_page", unreachable)
    with pytest.raises(openai.InternalServerError) as raised:
        sdk.with_options(max_retries=0).files.list()
    assert raised.value.status_code == 503 and raised.value.response.headers["retry-after"] == "30"
    assert "storage is unavailable; try again later" in raised.value.message


def test_health_answers_without_a_key_ok_while_the_worker_reads_the_root_and_503_and_why_when_it_cannot(
    store, monkeypatch
):
    """GET /health, for a load balancer or Kubernetes (they have no key): 200 while the worker's looks
    for work read the root, 503 with the reason once none has for UNHEALTHY_AFTER_S (storage down or
    hanging), 200 again when storage is back, 503 once the worker has stopped. No owner's data."""
    from service import worker as worker_module
    from service.worker import BatchWorker

    spec = ServiceSpec(root=store.folder.root)
    worker = BatchWorker(spec, store, None)
    app = build_app(spec, store, ApiKeys.parse(f"{OWNER}:sk-team-a-0123456789abcdef", "keys"), worker.health_problem)

    def health() -> tuple[int, dict[str, str]]:
        answer = http.get("/health")
        return answer.status_code, answer.json()

    def until(status: int) -> tuple[int, dict[str, str]]:
        deadline = time.monotonic() + 60  # bounded: a worker that never gets there fails the test
        while (answer := health())[0] != status and time.monotonic() < deadline:
            time.sleep(0.05)
        return answer

    with TestClient(app, base_url="http://testserver") as http:
        assert health() == (503, {"status": "unavailable", "reason": "the batch worker is not running"})
        worker.start()
        try:
            assert until(200) == (200, {"status": "ok"})
            assert http.get("/v1/models").status_code == 401  # the API itself still wants a key

            monkeypatch.setattr(worker_module, "UNHEALTHY_AFTER_S", 0.5)
            open_batches = store.open_batches

            def unreachable() -> None:
                raise StorageUnavailable("list s3://bucket/batches: S3 answered 503 SlowDown until the deadline")

            monkeypatch.setattr(store, "open_batches", unreachable)
            status, body = until(503)
            assert status == 503 and re.fullmatch(r"the state root has not been readable for \d+ s", body["reason"])
            assert "SlowDown" not in body["reason"]  # the log has the details, not an unauthenticated caller
            monkeypatch.setattr(store, "open_batches", open_batches)
            assert until(200) == (200, {"status": "ok"})
        finally:
            worker.close()
        assert until(503) == (503, {"status": "unavailable", "reason": "the batch worker is not running"})


def test_an_unexpected_error_is_a_500_in_openais_shape_that_shows_nothing_of_it_and_is_logged_once(
    store, sdk, monkeypatch, caplog
):
    def broken(*arguments: Any, **options: Any) -> None:
        raise RuntimeError("secret-internal-detail")

    monkeypatch.setattr(store, "files_page", broken)
    # Were the error raised again after the answer (Starlette's handler for Exception does that, and
    # the server then logs it a second time), the TestClient would raise it here.
    with pytest.raises(openai.InternalServerError) as raised:
        sdk.with_options(max_retries=0).files.list()
    assert raised.value.status_code == 500
    assert raised.value.body == {
        "message": "internal error; the server's log has the details",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert "secret-internal-detail" not in raised.value.response.text
    [logged] = [record for record in caplog.records if record.exc_info]
    assert logged.getMessage() == "unexpected error answering GET /v1/files"


def test_a_batch_of_many_shards_is_finalized_a_group_of_shard_files_at_a_time_and_every_request_answered_once(
    store, monkeypatch
):
    """What the job committed becomes the batch's output and error files: every request in one of them
    once (one the job never answered gets a batch_failed line), the shard files read a group at a time
    (one round trip on S3 per group, at most a group in memory), the files gathered on local disk."""
    from common.layout import OutputLayout
    from common.output_codec import error_line
    from jobs.committed import commit_shard
    from schemas.shard import OutputObject, ShardRecord
    from service.worker import _SHARD_FILES_READ_AT_ONCE, BatchWorker

    shards, ids = 150, [f"req-{index}" for index in range(301)]
    made = _batch()
    made.served_model = "tiny-llama"
    uploaded = _file(new_id("file-"))
    made.batch.input_file_id = uploaded.file.id
    store.create_batch(made)
    requests = [{"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": {}} for custom_id in ids]
    content = "".join(f"{json.dumps(line)}\n" for line in requests).encode()
    uploaded.file.bytes = len(content)
    store.write_file_content(OWNER, uploaded.file.id, content)
    store.save_file(uploaded)
    storage, layout = store.storage, OutputLayout(store.job_root(made.batch.id))
    for shard in range(shards):  # two requests a shard: one answered, one an error row; req-300 none
        answer, error = ids[2 * shard], ids[2 * shard + 1]
        body = {
            "id": f"cmpl-{answer}",
            "object": "text_completion",
            "created": 0,
            "model": "tiny-llama",
            "choices": [{"index": 0, "text": f"answer to {answer}", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        }
        response = {"status_code": 200, "request_id": answer, "body": body}
        data = {"id": f"batch_req_{answer}", "custom_id": answer, "response": response}
        failed = error_line({"id": error, "stage": "render", "reason": "bad"}).model_dump(mode="json")
        outputs, shard_id = [], f"in_jsonl-{shard}-{shard + 1}-{shard:010x}"
        for folder, line in (("data", data), ("errors", failed)):
            url = f"{layout.root}/{folder}/{shard_id}.a.jsonl"
            size = storage.write_atomic(url, (json.dumps(line) + "\n").encode())
            outputs.append(OutputObject(url=url, bytes=size, rows=1))
        timing = {"generate_started_at": 0, "generate_seconds": 0, "shard_seconds": 0, "started_at": 0}
        commit_shard(
            storage,
            layout,
            ShardRecord(
                shard_id=shard_id,
                rows_in=2,
                rows_out=1,
                error_rows=1,
                reused_rows=0,
                prompt_tokens=3,
                completion_tokens=4,
                finished_at=0,
                outputs=outputs,
                replica="r",
                attempts=1,
                **timing,
            ),
        )
    reads: list[int] = []
    read_many = storage.read_many
    monkeypatch.setattr(storage, "read_many", lambda urls: reads.append(len(urls)) or read_many(urls))
    read_bytes = storage.read_bytes

    def read_one(url: str, *arguments: Any) -> bytes:
        assert not url.startswith((layout.data_dir, layout.errors_dir)), f"{url} read alone"
        return read_bytes(url, *arguments)

    monkeypatch.setattr(storage, "read_bytes", read_one)
    _end(store, made, "in_progress")  # its job has committed every shard it could
    BatchWorker(ServiceSpec(root=store.folder.root), store, None)._finalize(store.batch(OWNER, made.batch.id))

    shard_file_reads = [count for count in reads if count <= _SHARD_FILES_READ_AT_ONCE]
    assert shard_file_reads[-5:] == [64, 64, 64, 64, 44]  # 300 shard files in groups of 64
    done = store.batch(OWNER, made.batch.id).batch
    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (301, 150, 151)
    assert done.usage.output_tokens == 4 * shards
    answered = [json.loads(line) for line in store.read_file_content(OWNER, done.output_file_id).splitlines()]
    failed = [json.loads(line) for line in store.read_file_content(OWNER, done.error_file_id).splitlines()]
    assert sorted(line["custom_id"] for line in answered + failed) == sorted(ids)
    assert [line["custom_id"] for line in failed if line["error"]["code"] == "batch_failed"] == ["req-300"]
    assert store.file(OWNER, done.output_file_id).lines == shards
    listed = store.file(OWNER, done.error_file_id)
    assert (listed.file.bytes, listed.lines) == (len(store.read_file_content(OWNER, done.error_file_id)), 151)


class _SentWebhooks:
    """Stands in for a server's WebhookSender: what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, event: str, data: dict[str, Any]) -> None:
        self.sent.append((event, data["id"]))


def _ended_counts(metrics: Any) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(metrics.render())
        for sample in family.samples
        if sample.name == "herd_batches_ended_total"
    }


def test_a_batch_two_servers_end_at_once_is_counted_and_announced_by_the_one_whose_update_ended_it(store):
    """Two servers on one root each end the same running batch (a failure racing a finalize, say),
    each from the record it read while the batch ran: the record ends once, and only the server whose
    update ended it counts the end in its /metrics and sends the webhook."""
    from service.worker import BatchWorker

    made = _batch()
    store.create_batch(made)
    _end(store, made, "in_progress")
    running = store.batch(OWNER, made.batch.id)
    spec = ServiceSpec(root=store.folder.root)
    first, second = BatchWorker(spec, store, _SentWebhooks()), BatchWorker(spec, store, _SentWebhooks())
    first._fail(running, "batch_failed", "the first server's reason")
    second._fail(running, "batch_failed", "the second server's reason")
    ended = store.batch(OWNER, made.batch.id).batch
    assert (ended.status, ended.errors.data[0].message) == ("failed", "the first server's reason")
    assert (first.webhooks.sent, second.webhooks.sent) == ([("batch.failed", made.batch.id)], [])
    assert (_ended_counts(first.metrics), _ended_counts(second.metrics)) == ({"failed": 1}, {})


def test_batch_metadata_is_kept_and_held_to_openais_limits(store, sdk):
    upload = sdk.files.create(file=("batch.jsonl", b'{"custom_id": "a"}\n'), purpose="batch")

    def create(metadata: dict[str, str]) -> Any:
        return sdk.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
        )

    largest = {f"{index:02d}" + "k" * 62: "v" * 512 for index in range(16)}
    assert sdk.batches.retrieve(create(largest).id).metadata == largest
    for metadata, param in (
        ({"k" * 65: "v"}, "metadata." + "k" * 65),
        ({"k": "v" * 513}, "metadata.k"),
        ({str(index): "v" for index in range(17)}, "metadata"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            create(metadata)
        assert refused.value.body["param"].startswith(param), refused.value.body


def test_a_batch_is_created_for_every_endpoint_herd_reads_and_refused_for_any_other(store, sdk):
    upload = sdk.files.create(file=("batch.jsonl", b'{"custom_id": "a"}\n'), purpose="batch")
    for endpoint in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        batch = sdk.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h")
        assert (batch.endpoint, batch.status) == (endpoint, "validating")
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    assert refused.value.body["param"] == "endpoint" and "/v1/responses" in refused.value.body["message"]


def test_models_are_listed_and_retrieved_by_every_name_a_request_may_use_and_no_other(tmp_path):
    def served(name: str, aliases: list[str], adapters: list[str]) -> dict[str, Any]:
        model = {"path": f"/models/{name}", "adapters": [{"name": a, "path": f"/adapters/{a}"} for a in adapters]}
        return {"name": name, "aliases": aliases, "job": {"model": model}}

    spec = ServiceSpec.model_validate(
        {
            "root": str(tmp_path / "root"),
            "models": [served("llama-2-13b-chat", ["gpt-4o-mini"], []), served("meta/base", [], ["tone"])],
        }
    )
    store = Store(spec.root, Storage(StorageSpec(), RetrySpec()))
    app = build_app(spec, store, ApiKeys.parse(f"{OWNER}:sk-team-a-0123456789abcdef", "keys"), lambda: None)
    with TestClient(app, base_url="http://testserver") as http:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="sk-team-a-0123456789abcdef", http_client=http)
        listed = {model.id: getattr(model, "parent", None) for model in sdk.models.list()}
        assert listed == {"llama-2-13b-chat": None, "meta/base": None, "tone": "meta/base"}
        for name, parent in (
            ("llama-2-13b-chat", None),
            ("gpt-4o-mini", None),
            ("meta/base", None),
            ("tone", "meta/base"),
        ):
            model = sdk.models.retrieve(name)  # a name with a slash, as Hugging Face names are, too
            assert (model.id, model.object, getattr(model, "parent", None)) == (name, "model", parent)
        with pytest.raises(openai.NotFoundError) as unknown:
            sdk.models.retrieve("gpt-4o")
        assert unknown.value.body["code"] == "model_not_found" and "'gpt-4o'" in unknown.value.body["message"]
        stranger = openai.OpenAI(
            base_url="http://testserver/v1", api_key="sk-nobody-0123456789abcdef", http_client=http
        )
        with pytest.raises(openai.AuthenticationError):
            stranger.models.retrieve("llama-2-13b-chat")


def test_a_files_lines_are_read_a_range_at_a_time_and_put_back_together_across_ranges(store, monkeypatch):
    """What validation and finalize read an input file through: never the whole file at once, and the
    same lines as the file holds, wherever the ranges cut them; a line that is not UTF-8 is named."""
    import service.store
    from service.worker import check_lines

    monkeypatch.setattr(service.store, "_LINES_READ_AT_ONCE", 7)
    reads: list[tuple[int, int]] = []
    read_content = store.read_file_content

    def read_range(owner: str, file_id: str, start: int, end: int) -> bytes:
        reads.append((start, end))
        return read_content(owner, file_id, start, end)

    monkeypatch.setattr(store, "read_file_content", read_range)
    contents = (b"first line\r\nsecond\n\nthe third one, longer than a range\n", b"no newline at the end", b"7 bytes")
    for content in contents:
        record = _file(new_id("file-"))
        record.file.bytes = len(content)
        store.write_file_content(OWNER, record.file.id, content)
        store.save_file(record)
        reads.clear()
        assert list(store.file_lines(OWNER, record.file.id)) == content.split(b"\n")
        assert all(end - start <= 7 for start, end in reads) and len(reads) == -(-len(content) // 7)
    bad = _file(new_id("file-"))
    content = b'{"a": 1}\n{"b": "\xff"}\n'
    bad.file.bytes = len(content)
    store.write_file_content(OWNER, bad.file.id, content)
    store.save_file(bad)
    [error] = check_lines(store.file_lines(OWNER, bad.file.id))[0]
    assert (error.code, error.line) == ("invalid_file", 2) and "line 2" in error.message


def test_each_key_is_held_to_its_own_storage_and_open_batch_quotas_with_a_429_the_sdk_does_not_retry(store):
    spec = ServiceSpec(
        root=store.folder.root, limits={"max_stored_bytes_per_owner": 100, "max_open_batches_per_owner": 2}
    )
    keys = ApiKeys.parse(f"{OWNER}:sk-team-a-0123456789abcdef\nteam-b:sk-team-b-0123456789abcdef", "keys")
    app = build_app(spec, store, keys, health_problem=lambda: None)
    line = b'{"custom_id": "request-1", "method": "POST"}\n'  # 45 bytes: two fit in 100, three do not
    sent: list[str] = []
    with TestClient(app, base_url="http://testserver") as http:
        http.event_hooks["request"] = [lambda request: sent.append(request.url.path)]
        team_a, team_b = (
            openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http)
            for key in ("sk-team-a-0123456789abcdef", "sk-team-b-0123456789abcdef")
        )
        kept = [team_a.files.create(file=("batch.jsonl", line), purpose="batch") for _ in range(2)]
        sent.clear()
        with pytest.raises(openai.RateLimitError) as refused:
            team_a.files.create(file=("batch.jsonl", line), purpose="batch")
        assert refused.value.code == "storage_limit_exceeded" and "90 bytes of 100" in refused.value.message
        assert sent == ["/v1/files"]  # asked once: the SDK does not retry a quota
        assert len(team_a.files.list().data) == 2  # nothing of the refused file was kept
        team_b.files.create(file=("batch.jsonl", line), purpose="batch")  # a quota of its own
        team_a.files.delete(kept[1].id)
        team_a.files.create(file=("batch.jsonl", line), purpose="batch")  # room again

        def create(client: openai.OpenAI, file_id: str) -> Any:
            return client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )

        first = create(team_a, kept[0].id)
        create(team_a, kept[0].id)
        sent.clear()
        with pytest.raises(openai.RateLimitError) as refused:
            create(team_a, kept[0].id)
        assert refused.value.code == "batch_limit_exceeded" and sent == ["/v1/batches"]
        create(team_b, team_b.files.list().data[0].id)  # team b's queue is its own
        _end(store, store.batch(OWNER, first.id))
        store.open_batches()  # the worker's next look removes the ended batch's marker
        create(team_a, kept[0].id)


def test_uploads_that_arrive_at_once_cannot_pass_the_storage_quota_together(store, monkeypatch):
    """Four uploads of 45 bytes against a quota of 100, each checked before any of them lands (held at
    a barrier until all four have been): together they would hold 180 bytes. Counted again once each
    has landed, at most two are kept, the others are refused with the quota's 429, and nothing of a
    refused one stays in the root."""
    spec = ServiceSpec(root=store.folder.root, limits={"max_stored_bytes_per_owner": 100})
    keys = ApiKeys.parse(f"{OWNER}:sk-team-a-0123456789abcdef", "keys")
    app = build_app(spec, store, keys, health_problem=lambda: None)
    line = b'{"custom_id": "request-1", "method": "POST"}\n'  # 45 bytes
    all_checked = threading.Barrier(4, timeout=60)
    upload_content = store.upload_file_content

    def upload_once_all_are_checked(owner: str, file_id: str, local_path: str) -> None:
        all_checked.wait()
        upload_content(owner, file_id, local_path)

    monkeypatch.setattr(store, "upload_file_content", upload_once_all_are_checked)
    outcomes: list[Any] = []
    with TestClient(app, base_url="http://testserver") as http:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="sk-team-a-0123456789abcdef", http_client=http)

        def upload() -> None:
            try:
                outcomes.append(sdk.files.create(file=("batch.jsonl", line), purpose="batch"))
            except openai.RateLimitError as refused:
                outcomes.append(refused)

        threads = [threading.Thread(target=upload) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        kept = [outcome.id for outcome in outcomes if not isinstance(outcome, Exception)]
        refused = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
        assert len(outcomes) == 4 and len(kept) <= 2
        assert all(error.code == "storage_limit_exceeded" for error in refused)
        assert sorted(file.id for file in sdk.files.list().data) == sorted(kept)
    assert store.stored_bytes(OWNER) == 45 * len(kept) <= 100


def test_a_key_is_rotated_and_revoked_by_editing_the_keys_file_and_a_file_that_cannot_be_used_changes_nothing(
    store, tmp_path, caplog
):
    """No restart, which would stop every running batch: team a's new key sees team a's files, its old
    key is refused at the next request; a file saved half-written, or emptied, leaves the keys as they
    were (an empty one would open the service to any caller)."""
    from service.keys import ApiKeys

    old_key, new_key = "sk-team-a-old-0123456789", "sk-team-a-new-0123456789"
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"{OWNER}:{old_key}\n")
    app = build_app(ServiceSpec(root=store.folder.root), store, ApiKeys.load(str(keys_file)), lambda: None)
    with TestClient(app, base_url="http://testserver") as http:

        def client(key: str) -> openai.OpenAI:
            return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0)

        upload = client(old_key).files.create(file=("batch.jsonl", b'{"custom_id": "a"}\n'), purpose="batch")
        replacement = tmp_path / "keys.txt.new"  # as a secrets manager writes it: a new file, renamed
        replacement.write_text(f"# rotated\n{OWNER}:{new_key}\n")
        replacement.replace(keys_file)
        assert [file.id for file in client(new_key).files.list().data] == [upload.id]
        with pytest.raises(openai.AuthenticationError):
            client(old_key).files.list()

        with caplog.at_level("ERROR", logger="herd.service"):
            for unusable in (f"{OWNER}:short\n", "", "# every key removed\n"):
                keys_file.write_text(unusable)
                assert [file.id for file in client(new_key).files.list().data] == [upload.id], unusable
            keys_file.unlink()  # gone (a volume remounted): the keys stay, said once, not at every request
            for _ in range(3):
                assert [file.id for file in client(new_key).files.list().data] == [upload.id]
        assert caplog.text.count("the keys file changed but cannot be used") == 3
        assert "keys.txt line 1: expected OWNER:KEY" in caplog.text and "holds no key" in caplog.text
        assert caplog.text.count("the keys file cannot be read") == 1


def test_a_key_over_its_request_rate_gets_a_429_with_retry_after_and_other_keys_do_not(store):
    spec = ServiceSpec(root=store.folder.root, limits={"requests_per_s_per_owner": 0.1})  # a bucket of one
    keys = ApiKeys.parse(f"{OWNER}:sk-team-a-0123456789abcdef\nteam-b:sk-team-b-0123456789abcdef", "keys")
    with TestClient(build_app(spec, store, keys, lambda: None), base_url="http://testserver") as http:
        team_a, team_b = (
            openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0)
            for key in ("sk-team-a-0123456789abcdef", "sk-team-b-0123456789abcdef")
        )
        team_a.files.list()
        with pytest.raises(openai.RateLimitError) as refused:
            team_a.batches.list()
        assert refused.value.code == "rate_limit_exceeded" and "over 0.1 a second" in refused.value.message
        assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 10
        assert "x-should-retry" not in refused.value.response.headers  # the SDK waits and asks again
        team_b.files.list()
        assert http.get("/health").status_code == 200  # a load balancer's probe is never limited


def test_each_request_is_logged_with_its_keys_owner_status_and_time_and_never_the_key(store, caplog):
    key = "sk-team-a-0123456789abcdef"
    app = build_app(ServiceSpec(root=store.folder.root), store, ApiKeys.parse(f"{OWNER}:{key}", "keys"), lambda: None)
    with TestClient(app, base_url="http://testserver") as http, caplog.at_level("INFO", "herd.service.requests"):
        client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0)
        client.files.list()
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_unknown")
        assert http.get("/v1/models", headers={"Authorization": "Bearer sk-wrong-0123456789abc"}).status_code == 401
        assert http.get("/health").status_code == 200  # probes are not logged
    lines = [record.getMessage() for record in caplog.records if record.name == "herd.service.requests"]
    assert [line.rsplit(" ", 2)[0] for line in lines] == [
        f"{OWNER} GET /v1/files 200",
        f"{OWNER} GET /v1/batches/batch_unknown 404",
        "- GET /v1/models 401",
    ]
    assert all(line.endswith(" ms") for line in lines)
    assert "sk-" not in caplog.text


def test_metrics_are_totals_over_every_owner_in_prometheus_format_for_the_metrics_readers_keys_only(store):
    from prometheus_client.parser import text_string_to_metric_families

    from service.metrics import ServiceMetrics
    from service.objects import BatchUsage

    spec = ServiceSpec(root=store.folder.root, metrics_readers=["ops"])
    keys = ApiKeys.parse(f"{OWNER}:sk-team-a-0123456789abcdef\nops:sk-operators-0123456789", "keys")
    metrics = ServiceMetrics()
    validating, running, ended = _batch(), _batch(), _batch()
    running.batch.status, running.served_model = "in_progress", "llama"
    ended.batch.status, ended.batch.usage = "completed", BatchUsage(input_tokens=30, output_tokens=12, total_tokens=42)
    metrics.looked([validating, running])  # what the worker's look found
    metrics.batch_ended(ended)
    with TestClient(build_app(spec, store, keys, lambda: None, metrics), base_url="http://testserver") as http:
        team_a = openai.OpenAI(
            base_url="http://testserver/v1", api_key="sk-team-a-0123456789abcdef", http_client=http, max_retries=0
        )
        team_a.files.list()
        with pytest.raises(openai.NotFoundError):
            team_a.batches.retrieve("batch_unknown")
        refused = http.get("/metrics", headers={"Authorization": "Bearer sk-team-a-0123456789abcdef"})
        assert refused.status_code == 403 and "metrics_readers" in refused.json()["error"]["message"]
        assert http.get("/metrics").status_code == 401
        for method in ("BREW", "PROPFIND"):  # any method a client makes up is one series, not one each
            http.request(method, "/v1/files", headers={"Authorization": "Bearer sk-team-a-0123456789abcdef"})
        answer = http.get("/metrics", headers={"Authorization": "Bearer sk-operators-0123456789"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }
    assert samples[("herd_batches_open", (("model", ""), ("status", "validating")))] == 1
    assert samples[("herd_batches_open", (("model", "llama"), ("status", "in_progress")))] == 1
    assert samples[("herd_batches_ended_total", (("status", "completed"),))] == 1
    assert samples[("herd_tokens_total", (("kind", "prompt"),))] == 30
    assert samples[("herd_tokens_total", (("kind", "completion"),))] == 12
    # Every answered request but the probes of /metrics and /health, the refused ones included.
    assert samples[("herd_http_requests_total", (("code", "200"), ("method", "GET")))] == 1
    assert samples[("herd_http_requests_total", (("code", "404"), ("method", "GET")))] == 1
    assert samples[("herd_http_requests_total", (("code", "405"), ("method", "OTHER")))] == 2
    assert 0 <= samples[("herd_worker_last_look_age_seconds", ())] < 60
    assert not any(OWNER in str(key) for key in samples)  # no owner's name, only totals
