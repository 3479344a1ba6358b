"""The waiting shards as the dispatcher hands them out: each node keeps to the file it has copied
whole (a compressed JSONL file, an Arrow file, one large Parquet row group) while that file's shards
wait, and begins a file no node has begun before sharing one, so a file is fetched about once rather
than once a node; every shard is handed out once, and shards read straight from storage keep their
order."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable

import pytest

from jobs.pending_shards import PendingShards
from schemas.shard import Shard


def _gzip_shards(name: str, count: int, rows: int = 1000) -> list[Shard]:
    """A gzip JSONL file's shards: byte ranges of its decompressed stream, read through a node's copy."""
    return [
        Shard(file_url=f"s3://in/{name}.jsonl.gz", file_label=f"{name}.jsonl.gz", file_size=10**9, file_version="v",
              format="jsonl", start=index * 10**6, end=(index + 1) * 10**6, estimated_rows=rows, compression="gzip")
        for index in range(count)
    ]  # fmt: skip


def _plain_shard(name: str, rows: int) -> Shard:
    """A Parquet shard of whole row groups: read straight from storage."""
    return Shard(file_url=f"s3://in/{name}.parquet", file_label=f"{name}.parquet", file_size=10**6, file_version="v",
                 format="parquet", start=0, end=rows, estimated_rows=rows, row_groups=(0, 1))  # fmt: skip


def _hand_out(pending: PendingShards, nodes: list[str], rows_per_shard: int = 1000) -> list[tuple[str, Shard]]:
    """The nodes ask in turn until nothing waits; a shard a group (no two fit in rows_per_shard)."""
    handed = []
    for node in (nodes[turn % len(nodes)] for turn in range(10**6)):
        if not pending:
            return handed
        [shard] = pending.take_group(node, rows_per_shard=rows_per_shard, bytes_per_shard=10**9)
        handed.append((node, shard))
    raise AssertionError("never emptied")


def _sorted(shards: Iterable[Shard]) -> list[tuple[str, int]]:
    return sorted((shard.file_label, shard.start) for shard in shards)


@pytest.mark.parametrize(("files", "nodes_a_file"), [(4, [1, 1, 1, 1]), (3, [1, 1, 2])])
def test_each_node_keeps_to_the_file_it_copies_and_begins_another_before_sharing_one(files, nodes_a_file):
    """Two nodes, files of 10 shards: each node ends a file and begins one no node has begun; with
    three files the last is shared once no other is left (handed out in order, both nodes would
    have copied every file)."""
    by_file = {name: _gzip_shards(name, 10) for name in "abcd"[:files]}
    shards = [shard for name in by_file for shard in by_file[name]]
    handed = _hand_out(PendingShards(shards), ["node-1", "node-2"])
    assert _sorted(shard for _, shard in handed) == _sorted(shards)  # each once
    nodes_of = defaultdict(set)
    for node, shard in handed:
        nodes_of[shard.file_label].add(node)
    assert sorted(len(nodes) for nodes in nodes_of.values()) == nodes_a_file
    for node in ("node-1", "node-2"):  # a node's shards of a file come in the file's order
        for name in by_file:
            mine = [shard.start for who, shard in handed if who == node and shard.file_label == f"{name}.jsonl.gz"]
            assert mine == sorted(mine)


def test_shards_read_straight_from_storage_keep_their_order_largest_first_between_copied_ones():
    big = [_plain_shard("p0", 2000), _plain_shard("p1", 2000)]
    small = [_plain_shard("p2", 1100), _plain_shard("p3", 1100)]
    copied = _gzip_shards("a", 3, rows=1200)
    handed = _hand_out(PendingShards([*big, *copied, *small]), ["node-1", "node-2"], rows_per_shard=2000)
    # node-1 begins the copy of a once the larger shards are out, and keeps to it; node-2 takes the
    # rest in order.
    assert [(node, shard.file_label) for node, shard in handed] == [
        ("node-1", "p0.parquet"), ("node-2", "p1.parquet"), ("node-1", "a.jsonl.gz"), ("node-2", "p2.parquet"),
        ("node-1", "a.jsonl.gz"), ("node-2", "p3.parquet"), ("node-1", "a.jsonl.gz"),
    ]  # fmt: skip


def test_a_shard_back_for_another_attempt_waits_at_the_end_and_what_waits_is_listed_once():
    copied = _gzip_shards("a", 4)
    plain = _plain_shard("p0", 1000)
    pending = PendingShards([*copied, plain])
    assert pending.take_group("node-1", 1000, 10**9) == [copied[0]]
    pending.append(copied[0])  # its attempt failed: back in the queue
    assert _sorted(pending) == _sorted([*copied, plain]) and len(pending) == 5
    taken = [pending.take_group("node-1", 1000, 10**9)[0] for _ in range(3)]
    assert taken == copied[1:]  # its own copy first, not the failed shard
    assert _sorted(pending) == _sorted([plain, copied[0]]) and len(pending) == 2
    assert [pending.take_group("node-1", 1000, 10**9)[0] for _ in range(2)] == [plain, copied[0]]
    assert not pending and list(pending) == []


def test_the_shards_of_one_large_parquet_row_group_share_its_copy_and_other_groups_go_to_other_nodes():
    def slice_of(group: int, start: int) -> Shard:
        return Shard(file_url="s3://in/big.parquet", file_label="big.parquet", file_size=10**9, file_version="v",
                     format="parquet", start=group * 10**6 + start, end=group * 10**6 + start + 1000,
                     estimated_rows=1000, row_groups=(group, group + 1), group_first_row=group * 10**6,
                     whole_row_groups=False)  # fmt: skip

    shards = [slice_of(group, start) for group in (0, 1) for start in (0, 1000, 2000)]
    handed = _hand_out(PendingShards(shards), ["node-1", "node-2"])
    assert Counter((node, shard.row_groups) for node, shard in handed) == {("node-1", (0, 1)): 3, ("node-2", (1, 2)): 3}


def test_cleared_nothing_waits():
    pending = PendingShards(_gzip_shards("a", 3))
    pending.take_group("node-1", 1000, 10**9)
    pending.clear()
    assert not pending and list(pending) == []


def test_whatever_the_nodes_ask_every_shard_is_handed_out_once_for_each_time_it_waited():
    """Random mixes of shards read straight and through copies, nodes asking in random order, small
    shards grouped, and failed shards put back: nothing is lost or handed out twice, and the count
    and listing agree with what waits."""
    rng = random.Random(17)
    for _ in range(50):
        shards = [_plain_shard(f"p{index}", rng.choice([200, 1000, 3000])) for index in range(rng.randint(0, 30))]
        for name in range(rng.randint(0, 6)):
            shards += _gzip_shards(f"f{name}", rng.randint(1, 12), rows=rng.choice([100, 1000]))
        shards.sort(key=lambda shard: -shard.estimated_rows)  # dispatch order
        pending = PendingShards(shards)
        waiting = Counter(_sorted(shards))
        handed: Counter = Counter()
        while pending:
            group = pending.take_group(f"node-{rng.randint(1, 4)}", rows_per_shard=1000, bytes_per_shard=10**12)
            assert group
            for shard in group:
                handed[(shard.file_label, shard.start)] += 1
                if rng.random() < 0.1:  # its attempt failed: back in the queue
                    pending.append(shard)
                    waiting[(shard.file_label, shard.start)] += 1
            assert len(pending) == len(list(pending)) == sum(waiting.values()) - sum(handed.values())
        assert handed == waiting


def test_a_lost_nodes_copy_is_begun_again_by_the_next_node_to_ask_before_any_file_no_node_began():
    """node-1 is preempted part way through file a: its replacement (node-3) takes a up at once, and a
    is fetched by that one node again rather than, left for the end, by every node that asks then."""
    by_file = {name: _gzip_shards(name, 10) for name in "abc"}
    pending = PendingShards([shard for name in "abc" for shard in by_file[name]])
    taken = [pending.take_group(node, 1000, 10**9)[0] for node in ("node-1", "node-2", "node-1", "node-2")]
    assert [shard.file_label for shard in taken] == ["a.jsonl.gz", "b.jsonl.gz", "a.jsonl.gz", "b.jsonl.gz"]
    pending.node_gone("node-1")
    pending.node_gone("node-9")  # a node that held no copy: nothing changes
    handed = _hand_out(pending, ["node-3", "node-2"])
    nodes_of = defaultdict(set)
    for node, shard in handed:
        nodes_of[shard.file_label].add(node)
    assert handed[0] == ("node-3", by_file["a"][2])
    assert nodes_of["a.jsonl.gz"] == {"node-3"} and nodes_of["b.jsonl.gz"] == {"node-2"}
    assert _sorted([*taken, *(shard for _, shard in handed)]) == _sorted(
        shard for name in "abc" for shard in by_file[name]
    )
