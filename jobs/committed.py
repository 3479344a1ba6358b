"""The manifest of committed shards: the commit itself, checkpoints that compact it, and reading it.

A shard is committed by one write of its record, `manifest/<shard id>.json`. As the run goes, the
driver compacts the records into checkpoints (the idea of Delta's and Iceberg's), Parquet files
named by the span of checkpoint numbers they cover, `manifest/_checkpoint-<first>-<last>.parquet`,
and only once one is written deletes what it holds. Checkpoints merge as a log-structured tree:
every 100 commits make one, every 10 of those merge into one of 1,000, every 10 of those into one
of 10,000, and the end of a run merges what is left below that into one. So a million committed
shards are about a hundred objects, with at most 99 record files, 9 + 9 small checkpoints beside
them after a crash: a resume lists a few hundred names and reads each object in one request,
instead of listing a million keys a thousand at a time and reading each.

What is committed is the union of the checkpoints and the record files; where a shard appears more
than once (a record rewritten by --retry-errors, or a driver that died between a write and its
deletes), a record file beats any checkpoint, and of checkpoints the one whose span ends later. A
record file is always at least as new as any checkpoint holding its shard: checkpoints are made
from record files, and a merged checkpoint from the checkpoints it replaces.

The committed records are held as columns (an Arrow table), not as Python objects: a million
ShardRecords would take gigabytes and tens of seconds to parse.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.layout import OutputLayout
from common.storage import Storage, join
from schemas.errors import StorageUnavailable
from schemas.shard import SHARD_ID_PATTERN, ShardRecord, in_output_folder, output_folder_and_name

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 100  # commits per checkpoint: the most record files a crash leaves
CHECKPOINTS_PER_MERGE = 10
MERGED_LEVELS = 2  # checkpoints of 100 merge into 1,000, those into 10,000, and no further

RECORD_FILE = re.compile(rf"(?:{SHARD_ID_PATTERN})\.json")
CHECKPOINT_FILE = re.compile(r"_checkpoint-(\d{6,})-(\d{6,})\.parquet")
LEGACY_INDEX = "_index.jsonl"  # the whole manifest in one file, written by herd before checkpoints
_LISTINGS = 5  # a reader racing a running driver's compaction lists again, this many times at most

_OUTPUT = pa.struct([("url", pa.string()), ("bytes", pa.int64()), ("rows", pa.int64())])
# ShardRecord's fields as columns (a test holds the two equal); error_reasons, a small dict of
# reasons that differ from shard to shard, is stored as JSON text.
_SCHEMA = pa.schema(
    [
        ("shard_id", pa.string()),
        ("rows_in", pa.int64()),
        ("rows_out", pa.int64()),
        ("error_rows", pa.int64()),
        ("reused_rows", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("generate_started_at", pa.float64()),
        ("generate_seconds", pa.float64()),
        ("shard_seconds", pa.float64()),
        ("started_at", pa.float64()),
        ("finished_at", pa.float64()),
        ("outputs", pa.list_(_OUTPUT)),
        ("replica", pa.string()),
        ("members", pa.list_(pa.string())),
        ("error_reasons", pa.string()),
        ("attempts", pa.int64()),
    ]
)


def records_table(records: Collection[ShardRecord]) -> pa.Table:
    rows = []
    for record in records:
        row = record.model_dump()
        row["error_reasons"] = json.dumps(row["error_reasons"], sort_keys=True)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=_SCHEMA)


def _records_of(table: pa.Table | pa.RecordBatch) -> Iterator[ShardRecord]:
    for row in table.to_pylist():
        row["error_reasons"] = json.loads(row["error_reasons"])
        yield ShardRecord.model_validate(row)


class _Records(Collection[ShardRecord]):
    """The records, built a batch at a time as they are iterated (as often as wanted)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __iter__(self) -> Iterator[ShardRecord]:
        for batch in self.table.to_batches(max_chunksize=4096):
            yield from _records_of(batch)

    def __len__(self) -> int:
        return self.table.num_rows

    def __contains__(self, record: object) -> bool:
        return any(record == mine for mine in self)


class CommittedShards(Mapping[str, ShardRecord]):
    """The committed shards by id, read from the manifest. A record is built when asked for; sums and
    membership come from the columns. A pack's record (jobs/packing.py) is found by its own id and by
    each of its members': a planned shard committed in a pack is committed."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table  # one row per record: a shard, or a pack

    @cached_property
    def _row_of(self) -> dict[str, int]:
        """Built on the first lookup by id: sums, narrowing and files need none."""
        row_of = {shard_id: row for row, shard_id in enumerate(self.table.column("shard_id").to_pylist())}
        members, packs = self._members
        row_of.update(zip(members.to_pylist(), packs.to_pylist(), strict=True))
        return row_of

    @cached_property
    def _members(self) -> tuple[pa.Array, pa.Array]:
        """Every pack member's id, and the row of the pack that commits it."""
        members = self.table.column("members").combine_chunks()
        return members.flatten(), pc.list_parent_indices(members)

    def __getitem__(self, shard_id: str) -> ShardRecord:
        return next(_records_of(self.table.slice(self._row_of[shard_id], 1)))

    def __contains__(self, shard_id: object) -> bool:
        return shard_id in self._row_of

    def __iter__(self) -> Iterator[str]:
        return iter(self.table.column("shard_id").to_pylist())

    def __len__(self) -> int:
        return self.table.num_rows

    def planned_shards(self) -> int:
        """How many planned shards the records commit: a pack's members each count."""
        members = pc.list_value_length(self.table.column("members")).fill_null(0)
        return int(pc.sum(pc.max_element_wise(members, 1)).as_py() or 0)

    def values(self) -> _Records:  # type: ignore[override]
        return _Records(self.table)

    def only(self, shard_ids: Collection[str]) -> CommittedShards:
        """The records of these shards (those committed, a pack's when any of its members is named),
        in the manifest's order."""
        wanted = pa.array(shard_ids if isinstance(shard_ids, list) else list(shard_ids), type=pa.string())
        chosen = pc.is_in(self.table.column("shard_id"), value_set=wanted)
        members, packs = self._members
        if len(members):
            packs = packs.filter(pc.is_in(members, value_set=wanted))
            in_a_named_pack = pc.is_in(pa.array(range(self.table.num_rows), type=pa.int64()), value_set=packs)
            chosen = pc.or_(chosen, in_a_named_pack)
        if pc.all(chosen).as_py() is not False:  # all of them (a finished job): no copy of every column
            return self
        return CommittedShards(self.table.filter(chosen))

    def total(self, field: str) -> int:
        return int(pc.sum(self.table.column(field)).as_py() or 0)

    def with_error_rows(self) -> set[str]:
        """The shards that have error rows."""
        has_errors = pc.greater(self.table.column("error_rows"), 0)
        return set(self.table.column("shard_id").filter(has_errors).to_pylist())

    def error_reasons(self) -> Counter[str]:
        """Error rows by reason, over every record (only those with errors are parsed)."""
        reasons = self.table.column("error_reasons")
        counted: Counter[str] = Counter()
        # Each distinct text once: shards with errors mostly share a few reasons.
        distinct = pc.value_counts(reasons.filter(pc.not_equal(reasons, "{}")))
        texts, shard_counts = distinct.field("values").to_pylist(), distinct.field("counts").to_pylist()
        for text, shards in zip(texts, shard_counts, strict=True):
            counted.update({reason: rows * shards for reason, rows in json.loads(text).items()})
        return counted

    def output_urls(self, folder: str | None = None, at_most: int | None = None) -> list[str]:
        """The data and error files the records name, in the records' order: those in `folder` only, if
        given; at most `at_most` of them, evenly spread, if given (chosen in Arrow: a million shards'
        URLs never become Python strings for a sample)."""
        urls = pc.struct_field(pc.list_flatten(self.table.column("outputs")), "url")
        if folder is not None:
            urls = urls.filter(pc.match_substring_regex(urls, in_output_folder(folder)))
        if at_most is not None:
            urls = urls.take(pa.array(range(0, len(urls), max(1, -(-len(urls) // at_most))), type=pa.int64()))
        return urls.to_pylist()

    def output_sizes(self) -> list[int]:
        """The bytes of each data and error file the records name, in output_urls()'s order."""
        return pc.struct_field(pc.list_flatten(self.table.column("outputs")), "bytes").to_pylist()

    def output_names(self) -> set[tuple[str, str]]:
        """(folder, file name) of every data and error file the records name."""
        return {output_folder_and_name(url) for url in self.output_urls()}


def commit_shard(storage: Storage, layout: OutputLayout, record: ShardRecord) -> None:
    """The commit: once this write lands, the shard is done."""
    storage.write_text(layout.shard_record(record.shard_id), record.model_dump_json())


def _latest_per_shard(tables: list[pa.Table]) -> pa.Table:
    """One row per shard: of its rows in `tables` (oldest first), the last."""
    table = pa.concat_tables(tables) if tables else _SCHEMA.empty_table()
    last = {shard_id: row for row, shard_id in enumerate(table.column("shard_id").to_pylist())}
    if len(last) == table.num_rows:
        return table
    return table.take(pa.array(sorted(last.values()), type=pa.int64()))


class _Listing:
    """The manifest folder's names: checkpoints (oldest first, by the end of their span) and record files."""

    def __init__(self, names: list[str]) -> None:
        spans = [
            (int(found.group(2)), int(found.group(1)), name)
            for name in names
            if (found := CHECKPOINT_FILE.fullmatch(name))
        ]
        self.checkpoints = [name for _, _, name in sorted(spans)]
        self.next_number = max((last for last, _, _ in spans), default=0) + 1
        self.records = [name for name in names if RECORD_FILE.fullmatch(name)]
        self.legacy_index = LEGACY_INDEX in names


def committed_shards(storage: Storage, layout: OutputLayout) -> CommittedShards:
    """Reads the manifest alone (rows are never loaded): a listing of the manifest folder, then its
    checkpoints and record files, all read at once."""
    for attempt in range(_LISTINGS):
        listing = _Listing(storage.list_names(layout.manifest_dir))
        names = listing.checkpoints + listing.records
        try:
            contents = storage.read_many([join(layout.manifest_dir, name) for name in names])
            break
        except FileNotFoundError:
            # A running driver replaced what was listed with a checkpoint (written before the
            # deletes, so listing again finds every commit): `inspect` during a run.
            if attempt == _LISTINGS - 1:
                raise

    def content(name: str) -> bytes:
        return contents[join(layout.manifest_dir, name)]

    tables = [_current(pq.read_table(pa.BufferReader(content(name)))) for name in listing.checkpoints]
    if listing.records:
        tables.append(records_table([ShardRecord.model_validate_json(content(name)) for name in listing.records]))
    return CommittedShards(_latest_per_shard(tables))


def _current(checkpoint: pa.Table) -> pa.Table:
    """A checkpoint in this version's columns: one written before packs has no members (none)."""
    if "members" not in checkpoint.column_names:
        empty = pa.array([[]] * checkpoint.num_rows, type=pa.list_(pa.string()))
        checkpoint = checkpoint.add_column(checkpoint.column_names.index("replica") + 1, "members", empty)
    return checkpoint.cast(_SCHEMA)


def checkpoint_name(first: int, last: int) -> str:
    return f"_checkpoint-{first:06d}-{last:06d}.parquet"


def write_checkpoint(
    storage: Storage, layout: OutputLayout, first: int, last: int, records: Collection[ShardRecord]
) -> None:
    """Writes these records as the checkpoint spanning numbers first..last."""
    buffer = io.BytesIO()
    pq.write_table(records_table(records), buffer, compression="zstd")
    storage.write_atomic(join(layout.manifest_dir, checkpoint_name(first, last)), buffer.getvalue())


@dataclass
class _Checkpoint:
    first: int
    last: int
    records: list[ShardRecord]  # oldest first: a later record of a shard beats an earlier one

    @property
    def name(self) -> str:
        return checkpoint_name(self.first, self.last)


class ManifestWriter:
    """The driver's side of the manifest in a run: commits, and compacts the records into
    checkpoints as it goes (see the module's docstring). Holds in memory the records of the
    checkpoints not yet merged into the largest kind (10,000 at most)."""

    def __init__(
        self,
        storage: Storage,
        layout: OutputLayout,
        *,
        every: int = CHECKPOINT_EVERY,
        per_merge: int = CHECKPOINTS_PER_MERGE,
        merged_levels: int = MERGED_LEVELS,
    ) -> None:
        self.storage = storage
        self.layout = layout
        self.every = every
        self.per_merge = per_merge
        self.levels: list[list[_Checkpoint]] = [[] for _ in range(merged_levels)]
        self.pending: list[ShardRecord] = []
        self._next_number: int | None = None
        self._writes_at_once = storage.small_requests_at_once(layout.manifest_dir)  # asked once, not per commit
        self._writers: ThreadPoolExecutor | None = None

    def commit(self, record: ShardRecord) -> None:
        """Commits one shard; raises what its write raised."""
        (error,) = self.commit_all([record])
        if error is not None:
            raise error

    def commit_all(self, records: Sequence[ShardRecord]) -> list[Exception | None]:
        """Commits each record; for each, None once committed or the error its write raised (the others
        are committed all the same). On S3 their files are written at once: a commit is a PUT whose time
        is a round trip, and one at a time a driver would commit a few dozen shards a second whatever its
        replicas do (python -m bench commits)."""

        def write(record: ShardRecord) -> Exception | None:
            try:
                commit_shard(self.storage, self.layout, record)  # the commit: what follows only compacts
            except Exception as error:  # noqa: BLE001 - the caller's to handle, shard by shard
                return error
            return None

        if len(records) > 1 and self._writes_at_once > 1:
            self._writers = self._writers or ThreadPoolExecutor(self._writes_at_once, thread_name_prefix="commit")
            errors = list(self._writers.map(write, records))
        else:
            errors = [write(record) for record in records]
        self.pending += [record for record, error in zip(records, errors, strict=True) if error is None]
        self._checkpoint_when_due()
        return errors

    def _checkpoint_when_due(self) -> None:
        """The records committed since the last checkpoint into checkpoints of `every` each (several
        commits land at once: what passes `every` waits for the next one)."""
        while len(self.pending) >= self.every:
            records, self.pending = self.pending[: self.every], self.pending[self.every :]
            try:
                self._add(0, self._write(records, replacing=[self.layout.shard_record(r.shard_id) for r in records]))
            except StorageUnavailable:
                raise  # storage is down: the run stops (exit 6), as for any other write
            except Exception as error:  # noqa: BLE001 - the shard is committed; its record file stays until finish()
                log.warning("could not write a manifest checkpoint (the records stay as files): %s", error)

    def finish(self) -> None:
        """Merges what is below the largest kind of checkpoint into one: the checkpoints this run
        holds, its last commits, and any record files a run that died left. Removes the index older
        versions of herd wrote."""
        listing = _Listing(self.storage.list_names(self.layout.manifest_dir))
        self._next_number = max(self._next_number or 0, listing.next_number)
        held = [checkpoint for level in self.levels for checkpoint in level]
        held.sort(key=lambda checkpoint: checkpoint.last)
        urls = [join(self.layout.manifest_dir, name) for name in listing.records]
        records = [record for checkpoint in held for record in checkpoint.records]
        records += [ShardRecord.model_validate_json(content) for content in self.storage.read_many(urls).values()]
        if records:
            replacing = [join(self.layout.manifest_dir, checkpoint.name) for checkpoint in held] + urls
            self._write(records, replacing, first=held[0].first if held else None)
        if listing.legacy_index:  # stale from here on: checkpoints replace it
            self.storage.delete([join(self.layout.manifest_dir, LEGACY_INDEX)])
        self.levels = [[] for _ in self.levels]
        self.pending = []
        if self._writers is not None:
            self._writers.shutdown()
            self._writers = None

    def _add(self, level: int, checkpoint: _Checkpoint) -> None:
        if level == len(self.levels):
            return  # the largest kind: never merged again, no longer held
        group = self.levels[level]
        group.append(checkpoint)
        if len(group) < self.per_merge:
            return
        self.levels[level] = []
        names = [join(self.layout.manifest_dir, checkpoint.name) for checkpoint in group]
        records = [record for c in group for record in c.records]
        self._add(level + 1, self._write(records, names, first=group[0].first, last=group[-1].last))

    def _write(
        self, records: list[ShardRecord], replacing: list[str], first: int | None = None, last: int | None = None
    ) -> _Checkpoint:
        """Writes a checkpoint of `records`, then deletes what it replaces (record files or smaller
        checkpoints): until it is written, they are what holds the commits."""
        if last is None:
            if self._next_number is None:
                self._next_number = _Listing(self.storage.list_names(self.layout.manifest_dir)).next_number
            last = self._next_number
            self._next_number += 1
        first = last if first is None else first
        write_checkpoint(self.storage, self.layout, first, last, _latest(records))
        self.storage.delete(replacing)
        return _Checkpoint(first, last, records)


def _latest(records: list[ShardRecord]) -> list[ShardRecord]:
    """One record per shard, the last given."""
    return list({record.shard_id: record for record in records}.values())
