"""A shard (a slice of one input file), what a replica reports for it, and the manifest record."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict


class Shard(BaseModel):
    """Planned from file metadata only. The id depends only on (file, range), so a re-run of the
    same job plans the same ids and can skip the committed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file_url: str
    file_label: str  # the file's name relative to the input root, used in row ids
    format: Literal["parquet", "jsonl"]
    start: int  # parquet: first row group; jsonl: first byte
    end: int  # exclusive
    first_row: int = 0  # parquet: index in the file of the shard's first row
    estimated_rows: int

    @property
    def shard_id(self) -> str:
        digest = hashlib.sha256(f"{self.file_url}|{self.format}|{self.start}|{self.end}".encode()).hexdigest()
        stem = "".join(char if char.isalnum() or char in "-_" else "_" for char in self.file_label)
        return f"{stem[-48:]}-{self.start}-{self.end}-{digest[:10]}"


class OutputObject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    bytes: int
    rows: int


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


class ShardRecord(ShardResult):
    """One manifest entry: the result plus how many attempts it took. Its presence means 'done'."""

    attempts: int
