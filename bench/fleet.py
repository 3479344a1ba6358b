"""64 replicas on real Ray: does one driver keep them fed?

A Ray cluster of this machine's own (`ray.cluster_utils`: a head and nodes of 16 logical CPUs each;
Ray places by them, the processes share this machine's cores), herd's ReplicaPool, Dispatcher and
ManifestWriter on local disk, and `--replicas` replicas of the fake engine (named so: two CPU cores
cannot generate for 64 replicas; it tokenizes with the real tokenizer and sleeps instead of
generating, one call at a time per replica as an engine at a fixed rate). Two runs on the same shards:

- shards of a few seconds (`--shard-seconds`): each replica's idle share, from the manifest (the time
  none of its shards was generating) between the moment every replica had its first shard and the
  moment the first replica ran out of work, target under 2%; and the run's wall time over the ideal
  (every replica generating from the first moment to the last);
- the same shards answered at once: the shards committed a second, against the target of 200.

In both, the driver's own cost per committed shard: its CPU time (its loop, commits, checkpoints, Ray's
client threads) and its loop's wall time outside `ray.wait` (what it spends between answers).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import cpu_seconds, planned_tiny_shards_job, processes_cpu_seconds, record, tiny_shards_input

CPUS_PER_NODE = 16


class _TimedWait:
    """ray.wait, adding up the time the driver's loop spends blocked in it."""

    def __init__(self, wait: Any) -> None:
        self.wait = wait
        self.seconds = 0.0

    def __call__(self, *arguments: Any, **options: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.wait(*arguments, **options)
        finally:
            self.seconds += time.perf_counter() - started


def idle_shares(table: Any) -> list[float]:
    """Each replica's share of the steady window it spent with no shard generating. The window runs
    from the moment the last replica started its first shard (before it, a replica may still be
    starting) to the moment the first replica finished its last (after it, the queue is dry)."""
    from jobs.run_stats import covered_seconds, per_replica

    spans = {}
    for name, own in per_replica(table, ["generate_started_at", "generate_seconds"]).items():
        starts = own.column("generate_started_at").to_numpy()
        spans[name] = (starts, starts + own.column("generate_seconds").to_numpy())
    window_start = max(starts.min() for starts, _ in spans.values())
    window_end = min(ends.max() for _, ends in spans.values())
    if window_end <= window_start:
        raise RuntimeError("no steady window: give each replica more shards (--shards)")
    shares = []
    for starts, ends in spans.values():
        covered = covered_seconds(np.clip(starts, window_start, window_end), np.clip(ends, window_start, window_end))
        shares.append(1 - covered / (window_end - window_start))
    return shares


IDLE_SECONDS = 10.0


def _cores_busy(seconds: float) -> dict[str, float]:
    """How many of this machine's cores each kind of process kept busy over the next `seconds`."""
    before = processes_cpu_seconds()
    time.sleep(seconds)
    after = processes_cpu_seconds()
    return {kind: (total - before.get(kind, 0.0)) / seconds for kind, total in sorted(after.items())}


def _idle_plain_actors(count: int) -> dict[str, float]:
    """The cores `count` idle Ray actors that are not herd's keep busy: Ray's own cost of a worker
    process, which the replicas' idle cost is compared with."""
    import ray

    @ray.remote(num_cpus=1)
    class Idle:
        def ready(self) -> None:
            pass

    actors = [Idle.remote() for _ in range(count)]
    try:
        ray.get([actor.ready.remote() for actor in actors])
        return _cores_busy(IDLE_SECONDS)
    finally:
        for actor in actors:
            ray.kill(actor)


def _busy_figures(busy: dict[str, Any]) -> str:
    if "replicas_idle_mean" not in busy:  # --shard-seconds 0: both runs answered at once
        return f"{busy['commits_per_s']:.0f} commits/s"
    return (
        f"idle {100 * busy['replicas_idle_mean']:.2f}% on average, {100 * busy['replicas_idle_max']:.2f}% at most "
        f"(target < 2%), wall / ideal {busy['wall_over_ideal']:.3f}"
    )


def _listed(by_kind: dict[str, float], unit: str) -> str:
    return ", ".join(f"{kind} {value:.2f}{unit and ' ' + unit}" for kind, value in by_kind.items()) + (
        f" (in all {sum(by_kind.values()):.2f}{unit and ' ' + unit})"
    )


def _run(replicas: int, seconds: float, data: Path, rows_per_shard: int, work: Path) -> dict[str, Any]:
    import ray

    from common.layout import OutputLayout
    from jobs.committed import ManifestWriter, committed_shards
    from jobs.dispatch import Dispatcher
    from jobs.replicas import ReplicaPool
    from tests.cpu.fake_engine import FakeEngineFactory

    job, storage, shards = planned_tiny_shards_job(data, rows_per_shard, replicas, 2, work / f"out-{seconds:g}s")
    layout = OutputLayout(job.output.path)
    manifest = ManifestWriter(storage, layout)
    factory = FakeEngineFactory(seconds_per_call=seconds)
    started = time.perf_counter()
    pool = ReplicaPool(job.model, job, size=replicas, engine_factory=factory)
    timed_wait = _TimedWait(ray.wait)
    try:
        pool.start_missing()
        ray.get([replica.actor.ready.remote() for replica in pool.replicas])  # started: not what is measured
        up_s = time.perf_counter() - started
        idle_cores = _cores_busy(IDLE_SECONDS)  # up, holding no shard
        ray.wait = timed_wait  # the dispatcher's one blocking call; put back below
        by_kind, cpu, started = processes_cpu_seconds(), cpu_seconds(), time.perf_counter()
        outcome = Dispatcher(job, pool, manifest.commit_all).run(shards)
        manifest.finish()
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        by_kind = {kind: seconds - by_kind.get(kind, 0.0) for kind, seconds in processes_cpu_seconds().items()}
    finally:
        ray.wait = timed_wait.wait
        pool.shutdown()
    assert len(outcome.committed) == len(shards) and not outcome.failed, outcome.failed
    found = {
        "replicas": replicas,
        "shard_seconds": seconds,
        "shards": len(shards),
        "replicas_up_s": up_s,
        "wall_s": wall,
        "commits_per_s": len(shards) / wall,
        "driver_cpu_ms_per_shard": 1000 * cpu / len(shards),
        "driver_loop_ms_per_shard": 1000 * (wall - timed_wait.seconds) / len(shards),
        # Every process's CPU a shard, by kind: on this machine they all share two cores.
        "machine_cpu_ms_per_shard": {kind: 1000 * seconds / len(shards) for kind, seconds in sorted(by_kind.items())},
        "machine_cores_busy_while_replicas_idle": idle_cores,
    }
    if seconds > 0:
        shares = idle_shares(committed_shards(storage, layout).table)
        ideal = len(shards) * seconds / replicas  # every replica generating from the start to the end
        found |= {
            "replicas_idle_mean": float(np.mean(shares)),
            "replicas_idle_max": float(np.max(shares)),
            "wall_over_ideal": wall / ideal,
        }
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fleet")
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--shards", type=int, default=2560, help="of --rows-per-shard rows each (40 a replica)")
    parser.add_argument("--rows-per-shard", type=int, default=4)
    parser.add_argument("--shard-seconds", type=float, default=3.0, help="the fake engine's time for a shard")
    arguments = parser.parse_args(argv)
    import ray
    from ray.cluster_utils import Cluster

    # No GPUs: Ray would give every node of this machine its GPUs, and the replicas are CPU replicas.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
    for _ in range(-(-arguments.replicas // CPUS_PER_NODE)):
        cluster.add_node(num_cpus=CPUS_PER_NODE, num_gpus=0)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        with tempfile.TemporaryDirectory() as work_dir:
            work = Path(work_dir)
            os.environ.setdefault("HERD_CACHE_DIR", str(work / "node-cache"))
            data = tiny_shards_input(work / "in", arguments.shards, arguments.rows_per_shard)
            cluster_idle = _cores_busy(IDLE_SECONDS)
            plain_idle = _idle_plain_actors(arguments.replicas)
            runs = [
                _run(arguments.replicas, seconds, data, arguments.rows_per_shard, work)
                for seconds in (arguments.shard_seconds, 0.0)
            ]
            for found in runs:
                print(found, flush=True)
        ray.shutdown()
    finally:
        cluster.shutdown()
    busy, flat_out = runs
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record(
        "fleet",
        {
            "engine": "fake, sleeps instead of generating (tokenizes through `tokenizers` alone)",
            "nodes": f"{-(-arguments.replicas // CPUS_PER_NODE)} of {CPUS_PER_NODE} logical CPUs, on this machine",
            "runs": runs,
            "driver_peak_rss_mb": peak_rss_mb,
            "cores_busy_cluster_alone": cluster_idle,
            "cores_busy_plain_idle_actors": plain_idle,
            "targets": {"replicas_idle": 0.02, "commits_per_s": 200},
        },
        f"fleet: {arguments.replicas} replicas, shards of {arguments.shard_seconds:g} s: {_busy_figures(busy)}; "
        f"answered at once: {flat_out['commits_per_s']:.0f} commits/s (target >= 200); "
        f"the driver's CPU {busy['driver_cpu_ms_per_shard']:.2f} / {flat_out['driver_cpu_ms_per_shard']:.2f} ms a "
        f"shard, its loop outside ray.wait {busy['driver_loop_ms_per_shard']:.2f} / "
        f"{flat_out['driver_loop_ms_per_shard']:.2f} ms a shard; peak RSS {peak_rss_mb:.0f} MB. "
        f"Every process's CPU a shard answered at once: {_listed(flat_out['machine_cpu_ms_per_shard'], 'ms')}; "
        f"cores kept busy by the cluster alone: {_listed(cluster_idle, '')}; with {arguments.replicas} idle Ray "
        f"actors that are not herd's: {_listed(plain_idle, '')}; with the replicas up and idle: "
        f"{_listed(flat_out['machine_cores_busy_while_replicas_idle'], '')}",
    )
    return 0
