"""One big Parquet file as pandas or pyarrow write it: 1M rows in ONE row group, on S3 (a moto server
on 127.0.0.1 behind a byte-counting proxy), planned with the default rows_per_shard and run by two
replicas of a fixed-rate fake engine (the fake engine: two CPU cores cannot generate 1M rows with
vLLM; this measures sharding, reading and memory, not generation).

Reported, side by side with the same rows written in row groups of 65,536:
- shards planned (before: 1, since a shard was a whole number of row groups);
- replicas busy: the fraction of the run each replica had a shard in hand (target >= 95%);
- bytes fetched of the input object / bytes of the columns read (target <= 1.5);
- peak RSS of the replica processes (target: the same whatever the row group size).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import CACHE, WORDS, moto_s3, peak_rss_mb, record, tiny_model

FAKE_ENGINE_SECONDS_PER_SHARD = 0.05


def _write_file(path: Path, rows: int, row_group_size: int) -> None:
    if path.exists():
        return
    rng = random.Random(3)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))) for _ in range(rows)]
    pq.write_table(
        pa.table({"id": [f"r{index}" for index in range(rows)], "prompt": texts}), path, row_group_size=row_group_size
    )


def _busy_fraction(records: list) -> float:
    """Per replica, the time it had a shard in hand over the whole run; averaged."""
    from jobs.run_stats import covered_seconds

    first = min(shard.started_at for shard in records)
    last = max(shard.finished_at for shard in records)
    replicas = {shard.replica for shard in records}
    fractions = [
        covered_seconds(
            [shard.started_at for shard in records if shard.replica == replica],
            [shard.finished_at for shard in records if shard.replica == replica],
        )
        / (last - first)
        for replica in replicas
    ]
    return sum(fractions) / len(fractions)


def _run(layout: str, url: str, proxy) -> dict:
    import ray

    from jobs.replicas import ReplicaPool
    from jobs.runner import run_job
    from schemas import parse_job
    from tests.cpu.fake_engine import FakeEngineFactory

    job = parse_job(
        {
            "input": {"path": url, "prompt_column": "prompt", "id_column": "id"},
            "model": {"path": str(tiny_model()), "max_model_len": 512},
            "sampling": {"max_new_tokens": 4},
            "output": {"path": f"s3://bench/out-{layout}"},
            "resources": {"replicas": 2, "accelerator": "cpu"},  # the fake engine's replicas hold CPUs
            "storage": {"endpoint_url": proxy.endpoint},
        }
    )
    pool = ReplicaPool(job.model, job, size=2, engine_factory=FakeEngineFactory(FAKE_ENGINE_SECONDS_PER_SHARD))
    before = proxy.bytes_read_by_path[f"/{url.removeprefix('s3://')}"]
    try:
        outcome = run_job(job, overwrite=True, pool=pool)
        replica_pids = [
            int(ray.get(actor.ready.remote()).rsplit(":", 1)[1])
            for actor in [replica.actor for replica in pool.replicas]
        ]
        rss = max(peak_rss_mb(pid) for pid in replica_pids)
    finally:
        pool.shutdown()
    fetched = proxy.bytes_read_by_path[f"/{url.removeprefix('s3://')}"] - before
    from common.layout import OutputLayout
    from common.storage import Storage
    from jobs.committed import committed_shards

    records = list(committed_shards(Storage(job.storage, job.retry), OutputLayout(job.output.path)).values())
    assert outcome.summary.rows_out == outcome.summary.rows_in, outcome.summary
    return {
        "shards": outcome.summary.shards,
        "rows": outcome.summary.rows_in,
        "busy_fraction": _busy_fraction(records),
        "bytes_fetched": fetched,
        "peak_replica_rss_mb": rss,
        "wall_s": outcome.summary.wall_seconds,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench bigfile")
    parser.add_argument("--rows", type=int, default=1_000_000)
    arguments = parser.parse_args(argv)
    import ray
    import s3fs

    from tests.cpu.flaky_s3_proxy import FlakyS3Proxy

    results = {}
    with moto_s3() as endpoint, tempfile.TemporaryDirectory() as work, FlakyS3Proxy(endpoint, 0.0) as proxy:
        os.environ["HERD_CACHE_DIR"] = str(Path(work) / "node-cache")  # a fresh spill cache
        ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, log_to_driver=False)
        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        fs.mkdir("bench")
        for layout, group_rows in (("one-group", arguments.rows), ("groups-of-65536", 65536)):
            local = CACHE / f"bigfile-{arguments.rows}-{layout}.parquet"
            CACHE.mkdir(parents=True, exist_ok=True)
            _write_file(local, arguments.rows, group_rows)
            metadata = pq.ParquetFile(local).metadata
            columns_bytes = sum(
                metadata.row_group(group).column(column).total_compressed_size
                for group in range(metadata.num_row_groups)
                for column in range(metadata.num_columns)
            )  # both columns (id, prompt) are read
            fs.put(str(local), f"bench/in-{layout}/prompts.parquet")
            result = _run(layout, f"s3://bench/in-{layout}/prompts.parquet", proxy)
            result["row_groups"] = metadata.num_row_groups
            result["file_bytes"] = local.stat().st_size
            result["fetched_over_columns"] = result["bytes_fetched"] / columns_bytes
            results[layout] = result
            print(layout, result, flush=True)
        ray.shutdown()
    one, small = results["one-group"], results["groups-of-65536"]
    record(
        "bigfile",
        {
            "rows": arguments.rows,
            "engine": f"fake, fixed rate: {FAKE_ENGINE_SECONDS_PER_SHARD}s a shard",
            "replicas": 2,
            "results": results,
            "targets": {"busy_fraction": 0.95, "fetched_over_columns": 1.5, "rss": "independent of row groups"},
        },
        f"bigfile: 1 row group of {arguments.rows:,} rows -> {one['shards']} shards; replicas busy "
        f"{one['busy_fraction']:.1%} (target >= 95%); fetched {one['fetched_over_columns']:.2f}x the columns' "
        f"bytes (target <= 1.5x); peak replica RSS {one['peak_replica_rss_mb']:.0f} MB vs "
        f"{small['peak_replica_rss_mb']:.0f} MB with groups of 65,536 rows "
        f"(ratio {one['peak_replica_rss_mb'] / small['peak_replica_rss_mb']:.2f})",
    )
    return 0
