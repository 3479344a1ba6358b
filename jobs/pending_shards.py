"""The shards waiting to be handed out: in dispatch order, with small shards grouped, and each node
kept to the copy it is making.

A shard of a compressed or transcoded JSONL file, a JSON array, a CSV, an Arrow IPC file or one large
Parquet row group is read through a copy its node makes of the whole (workers/json_lines_copy.py,
workers/spill_cache.py): every node that runs one of its shards fetches, and decompresses, all of it.
Handed out strictly in order, a file's shards went to whichever replicas asked while they were at the
head of the queue, on every node. Instead a node keeps to its copy while that copy's shards wait, and
begins a copy no node has begun before it shares another node's: each is fetched about once, not once
a node (`python -m bench node_copies`). Shards read straight from storage keep their order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from jobs.packing import shard_bytes
from schemas.shard import AnyShard

# The most small shards one call runs together (each is a thread of the replica while it runs).
MAX_GROUP = 64


class PendingShards:
    """Each shard waits in one queue: the shards read straight from storage (and those back for
    another attempt) in dispatch order, and each copy's shards in theirs. Dispatch order is largest
    first, so of the two heads the larger is the earlier; a copy's head wins a tie."""

    def __init__(self, shards: Iterable[AnyShard]) -> None:
        self._empty()
        for shard in shards:
            key = shard.node_copy
            if key is None:
                self._straight.append(shard)
            else:
                if key not in self._by_copy:
                    self._by_copy[key] = deque()
                    self._fresh.append(key)
                self._by_copy[key].append(shard)
            self._count += 1

    def _empty(self) -> None:
        self._straight: deque[AnyShard] = deque()
        self._by_copy: dict[str, deque[AnyShard]] = {}  # in the order of their first shards
        self._fresh: deque[str] = deque()  # copies no node has begun (and some since begun: skipped)
        self._node_copy: dict[str, str] = {}  # the copy each node works through
        self._count = 0

    def append(self, shard: AnyShard) -> None:
        """A shard back for another attempt: at the end, with the shards read straight, so that a
        failure that came from its node's copy is not handed back to that node first."""
        self._straight.append(shard)
        self._count += 1

    def node_gone(self, node: str) -> None:
        """A node that left the cluster (spot, preemption) took its copy with it: the copy it was
        working through is no node's now, and the next replica to ask begins it before any other, as
        the earliest copy not begun (left claimed, it would wait for the end and then be shared by
        every node that asks: fetched once a node)."""
        key = self._node_copy.pop(node, None)
        if key is not None and self._by_copy.get(key) and key not in self._node_copy.values():
            self._fresh.appendleft(key)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[AnyShard]:
        yield from self._straight
        for queue in self._by_copy.values():
            yield from queue

    def clear(self) -> None:
        self._empty()

    def take_group(self, node: str, rows_per_shard: int, bytes_per_shard: int) -> list[AnyShard]:
        """The next shard for a replica on `node`, with the small shards after it while all of them
        together hold no more than a shard's rows and bytes: a replica runs them at once, so that their
        requests share the engine's batches. Each keeps its own id, record and output files. Small
        shards are packed into one before they get here (jobs/packing.py); what is grouped here is what
        packing leaves small: packs, and the shards of a file read through its node's copy."""
        queue = self._queue_for(node)
        group = [queue.popleft()]
        rows, size = group[0].estimated_rows, shard_bytes(group[0])
        while queue and len(group) < MAX_GROUP and group[0].retry is None and queue[0].retry is None:
            following = queue[0]
            if rows + following.estimated_rows > rows_per_shard or size + shard_bytes(following) > bytes_per_shard:
                break
            group.append(queue.popleft())
            rows, size = rows + following.estimated_rows, size + shard_bytes(following)
        self._count -= len(group)
        return group

    def _queue_for(self, node: str) -> deque[AnyShard]:
        own = self._node_copy.get(node)
        if own is not None and self._by_copy.get(own):
            return self._by_copy[own]
        fresh = self._first_fresh()
        if fresh is not None and not (
            self._straight and self._straight[0].estimated_rows > self._by_copy[fresh][0].estimated_rows
        ):
            return self._begin(node, fresh)
        if self._straight:
            return self._straight
        # Every copy with shards waiting is begun: share the first (its node works through it too).
        ended = []
        for key, queue in self._by_copy.items():
            if queue:
                break
            ended.append(key)
        else:
            raise IndexError("no shard is waiting")
        for gone in ended:  # each is passed over once
            del self._by_copy[gone]
        return self._begin(node, key)

    def _first_fresh(self) -> str | None:
        begun = set(self._node_copy.values())
        while self._fresh and (self._fresh[0] in begun or not self._by_copy.get(self._fresh[0])):
            self._fresh.popleft()
        return self._fresh[0] if self._fresh else None

    def _begin(self, node: str, key: str) -> deque[AnyShard]:
        self._node_copy[node] = key
        return self._by_copy[key]
