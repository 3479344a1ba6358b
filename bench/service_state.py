"""What the batch service's every-second look for work and a `GET /v1/batches` page cost as its root
fills with the batches of months: the same measures on a root holding few ended batches and on one
holding ten times more.

The worker reads the batches the `open/` markers name; a list reads the names of the owner's batches
and then only its page's records. Beside them, what herd did before on the same root: every batch
record read at every look (`find` and `read_many` of `batches/`). On a moto S3 server on 127.0.0.1
(moto's CPU a request makes its times an upper bound; the records read are exact). Each root keeps 3
batches open; the roots alternate over rounds. Printed: seconds and records read a look, for each
side and history, and the ratio of the larger history's time to the smaller's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.common import moto_s3, record

_OPEN = 3
_OWNERS = 5


def _filled_store(endpoint: str, root: str, batches: int) -> Any:
    from common.storage import Storage
    from schemas.job import RetrySpec, StorageSpec
    from service.objects import Batch, BatchRecord
    from service.store import Store, new_id

    store = Store(root, Storage(StorageSpec(endpoint_url=endpoint), RetrySpec()))
    for index in range(batches):
        batch = Batch(
            id=new_id("batch_"),
            endpoint="/v1/chat/completions",
            input_file_id="file-bench",
            completion_window="24h",
            status="validating",
            created_at=int(time.time()),
        )
        made = BatchRecord(owner=f"team-{index % _OWNERS}", batch=batch)
        store.create_batch(made)
        if index >= _OPEN:
            store.update_batch(made.owner, batch.id, lambda current: setattr(current.batch, "status", "completed"))
    return store


def _timed(call: Any) -> tuple[float, int]:
    """Seconds, and the records the call returned (read)."""
    started = time.perf_counter()
    found = call()
    return time.perf_counter() - started, len(found)


def _sides(store: Any) -> dict[str, Any]:
    def every_record_read() -> list[bytes]:  # herd's look for work before the markers
        names = [name for name in store.folder.find("batches") if name.endswith(".json")]
        return list(store.folder.read_many(names).values())

    return {
        "look for work (open markers)": store.open_batches,
        "look for work, every record read (before)": every_record_read,
        "a page of 20 batches": lambda: store.batches_page("team-0", after=None, limit=20).records,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench service_state")
    parser.add_argument("--histories", type=int, nargs=2, default=[100, 1000], help="batches on each root")
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args(argv)
    small, large = arguments.histories
    seconds: dict[str, dict[int, list[float]]] = {}
    records: dict[str, dict[int, int]] = {}
    with moto_s3() as endpoint:
        import s3fs

        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("bench")
        stores = {size: _filled_store(endpoint, f"s3://bench/root-{size}", size) for size in (small, large)}
        for _ in range(arguments.rounds):
            for size, store in stores.items():
                for name, call in _sides(store).items():
                    took, read = _timed(call)
                    seconds.setdefault(name, {}).setdefault(size, []).append(took)
                    records.setdefault(name, {})[size] = read
    medians = {
        name: {size: statistics.median(values) for size, values in by_size.items()} for name, by_size in seconds.items()
    }
    for name, by_size in medians.items():
        print(
            f"{name}: "
            + ", ".join(
                f"{by_size[size]:.3f} s reading {records[name][size]} records with {size} batches"
                for size in (small, large)
            )
        )
    record(
        "service_state",
        {"histories": [small, large], "open_batches": _OPEN, "rounds": arguments.rounds,
         "seconds": seconds, "median_seconds": medians, "records_read": records},
        f"{large} batches against {small} on one root (moto S3): "
        + ", ".join(f"{name} {by_size[large] / by_size[small]:.2f}x" for name, by_size in medians.items()),
    )  # fmt: skip
    return 0
