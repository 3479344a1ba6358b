"""The driver's cost per shard: how many shards a second one driver can hand out and commit.

A real run (real Ray, herd's ReplicaPool, Dispatcher and ManifestWriter, local disk) of many tiny
shards on replicas of the fake engine (it answers at once: generation is not what is measured, and
two CPU cores cannot generate for 64 replicas). What is measured is the driver process's own CPU
time per committed shard (its dispatch loop, commits, checkpoints, lease, Ray's client threads), so
the figure holds whatever the replicas cost this machine: one driver core commits 1 / that shards a
second. Side by side in one run: the same shards on 2 and on `--replicas` replicas (the loop's cost
per shard must not grow with the replicas it watches), interleaved. The replicas' own busy share is
what `python -m bench fleet` measures with 64 on real Ray, `python -m bench scale` simulates (64 and 256
replicas) and `python -m bench overlap` measures for one real engine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, planned_tiny_shards_job, record, tiny_shards_input


def _run(replicas: int, data: Path, rows_per_shard: int, work: Path) -> dict[str, Any]:
    from common.layout import OutputLayout
    from jobs.committed import ManifestWriter
    from jobs.dispatch import Dispatcher
    from jobs.replicas import ReplicaPool
    from tests.cpu.fake_engine import FakeEngineFactory

    job, storage, shards = planned_tiny_shards_job(
        data, rows_per_shard, replicas, 4, work / f"out-{replicas}-{time.monotonic_ns()}"
    )
    manifest = ManifestWriter(storage, OutputLayout(job.output.path))
    pool = ReplicaPool(job.model, job, size=replicas, engine_factory=FakeEngineFactory(seconds_per_call=0.0))
    try:
        import ray

        ray.get([replica.actor.ready.remote() for replica in pool.replicas])  # started: not what is measured
        # The driver's loop and commits, as run_job drives them (planning and the report are once a run).
        cpu, started = cpu_seconds(), time.perf_counter()
        outcome = Dispatcher(job, pool, manifest.commit_all).run(shards)
        manifest.finish()
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    finally:
        pool.shutdown()
    assert len(outcome.committed) == len(shards) and not outcome.failed, outcome.failed
    return {
        "replicas": replicas,
        "shards": len(shards),
        "wall_s": wall,
        "driver_cpu_s": cpu,
        "driver_cpu_ms_per_shard": 1000 * cpu / len(shards),
        "commits_per_s": len(shards) / wall,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench driver")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--shards", type=int, default=3000)
    parser.add_argument("--rows-per-shard", type=int, default=4)
    arguments = parser.parse_args(argv)
    import ray

    ray.init(num_cpus=max(4, arguments.replicas), include_dashboard=False, log_to_driver=False)
    runs: dict[int, list[dict[str, Any]]] = {2: [], arguments.replicas: []}
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        os.environ.setdefault("HERD_CACHE_DIR", str(work / "node-cache"))
        data = tiny_shards_input(work / "in", arguments.shards, arguments.rows_per_shard)
        for replicas in (arguments.replicas, 2, 2, arguments.replicas):
            runs[replicas].append(_run(replicas, data, arguments.rows_per_shard, work))
            print(runs[replicas][-1], flush=True)
    ray.shutdown()

    def mean(replicas: int, key: str) -> float:
        return sum(run[key] for run in runs[replicas]) / len(runs[replicas])

    per_shard = {replicas: mean(replicas, "driver_cpu_ms_per_shard") for replicas in runs}
    many = arguments.replicas
    record(
        "driver",
        {
            "engine": "fake, answers at once",
            "runs": {str(replicas): found for replicas, found in runs.items()},
            "driver_cpu_ms_per_shard": {str(replicas): value for replicas, value in per_shard.items()},
            "shards_per_s_per_driver_core": 1000 / per_shard[many],
            "target_commits_per_s": 200,
        },
        f"driver: {per_shard[many]:.2f} ms of driver CPU a shard with {many} replicas, {per_shard[2]:.2f} ms with 2 "
        f"({per_shard[many] / per_shard[2]:.2f}x): one driver core commits {1000 / per_shard[many]:.0f} shards/s "
        f"(target >= 200); this machine committed {mean(many, 'commits_per_s'):.0f}/s with every core shared",
    )
    return 0
