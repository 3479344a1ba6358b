"""Where planning's CPU goes on S3: the client's CPU for one Parquet footer read, herd's way against the
ways it read them before and against botocore's own presigning (issue 19 item 1: 100,000 files planned in
under 60 s).

herd reads footers with its own HTTP client (common/http_get.py) from URLs signed as s3fs's botocore
client presigns them (common/s3_presigned.py). Before, it sent the same URLs with aiohttp, and before
that it read them through s3fs's `cat_ranges`, i.e. aiobotocore: per request, botocore builds, signs,
sends and parses through its event hooks and endpoint rules. The last side, the design input measured
before herd's way was built: a URL presigned by a plain botocore client for each key
(`generate_presigned_url`), fetched with aiohttp. All read the last 64 kB of each file, as
many at once as herd does, and parse it with pyarrow, from the `billion` benchmark's S3 server running in
a process of its own with no added latency, so the CPU time of this process is the client's alone. The
sides alternate over rounds (this machine's speed drifts); printed: CPU milliseconds a file for each,
and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from bench.common import REPO, cpu_seconds, record

_AT_ONCE = 128  # footers herd reads at once
_HERD = "herd (signed as s3fs's client presigns, herd's HTTP client)"
_AIOHTTP = "the same URLs sent by aiohttp (herd before its own client)"
_BEFORE = "s3fs cat_ranges (aiobotocore; herd before presigning)"
_BOTOCORE = "presigned by botocore key by key + aiohttp"


def _server(files: int) -> tuple[subprocess.Popen, str]:
    script = (
        "import time\n"
        "from bench.billion import GeneratedS3, _parquet_file\n"
        f"server = GeneratedS3({files}, _parquet_file(10_000), 0.0)\n"
        "server.__enter__()\n"
        "print(server.endpoint, flush=True)\n"
        "time.sleep(24 * 3600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()  # type: ignore[union-attr]


def _herd_reads(endpoint: str) -> tuple[list[Any], dict[str, Callable[[], None]]]:
    """The listed files; herd's read of their footers, the same URLs sent by aiohttp, and s3fs's
    `cat_ranges` of the same bytes, each parsed alike."""
    import aiohttp
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yarl
    from fsspec.asyn import sync

    from bench.billion import BUCKET, planning_job
    from common.s3_presigned import _bucket_access
    from common.storage import _FOOTER_READ_BYTES, Storage
    from jobs.planner import list_inputs

    job = planning_job(endpoint, "unused")
    storage = Storage(job.storage, job.retry)
    files = list_inputs(storage, job).files
    backend, _ = storage._backend(files[0].url)
    paths = [backend.path(info.url) for info in files]

    def herd() -> None:
        footers = storage.parquet_footers(files)
        assert not any(isinstance(footer, Exception) for footer in footers), footers[:3]

    def s3fs_cat_ranges() -> None:
        starts = [max(0, info.size - _FOOTER_READ_BYTES) for info in files]
        tails = backend.fs.cat_ranges(paths, starts, [info.size for info in files], batch_size=_AT_ONCE)
        for tail in tails:
            pq.ParquetFile(pa.BufferReader(tail)).metadata  # noqa: B018 - parsed as herd does

    access = sync(backend.fs.loop, _bucket_access, backend.fs, BUCKET)
    assert access is not None, "herd's signer did not reproduce the client's presigned URL"

    async def aiohttp_reads() -> None:
        limit = asyncio.Semaphore(_AT_ONCE)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

            async def one(info: Any) -> None:
                url = yarl.URL(access.object_url(info.url.removeprefix(f"s3://{BUCKET}/")), encoded=True)
                tail = {"Range": f"bytes={max(0, info.size - _FOOTER_READ_BYTES)}-{info.size - 1}"}
                async with limit, session.get(url, headers=tail) as response:
                    assert response.status == 206, response.status
                    pq.ParquetFile(pa.BufferReader(await response.read())).metadata  # noqa: B018 - parsed as herd does

            await asyncio.gather(*(one(info) for info in files))

    return files, {_HERD: herd, _AIOHTTP: lambda: asyncio.run(aiohttp_reads()), _BEFORE: s3fs_cat_ranges}


def _presigned_reads(endpoint: str, files: list[Any]) -> Callable[[], None]:
    import aiohttp
    import botocore.session
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.billion import BUCKET
    from common.storage import _FOOTER_READ_BYTES

    client = botocore.session.get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys = [info.url.removeprefix(f"s3://{BUCKET}/") for info in files]

    async def read_all() -> None:
        signed = [client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}) for key in keys]
        limit = asyncio.Semaphore(_AT_ONCE)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=_AT_ONCE)) as session:

            async def one(url: str, size: int) -> None:
                tail = {"Range": f"bytes={max(0, size - _FOOTER_READ_BYTES)}-{size - 1}"}
                async with limit, session.get(url, headers=tail) as response:
                    assert response.status == 206, response.status
                    pq.ParquetFile(pa.BufferReader(await response.read())).metadata  # noqa: B018 - parsed as herd does

            await asyncio.gather(*(one(url, info.size) for url, info in zip(signed, files, strict=True)))

    return lambda: asyncio.run(read_all())


def _cpu_ms_a_file(read: Callable[[], None], files: int) -> float:
    started = cpu_seconds()
    read()
    return (cpu_seconds() - started) / files * 1000


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench footer_client")
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args(argv)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
    server, endpoint = _server(arguments.files)
    try:
        files, sides = _herd_reads(endpoint)
        sides[_BOTOCORE] = _presigned_reads(endpoint, files)
        samples: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(arguments.rounds):
            for name, read in sides.items():
                samples[name].append(_cpu_ms_a_file(read, len(files)))
                print(f"{name}: {samples[name][-1]:.3f} ms of CPU a file", flush=True)
    finally:
        server.kill()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    figures: dict[str, Any] = {
        "files": len(files),
        "rounds": arguments.rounds,
        "cpu_ms_a_file": samples,
        "median_cpu_ms_a_file": medians,
        "before_over_herd": medians[_BEFORE] / medians[_HERD],
        "aiohttp_over_herd": medians[_AIOHTTP] / medians[_HERD],
        "botocore_presigned_over_herd": medians[_BOTOCORE] / medians[_HERD],
    }
    record(
        "footer_client",
        figures,
        "footer_client: the client's CPU a footer, median of "
        f"{arguments.rounds} rounds over {len(files):,} files: "
        + ", ".join(f"{name} {value:.3f} ms" for name, value in medians.items())
        + f"; the s3fs way costs {figures['before_over_herd']:.2f}x herd's, aiohttp "
        f"{figures['aiohttp_over_herd']:.2f}x, botocore's presigning "
        f"{figures['botocore_presigned_over_herd']:.2f}x",
    )
    return 0
