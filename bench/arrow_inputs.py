"""What Arrow IPC inputs cost against the same rows in Parquet: planning and reading every shard.

The same rows (an id, a ~200-character prompt and a ~800-character column the job does not read, as
a dataset with a long text or an image column beside its prompts has) written four ways: Parquet in
row groups of 65,536 rows (pyarrow's and Spark's order of size), Arrow IPC in batches of 1,000 rows
(what a Hugging Face dataset's save_to_disk writes) in the stream layout (save_to_disk's) and in the
file layout (Feather's, Polars' write_ipc), and the file layout in batches of 65,536 rows, uncompressed
(Feather's default batch; ~64 MB each), which planning measures from the file's index and one batch.
Each side in a fresh process, sides alternating over rounds (this machine's speed drifts); local
files, so what is measured is herd's CPU and memory, not storage latency. Printed: planning's wall
time and the process's peak RSS after planning, the wall time to read every shard (an Arrow file's
first shard includes the node's Parquet copy of the columns read), for each side and against Parquet.

Then the same four files of `--s3-rows` rows on S3 (moto behind a proxy adding 20 ms to every request,
as a region's round trip): each side's requests and seconds to plan it and to read every shard, in
this process, sides alternating over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import CACHE, REPO, peak_rss_mb, record

SIDES = ("parquet", "arrow-stream", "arrow-file", "arrow-file-64k")
_BATCH_ROWS = 1000  # datasets' writer_batch_size


def _table(rows: int) -> pa.Table:
    prompts = [f"question {row}: " + "what would a careful reviewer say about this? " * 4 for row in range(rows)]
    return pa.table({"id": [f"r{row}" for row in range(rows)], "prompt": prompts, "notes": ["n" * 800] * rows})


def _inputs(rows: int) -> dict[str, Path]:
    directory = CACHE / f"arrow-inputs-{rows}"
    paths = {
        "parquet": directory / "rows.parquet",
        "arrow-stream": directory / "rows-stream.arrow",
        "arrow-file": directory / "rows-file.arrow",
        "arrow-file-64k": directory / "rows-file-64k.arrow",
    }
    if all(path.exists() for path in paths.values()):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    table = _table(rows)
    pq.write_table(table, paths["parquet"], row_group_size=65536)
    writers = (("arrow-stream", pa.ipc.new_stream, _BATCH_ROWS), ("arrow-file", pa.ipc.new_file, _BATCH_ROWS),
               ("arrow-file-64k", pa.ipc.new_file, 65536))  # fmt: skip
    for side, new, batch_rows in writers:
        with pa.OSFile(str(paths[side]), "wb") as sink, new(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=batch_rows)
    return paths


def _one_side(path: str) -> dict[str, Any]:
    """Plans and reads the file in this process, as a replica would read every shard of it."""
    from common.storage import Storage
    from jobs.planner import plan_shards, select_inputs
    from schemas.job import InputSpec, RetrySpec, StorageSpec
    from workers.shard_io import read_shard

    storage = Storage(StorageSpec(), RetrySpec())
    spec = InputSpec(path=path, prompt_column="prompt", id_column="id")
    started = time.perf_counter()
    shards = plan_shards(spec, select_inputs(spec, storage.expand_inputs(path), storage).files, storage)
    planned = time.perf_counter()
    planning_rss = peak_rss_mb()
    rows = sum(len(read_shard(shard, spec, storage).rows) for shard in shards)
    return {
        "plan_s": planned - started,
        "plan_peak_rss_mb": planning_rss,
        "read_s": time.perf_counter() - planned,
        "peak_rss_mb": peak_rss_mb(),
        "shards": len(shards),
        "rows": rows,
    }


def _on_slow_s3(rows: int, rounds: int) -> dict[str, Any]:
    import s3fs

    from bench.common import moto_s3
    from common.storage import Storage
    from jobs.planner import plan_shards, select_inputs
    from schemas.job import InputSpec, RetrySpec, StorageSpec
    from tests.cpu.flaky_s3_proxy import FlakyS3Proxy
    from workers.shard_io import read_shard

    paths = _inputs(rows)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with moto_s3() as endpoint, FlakyS3Proxy(endpoint, 0.0, latency_s=0.02) as proxy:
        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        fs.mkdir("herd-bench")
        for side, path in paths.items():
            fs.put(str(path), f"herd-bench/{side}/{path.name}")
        storage = Storage(StorageSpec(endpoint_url=proxy.endpoint), RetrySpec())
        for round_index in range(rounds):
            for side in SIDES if round_index % 2 == 0 else tuple(reversed(SIDES)):
                with tempfile.TemporaryDirectory() as cache:
                    os.environ["HERD_CACHE_DIR"] = cache  # each side makes its own node copy
                    spec = InputSpec(path=f"s3://herd-bench/{side}/", prompt_column="prompt", id_column="id")
                    requests, read_bytes, started = proxy.requests, proxy.bytes_read, time.perf_counter()
                    files = select_inputs(spec, storage.expand_inputs(spec.path), storage).files
                    shards = plan_shards(spec, files, storage)
                    planned, plan_requests = time.perf_counter(), proxy.requests - requests
                    plan_mb = (proxy.bytes_read - read_bytes) / 1e6
                    read = sum(len(read_shard(shard, spec, storage).rows) for shard in shards)
                    assert read == rows, (side, read)
                    found = {
                        "plan_s": planned - started,
                        "plan_requests": plan_requests,
                        "plan_mb": plan_mb,
                        "read_s": time.perf_counter() - planned,
                        "read_requests": proxy.requests - requests - plan_requests,
                        "shards": len(shards),
                    }
                runs[side].append(found)
                print("s3", side, found, flush=True)
    return runs


def _fresh_process(path: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as cache:  # each side makes its own node copy
        result = subprocess.run(
            [sys.executable, "-m", "bench", "arrow_inputs", "--one", str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "HERD_CACHE_DIR": cache},
            check=True,
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench arrow_inputs")
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--s3-rows", type=int, default=50_000)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a side, in the fresh process that measures it
    arguments = parser.parse_args(argv)
    if arguments.one:
        print(json.dumps(_one_side(arguments.one)))
        return 0
    paths = _inputs(arguments.rows)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for round_index in range(arguments.rounds):
        order = SIDES if round_index % 2 == 0 else tuple(reversed(SIDES))
        for side in order:
            found = _fresh_process(paths[side])
            assert found["rows"] == arguments.rows, (side, found)
            runs[side].append(found)
            print(side, found, flush=True)
    medians = {
        side: {key: statistics.median(run[key] for run in found) for key in ("plan_s", "plan_peak_rss_mb", "read_s")}
        for side, found in runs.items()
    }
    sizes = {side: path.stat().st_size for side, path in paths.items()}
    lines = [
        f"{side}: planned in {median['plan_s']:.2f} s (peak RSS {median['plan_peak_rss_mb']:.0f} MB), every shard read "
        f"in {median['read_s']:.1f} s ({median['read_s'] / medians['parquet']['read_s']:.2f}x Parquet's)"
        for side, median in medians.items()
    ]
    s3_runs = _on_slow_s3(arguments.s3_rows, arguments.rounds)
    s3_medians = {
        side: {key: statistics.median(run[key] for run in found) for key in found[0]} for side, found in s3_runs.items()
    }
    s3_lines = [
        f"{side}: planned in {median['plan_s']:.2f} s ({median['plan_requests']:.0f} requests, "
        f"{median['plan_mb']:.1f} MB read), every shard read in "
        f"{median['read_s']:.1f} s ({median['read_requests']:.0f} requests)"
        for side, median in s3_medians.items()
    ]
    record(
        "arrow_inputs",
        {
            "rows": arguments.rows,
            "file_bytes": sizes,
            "runs": runs,
            "medians": medians,
            "s3": {"rows": arguments.s3_rows, "latency_s": 0.02, "runs": s3_runs, "medians": s3_medians},
        },
        f"arrow_inputs, {arguments.rows:,} rows, medians of {arguments.rounds} rounds: "
        + "; ".join(lines)
        + f". On S3 adding 20 ms a request, {arguments.s3_rows:,} rows: "
        + "; ".join(s3_lines),
    )
    return 0
