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
import hashlib
import io
import json
import resource
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from bench.common import record, run_script, tiny_model

BUCKET = "bench"
PAGE = 1000


def _parquet_file(rows: int) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    prompts = pa.array([f"prompt number {index % 997} about rivers" for index in range(rows)])
    pq.write_table(pa.table({"prompt": prompts}), buffer, row_group_size=2048)
    return buffer.getvalue()


class _ManyConnectionsServer(ThreadingHTTPServer):
    # Planning opens 128 connections at once in each process: the default backlog (5) would reset them,
    # where S3 would not.
    request_queue_size = 1024


class GeneratedS3:
    """Just enough of S3 for listing and reading: every key under in/ is the same Parquet file."""

    def __init__(self, files: int, content: bytes, latency_s: float) -> None:
        self.keys = [f"in/part-{index:06d}.parquet" for index in range(files)]
        self.key_set = set(self.keys)
        # (prefix, delimiter) -> (keys, common prefixes): a listing's pages are asked for one by one.
        self.listings: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
        self.content = content
        self.latency_s = latency_s
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *arguments: object) -> None:
                pass

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                server.serve(self)

            do_HEAD = do_GET

        self.http = _ManyConnectionsServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    def __enter__(self) -> GeneratedS3:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()

    def _etag(self, key: str) -> str:
        return '"' + hashlib.md5(key.encode()).hexdigest() + '"'

    def serve(self, handler: Any) -> None:
        time.sleep(self.latency_s)
        url = urlparse(handler.path)
        query = parse_qs(url.query)
        key = url.path.lstrip("/").split("/", 1)[1] if "/" in url.path.lstrip("/") else ""
        if "list-type" in query:
            kind = "LIST"
            body = self._listing(query)
            handler._answer(200, body, {"Content-Type": "application/xml"})
        elif key in self.key_set:
            kind = handler.command
            size = len(self.content)
            headers = {"ETag": self._etag(key), "Last-Modified": "Tue, 01 Dec 2026 00:00:00 GMT",
                       "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}  # fmt: skip
            wanted = handler.headers.get("Range")
            if wanted and handler.command == "GET":
                first, last = wanted.removeprefix("bytes=").split("-")
                start = int(first) if first else size - int(last)
                end = min(size - 1, int(last)) if first and last else size - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                handler._answer(206, self.content[start : end + 1], headers)
            else:
                handler._answer(200, self.content, headers)
        else:
            kind = f"{handler.command} (missing)"
            handler._answer(404, b"", {"Content-Type": "application/xml"})
        with self.lock:
            self.requests[kind] += 1

    def _matching(self, prefix: str, delimiter: str) -> tuple[list[str], list[str]]:
        """The keys under `prefix`, and with a delimiter the "folders" below it, as S3 lists them."""
        if (prefix, delimiter) not in self.listings:
            keys = [key for key in self.keys if key.startswith(prefix)]
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
            entries.append(
                f"<Contents><Key>{key}</Key><LastModified>2026-12-01T00:00:00.000Z</LastModified>"
                f"<ETag>{self._etag(key)}</ETag><Size>{len(self.content)}</Size>"
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
    figures = run_script(["-c", f"from bench.billion import probe; probe({what!r}, {server.endpoint!r})"])[1]
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
        f"planning processes; requests {plan['requests']}; the dry run, from "
        f"{dry_run['files_planned']:,} footers, in {dry_run['seconds']:.1f}s",
    )  # fmt: skip
    return 0
