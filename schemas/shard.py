"""A shard (a slice of one input file), a pack of small shards run as one, what a replica reports for
either, and the manifest record."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from schemas.input_files import Compression, CopiedFrom

# Bumped whenever the same input would be cut into different shards: an output planned by another
# version cannot be resumed by this one (its shard ids would not match), so the fingerprint holds it.
# 1: Parquet shards were whole row groups. 2: row ranges; compressed JSONL in decompressed byte ranges.
# (Packing small shards, jobs/packing.py, changed no shard: a pack's record names its members' ids.)
PLANNER_VERSION = 2

# What every shard id looks like (see Shard.shard_id): herd recognises its own files by it.
SHARD_ID_PATTERN = r"[A-Za-z0-9_-]*-\d+-(?:\d+|end)-[0-9a-f]{10}"

# The last shard of a compressed file reaches to its end, wherever that is: the decompressed size is
# only estimated when planning.
TO_END_OF_FILE = 2**62


class Shard(NamedTuple):
    """Planned from file metadata only. The id depends only on (file, range), so a re-run of the
    same job plans the same ids and can skip the committed ones. A named tuple, not a dataclass or a
    pydantic model: a plan of a billion rows is a million shards, made in planning processes and
    pickled to the driver, and a tuple is made, pickled and unpickled in C (per shard ~4, ~6 and ~5 µs
    against a frozen slotted dataclass's ~9, ~10 and ~14, side by side; in `python -m bench billion` the
    driver's CPU fell from 21 s to 13 s), in ~170 bytes.
    Fields a file's shards share are the same objects. Made with keywords (the planner is its only
    maker), never changed: with_retry gives a new one."""

    file_url: str
    file_label: str  # the file's name relative to the input root, used in row ids
    file_size: int  # bytes stored when planned: reads are clamped to it
    file_version: str  # ETag or mtime when planned
    format: Literal["parquet", "jsonl"]  # parquet: a row range (of an Arrow IPC file too); jsonl: bytes
    start: int  # parquet: first row in the file; jsonl: first byte (of the decompressed stream)
    end: int  # exclusive
    estimated_rows: int
    compression: Compression | None = None  # jsonl only: ranges are in the decompressed stream
    # jsonl: the file is read through the node's JSON Lines copy of it (workers/json_lines_copy.py),
    # made from a JSON array, a CSV, or text in another encoding; ranges are in the copy. A compressed
    # JSON file's copy turns an array into lines whatever this says. parquet: "arrow", an Arrow IPC
    # file's rows [start, end), read through the node's Parquet copy of it (workers/spill_cache.py).
    copied_from: CopiedFrom | None = None
    # Parquet: the row groups holding [start, end), and the file row of the first one's first row.
    row_groups: tuple[int, int] = (0, 0)
    group_first_row: int = 0
    # False when [start, end) is part of one row group larger than a shard: it is read through the
    # node's spill cache, so that the row group is fetched from storage once for all its shards.
    whole_row_groups: bool = True
    columns: tuple[str, ...] = ()  # parquet: the columns read (the rest of the file never is)
    # Hive-style `key=value` folders of the file's path: columns every row of the file gets. The
    # default is one dict for all shards, which is why nothing changes a shard's partition in place.
    partition: dict[str, str] = {}  # noqa: RUF012 - see above
    # Set when a committed shard's error rows are run again (run --retry-errors); not part of the id.
    retry: ErrorRetry | None = None

    def with_retry(self, retry: ErrorRetry) -> Shard:
        """This shard, to run again the error rows `retry` names."""
        return self._replace(retry=retry)

    @property
    def read_from_copy(self) -> bool:
        """A JSONL shard read through the node's JSON Lines copy of its file, not byte ranges of the
        file itself."""
        return self.compression is not None or self.copied_from is not None

    @property
    def node_copy(self) -> str | None:
        """What a node copies whole from storage to read this shard, which its other shards share: the
        file (compressed or transcoded JSONL, a JSON array, a CSV, an Arrow IPC file) or one large
        Parquet row group. None when the shard reads its own part of the file."""
        if self.format == "jsonl":
            return self.file_url if self.read_from_copy else None
        if self.copied_from == "arrow":
            return self.file_url
        return None if self.whole_row_groups else f"{self.file_url}#row-group-{self.row_groups[0]}"

    def where(self, position: int) -> str:
        """Where a row of this shard is in its file, for a person: a Parquet row index, or the byte
        offset of a JSONL line (a line number would need the file read from its start)."""
        if self.format == "parquet":
            return f"row {position}"
        if self.copied_from is None:
            return f"line at byte {position}"
        if self.copied_from == "jsonl":
            return f"line at byte {position} of its UTF-8 copy"
        return f"{'item' if self.copied_from == 'json-array' else 'record'} at byte {position} of its JSON Lines copy"

    @property
    def shard_id(self) -> str:
        kind = f"{self.format}-rows" if self.format == "parquet" else self.format
        digest = hashlib.sha256(f"{self.file_url}|{kind}|{self.start}|{self.end}".encode()).hexdigest()
        stem = "".join(char if char.isalnum() or char in "-_" else "_" for char in self.file_label)
        end = "end" if self.end == TO_END_OF_FILE else self.end
        return f"{stem[-48:]}-{self.start}-{end}-{digest[:10]}"


class ShardPack(NamedTuple):
    """Small shards (whole small files, the short last range of a file) run as one: read together,
    their requests sent to the engine at once, their rows written to one data file and one error
    file, and committed by one record that names them all (jobs/packing.py). Each member keeps its
    own id, row ids and error rows' places, so a member committed in a pack is not run again, whatever
    a later run packs around it."""

    members: tuple[Shard, ...]
    retry: ErrorRetry | None = None  # as Shard.retry: the pack's error rows run again

    def with_retry(self, retry: ErrorRetry) -> ShardPack:
        return self._replace(retry=retry)

    @property
    def shard_id(self) -> str:
        first = self.members[0].shard_id.rsplit("-", 3)[0]  # the first member's file stem
        digest = hashlib.sha256("|".join(member.shard_id for member in self.members).encode()).hexdigest()
        return f"pack_{first[-40:]}-0-{len(self.members)}-{digest[:10]}"

    @property
    def estimated_rows(self) -> int:
        return sum(member.estimated_rows for member in self.members)

    @property
    def format(self) -> Literal["parquet", "jsonl"]:
        """parquet when every member is (its rows are then known exactly), else jsonl."""
        return "parquet" if all(member.format == "parquet" for member in self.members) else "jsonl"

    @property
    def file_label(self) -> str:
        """For a person: which files the pack holds."""
        first, last = self.members[0].file_label, self.members[-1].file_label
        return f"{len(self.members)} small shards ({first} to {last})"

    @property
    def node_copy(self) -> None:
        """A pack's members read their own files: a member read through a copy is that file's only shard."""
        return None


# What the driver hands a replica and commits: one shard, or a pack of small ones.
AnyShard = Shard | ShardPack


def member_ids(shard: AnyShard) -> list[str]:
    """The ids of the planned shards `shard` runs: its own, or its members'."""
    return [member.shard_id for member in shard.members] if isinstance(shard, ShardPack) else [shard.shard_id]


def planned_count(shards: Iterable[AnyShard]) -> int:
    """How many planned shards `shards` run, a pack's members each: counted, not hashed into ids (at a
    million shards member_ids' ids cost ~1.8 s a count)."""
    return sum(len(shard.members) if isinstance(shard, ShardPack) else 1 for shard in shards)


def output_folder_and_name(url: str) -> tuple[str, str]:
    """(data or errors, file name) of an output file's URL, whatever its root is spelled like."""
    folder, name = url.rstrip("/").rsplit("/", 2)[-2:]
    return folder, name


def in_output_folder(folder: str) -> str:
    """A regular expression (for pyarrow's match_substring_regex) matching the URLs whose
    output_folder_and_name folder is `folder`: the URL's second-to-last part."""
    return f"(^|/){re.escape(folder)}/[^/]+/*$"


class OutputObject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    bytes: int
    rows: int

    @property
    def folder(self) -> str:
        """data or errors: the folder of the output it lies in (whatever the root is spelled like)."""
        return output_folder_and_name(self.url)[0]


class ShardResult(BaseModel):
    """What a replica sends back for one committed shard: small stats, never rows."""

    model_config = ConfigDict(extra="forbid")

    shard_id: str
    rows_in: int
    rows_out: int
    error_rows: int
    reused_rows: int  # answered from an identical prompt's generation (optimize.dedupe_prompts)
    prompt_tokens: int
    completion_tokens: int
    # From submitting the shard's requests to its last one finishing: the engine runs other shards'
    # requests in the same batches, so these spans overlap between a replica's shards.
    generate_started_at: float  # unix time
    generate_seconds: float
    shard_seconds: float  # read, render, generate and write
    started_at: float  # unix time the replica started the shard
    finished_at: float  # unix time its files were written
    outputs: list[OutputObject]
    replica: str
    # A pack's members' ids (each a planned shard it committed); empty for a shard run on its own.
    members: list[str] = Field(default_factory=list)
    # Error rows by "stage: reason" (numbers in the reason replaced by N, so that alike reasons count together).
    error_reasons: dict[str, int] = Field(default_factory=dict)


class ShardRecord(ShardResult):
    """One manifest entry: the result plus how many attempts it took. Its presence means 'done'."""

    attempts: int


class ErrorRetry(BaseModel):
    """Which error rows of a committed shard to run again, and the record they were committed in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: tuple[str, ...]  # error rows of these stages are run again; the others are kept as they are
    previous: ShardRecord
