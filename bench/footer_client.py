"""Where planning's CPU goes on S3: the client's CPU for one Parquet footer read, herd's way against a
lighter one, measured before building it (issue 19 item 1: 100,000 files planned in under 60 s).

herd reads footers through s3fs, i.e. aiobotocore: per request, botocore builds, signs, sends and
parses through its event hooks and endpoint rules. The other side: URLs presigned by botocore (the
same credentials, endpoint and addressing; `generate_presigned_url`, or its signer alone) fetched with
aiohttp, which s3fs already installs, then parsed by pyarrow as herd parses them. Both read the last
64 kB of each file, as many at once as herd does, from the `billion` benchmark's S3 server running in
a process of its own with no added latency, so the CPU time of this process is the client's alone.
The sides alternate over rounds (this machine's speed drifts); printed: CPU milliseconds a file for
each, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.common import REPO, record

_AT_ONCE = 128  # footers herd reads at once


def _server(files: int) -> tuple[subprocess.Popen, str]:
    script = (
        "import time\n"
        "from http.server import ThreadingHTTPServer\n"
        "from bench.billion import GeneratedS3, _parquet_file\n"
        # 128 connections opened at once overflow the default backlog of 5 (resets, not reads).
        "ThreadingHTTPServer.request_queue_size = 1024\n"
        f"server = GeneratedS3({files}, _parquet_file(10_000), 0.0)\n"
        "server.__enter__()\n"
        "print(server.endpoint, flush=True)\n"
        "time.sleep(24 * 3600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()  # type: ignore[union-attr]


def _herd_reads(endpoint: str) -> tuple[list[Any], Callable[[], None]]:
    """The listed files, and herd's read of their footers."""
    from bench.billion import planning_job
    from common.storage import Storage
    from jobs.planner import list_inputs

    job = planning_job(endpoint, "unused")
    storage = Storage(job.storage, job.retry)
    files = list_inputs(storage, job).files

    def read() -> None:
        footers = storage.parquet_footers(files)
        assert not any(isinstance(footer, Exception) for footer in footers), footers[:3]

    return files, read


def _presigned_reads(endpoint: str, files: list[Any], *, signer_only: bool) -> Callable[[], None]:
    import aiohttp
    import botocore.session
    import pyarrow as pa
    import pyarrow.parquet as pq
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest

    from bench.billion import BUCKET
    from common.storage import _FOOTER_READ_BYTES

    client = botocore.session.get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1")
    credentials = client._request_signer._credentials.get_frozen_credentials()
    keys = [info.url.removeprefix(f"s3://{BUCKET}/") for info in files]

    def urls() -> list[str]:
        if not signer_only:
            return [client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}) for key in keys]
        signed = []
        for key in keys:
            request = AWSRequest(method="GET", url=f"{endpoint}/{BUCKET}/{key}")
            S3SigV4QueryAuth(credentials, "s3", "us-east-1", expires=3600).add_auth(request)
            signed.append(request.url)
        return signed

    async def read_all(signed: list[str]) -> None:
        limit = asyncio.Semaphore(_AT_ONCE)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=_AT_ONCE)) as session:

            async def one(url: str, size: int) -> None:
                tail = {"Range": f"bytes={max(0, size - _FOOTER_READ_BYTES)}-{size - 1}"}
                async with limit, session.get(url, headers=tail) as response:
                    assert response.status == 206, response.status
                    pq.ParquetFile(pa.BufferReader(await response.read())).metadata  # noqa: B018 - parsed as herd does

            await asyncio.gather(*(one(url, info.size) for url, info in zip(signed, files, strict=True)))

    return lambda: asyncio.run(read_all(urls()))


def _cpu_ms_a_file(read: Callable[[], None], files: int) -> float:
    started = time.process_time()
    read()
    return (time.process_time() - started) / files * 1000


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench footer_client")
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args(argv)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
    server, endpoint = _server(arguments.files)
    try:
        files, herd = _herd_reads(endpoint)
        sides: dict[str, Callable[[], None]] = {
            "herd (s3fs, aiobotocore)": herd,
            "presigned (generate_presigned_url) + aiohttp": _presigned_reads(endpoint, files, signer_only=False),
            "signed (S3SigV4QueryAuth) + aiohttp": _presigned_reads(endpoint, files, signer_only=True),
        }
        samples: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(arguments.rounds):
            for name, read in sides.items():
                samples[name].append(_cpu_ms_a_file(read, len(files)))
                print(f"{name}: {samples[name][-1]:.3f} ms of CPU a file", flush=True)
    finally:
        server.kill()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    herd_ms = medians["herd (s3fs, aiobotocore)"]
    figures: dict[str, Any] = {
        "files": len(files),
        "rounds": arguments.rounds,
        "cpu_ms_a_file": samples,
        "median_cpu_ms_a_file": medians,
        "herd_over_presigned": herd_ms / medians["presigned (generate_presigned_url) + aiohttp"],
    }
    record(
        "footer_client",
        figures,
        "footer_client: the client's CPU a footer, median of "
        f"{arguments.rounds} rounds over {len(files):,} files: "
        + ", ".join(f"{name} {value:.3f} ms" for name, value in medians.items())
        + f"; herd's way costs {figures['herd_over_presigned']:.2f}x the presigned one",
    )
    return 0
