"""The driver's cost per shard: how many shards a second one driver can hand out and commit.

A real run (real Ray, herd's ReplicaPool, Dispatcher and ManifestWriter, local disk) of many tiny
shards on replicas of the fake engine (it answers at once: generation is not what is measured, and
two CPU cores cannot generate for 64 replicas). What is measured is the driver process's own CPU
time per committed shard (its dispatch loop, commits, checkpoints, lease, Ray's client threads), so
the figure holds whatever the replicas cost this machine: one driver core commits 1 / that shards a
second. Side by side in one run: the same shards on 2 and on `--replicas` replicas (the loop's cost
per shard must not grow with the replicas it watches), and on `--replicas` with the job pickled into
every shard's call, as the dispatcher sent it before it put the job in Ray's object store once;
interleaved. The replicas' own busy share is what `python -m bench fleet` measures with 64 on real
Ray, `python -m bench scale` simulates (64 and 256 replicas) and `python -m bench overlap` measures for
one real engine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, planned_tiny_shards_job, record, tiny_shards_input


@contextmanager
def _job_pickled_into_every_call() -> Iterator[None]:
    """The dispatcher's `ray.put` of the job made a no-op: the job object itself goes with each call."""
    import jobs.dispatch

    ray = jobs.dispatch.ray

    class _WithoutPut:
        def __getattr__(self, name: str) -> Any:
            return getattr(ray, name)

        @staticmethod
        def put(value: Any) -> Any:
            return value

    jobs.dispatch.ray = _WithoutPut()
    try:
        yield
    finally:
        jobs.dispatch.ray = ray


def _run(replicas: int, data: Path, rows_per_shard: int, work: Path, job_by_value: bool = False) -> dict[str, Any]:
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
        with _job_pickled_into_every_call() if job_by_value else nullcontext():
            outcome = Dispatcher(job, pool, manifest.commit_all).run(shards)
        manifest.finish()
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    finally:
        pool.shutdown()
    assert len(outcome.committed) == len(shards) and not outcome.failed, outcome.failed
    return {
        "replicas": replicas,
        "job": "pickled into every call" if job_by_value else "put in the object store once",
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

    ray.init(num_cpus=max(4, arguments.replicas), num_gpus=0, include_dashboard=False, log_to_driver=False)
    many = arguments.replicas
    by_value = f"{many}, job by value"
    runs: dict[str, list[dict[str, Any]]] = {str(many): [], "2": [], by_value: []}
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        os.environ.setdefault("HERD_CACHE_DIR", str(work / "node-cache"))
        data = tiny_shards_input(work / "in", arguments.shards, arguments.rows_per_shard)
        for side in (str(many), "2", by_value, by_value, "2", str(many)):
            replicas = 2 if side == "2" else many
            runs[side].append(_run(replicas, data, arguments.rows_per_shard, work, job_by_value=side == by_value))
            print(runs[side][-1], flush=True)
    ray.shutdown()

    def mean(side: str, key: str) -> float:
        return sum(run[key] for run in runs[side]) / len(runs[side])

    per_shard = {side: mean(side, "driver_cpu_ms_per_shard") for side in runs}
    record(
        "driver",
        {
            "engine": "fake, answers at once",
            "runs": runs,
            "driver_cpu_ms_per_shard": per_shard,
            "shards_per_s_per_driver_core": 1000 / per_shard[str(many)],
            "target_commits_per_s": 200,
        },
        f"driver: {per_shard[str(many)]:.2f} ms of driver CPU a shard with {many} replicas, {per_shard['2']:.2f} ms "
        f"with 2 ({per_shard[str(many)] / per_shard['2']:.2f}x), {per_shard[by_value]:.2f} ms with {many} and the job "
        f"pickled into every call ({per_shard[by_value] / per_shard[str(many)]:.2f}x): one driver core commits "
        f"{1000 / per_shard[str(many)]:.0f} shards/s (target >= 200); this machine committed "
        f"{mean(str(many), 'commits_per_s'):.0f}/s with every core shared",
    )
    return 0
