"""What the batch service's finalize holds in memory: the Python heap's peak (tracemalloc) while a batch's
committed shard files become its output file, for a batch whose output is N MB and for one 4x larger.

Now: the shard files read 64 at a time into a local file, which is then uploaded (`BatchWorker.
_gather_answers` and `_save_output`). Beside it, what herd did before on the same root: every shard
file read and kept, joined into one bytes object, written, and decoded again to count its lines. On a
local root (the heap is the same on S3: the bytes read are the same; moto in this process would be
counted too). Printed: each side's peak in MB and as a multiple of the output's size, and how the peak
grows when the output is 4x larger.
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


def _peak_mb(side: Any, *arguments: Any) -> float:
    tracemalloc.start()
    try:
        side(*arguments)
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench service_finalize")
    parser.add_argument("--output-mb", type=int, default=16, help="the smaller batch's output; the other is 4x")
    arguments = parser.parse_args(argv)
    sizes = [arguments.output_mb, 4 * arguments.output_mb]
    peaks: dict[str, dict[int, float]] = {"now": {}, "before": {}}
    output_mb: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="herd-bench-") as work:
        for size in sizes:
            store, made, urls, output_bytes = _batch_with_answers(os.path.join(work, f"root-{size}"), size)
            output_mb[size] = output_bytes / 1e6
            for name, side in (("now", _now), ("before", _before)):
                peaks[name][size] = _peak_mb(side, store, made, urls)
                print(
                    f"{name}: output {output_mb[size]:.1f} MB, heap peak {peaks[name][size]:.1f} MB "
                    f"({peaks[name][size] / output_mb[size]:.2f}x the output)"
                )
    small, large = sizes
    record(
        "service_finalize",
        {"output_mb": output_mb, "heap_peak_mb": peaks},
        "heap peak with a 4x larger output: "
        + ", ".join(f"{name} {by_size[large] / by_size[small]:.2f}x" for name, by_size in peaks.items())
        + f"; at {output_mb[large]:.0f} MB of output: now {peaks['now'][large]:.1f} MB, "
        f"before {peaks['before'][large]:.1f} MB",
    )
    return 0
