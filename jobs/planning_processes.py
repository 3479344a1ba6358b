"""Planning a large input in processes of its own, each a contiguous slice of the files.

A Parquet file on S3 costs ~0.6 ms of CPU to plan (its footer read, presigned and sent by herd's HTTP
client, ~0.33 ms; its shards, and their way back to the driver, the rest; `python -m bench billion`),
which caps one process at ~1,600 files a second however many reads it has in flight. Each planning
process is a fresh interpreter started as `python -m jobs.planning_processes`, not a multiprocessing
child: 'spawn' and 'forkserver' import the caller's __main__ in every child, and a user's script or
Airflow file that calls herd at top level, without a main guard, would run again in each. The parent's
sys.path goes with it, so it imports the same herd.

Protocol: the parent writes one pickle (input spec, files, storage, prompt spec) to the child's stdin;
the child answers a pickle on stdout for each batch of files it has planned, ("shards", [Shard, ...]),
and then ("done", None), or ("error", the exception planning raised) instead. The parent takes each
batch in as it comes, while the child plans the next: the driver's share of the work (a million shards
take ~15 s to unpickle) does not wait for the end, and the child holds one batch's shards, not its
slice's. Anything else the child prints goes to its stderr (a file), which the parent shows if it fails.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import IO, TYPE_CHECKING

from schemas.errors import UnplannableFiles

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
    """The shards of every slice, planned by a process each, joined in slice order. Files that cannot
    be planned are named together, in file order, whichever slices they are in; any other failure
    (storage down) is raised first, the first slice's in order. Interrupted (Ctrl-C), the planning
    processes are ended at once."""
    environment = _worker_environment()
    with contextlib.ExitStack() as closing:
        # A file, not a pipe: nobody has to read it while the child works, and it cannot fill up.
        logs = [closing.enter_context(tempfile.TemporaryFile()) for _ in slices]
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "jobs.planning_processes"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=environment,
            )
            for log_file in logs
        ]
        payloads = [pickle.dumps((input_spec, files, storage, prompt)) for files in slices]
        talking = ThreadPoolExecutor(len(workers), thread_name_prefix="planning-process")
        try:
            answers = list(talking.map(_answer, workers, payloads, logs))
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
            talking.shutdown(cancel_futures=True)
    errors = [answer for answer in answers if isinstance(answer, BaseException)]
    for error in errors:
        if not isinstance(error, UnplannableFiles):
            raise error
    if errors:
        raise UnplannableFiles.joined(errors)
    return [shard for answer in answers for shard in answer]


def _answer(worker: subprocess.Popen, payload: bytes, log_file: IO[bytes]) -> list[Shard] | BaseException:
    """The child's shards, batch by batch as it sends them, or the error its planning raised."""
    assert worker.stdin is not None and worker.stdout is not None
    with contextlib.suppress(BrokenPipeError):  # a child that died at once: its exit code says why
        worker.stdin.write(payload)
        worker.stdin.close()
    shards: list[Shard] = []
    while True:
        try:
            kind, value = pickle.load(worker.stdout)  # from the child this process started, over its own pipe
        except EOFError:
            worker.wait()
            log_file.seek(0)
            tail = log_file.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"a planning process ended with exit code {worker.returncode}: {tail}") from None
        if kind == "shards":
            shards += value
        elif kind == "error":
            return value
        else:
            return shards


def _worker_environment() -> dict[str, str]:
    """The parent's environment, with its sys.path: the child imports the same herd and the same
    packages, wherever they came from (an editable install, a Ray job's working directory)."""
    path = [entry or os.getcwd() for entry in sys.path]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _serve() -> None:
    answer_to = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a library's print must not corrupt the answer
    input_spec, files, storage, prompt = pickle.loads(sys.stdin.buffer.read())

    from jobs.planner import plan_batches

    try:
        for batch in plan_batches(input_spec, files, storage, prompt):
            pickle.dump(("shards", batch), answer_to)
            answer_to.flush()
        pickle.dump(("done", None), answer_to)
    except Exception as error:  # noqa: BLE001 - handed to the parent, which raises it
        pickle.dump(("error", error), answer_to)
    answer_to.close()


if __name__ == "__main__":
    _serve()
