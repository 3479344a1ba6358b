"""Planning a billion rows: 100,000 Parquet files of 10,000 rows on an S3 endpoint that adds 20 ms to
every request, as a region's round trip does.

moto holds every object in memory, so the endpoint is this benchmark's own: a small S3 server on
127.0.0.1 that lists 100,000 keys (a thousand a page, as S3 does) and answers every key with the same
generated Parquet file (10,000 rows; its footer is what planning reads), each under its own ETag. herd's
planner runs in a fresh process against it: listing, then the footers, many at once. Printed: the
seconds, the driver's peak RSS, the requests by kind, and the shards planned. Also `plan` (the dry
run) on the same input, which reads 1,000 of the footers and estimates the rest.
Targets (issue 19): planned in under 60 s, under 2 GB RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import html
import io
import json
import re
import resource
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from bench.common import cpu_seconds, record, run_script, tiny_model

BUCKET = "bench"
_REASONS = {200: "OK", 206: "Partial Content", 404: "Not Found"}
PAGE = 1000


def _parquet_file(rows: int) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    prompts = pa.array([f"prompt number {index % 997} about rivers" for index in range(rows)])
    pq.write_table(pa.table({"prompt": prompts}), buffer, row_group_size=2048)
    return buffer.getvalue()


class GeneratedS3:
    """Just enough of S3 for listing and reading: every key under in/ is the same Parquet file. Objects
    written to it (PUT; deleted by POST ?delete, as s3fs deletes) are held in memory, listed and read
    back beside them (`bench commits`).

    HTTP/1.1 with keep-alive on asyncio streams, in a thread of its own: it shares this machine's 2 cores
    with the planner it answers, and http.server's thread-per-connection handlers spent ~0.6 ms of CPU a
    request (60 s of 100,000 footers), which S3 spends on its own machines."""

    def __init__(self, files: int, content: bytes, latency_s: float) -> None:
        self.keys = [f"in/part-{index:06d}.parquet" for index in range(files)]
        self.key_set = set(self.keys)
        # (prefix, delimiter) -> (keys, common prefixes): a listing's pages are asked for one by one.
        self.listings: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
        self.content = content
        self.written: dict[str, bytes] = {}
        self.latency_s = latency_s
        self.requests: Counter[str] = Counter()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()  # the open connections

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def __enter__(self) -> GeneratedS3:
        self.thread.start()
        # Planning opens 128 connections at once in each process: a small backlog would reset them, where
        # S3 would not.
        opening = asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=4096)
        self.server = asyncio.run_coroutine_threadsafe(opening, self.loop).result()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        server = self.server

        async def shut() -> None:
            server.close()
            # Closing the connections ends their handlers as a client's closing does (cancelled, asyncio's
            # streams would log each).
            connections = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for writer in list(self.writers):
                writer.close()
            await asyncio.gather(*connections, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, target, _ = head[0].split(" ", 2)
                headers = {
                    name.lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:] if line)
                }
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                sent = await reader.readexactly(int(headers.get("content-length", "0")))
                await asyncio.sleep(self.latency_s)
                status, body, answer_headers = self.serve(method, target, headers, sent)
                lines = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Content-Length: {len(body)}"]
                lines += [f"{name}: {value}" for name, value in answer_headers.items()]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                if method != "HEAD":
                    writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its connection
        finally:
            self.writers.discard(writer)
            writer.close()

    def _etag(self, key: str) -> str:
        """As S3's: the MD5 of what was written; a generated file's differs by key (each its own file)."""
        content = self.written.get(key)
        return '"' + hashlib.md5(key.encode() if content is None else content).hexdigest() + '"'

    def serve(
        self, method: str, target: str, request_headers: dict[str, str], sent: bytes = b""
    ) -> tuple[int, bytes, dict[str, str]]:
        """The status, body and headers S3 would answer; counted by kind."""
        url = urlparse(target)
        query = parse_qs(url.query, keep_blank_values=True)
        key = unquote(url.path.lstrip("/").split("/", 1)[1]) if "/" in url.path.lstrip("/") else ""
        if "list-type" in query:
            kind = "LIST"
            answer = (200, self._listing(query), {"Content-Type": "application/xml"})
        elif method == "PUT":
            kind = "PUT"
            self.written[key] = sent
            self.listings.clear()
            answer = (200, b"", {"ETag": self._etag(key)})
        elif method == "POST" and "delete" in query:
            kind = "POST (delete)"
            keys = [html.unescape(found) for found in re.findall(r"<Key>(.*?)</Key>", sent.decode())]
            for gone in keys:
                self.written.pop(gone, None)
            self.listings.clear()
            deleted = "".join(f"<Deleted><Key>{html.escape(gone)}</Key></Deleted>" for gone in keys)
            answer = (200, f'<?xml version="1.0" encoding="UTF-8"?><DeleteResult>{deleted}</DeleteResult>'.encode(), {})
        elif key in self.written:
            kind = method
            answer = (200, self.written[key], {"ETag": self._etag(key), "Content-Type": "application/octet-stream"})
        elif key in self.key_set:
            kind = method
            size = len(self.content)
            headers = {"ETag": self._etag(key), "Last-Modified": "Tue, 01 Dec 2026 00:00:00 GMT",
                       "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}  # fmt: skip
            wanted = request_headers.get("range")
            if wanted and method == "GET":
                first, last = wanted.removeprefix("bytes=").split("-")
                start = int(first) if first else size - int(last)
                end = min(size - 1, int(last)) if first and last else size - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                answer = (206, self.content[start : end + 1], headers)
            else:
                answer = (200, self.content, headers)
        else:
            kind = f"{method} (missing)"
            answer = (404, b"", {"Content-Type": "application/xml"})
        self.requests[kind] += 1  # one thread serves every request
        return answer

    def _matching(self, prefix: str, delimiter: str) -> tuple[list[str], list[str]]:
        """The keys under `prefix`, and with a delimiter the "folders" below it, as S3 lists them."""
        if (prefix, delimiter) not in self.listings:
            keys = [key for key in sorted([*self.keys, *self.written]) if key.startswith(prefix)]
            folders: list[str] = []
            if delimiter:
                below = [key for key in keys if delimiter in key[len(prefix) :]]
                folders = sorted({prefix + key[len(prefix) :].split(delimiter)[0] + delimiter for key in below})
                keys = [key for key in keys if delimiter not in key[len(prefix) :]]
            self.listings[prefix, delimiter] = (keys, folders)
        return self.listings[prefix, delimiter]

    def _listing(self, query: dict[str, list[str]]) -> bytes:
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        start = int(query.get("continuation-token", ["0"])[0])
        limit = min(int(query.get("max-keys", [str(PAGE)])[0]), PAGE)
        matching, prefixes = self._matching(prefix, delimiter)
        entries = []
        page = matching[start : start + limit]
        for key in page:
            size = len(self.written[key]) if key in self.written else len(self.content)
            entries.append(
                f"<Contents><Key>{html.escape(key)}</Key><LastModified>2026-12-01T00:00:00.000Z</LastModified>"
                f"<ETag>{self._etag(key)}</ETag><Size>{size}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
        truncated = start + limit < len(matching)
        more = f"<NextContinuationToken>{start + limit}</NextContinuationToken>" if truncated else ""
        common = "".join(f"<CommonPrefixes><Prefix>{name}</Prefix></CommonPrefixes>" for name in prefixes)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{BUCKET}</Name><Prefix>{prefix}</Prefix><KeyCount>{len(page) + len(prefixes)}</KeyCount>"
            f"<MaxKeys>{limit}</MaxKeys><IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{more}"
            f"{''.join(entries)}{common}</ListBucketResult>"
        ).encode()


def planning_job(endpoint: str, model_path: str) -> Any:
    """The job whose input is this server's s3://bench/in/ (default shard size)."""
    from schemas import parse_job

    return parse_job(
        {
            "input": {"path": f"s3://{BUCKET}/in/", "prompt_column": "prompt"},
            "model": {"path": model_path, "max_model_len": 512},
            "output": {"path": "/tmp/herd-bench-billion-out"},
            "storage": {"endpoint_url": endpoint, "region": "us-east-1"},
        }
    )


def probe(what: str, endpoint: str) -> None:
    """In the child process: plans (or dry-runs) s3://bench/in/, timed, with this process's peak RSS."""
    import os

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
    from common.storage import Storage
    from jobs.planner import list_inputs, plan_shards

    job = planning_job(endpoint, str(tiny_model()))
    started = time.perf_counter()
    if what == "plan":
        storage = Storage(job.storage, job.retry)
        files = list_inputs(storage, job).files
        listed = time.perf_counter() - started
        shards = plan_shards(job.input, files, storage, job.prompt)
        figures = {"files": len(files), "shards": len(shards), "rows": sum(s.estimated_rows for s in shards),
                   "listing_s": listed}  # fmt: skip
    else:
        from herd import api

        report = api.plan(job, sample_rows=50)
        figures = {"files": report["files"], "files_planned": report["files_planned"], "shards": report["shards"],
                   "rows": report["rows"]}  # fmt: skip
    figures["seconds"] = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures["peak_rss_mb"] = usage.ru_maxrss / 1024
    figures["cpu_s"] = usage.ru_utime + usage.ru_stime  # imports included (~2 s)
    # The planning processes a large input gets (jobs/planner.py), when it gets them.
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures["planning_processes_cpu_s"] = children.ru_utime + children.ru_stime
    figures["planning_process_peak_rss_mb"] = children.ru_maxrss / 1024
    print("FIGURES " + json.dumps(figures))


def _measure(what: str, server: GeneratedS3) -> dict[str, Any]:
    server.requests.clear()
    started = cpu_seconds()  # this process is the server's: its CPU is what S3 would spend
    figures = run_script(["-c", f"from bench.billion import probe; probe({what!r}, {server.endpoint!r})"])[1]
    figures["server_cpu_s"] = cpu_seconds() - started
    figures["requests"] = dict(server.requests)
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench billion")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rows-per-file", type=int, default=10_000)
    parser.add_argument("--latency-s", type=float, default=0.02)
    arguments = parser.parse_args(argv)
    content = _parquet_file(arguments.rows_per_file)
    with GeneratedS3(arguments.files, content, arguments.latency_s) as server:
        dry_run = _measure("dry-run", server)
        print(f"plan (dry run): {dry_run}", flush=True)
        plan = _measure("plan", server)
        print(f"planning: {plan}", flush=True)
    rows = arguments.files * arguments.rows_per_file
    record(
        "billion",
        {"files": arguments.files, "rows": rows, "latency_s": arguments.latency_s, "file_bytes": len(content),
         "plan": plan, "dry_run": dry_run, "targets": {"plan_seconds": 60, "plan_peak_rss_mb": 2048}},
        f"billion: {arguments.files:,} files, {rows:,} rows at {arguments.latency_s * 1000:.0f} ms a request: planned "
        f"{plan['shards']:,} shards in {plan['seconds']:.1f}s (listing {plan['listing_s']:.1f}s), peak RSS "
        f"{plan['peak_rss_mb']:.0f} MB, a planning process's {plan['planning_process_peak_rss_mb']:.0f} MB (targets "
        f"< 60 s, < 2 GB); CPU {plan['cpu_s']:.0f} s in the driver, {plan['planning_processes_cpu_s']:.0f} s in "
        f"planning processes, {plan['server_cpu_s']:.0f} s in this benchmark's S3 server; requests "
        f"{plan['requests']}; the dry run, from {dry_run['files_planned']:,} footers, in {dry_run['seconds']:.1f}s",
    )  # fmt: skip
    return 0
