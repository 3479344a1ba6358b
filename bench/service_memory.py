"""What the batch service holds in memory: the Python heap's peak (tracemalloc) while it validates a
batch's input file and while it finalizes the batch (its committed shard files become its output
file), for a batch of N MB and for one 4x larger.

Validating now: the input read 8 MB at a time as lines (`Store.file_lines`); before: read whole,
decoded, split. Finalizing now: the shard files read 64 (at most 16 MB) at a time into a local file,
which is then uploaded (`BatchWorker._gather_answers` and `_save_output`); before: every shard file
read and kept, joined into one bytes object, written, and decoded again to count its lines. On a local
root (the heap is the same on S3: the bytes read are the same; moto in this process would be counted
too). Printed: each side's peak in MB and as a multiple of the file's size, and how the peak grows
when the batch is 4x larger.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import tracemalloc
from typing import Any

from bench.common import record

_ANSWER_BYTES = 4000  # a long answer (~1,000 tokens)
_REQUESTS_PER_SHARD = 64


def _batch_with_answers(root: str, output_mb: int) -> tuple[Any, Any, list[str], int]:
    """A store whose one batch has committed shards answering output_mb MB of result lines."""
    from common.layout import OutputLayout
    from common.storage import Storage
    from jobs.committed import commit_shard, committed_shards
    from schemas.job import RetrySpec, StorageSpec
    from schemas.shard import OutputObject, ShardRecord
    from service.objects import Batch, BatchRecord
    from service.store import Store, new_id

    store = Store(root, Storage(StorageSpec(), RetrySpec()))
    batch = Batch(
        id=new_id("batch_"),
        endpoint="/v1/completions",
        input_file_id="file-bench",
        completion_window="24h",
        status="in_progress",
        created_at=int(time.time()),
    )
    made = BatchRecord(owner="team-a", batch=batch)
    store.create_batch(made)
    layout = OutputLayout(store.job_root(batch.id))
    shards = max(1, output_mb * 1024 * 1024 // (_ANSWER_BYTES * _REQUESTS_PER_SHARD))
    for shard in range(shards):
        lines = []
        for index in range(_REQUESTS_PER_SHARD):
            custom_id = f"req-{shard}-{index}"
            body = {
                "id": f"cmpl-{custom_id}",
                "object": "text_completion",
                "created": 0,
                "model": "bench",
                "choices": [{"index": 0, "text": "x" * _ANSWER_BYTES, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 8, "completion_tokens": 1000, "total_tokens": 1008},
            }
            response = {"status_code": 200, "request_id": custom_id, "body": body}
            lines.append(json.dumps({"id": f"batch_req_{custom_id}", "custom_id": custom_id, "response": response}))
        shard_id = f"in_jsonl-{shard}-{shard + 1}-{shard:010x}"
        url = f"{layout.data_dir}/{shard_id}.a.jsonl"
        size = store.storage.write_atomic(url, ("\n".join(lines) + "\n").encode())
        timing = {"generate_started_at": 0, "generate_seconds": 0, "shard_seconds": 0, "started_at": 0}
        commit_shard(
            store.storage,
            layout,
            ShardRecord(
                shard_id=shard_id,
                rows_in=_REQUESTS_PER_SHARD,
                rows_out=_REQUESTS_PER_SHARD,
                error_rows=0,
                reused_rows=0,
                prompt_tokens=8 * _REQUESTS_PER_SHARD,
                completion_tokens=1000 * _REQUESTS_PER_SHARD,
                finished_at=0,
                outputs=[OutputObject(url=url, bytes=size, rows=_REQUESTS_PER_SHARD)],
                replica="r",
                attempts=1,
                **timing,
            ),
        )
    urls = committed_shards(store.storage, layout).output_urls()
    return store, made, urls, sum(os.path.getsize(url) for url in urls)


def _now(store: Any, made: Any, urls: list[str]) -> None:
    from service.config import ServiceSpec
    from service.worker import BatchWorker, _Spool

    worker = BatchWorker(ServiceSpec(root=store.folder.root), store, None)
    with (
        tempfile.TemporaryDirectory() as spool,
        _Spool(os.path.join(spool, "o")) as outputs,
        _Spool(os.path.join(spool, "e")) as errors,
    ):
        worker._gather_answers(urls, [os.path.getsize(url) for url in urls], outputs, errors)
        worker._save_output(made, "output", outputs)


def _before(store: Any, made: Any, urls: list[str]) -> None:
    from common.jsonl import jsonl_lines
    from common.output_codec import decode_data

    answered, outputs = set(), []
    for url in urls:
        content = store.storage.read_bytes(url)
        outputs.append(content)
        answered.update(str(row["id"]) for row in decode_data(content, url, ["id"]))
    data = b"".join(outputs)
    store.write_file_content(made.owner, "file-before", data)
    len(jsonl_lines(data.decode("utf-8")))


def _batch_input(store: Any, made: Any, input_mb: int) -> tuple[str, int]:
    """An input file of input_mb MB of chat requests (~4 KB prompts), with its record, as an upload
    leaves it."""
    from service.objects import FileObject, FileRecord
    from service.store import new_id

    file_id = new_id("file-")
    count = input_mb * 1024 * 1024 // 4200
    lines = "".join(
        json.dumps(
            {
                "custom_id": f"req-{index}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "bench", "messages": [{"role": "user", "content": "y" * 4000}], "max_tokens": 8},
            }
        )
        + "\n"
        for index in range(count)
    ).encode()
    store.write_file_content(made.owner, file_id, lines)
    made_at = int(time.time())
    record = FileObject(id=file_id, bytes=len(lines), created_at=made_at, filename="in.jsonl", purpose="batch")
    store.save_file(FileRecord(owner=made.owner, file=record, lines=count))
    return file_id, len(lines)


def _validate_now(store: Any, made: Any, file_id: str) -> None:
    from service.worker import check_lines

    check_lines(store.file_lines(made.owner, file_id))


def _validate_before(store: Any, made: Any, file_id: str) -> None:
    from service.worker import check_lines

    data = store.read_file_content(made.owner, file_id)
    data.decode("utf-8")
    check_lines(data.split(b"\n"))


def _peak_mb(side: Any, *arguments: Any) -> float:
    tracemalloc.start()
    try:
        side(*arguments)
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench service_memory")
    parser.add_argument("--mb", type=int, default=16, help="the smaller batch's input and output; the other is 4x")
    arguments = parser.parse_args(argv)
    sizes = [arguments.mb, 4 * arguments.mb]
    sides = {
        "validate now": _validate_now,
        "validate before": _validate_before,
        "finalize now": _now,
        "finalize before": _before,
    }
    peaks: dict[str, dict[int, float]] = {name: {} for name in sides}
    file_mb: dict[str, dict[int, float]] = {"input": {}, "output": {}}
    with tempfile.TemporaryDirectory(prefix="herd-bench-") as work:
        for size in sizes:
            store, made, urls, output_bytes = _batch_with_answers(os.path.join(work, f"root-{size}"), size)
            file_id, input_bytes = _batch_input(store, made, size)
            file_mb["input"][size], file_mb["output"][size] = input_bytes / 1e6, output_bytes / 1e6
            for name, side in sides.items():
                validating = name.startswith("validate")
                peaks[name][size] = _peak_mb(side, store, made, file_id if validating else urls)
                of, peak = file_mb["input" if validating else "output"][size], peaks[name][size]
                print(f"{name}: a file of {of:.1f} MB, heap peak {peak:.1f} MB ({peak / of:.2f}x)")
    small, large = sizes
    record(
        "service_memory",
        {"file_mb": file_mb, "heap_peak_mb": peaks},
        "heap peak for a 4x larger batch: "
        + ", ".join(f"{name} {by_size[large] / by_size[small]:.2f}x" for name, by_size in peaks.items())
        + f"; at {file_mb['input'][large]:.0f} MB in and {file_mb['output'][large]:.0f} MB out: "
        + ", ".join(f"{name} {by_size[large]:.1f} MB" for name, by_size in peaks.items()),
    )
    return 0
