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

import itertools
from collections import deque
from collections.abc import Iterable, Iterator

from schemas.shard import Shard

# The most small shards one call runs together (each is a thread of the replica while it runs).
MAX_GROUP = 64

# A waiting shard: its place in the order, the shard, and whether its copy's queue holds it too.
_Entry = tuple[int, Shard, bool]


class PendingShards:
    def __init__(self, shards: Iterable[Shard]) -> None:
        self._empty()
        for shard in shards:
            key = shard.node_copy
            entry = (next(self._places), shard, key is not None)
            self._order.append(entry)
            if key is not None:
                if key not in self._by_copy:
                    self._by_copy[key] = deque()
                    self._fresh.append(key)
                self._by_copy[key].append(entry)
            self._count += 1

    def _empty(self) -> None:
        self._order: deque[_Entry] = deque()
        self._by_copy: dict[str, deque[_Entry]] = {}  # a copy's shards, in order
        self._fresh: deque[str] = deque()  # copies in order of their first shard, until a node begins one
        self._begun: set[str] = set()
        self._node_copy: dict[str, str] = {}  # the copy each node works through
        self._taken: set[int] = set()  # shards handed out through one of their two queues
        self._places = itertools.count()
        self._count = 0

    def append(self, shard: Shard) -> None:
        """A shard back for another attempt: at the end of the order only, so that a failure that came
        from its node's copy is not handed back to that node first."""
        self._order.append((next(self._places), shard, False))
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Shard]:
        return (shard for place, shard, _ in self._order if place not in self._taken)

    def clear(self) -> None:
        self._empty()

    def take_group(self, node: str, rows_per_shard: int, bytes_per_shard: int) -> list[Shard]:
        """The next shard for a replica on `node`, with the small shards after it while all of them
        together hold no more than a shard's rows and bytes: a replica runs them at once, so that their
        requests share the engine's batches (1,000 files of 3 rows would otherwise keep a few requests
        in flight at a time). Each keeps its own id, record and output files: packing happens here,
        not in the plan, so resume and new_files: process see the same shard ids as ever."""
        queue = self._queue_for(node)
        group = [self._pop(queue)]
        rows, size = group[0].estimated_rows, _bytes(group[0])
        while len(group) < MAX_GROUP and group[0].retry is None:
            following = self._head(queue)
            if following is None or following.retry is not None:
                break
            if rows + following.estimated_rows > rows_per_shard or size + _bytes(following) > bytes_per_shard:
                break
            group.append(self._pop(queue))
            rows, size = rows + following.estimated_rows, size + _bytes(following)
        key = group[0].node_copy
        if key is not None:
            self._node_copy[node] = key
            self._begun.add(key)
        self._count -= len(group)
        return group

    def _queue_for(self, node: str) -> deque[_Entry]:
        own = self._node_copy.get(node)
        if own is not None:
            if self._head(self._by_copy.get(own, deque())) is not None:
                return self._by_copy[own]
            self._by_copy.pop(own, None)
        head = self._head(self._order)
        if head is None:
            raise IndexError("no shard is waiting")
        key = head.node_copy
        if key is None or key not in self._node_copy.values():
            return self._order
        fresh = self._first_fresh()
        return self._order if fresh is None else self._by_copy[fresh]  # else share the head's copy

    def _first_fresh(self) -> str | None:
        while self._fresh:
            key = self._fresh[0]
            if key not in self._begun and self._head(self._by_copy[key]) is not None:
                return key
            self._fresh.popleft()
            if key not in self._begun:
                del self._by_copy[key]  # handed out through the order, every one
        return None

    def _head(self, queue: deque[_Entry]) -> Shard | None:
        while queue and queue[0][0] in self._taken:
            self._taken.discard(queue.popleft()[0])  # handed out through its other queue
        return queue[0][1] if queue else None

    def _pop(self, queue: deque[_Entry]) -> Shard:
        place, shard, twice = queue.popleft()
        if twice:
            self._taken.add(place)
        return shard


def _bytes(shard: Shard) -> int:
    """A JSONL shard's byte range (a Parquet shard is bounded by its rows and columns when planned)."""
    return 0 if shard.format == "parquet" else max(0, min(shard.end, shard.file_size) - shard.start)
