"""Small shards run in packs: 1,000 files of 3 rows cost about what one file of 3,000 rows does.

Every shard pays a fixed cost wherever it runs: a call, a thread, its files opened, a data file
written and synced, a record committed. Of small shards that cost is most of the work (1,000 files of
3 rows took 1.13-1.20x the time of one file of their rows with each its own shard, 0.98-1.04x packed:
`python -m bench smallfiles`). So the shards left to run are packed here, after the committed ones
are taken out: small ones, in plan order, up to a shard's rows (`input.rows_per_shard`) and bytes
(`input.bytes_per_shard`). A pack is read, generated, written and committed as one shard
(schemas/shard.py ShardPack), and its record names its members: a member committed in a pack is
skipped by any later run, whatever that run packs around it (a resume, new files with
`new_files: process`), so packing never runs a row twice. Packs of shards not committed yet may
differ from run to run; nothing refers to them until they commit.
"""

from __future__ import annotations

from schemas.job import JobSpec
from schemas.shard import TO_END_OF_FILE, AnyShard, Shard, ShardPack

# A pack's members are read by one replica, a few at a time (each a request or two to storage): this
# bounds a pack's reading on an object store with tens of milliseconds a request.
MOST_MEMBERS = 256


def shard_bytes(shard: AnyShard) -> int:
    """A JSONL shard's byte range, a pack's members' sum (a Parquet shard is bounded by its rows and
    columns when planned)."""
    if isinstance(shard, ShardPack):
        return sum(shard_bytes(member) for member in shard.members)
    return 0 if shard.format == "parquet" else max(0, min(shard.end, shard.file_size) - shard.start)


def _stored_bytes(shard: Shard) -> int:
    """What packing weighs a shard by: a JSONL shard's byte range; for a Parquet shard, which holds no
    byte count, its file's size, an upper bound of what it reads (exact enough for a small file)."""
    return shard.file_size if shard.format == "parquet" else shard_bytes(shard)


def _packable(shard: Shard, rows_per_shard: int, bytes_per_shard: int) -> bool:
    """Small (at most half a shard), not an error retry, and not one of several shards sharing a copy
    of their file on the node (jobs/pending_shards.py keeps those together on one node; an Arrow IPC
    file's shards are never known to be its only one)."""
    small = 2 * shard.estimated_rows <= rows_per_shard and 2 * _stored_bytes(shard) <= bytes_per_shard
    if shard.retry is not None or not small:
        return False
    return shard.node_copy is None or (shard.start == 0 and shard.end == TO_END_OF_FILE)


def pack_small_shards(shards: list[Shard], rows_per_shard: int, bytes_per_shard: int) -> list[AnyShard]:
    """`shards` with the small ones packed in their order: each pack up to a shard's rows and bytes
    and MOST_MEMBERS; a pack of one is the shard itself. The large ones are as they were."""
    packed: list[AnyShard] = []
    members: list[Shard] = []
    rows = size = 0

    def close() -> None:
        if members:
            packed.append(members[0] if len(members) == 1 else ShardPack(tuple(members)))
        members.clear()

    for shard in shards:
        if not _packable(shard, rows_per_shard, bytes_per_shard):
            packed.append(shard)
            continue
        rows_after, size_after = rows + shard.estimated_rows, size + _stored_bytes(shard)
        if members and (len(members) == MOST_MEMBERS or rows_after > rows_per_shard or size_after > bytes_per_shard):
            close()
            rows_after, size_after = shard.estimated_rows, _stored_bytes(shard)
        members.append(shard)
        rows, size = rows_after, size_after
    close()
    return packed


def packed_to_run(job: JobSpec, shards: list[Shard]) -> list[AnyShard]:
    """The job's shards to run, the small ones packed. Not for OpenAI result lines, whose error lines
    do not say which file a row is of: --retry-errors could not tell a pack's files apart."""
    if job.output.format == "openai":
        return list(shards)
    return pack_small_shards(shards, job.input.rows_per_shard, job.input.bytes_per_shard)
