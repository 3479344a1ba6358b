"""The HTTP surface: OpenAI's /v1/files, /v1/batches and /v1/models as the OpenAI SDK calls them, and
herd's /v1/batches/{id}/report.

FastAPI and uvicorn, as vLLM's own OpenAI server uses: the ecosystem's clients and proxies expect
their behaviour, and both are vLLM dependencies already. Every answer to a bad request is a 4xx in
OpenAI's error shape ({"error": {"message", "type", "param", "code"}}); an unexpected failure is a
500 with no traceback. Every id is looked up under the caller's own key: another key's ids are 404.

Every handler that touches storage runs in the thread pool (a plain `def`, or run_in_threadpool): a
slow or unreachable S3 holds up the request that waits for it, never the event loop that answers the
others. Storage still unreachable when the retry policy's deadline passes is a 503 with Retry-After,
which the OpenAI SDK retries.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.layout import OutputLayout
from schemas.errors import StorageUnavailable
from service.config import Limits, ServiceSpec, window_seconds
from service.keys import LOCAL_OWNER, ApiKeys
from service.metrics import CONTENT_TYPE, ServiceMetrics
from service.objects import (
    TERMINAL,
    Batch,
    BatchRecord,
    CreateBatch,
    ExpiresAfter,
    FileObject,
    FileRecord,
)
from service.rate_limit import RequestRate
from service.store import Page, Store, new_id
from workers.request_formats import OPENAI_URLS

log = logging.getLogger("herd.service")
requests_log = logging.getLogger("herd.service.requests")  # a line per request: silence it on its own

# Bodies other than uploads are small JSON objects.
_MAX_JSON_BYTES = 1024 * 1024
# The multipart envelope around an upload's bytes.
_MULTIPART_OVERHEAD = 64 * 1024
_COPY_CHUNK = 1024 * 1024
# What a 503 asks a client to wait: storage that failed past the retry deadline is down for minutes.
_RETRY_AFTER_S = 30


class ApiError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


def _quota_error(message: str, code: str) -> ApiError:
    # A quota frees up when files are deleted or batches end, not in the seconds the OpenAI SDK would
    # spend retrying a 429: the header tells it not to.
    return ApiError(429, message, code=code, headers={"x-should-retry": "false"})


def _storage_limit_error(held: int, size: int, limits: Limits) -> ApiError:
    most = limits.max_stored_bytes_per_owner
    return _quota_error(
        f"file storage limit: this key's files hold {held:,} bytes of {most:,} and this file is {size:,}; "
        "delete files (DELETE /v1/files/{file_id}) or let them expire",
        code="storage_limit_exceeded",
    )


def _error(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    kind = {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error" if code == "rate_limit_exceeded" else "insufficient_quota",
    }.get(status, "invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _page_body(page: Page, shown: Callable[[Any], BaseModel]) -> dict[str, Any]:
    """A page in OpenAI's list shape, each record shown as the OpenAI object it holds."""
    data = [shown(record) for record in page.records]
    return {
        "object": "list",
        "data": [item.model_dump(mode="json") for item in data],
        "first_id": data[0].id if data else None,  # type: ignore[attr-defined]
        "last_id": data[-1].id if data else None,  # type: ignore[attr-defined]
        "has_more": page.has_more,
    }


# The multipart fields of an upload, as the OpenAI SDK sends them (objects flattened with brackets).
_UPLOAD_FIELDS = frozenset({"file", "purpose", "expires_after[anchor]", "expires_after[seconds]"})


def _expires_after(form: Any) -> ExpiresAfter | None:
    """An upload's expires_after, or None when not given."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    try:
        return ExpiresAfter(anchor=anchor, seconds=seconds)
    except ValidationError as error:
        problem = error.errors()[0]
        where = "expires_after." + ".".join(str(part) for part in problem["loc"])
        raise ApiError(400, f"{where}: {problem['msg']}", param=where) from None


def _limit(request: Request, *, default: int, most: int) -> int:
    raw = request.query_params.get("limit", str(default))
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, f"limit: expected a number from 1 to {most}, got {raw!r}", param="limit") from None
    if not 1 <= limit <= most:
        raise ApiError(400, f"limit: expected a number from 1 to {most}, got {limit}", param="limit")
    return limit


class _AnswerUnexpectedErrors:
    """Any other error is a 500 in OpenAI's shape, its traceback logged once. Not an exception handler
    for Exception: Starlette calls that one and then raises the error again for the server to log, so
    every such error left a second traceback ("Exception in ASGI application") in the service's log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False

        async def sending(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            if answered:
                raise  # the answer has begun: the server can only end the connection
            await _error(500, "internal error; the server's log has the details")(scope, receive, send)


def build_app(
    spec: ServiceSpec,
    store: Store,
    keys: ApiKeys,
    health_problem: Callable[[], str | None],
    metrics: ServiceMetrics | None = None,
) -> FastAPI:
    """The HTTP API over `store`; `health_problem` says why the service cannot work now (None: it can);
    `metrics`: the figures GET /metrics shows (the worker's share of them comes from the worker)."""
    metrics = metrics if metrics is not None else ServiceMetrics()
    app = FastAPI(title="herd batch service", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_AnswerUnexpectedErrors)
    limits = spec.limits

    @app.middleware("http")
    async def bounded_bodies(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Refuses a body over its limit from its Content-Length before reading it."""
        is_upload = request.url.path == "/v1/files" and request.method == "POST"
        allowed = limits.max_upload_bytes + _MULTIPART_OVERHEAD if is_upload else _MAX_JSON_BYTES
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > allowed:
            return _error(413, f"the request body is {int(declared):,} bytes; the limit is {allowed:,}")
        return await call_next(request)

    @app.middleware("http")
    async def logged(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """A line per request for the operator: who (the key's owner, never the key), what, the status
        and how long until the answer began; counted in /metrics. Probes (/health, /metrics) are left out."""
        started = time.perf_counter()
        answer = await call_next(request)
        if request.url.path not in ("/health", "/metrics"):
            owner = getattr(request.state, "owner", "-")
            took_s = time.perf_counter() - started
            metrics.answered(request.method, answer.status_code, took_s)
            requests_log.info(
                "%s %s %s %d %.0f ms", owner, request.method, request.url.path, answer.status_code, took_s * 1000
            )
        return answer

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error(error.status, error.message, error.code, error.param, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(400, f"invalid request: {error.errors()[0].get('msg', 'invalid')}")

    @app.exception_handler(StorageUnavailable)
    async def storage_unavailable(request: Request, error: StorageUnavailable) -> JSONResponse:
        log.warning("storage unavailable answering %s %s: %s", request.method, request.url.path, error)
        answer = _error(503, f"storage is unavailable; try again later ({error})", code="storage_unavailable")
        answer.headers["Retry-After"] = str(_RETRY_AFTER_S)
        return answer

    request_rate = RequestRate(limits.requests_per_s_per_owner)

    def owner_of(request: Request) -> str:
        if not keys.required:
            request.state.owner = LOCAL_OWNER
            return within_rate(LOCAL_OWNER)
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        owner = keys.owner_of(key.strip() if scheme.lower() == "bearer" else None)
        if owner is None:
            message = "missing API key (Authorization: Bearer KEY)" if not header else "invalid API key"
            raise ApiError(401, message, code="invalid_api_key")
        request.state.owner = owner
        return within_rate(owner)

    def within_rate(owner: str) -> str:
        wait_s = request_rate.wait_s(owner)
        if wait_s > 0:  # the OpenAI SDK waits Retry-After and asks again
            raise ApiError(
                429,
                f"this key's requests are over {limits.requests_per_s_per_owner:g} a second; "
                f"try again in {wait_s:.1f} s",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
            )
        return owner

    async def json_body(request: Request, model: type[BaseModel]) -> Any:
        data = await _read_body(request, _MAX_JSON_BYTES)
        try:
            return model.model_validate_json(data)
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            if problem["type"] == "json_invalid":
                raise ApiError(400, f"the body is not valid JSON: {problem['msg']}") from None
            raise ApiError(400, f"{where or 'body'}: {problem['msg']}", param=where or None) from None

    @app.get("/health")
    def health() -> JSONResponse:
        """For load balancers and orchestrators, which have no key (vLLM's server answers the same path):
        200 while the service does its work, 503 and why when it cannot."""
        problem = health_problem()
        if problem is None:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)

    # Models

    def model_object(model_id: str, parent: str | None = None) -> dict[str, Any]:
        # Adapters as vLLM's server lists its LoRA modules: their own id, the base model as parent.
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "herd"} | (
            {"parent": parent} if parent is not None else {}
        )

    @app.get("/metrics")
    def service_metrics(request: Request) -> Response:
        """For operators' Prometheus: totals over every owner, so only the owners the service file
        names in metrics_readers may read them."""
        owner = owner_of(request)
        if keys.required and owner not in spec.metrics_readers:
            raise ApiError(403, "this key may not read /metrics (the service file's metrics_readers names who may)")
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    def list_models(request: Request) -> dict[str, Any]:
        owner_of(request)
        data = [model_object(model.name) for model in spec.models]
        data += [model_object(adapter, model.name) for model in spec.models for adapter in model.adapter_names]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}")  # :path: a name may hold a slash (meta-llama/Llama-2-7b-chat-hf)
    def get_model(request: Request, model_id: str) -> dict[str, Any]:
        """Any name a request's `model` may use (a served model, one of its adapters, an alias), under
        the name asked for; 404 for a name no request could use."""
        owner_of(request)
        served = spec.model_named(model_id)
        if served is None:
            raise ApiError(404, f"no model {model_id!r}", code="model_not_found", param="model")
        return model_object(model_id, served.name if model_id in served.adapter_names else None)

    # Files

    @app.post("/v1/files")
    async def upload(request: Request) -> dict[str, Any]:
        owner = owner_of(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, "expected a multipart/form-data body with the fields file and purpose")
        counted = _CountingReceive(request, limits.max_upload_bytes + _MULTIPART_OVERHEAD)
        try:
            form = await Request(request.scope, counted).form(max_files=1, max_fields=4)
        except _TooLarge as error:
            raise ApiError(413, str(error)) from None
        except Exception as error:  # noqa: BLE001 - whatever a malformed multipart body makes the parser raise
            raise ApiError(400, f"malformed multipart body: {error}") from None
        try:
            unknown = sorted(set(form.keys()) - _UPLOAD_FIELDS)
            if unknown:
                raise ApiError(400, f"{unknown[0]}: unknown field", param=unknown[0])
            upload = form.get("file")
            purpose = form.get("purpose")
            expires_after = _expires_after(form)
            if purpose != "batch":
                raise ApiError(400, f"purpose: expected 'batch', got {purpose!r}", param="purpose")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "file: expected a file part", param="file")
            return await run_in_threadpool(keep_upload, owner, upload, expires_after)
        finally:
            await form.close()

    def keep_upload(owner: str, upload: UploadFile, expires_after: ExpiresAfter | None) -> dict[str, Any]:
        file_id = new_id("file-")
        room = limits.max_stored_bytes_per_owner - store.stored_bytes(owner)
        size, lines = _copy_checked(upload.file, store, owner, file_id, limits, room)
        # Uploads that ran at once were each checked against a listing taken before the others landed.
        # Counted again now that this one has, the quota holds: of two that pass it together, the one
        # that lands second sees both and is refused (both are, when each lands before the other counts).
        stored = store.stored_bytes(owner)
        if stored > limits.max_stored_bytes_per_owner:
            store.delete_file_content(owner, file_id)
            raise _storage_limit_error(stored - size, size, limits)
        created = int(time.time())
        record = FileRecord(
            owner=owner,
            file=FileObject(
                id=file_id,
                bytes=size,
                created_at=created,
                filename=(upload.filename or "upload.jsonl")[-255:],
                purpose="batch",
                expires_at=created + expires_after.seconds if expires_after is not None else None,
            ),
            lines=lines,
        )
        store.save_file(record)
        return record.file.model_dump(mode="json")

    @app.get("/v1/files")
    def list_files(request: Request) -> dict[str, Any]:
        owner = owner_of(request)
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"order: expected asc or desc, got {order!r}", param="order")
        page = store.files_page(
            owner,
            after=request.query_params.get("after"),
            limit=_limit(request, default=10_000, most=10_000),  # OpenAI's for files
            newest_first=order == "desc",
            purpose=request.query_params.get("purpose"),
        )
        return _page_body(page, lambda record: record.file)

    def owned_file(owner: str, file_id: str) -> FileRecord:
        record = store.file(owner, file_id)
        if record is None:
            raise ApiError(404, f"no file {file_id!r}", code="file_not_found", param="file_id")
        return record

    @app.get("/v1/files/{file_id}")
    def get_file(request: Request, file_id: str) -> dict[str, Any]:
        return owned_file(owner_of(request), file_id).file.model_dump(mode="json")

    @app.get("/v1/files/{file_id}/content")
    def file_content(request: Request, file_id: str) -> StreamingResponse:
        owner = owner_of(request)
        record = owned_file(owner, file_id)

        def chunks() -> Any:
            for start in range(0, record.file.bytes, _COPY_CHUNK):
                yield store.read_file_content(owner, record.file.id, start, min(start + _COPY_CHUNK, record.file.bytes))

        return StreamingResponse(chunks(), media_type="application/jsonl")

    @app.delete("/v1/files/{file_id}")
    def delete_file(request: Request, file_id: str) -> dict[str, Any]:
        owner = owner_of(request)
        record = owned_file(owner, file_id)
        in_use = [batch.batch.id for batch in store.open_batches(owner) if batch.batch.input_file_id == file_id]
        if in_use:
            raise ApiError(409, f"file {file_id} is the input of batch {in_use[0]}, which has not ended")
        store.delete_file(record)
        return {"id": file_id, "object": "file", "deleted": True}

    # Batches

    @app.post("/v1/batches")
    async def create_batch(request: Request) -> dict[str, Any]:
        owner = owner_of(request)
        body: CreateBatch = await json_body(request, CreateBatch)
        return await run_in_threadpool(make_batch, owner, body)

    def make_batch(owner: str, body: CreateBatch) -> dict[str, Any]:
        if body.endpoint not in OPENAI_URLS:  # the endpoints whose request lines herd reads
            raise ApiError(400, f"endpoint: expected one of {', '.join(OPENAI_URLS)}", param="endpoint")
        if body.completion_window not in limits.completion_windows:
            allowed = ", ".join(limits.completion_windows)
            raise ApiError(400, f"completion_window: expected one of {allowed}", param="completion_window")
        file = owned_file(owner, body.input_file_id)
        if file.file.purpose != "batch":
            raise ApiError(400, f"input_file_id: {file.file.id} is not a batch input file", param="input_file_id")
        if store.open_batch_count(owner) >= limits.max_open_batches_per_owner:
            raise _quota_error(
                f"this key has {limits.max_open_batches_per_owner} batches that have not ended, the most it may "
                "have; create this one when one of them has ended (or cancel one)",
                code="batch_limit_exceeded",
            )
        created = int(time.time())
        batch = Batch(
            id=new_id("batch_"),
            endpoint=body.endpoint,
            input_file_id=file.file.id,
            completion_window=body.completion_window,
            status="validating",
            created_at=created,
            expires_at=created + window_seconds(body.completion_window),
            metadata=body.metadata,
        )
        batch.request_counts.total = file.lines
        expires_after = body.output_expires_after
        store.create_batch(
            BatchRecord(
                owner=owner, batch=batch, output_expires_after_s=expires_after.seconds if expires_after else None
            )
        )
        return batch.model_dump(mode="json")

    @app.get("/v1/batches")
    def list_batches(request: Request) -> dict[str, Any]:
        owner = owner_of(request)
        page = store.batches_page(
            owner, after=request.query_params.get("after"), limit=_limit(request, default=20, most=100)
        )
        return _page_body(page, lambda record: record.batch)

    def owned_batch(owner: str, batch_id: str) -> BatchRecord:
        record = store.batch(owner, batch_id)
        if record is None:
            raise ApiError(404, f"no batch {batch_id!r}", code="batch_not_found", param="batch_id")
        return record

    @app.get("/v1/batches/{batch_id}")
    def get_batch(request: Request, batch_id: str) -> dict[str, Any]:
        return owned_batch(owner_of(request), batch_id).batch.model_dump(mode="json")

    @app.post("/v1/batches/{batch_id}/cancel")
    def cancel_batch(request: Request, batch_id: str) -> dict[str, Any]:
        owner = owner_of(request)
        owned_batch(owner, batch_id)

        def cancelling(current: BatchRecord) -> bool:
            if current.batch.status in TERMINAL or current.batch.status == "cancelling":
                return False
            current.batch.status, current.batch.cancelling_at = "cancelling", int(time.time())
            return True

        record = store.update_batch(owner, batch_id, cancelling)
        if record.batch.status in TERMINAL and record.batch.status != "cancelled":
            raise ApiError(409, f"batch {batch_id} is {record.batch.status}; it cannot be cancelled")
        return record.batch.model_dump(mode="json")

    @app.get("/v1/batches/{batch_id}/report")
    def batch_report(request: Request, batch_id: str) -> HTMLResponse:
        owner = owner_of(request)
        record = owned_batch(owner, batch_id)
        try:
            page = store.storage.read_text(OutputLayout(store.job_root(batch_id)).report)
        except FileNotFoundError:
            if record.batch.status in TERMINAL:
                why = "it ran no job, or its job's files went with its deleted or expired output files"
                raise ApiError(404, f"batch {batch_id} has no report: {why}") from None
            raise ApiError(404, f"batch {batch_id} has no report yet (it is written when its job ends)") from None
        return HTMLResponse(page)

    return app


class _TooLarge(Exception):
    pass


class _CountingReceive:
    """The request's body as it arrives, refused past `limit` bytes (a body without Content-Length,
    chunked, is bounded too)."""

    def __init__(self, request: Request, limit: int) -> None:
        self._receive, self._limit, self._seen = request.receive, limit, 0

    async def __call__(self) -> Any:
        message = await self._receive()
        self._seen += len(message.get("body", b""))
        if self._seen > self._limit:
            raise _TooLarge(f"the upload is over the limit of {self._limit - _MULTIPART_OVERHEAD:,} bytes")
        return message


async def _read_body(request: Request, limit: int) -> bytes:
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            raise ApiError(413, f"the request body is over the limit of {limit:,} bytes")
    return bytes(received)


def _copy_checked(source: Any, store: Store, owner: str, file_id: str, limits: Limits, room: int) -> tuple[int, int]:
    """Copies an uploaded file to storage, a chunk at a time, counting its bytes and request lines;
    `room`: the bytes the owner may still store."""
    source.seek(0)
    size = lines = 0
    last = b"\n"
    with tempfile.NamedTemporaryFile(prefix="herd-upload-", suffix=".jsonl", delete=False) as copy:
        try:
            while chunk := source.read(_COPY_CHUNK):
                size += len(chunk)
                if size > limits.max_upload_bytes:
                    raise ApiError(413, f"file: over the limit of {limits.max_upload_bytes:,} bytes")
                lines += chunk.count(b"\n")
                last = chunk[-1:]
                copy.write(chunk)
            lines += last != b"\n"
            if lines > limits.max_lines:
                raise ApiError(
                    400, f"file: {lines:,} lines; a batch holds at most {limits.max_lines:,} requests", param="file"
                )
            if not size:
                raise ApiError(400, "file: the file is empty", param="file")
            if size > room:
                raise _storage_limit_error(limits.max_stored_bytes_per_owner - room, size, limits)
            copy.close()
            store.upload_file_content(owner, file_id, copy.name)
        finally:
            copy.close()
            os.unlink(copy.name)
    return size, lines
