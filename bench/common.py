"""What every benchmark shares: deterministic data, the models, running herd, recording results."""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "bench" / ".cache"
RESULTS = REPO / "bench" / "results"
WORDS = (
    "the quick brown fox jumps over a lazy dog while data engineers write prompts about weather history "
    "science music cooking travel sport numbers why how what when where who river mountain ocean planet"
).split()


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def write_prompts(directory: Path, prompts: int, files: int, seed: int = 1, row_group_size: int = 512) -> Path:
    """Prompts of mixed lengths (4 to 120 words), the same for a given (prompts, files, seed)."""
    directory.mkdir(parents=True, exist_ok=True)
    if len(list(directory.glob("*.parquet"))) == files:
        return directory
    rng = random.Random(seed)
    per_file = prompts // files
    for file_index in range(files):
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 120))) for _ in range(per_file)]
        ids = [f"f{file_index}-{index}" for index in range(per_file)]
        pq.write_table(
            pa.table({"id": ids, "prompt": texts}),
            directory / f"part-{file_index:03d}.parquet",
            row_group_size=row_group_size,
        )
    return directory


def tiny_shards_input(directory: Path, shards: int, rows_per_shard: int) -> Path:
    """One Parquet file of `shards` x `rows_per_shard` short prompts: many tiny shards, for benchmarks of
    the driver and its replicas rather than of generation."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = shards * rows_per_shard
    pq.write_table(
        pa.table({"prompt": [f"prompt {row}" for row in range(rows)]}),
        directory / "prompts.parquet",
        row_group_size=rows_per_shard * 8,
    )
    return directory


def planned_tiny_shards_job(
    data: Path, rows_per_shard: int, replicas: int, shards_in_flight: int, output: Path
) -> tuple[Any, Any, list[Any]]:
    """A job over tiny_shards_input's file on the tiny model (raw prompts, one new token), its storage and
    its planned shards: (job, storage, shards)."""
    from common.storage import Storage
    from jobs.planner import plan_shards
    from schemas import parse_job

    job = parse_job(
        {
            "input": {"path": str(data), "prompt_column": "prompt", "rows_per_shard": rows_per_shard},
            "model": {"path": str(tiny_model()), "max_model_len": 512},
            "prompt": {"format": "raw"},
            "sampling": {"max_new_tokens": 1},
            # The fake engine's replicas hold CPUs, also on a machine with GPUs.
            "resources": {"replicas": replicas, "shards_in_flight": shards_in_flight, "accelerator": "cpu"},
            "output": {"path": str(output)},
        }
    )
    storage = Storage(job.storage, job.retry)
    return job, storage, plan_shards(job.input, storage.expand_inputs(job.input.path), storage)


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's peak resident memory (VmHWM). Not ru_maxrss, which a process keeps across exec: a
    child of a large process would report its parent's peak."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def cpu_seconds() -> float:
    """This process's CPU time so far (user and system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def processes_cpu_seconds() -> dict[str, float]:
    """CPU time so far (user and system) of every process on this machine, added up by what it is:
    "driver" (this process), "replicas" (Ray workers running a Replica actor), "raylet", "gcs" and
    "other" (Ray's agents and monitors, idle workers, anything else running). For a benchmark that
    shares the machine's cores with a whole Ray cluster: where a shard's CPU went."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended while listed
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": fields 3 onwards
        seconds = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        if int(entry.name) == os.getpid():
            kind = "driver"
        elif command.startswith("ray::Replica"):
            kind = "replicas"
        elif "/raylet" in command.split(" ", 1)[0]:
            kind = "raylet"
        elif "gcs_server" in command.split(" ", 1)[0]:
            kind = "gcs"
        else:
            kind = "other"
        totals[kind] = totals.get(kind, 0.0) + seconds
    return totals


def tiny_model() -> Path:
    sys.path.insert(0, str(REPO))
    from tests.tiny_llama import build_tiny_llama

    return build_tiny_llama(CACHE / "tiny-llama")


def demo_model() -> Path:
    from workers.model_source import prepare_demo_model

    return prepare_demo_model()


def run_herd(job: dict[str, Any], work: Path) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
    """Runs `submit.py run` as a user would; returns (wall seconds, summary, manifest records)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "job.json").write_text(json.dumps(job))
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "submit.py", "run", str(work / "job.json"), "--overwrite"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"herd failed ({result.returncode}): {result.stderr[-3000:]}")
    from common.layout import OutputLayout
    from common.storage import Storage
    from jobs.committed import committed_shards
    from schemas.job import RetrySpec, StorageSpec

    storage = Storage(StorageSpec(**job.get("storage", {})), RetrySpec())
    layout = OutputLayout(job["output"]["path"])
    summary = json.loads(storage.read_text(layout.summary))
    records = [record.model_dump() for record in committed_shards(storage, layout).values()]
    return wall, summary, records


def wall_phases(launched: float, wall: float, first: float, last: float) -> dict[str, float]:
    """A run's wall in three (unix times, from this process's clock): until the first token was asked
    for (Ray, the engine's start, its weights, compiling, reading the prompts), generating, and
    what came after the last token (writing, the summary, ending the processes)."""
    return {"start_up_s": first - launched, "generate_s": last - first, "after_s": launched + wall - last}


def herd_phases(launched: float, wall: float, records: list[dict[str, Any]]) -> dict[str, float]:
    """wall_phases of a herd run, from its manifest: generating runs from the first shard's
    generation start to the last one's end, so gaps between shards count."""
    first = min(r["generate_started_at"] for r in records)
    last = max(r["generate_started_at"] + r["generate_seconds"] for r in records)
    return wall_phases(launched, wall, first, last)


def engine_busy_seconds(records: list[dict[str, Any]]) -> float:
    """How long some shard was generating: the union of the shards' generate spans (a replica's
    shards share the engine's batches, so their spans overlap and cannot be summed). One replica."""
    from jobs.run_stats import covered_seconds

    return covered_seconds(
        [r["generate_started_at"] for r in records], [r["generate_started_at"] + r["generate_seconds"] for r in records]
    )


def run_script(arguments: list[str]) -> tuple[float, dict[str, Any]]:
    """Runs `python ARGUMENTS` from the repository; returns its wall time and its FIGURES line."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *arguments], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments[:3])} failed ({result.returncode}): {result.stderr[-3000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("FIGURES "))
    return wall, json.loads(line.removeprefix("FIGURES "))


def record(name: str, figures: dict[str, Any], ratio_line: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"benchmark": name, "machine": machine(), **figures}, indent=2))
    print(ratio_line)


@contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port), with test credentials; yields its endpoint."""
    import socket

    from moto.server import ThreadedMotoServer

    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request: it costs the shared cores
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
