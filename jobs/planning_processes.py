"""Planning a large input in processes of its own, each a contiguous slice of the files.

A Parquet file on S3 costs ~1.1 ms of CPU to plan (its footer read, presigned and sent by aiohttp,
~0.5 ms; its shards, and their way back to the driver, the rest), which caps one process at ~900 files
a second however many reads it has in flight. Each
planning process is a fresh interpreter started as `python -m jobs.planning_processes`, not a
multiprocessing child: 'spawn' and 'forkserver' import the caller's __main__ in every child, and a
user's script or Airflow file that calls herd at top level, without a main guard, would run again
in each. The parent's sys.path goes with it, so it imports the same herd.

Protocol: the parent writes one pickle (input spec, files, storage, prompt spec) to the child's stdin;
the child answers one pickle on stdout: ("shards", [Shard, ...]) or ("error", the exception planning
raised). Anything else the child prints goes to its stderr, which the parent shows if it fails.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.storage import FileInfo, Storage
    from schemas.job import InputSpec, PromptSpec
    from schemas.shard import Shard


def plan_in_processes(
    input_spec: InputSpec,
    slices: list[list[FileInfo]],
    storage: Storage,
    prompt: PromptSpec | None,
) -> list[Shard]:
    """The shards of every slice, planned by a process each, joined in slice order; of slices that
    fail, the first one's error is raised, so the first failing file in order is still the one named.
    Interrupted (Ctrl-C), the planning processes are ended at once."""
    environment = _worker_environment()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "jobs.planning_processes"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
        )
        for _ in slices
    ]
    payloads = [pickle.dumps((input_spec, files, storage, prompt)) for files in slices]
    talking = ThreadPoolExecutor(len(workers), thread_name_prefix="planning-process")
    try:
        answers = list(talking.map(_answer, workers, payloads))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        talking.shutdown(cancel_futures=True)
    shards: list[Shard] = []
    for kind, value in answers:
        if kind == "error":
            raise value
        shards += value
    return shards


def _answer(worker: subprocess.Popen, payload: bytes) -> tuple[str, Any]:
    out, err = worker.communicate(payload)
    if worker.returncode != 0 or not out:
        tail = err.decode(errors="replace")[-2000:]
        raise RuntimeError(f"a planning process ended with exit code {worker.returncode}: {tail}")
    return pickle.loads(out)  # from the child this process started, over its own pipe


def _worker_environment() -> dict[str, str]:
    """The parent's environment, with its sys.path: the child imports the same herd and the same
    packages, wherever they came from (an editable install, a Ray job's working directory)."""
    path = [entry or os.getcwd() for entry in sys.path]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _serve() -> None:
    answer_to = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a library's print must not corrupt the answer
    input_spec, files, storage, prompt = pickle.loads(sys.stdin.buffer.read())

    from jobs.planner import plan_here

    try:
        answer: tuple[str, Any] = ("shards", plan_here(input_spec, files, storage, prompt))
    except Exception as error:  # noqa: BLE001 - handed to the parent, which raises it
        answer = ("error", error)
    answer_to.write(pickle.dumps(answer))
    answer_to.close()


if __name__ == "__main__":
    _serve()
