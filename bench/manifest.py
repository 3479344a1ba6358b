"""The manifest at a million shards, and what a committed shard costs in S3 requests.

1. Resume: reading the manifest of a million committed shards (999,999) and deciding what is
   left to run, in a fresh process each time (seconds, peak RSS, and on S3 the requests). The
   manifest is written by herd's own code as the worst a run that died leaves it: 99 of the
   largest checkpoints (10,000 shards each, written by write_checkpoint as ManifestWriter's merges
   leave them), then 9,999 commits through ManifestWriter itself (9 checkpoints of 1,000, 9 of 100
   and 99 record files). On local disk, and on S3 (moto behind a proxy that adds 20 ms to every
   request, as a region's round trip does). Side by side, interleaved: the same shards as record
   files only, which is what herd wrote before checkpoints (at 99,999 on disk and 9,999 on S3: a
   million single objects on moto would take an hour to write).
2. Requests per committed shard: a real run on S3 (moto behind a counting proxy) of a few hundred
   shards, with the fake engine (generation is not what is counted here; the requests of planning,
   reading, writing and committing are herd's own), every request counted by kind and by what it
   touched; and the same per million rows, for pricing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from bench.common import CACHE, moto_s3, record, run_script, tiny_model

CHECKPOINTED = "checkpointed"
RECORDS_ONLY = "records-only"


def _records(start: int, count: int) -> list[Any]:
    from schemas.shard import OutputObject, ShardRecord

    records = []
    for index in range(start, start + count):
        shard_id = f"prompts-{index // 10:06d}_parquet-{index % 10 * 1000}-{index % 10 * 1000 + 1000}-{index:010x}"
        records.append(
            ShardRecord(
                shard_id=shard_id,
                rows_in=1000,
                rows_out=999,
                error_rows=1,
                reused_rows=0,
                prompt_tokens=120_000 + index % 977,
                completion_tokens=256_000 + index % 991,
                generate_started_at=1_764_000_000.0 + index / 200,
                generate_seconds=12.5,
                shard_seconds=13.0,
                started_at=1_764_000_000.0 + index / 200,
                finished_at=1_764_000_013.0 + index / 200,
                outputs=[
                    OutputObject(url=f"s3://bucket/out/data/{shard_id}.0123456789ab.parquet", bytes=412_345, rows=999),
                    OutputObject(url=f"s3://bucket/out/errors/{shard_id}.0123456789ab.parquet", bytes=1_234, rows=1),
                ],
                replica=f"10.0.{index % 8}.1:replica-{index % 64}",
                error_reasons={"generate: prompt too long (N tokens > N)": 1},
                attempts=1,
            )
        )
    return records


def _write_manifest(root: str, shards: int, tail: int, layout: str, endpoint: str | None = None) -> None:
    """Commits `shards` records into `root` through herd's ManifestWriter (checkpointed), or as
    record files only (records-only: what herd wrote before checkpoints)."""
    from common.layout import OutputLayout
    from common.storage import Storage
    from jobs import committed
    from schemas.job import RetrySpec, StorageSpec

    storage = Storage(StorageSpec(endpoint_url=endpoint), RetrySpec())
    output = OutputLayout(root)
    batch = 10_000
    if layout == RECORDS_ONLY:
        for start in range(0, shards, batch):
            for shard in _records(start, min(batch, shards - start)):
                committed.commit_shard(storage, output, shard)
        return
    # The largest checkpoints as ManifestWriter's merges leave them (without first writing and
    # deleting a million record files and 11,000 smaller checkpoints), then the tail through the writer.
    span = committed.CHECKPOINTS_PER_MERGE**committed.MERGED_LEVELS  # checkpoint numbers a largest one covers
    largest = committed.CHECKPOINT_EVERY * span
    compacted = shards - tail
    if compacted < 0 or compacted % largest:
        raise SystemExit(f"--shards minus --tail must be a multiple of {largest:,}")
    for index, start in enumerate(range(0, compacted, largest)):
        committed.write_checkpoint(storage, output, index * span + 1, (index + 1) * span, _records(start, largest))
    writer = committed.ManifestWriter(storage, output)
    for shard in _records(compacted, tail):
        writer.commit(shard)


def _local_manifest(shards: int, tail: int, layout: str) -> str:
    root = CACHE / f"manifest-{layout}-{shards}-{tail}"
    done = root / "complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        _write_manifest(str(root), shards, tail, layout)
        done.write_text("")
    return str(root)


def probe(root: str, shards: int, endpoint: str | None) -> None:
    """Runs in the child process: reads the manifest and picks the shards left to run, timed."""
    from common.layout import OutputLayout
    from common.storage import Storage
    from jobs.committed import committed_shards
    from schemas.job import RetrySpec, StorageSpec

    planned = [shard.shard_id for shard in _records(0, min(shards, 1000))]  # ids as planning gives them
    planned += [f"prompts-{index // 10:06d}_parquet-x-{index:010x}" for index in range(len(planned), shards)]
    storage = Storage(StorageSpec(endpoint_url=endpoint), RetrySpec())
    started = time.perf_counter()
    committed = committed_shards(storage, OutputLayout(root))
    todo = [shard_id for shard_id in planned if shard_id not in committed]
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {"seconds": seconds, "peak_rss_mb": peak_mb, "committed": len(committed), "todo": len(todo)}
    print("FIGURES " + json.dumps(figures))


def report_probe(root: str) -> None:
    """Runs in the child process: what report.html, the run summary and `inspect` compute over every
    committed shard (the plots from binned series, sums and reasons from the columns), timed each. The
    report's sampled rows read at most 64 files whatever the shard count: not part of this."""
    from common.layout import OutputLayout
    from common.storage import Storage
    from jobs import report, run_stats
    from jobs.committed import committed_shards
    from schemas.job import RetrySpec, StorageSpec

    records = committed_shards(Storage(StorageSpec(), RetrySpec()), OutputLayout(root))
    planned = list(records)  # inspect narrows the committed set to the planned shards
    steps = {
        "report_throughput_plot": lambda: report._throughput(records),
        "report_replica_load_plot": lambda: report._replica_load(records),
        "report_attempts_plot": lambda: report._attempts(records),
        "report_files_sampled": lambda: (report._spread(records, "data"), report._spread(records, "errors")),
        "summary_tokens_per_s_by_replica": lambda: run_stats.tokens_per_s_by_replica(records.table),
        "summary_error_reasons": lambda: (records.error_reasons(), records.with_error_rows()),
        "inspect_committed_of_planned": lambda: records.only(planned).total("rows_out"),
        "inspect_committed_of_half_planned": lambda: records.only(planned[::2]).total("rows_out"),
    }
    figures = {"shards": len(records)}
    for name, step in steps.items():
        started = time.perf_counter()
        step()
        figures[name] = time.perf_counter() - started
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("FIGURES " + json.dumps(figures))


def _resume(root: str, shards: int, endpoint: str | None = None, proxy: Any = None) -> dict[str, Any]:
    if proxy is not None:
        proxy.log.clear()
    figures = run_script(["-c", f"from bench.manifest import probe; probe({root!r}, {shards}, {endpoint!r})"])[1]
    if proxy is not None:
        figures["requests"] = dict(_kinds(proxy.log))
    return figures


def _kind(method: str, path: str) -> str:
    """What S3 bills a request as: a listing is a GET with list-type, DeleteObjects a POST."""
    return "LIST" if method == "GET" and "list-type=" in path else method


def _kinds(log: list[tuple[str, str]]) -> Counter[str]:
    return Counter(_kind(method, path) for method, path in log)


def _what(path: str) -> str:
    """What a request touched, in a run reading s3://bench/run/in/ into s3://bench/run/out."""
    key, _, query = path.partition("?")
    if "delete" in query.split("&"):
        return "deletes"  # DeleteObjects: the keys are in its body
    prefix = parse_qs(query).get("prefix", [""])[0]  # a listing names its folder here
    parts = (prefix or key.strip("/").split("/", 1)[-1]).split("/")  # [run, in|out, ...]
    if parts[1:2] == ["in"]:
        return "input"
    folder = parts[2] if len(parts) > 3 or (prefix and len(parts) > 2) else ""
    return folder if folder in ("data", "errors", "manifest", "logs") else "run files"


def _requests_per_shard(endpoint: str, proxy: Any, shards: int, rows_per_shard: int) -> dict[str, Any]:
    """A herd run on S3 with the fake engine, every request through the proxy counted."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import s3fs

    from jobs.replicas import ReplicaPool
    from jobs.runner import run_job
    from schemas import parse_job
    from tests.cpu.fake_engine import FakeEngineFactory

    files, rows = 4, shards * rows_per_shard
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    with tempfile.TemporaryDirectory() as work:
        for index in range(files):
            local = Path(work) / f"part-{index}.parquet"
            prompts = [f"prompt {row} about rivers and mountains" for row in range(rows // files)]
            pq.write_table(pa.table({"prompt": prompts}), local, row_group_size=rows_per_shard * 4)
            fs.put(str(local), f"bench/run/in/part-{index}.parquet")
    job = parse_job(
        {
            "input": {"path": "s3://bench/run/in/", "prompt_column": "prompt", "rows_per_shard": rows_per_shard},
            "model": {"path": str(tiny_model()), "max_model_len": 512},
            "sampling": {"max_new_tokens": 4},
            "output": {"path": "s3://bench/run/out"},
            "resources": {"replicas": 2, "accelerator": "cpu"},  # the fake engine's replicas hold CPUs
            "storage": {"endpoint_url": proxy.endpoint},
        }
    )
    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, log_to_driver=False)
    pool = ReplicaPool(job.model, job, size=2, engine_factory=FakeEngineFactory(seconds_per_call=0.01))
    try:
        ray.get([replica.actor.ready.remote() for replica in pool.replicas])  # started before counting
        proxy.log.clear()
        outcome = run_job(job, pool=pool, quiet=True)
    finally:
        pool.shutdown()
        ray.shutdown()
    summary = outcome.summary
    assert summary.status == "succeeded" and summary.rows_out == rows, summary
    kinds = _kinds(proxy.log)
    by_what = Counter(f"{_what(path)} {_kind(method, path)}" for method, path in proxy.log)
    per_shard = {kind: count / summary.shards for kind, count in sorted(kinds.items())}
    return {
        "shards": summary.shards,
        "rows_per_shard": rows_per_shard,
        "requests": dict(kinds),
        "requests_by_what": dict(sorted(by_what.items())),
        "per_shard": per_shard,
        "per_million_rows": {kind: count * 1_000_000 / rows for kind, count in sorted(kinds.items())},
    }


def _upload(local_root: str, endpoint: str, remote: str) -> None:
    import s3fs

    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).put(
        f"{local_root}/manifest/", f"{remote}/manifest/", recursive=True
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench manifest")
    # 99 of the largest checkpoints (10,000 shards each) and the most a crash leaves beside them:
    # 9 of 1,000, 9 of 100 and 99 record files (9,999 shards).
    parser.add_argument("--shards", type=int, default=999_999)
    parser.add_argument(
        "--tail", type=int, default=9_999, help="commits since the last largest checkpoint (9,999: the most)"
    )
    parser.add_argument("--compare-shards", type=int, default=99_999, help="on disk, both layouts")
    parser.add_argument("--compare-shards-s3", type=int, default=9_999, help="on S3, both layouts")
    parser.add_argument("--run-shards", type=int, default=400)
    arguments = parser.parse_args(argv)
    from tests.cpu.flaky_s3_proxy import FlakyS3Proxy

    compare, compare_s3 = arguments.compare_shards, arguments.compare_shards_s3
    tail = arguments.tail
    million = _local_manifest(arguments.shards, arguments.tail, CHECKPOINTED)
    on_disk = {layout: _local_manifest(compare, tail, layout) for layout in (CHECKPOINTED, RECORDS_ONLY)}
    rounds: dict[str, list[dict[str, Any]]] = {CHECKPOINTED: [], RECORDS_ONLY: []}
    for layout in (CHECKPOINTED, RECORDS_ONLY, RECORDS_ONLY, CHECKPOINTED):
        rounds[layout].append(_resume(on_disk[layout], compare))
        print(f"disk {layout} {compare}: {rounds[layout][-1]}", flush=True)
    disk_million = _resume(million, arguments.shards)
    print(f"disk {CHECKPOINTED} {arguments.shards}: {disk_million}", flush=True)
    reporting = run_script(["-c", f"from bench.manifest import report_probe; report_probe({million!r})"])[1]
    print(f"report, summary and inspect over {arguments.shards}: {reporting}", flush=True)

    s3: dict[str, Any] = {}
    with (
        moto_s3() as endpoint,
        FlakyS3Proxy(endpoint, 0.0, latency_s=0.02) as slow,
        FlakyS3Proxy(endpoint, 0.0) as counting,
    ):
        import s3fs

        s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir("bench")
        _upload(million, endpoint, "bench/million")
        for layout in (CHECKPOINTED, RECORDS_ONLY):
            _write_manifest(f"s3://bench/{layout}", compare_s3, tail, layout, endpoint)
        s3_rounds: dict[str, list[dict[str, Any]]] = {CHECKPOINTED: [], RECORDS_ONLY: []}
        for layout in (CHECKPOINTED, RECORDS_ONLY, RECORDS_ONLY, CHECKPOINTED):
            s3_rounds[layout].append(_resume(f"s3://bench/{layout}", compare_s3, slow.endpoint, slow))
            print(f"s3 {layout} {compare_s3}: {s3_rounds[layout][-1]}", flush=True)
        s3_million = _resume("s3://bench/million", arguments.shards, slow.endpoint, slow)
        print(f"s3 {CHECKPOINTED} {arguments.shards}: {s3_million}", flush=True)
        s3 = {"latency_s": 0.02, "compare_shards": compare_s3, "rounds": s3_rounds, "million": s3_million}
        os.environ.setdefault("HERD_CACHE_DIR", tempfile.mkdtemp(prefix="herd-bench-cache-"))
        requests = _requests_per_shard(endpoint, counting, arguments.run_shards, 100)
        print(f"requests: {requests}", flush=True)

    def mean(values: list[dict[str, Any]], key: str = "seconds") -> float:
        return sum(value[key] for value in values) / len(values)

    disk_ratio = mean(rounds[RECORDS_ONLY]) / mean(rounds[CHECKPOINTED])
    s3_ratio = mean(s3_rounds[RECORDS_ONLY]) / mean(s3_rounds[CHECKPOINTED])
    per_shard = requests["per_shard"]
    record(
        "manifest",
        {
            "shards": arguments.shards,
            "tail_record_files": arguments.tail,
            "disk": {"compare_shards": compare, "rounds": rounds, "million": disk_million},
            "s3": s3,
            "run": requests,
            "report_summary_inspect_seconds": reporting,
            "ratios": {
                "disk_records_only_over_checkpointed": disk_ratio,
                "s3_records_only_over_checkpointed": s3_ratio,
            },
            "targets": {"resume_seconds_at_a_million": 10},
        },
        f"manifest: resume over {arguments.shards:,} committed shards in {disk_million['seconds']:.2f}s on disk "
        f"(peak RSS {disk_million['peak_rss_mb']:.0f} MB) and {s3_million['seconds']:.2f}s on S3 at 20 ms a request "
        f"({sum(s3_million['requests'].values())} requests: {s3_million['requests']}), target < 10 s; "
        f"at {compare:,} on disk records-only / checkpointed = {disk_ratio:.1f}x, at {compare_s3:,} on S3 "
        f"{s3_ratio:.1f}x; a committed shard costs "
        + ", ".join(f"{count:.2f} {kind}" for kind, count in per_shard.items())
        + f" requests ({requests['shards']} shards of {requests['rows_per_shard']} rows, fake engine); "
        f"report.html's plots, the summary's figures and inspect's sums over them "
        f"{sum(value for key, value in reporting.items() if key not in ('shards', 'peak_rss_mb')):.2f}s",
    )
    return 0
