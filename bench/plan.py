"""Planning cost: 1,000 Parquet files holding 10M rows, and a resume over a manifest of 100k shards;
and planning 300 Parquet files on S3 (moto behind a proxy that adds 20 ms to every request, as a
region's round trip does) with the footers read one at a time against as many at once as herd reads.

Each measurement runs in a fresh process so its peak RSS is the planner's own (interpreter and
pyarrow included). Targets: planning < 10 s with peak RSS < 500 MB; resume planning < 5 s.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import CACHE, record, run_script


def _inputs(files: int, rows: int) -> Path:
    directory = CACHE / f"plan-{files}x{rows}"
    if len(list(directory.glob("*.parquet"))) == files:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    texts = pa.array([f"prompt number {index % 997} about rivers" for index in range(rows)])
    for index in range(files):
        pq.write_table(pa.table({"prompt": texts}), directory / f"part-{index:04d}.parquet", row_group_size=2048)
    return directory


def _manifest(shards: int) -> Path:
    root = CACHE / f"manifest-{shards}"
    manifest = root / "manifest"
    if manifest.exists() and len(list(manifest.iterdir())) == shards:
        return root
    manifest.mkdir(parents=True, exist_ok=True)
    for index in range(shards):
        shard_id = f"part-{index:06d}-0-1-{index:010x}"
        (manifest / f"{shard_id}.json").write_text(
            json.dumps(
                {
                    "shard_id": shard_id,
                    "rows_in": 100,
                    "rows_out": 100,
                    "error_rows": 0,
                    "reused_rows": 0,
                    "prompt_tokens": 900,
                    "completion_tokens": 6400,
                    "generate_started_at": 0.1,
                    "generate_seconds": 1.0,
                    "shard_seconds": 1.2,
                    "started_at": 0.0,
                    "finished_at": 1.2,
                    "outputs": [{"url": f"{root}/data/{shard_id}.x.parquet", "bytes": 1000, "rows": 100}],
                    "replica": "node:1",
                    "attempts": 1,
                }
            )
        )
    return root


def probe(what: str, path: str, endpoint: str | None = None, at_once: int | None = None) -> None:
    """Runs in the child process: one planning step, timed, with this process's peak RSS."""
    from common import storage as storage_module
    from common.layout import OutputLayout
    from common.storage import Storage
    from jobs.committed import committed_shards
    from jobs.planner import plan_shards
    from schemas.job import InputSpec, RetrySpec, StorageSpec

    if at_once is not None:
        storage_module._S3.small_requests_at_once = at_once
    storage = Storage(StorageSpec(endpoint_url=endpoint), RetrySpec())
    started = time.perf_counter()
    if what == "plan":
        spec = InputSpec(path=path, prompt_column="prompt", rows_per_shard=10000)
        count = len(plan_shards(spec, storage.expand_inputs(path), storage))
    elif what == "plan_memory":
        # What the plan holds per shard once planned (10 shards a file here), traced apart from the
        # reading's own garbage: the figure that decides a million-shard plan's size.
        import tracemalloc

        spec = InputSpec(path=path, prompt_column="prompt", rows_per_shard=1000)
        files = storage.expand_inputs(path)
        tracemalloc.start()
        shards = plan_shards(spec, files, storage)
        count = len(shards)
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        print("FIGURES " + json.dumps({"count": count, "bytes_per_shard": held / count}))
        return
    else:
        count = len(committed_shards(storage, OutputLayout(path)))
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("FIGURES " + json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "count": count}))


def _measure(what: str, path: Path | str, endpoint: str | None = None, at_once: int | None = None) -> dict:
    call = f"probe({what!r}, {str(path)!r}, {endpoint!r}, {at_once!r})"
    return run_script(["-c", f"from bench.plan import probe; {call}"])[1]


def _on_slow_s3(files: int) -> dict:
    """Footers one at a time against herd's default many at once, interleaved (many, 1, 1, many), on S3
    with 20 ms a request."""
    import s3fs

    from bench.common import moto_s3
    from common.storage import Storage
    from schemas.job import RetrySpec, StorageSpec
    from tests.cpu.flaky_s3_proxy import FlakyS3Proxy

    data = _inputs(files, 1000)
    default = Storage(StorageSpec(), RetrySpec()).small_requests_at_once("s3://bench/plan/")
    seconds: dict[int, list[float]] = {1: [], default: []}
    with moto_s3() as endpoint:
        filesystem = s3fs.S3FileSystem(endpoint_url=endpoint)
        filesystem.mkdir("bench")
        filesystem.put(str(data) + "/", "bench/plan/", recursive=True)
        with FlakyS3Proxy(endpoint, 0.0, latency_s=0.02) as proxy:
            for at_once in (default, 1, 1, default):
                figures = _measure("plan", "s3://bench/plan/", proxy.endpoint, at_once)
                seconds[at_once].append(figures["seconds"])
    one, many = sum(seconds[1]) / 2, sum(seconds[default]) / 2
    return {"files": files, "latency_s": 0.02, "at_once": default, "seconds_one_at_a_time": seconds[1],
            "seconds_at_once": seconds[default], "speedup": one / many}  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench plan")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rows-per-file", type=int, default=10000)
    parser.add_argument("--manifest-shards", type=int, default=100_000)
    parser.add_argument("--s3-files", type=int, default=300)
    arguments = parser.parse_args(argv)
    plan = _measure("plan", _inputs(arguments.files, arguments.rows_per_file))
    memory = _measure("plan_memory", _inputs(arguments.files, arguments.rows_per_file))
    resume = _measure("resume", _manifest(arguments.manifest_shards))
    slow_s3 = _on_slow_s3(arguments.s3_files)
    record(
        "plan",
        {
            "files": arguments.files,
            "rows": arguments.files * arguments.rows_per_file,
            "plan": plan,
            "plan_held": memory,
            "manifest_shards": arguments.manifest_shards,
            "resume": resume,
            "plan_on_s3_with_latency": slow_s3,
            "targets": {"plan_seconds": 10, "plan_peak_rss_mb": 500, "resume_seconds": 5},
        },
        f"plan: {plan['count']} shards from {arguments.files} files in {plan['seconds']:.2f}s "
        f"(peak RSS {plan['peak_rss_mb']:.0f} MB, target < 10 s and < 500 MB), "
        f"{memory['bytes_per_shard']:.0f} bytes held a planned shard; resume over "
        f"{resume['count']} committed shards in {resume['seconds']:.2f}s (target < 5 s); {slow_s3['files']} files "
        f"on S3 at 20 ms a request: footers {slow_s3['at_once']} at once {slow_s3['speedup']:.1f}x faster than one "
        f"at a time ({sum(slow_s3['seconds_at_once']) / 2:.1f}s vs {sum(slow_s3['seconds_one_at_a_time']) / 2:.1f}s)",
    )
    return 0
