"""The commit protocol's driver side: the job's fingerprint, the manifest of committed shards, clean-up.

A shard is done when, and only when, its manifest record exists. Replicas write data and error
files under names no earlier attempt used; the record names the files that count, and files that
no record names (left by an attempt that died) are deleted before the run is marked successful.
"""

from __future__ import annotations

import json
from typing import Any

from common.layout import OutputLayout
from common.storage import FileInfo, Storage, join
from schemas.errors import SpecError
from schemas.job import JobSpec
from schemas.shard import ShardRecord


class OutputInUse(SpecError):
    """The output holds results of a different job; mixing them would corrupt both."""


def fingerprint(job: JobSpec, files: list[FileInfo]) -> dict[str, Any]:
    """What decides the output's content. Resources are left out: changing replicas or tensor
    parallelism does not change what is generated."""
    return {
        "inputs": [{"url": info.url, "size": info.size, "version": info.version} for info in files],
        "input": job.input.model_dump(mode="json", exclude={"path"}),
        "model": job.model.path,
        "max_model_len": job.model.max_model_len,
        "prompt": job.prompt.model_dump(mode="json"),
        "sampling": job.sampling.model_dump(mode="json"),
        "optimize": job.optimize.model_dump(mode="json"),
        "output_format": job.output.format,
    }


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            changed += [f"{key}.{inner}" for inner in _changes(old[key], new[key])]
        elif old.get(key) != new.get(key):
            changed.append(key)
    return changed


def claim_output(storage: Storage, layout: OutputLayout, job: JobSpec, files: list[FileInfo], overwrite: bool) -> None:
    """Records this job as the owner of the output, or refuses if another job's results are there."""
    current = fingerprint(job, files)
    if storage.exists(layout.job_record):
        previous = json.loads(storage.read_text(layout.job_record)).get("fingerprint", {})
        if previous != current:
            if not overwrite:
                raise OutputInUse(
                    f"{layout.root} holds the output of a different job (changed: "
                    f"{', '.join(_changes(previous, current))}); use another output path, or "
                    "--overwrite to replace it"
                )
            clear_output(storage, layout)
        elif overwrite:
            clear_output(storage, layout)
    elif overwrite:
        clear_output(storage, layout)
    record = {"job": job.name, "fingerprint": current, "spec": job.model_dump(mode="json")}
    storage.write_text(layout.job_record, json.dumps(record, indent=2, sort_keys=True))


def clear_output(storage: Storage, layout: OutputLayout) -> None:
    storage.delete(
        [
            layout.success_marker,
            layout.summary,
            layout.manifest_dir,
            layout.data_dir,
            layout.errors_dir,
            layout.job_record,
        ]
    )


def committed_shards(storage: Storage, layout: OutputLayout) -> dict[str, ShardRecord]:
    """Reads the manifest alone; rows are never loaded. The per-shard records decide what is
    committed; the index written at the end of a run saves reading them one by one."""
    committed_ids = [
        name.removesuffix(".json") for name in storage.list_names(layout.manifest_dir) if name.endswith(".json")
    ]
    indexed: dict[str, ShardRecord] = {}
    if storage.exists(layout.manifest_index):
        for line in storage.read_text(layout.manifest_index).splitlines():
            record = ShardRecord.model_validate_json(line)
            indexed[record.shard_id] = record
    unindexed = [layout.shard_record(shard_id) for shard_id in committed_ids if shard_id not in indexed]
    for content in storage.read_many(unindexed).values():
        record = ShardRecord.model_validate_json(content)
        indexed[record.shard_id] = record
    return {shard_id: indexed[shard_id] for shard_id in committed_ids}


def write_manifest_index(storage: Storage, layout: OutputLayout, records: dict[str, ShardRecord]) -> None:
    storage.write_text(layout.manifest_index, "".join(record.model_dump_json() + "\n" for record in records.values()))


def commit_shard(storage: Storage, layout: OutputLayout, record: ShardRecord) -> None:
    storage.write_text(layout.shard_record(record.shard_id), record.model_dump_json())


def remove_uncommitted_files(storage: Storage, layout: OutputLayout, records: dict[str, ShardRecord]) -> int:
    """Deletes data and error files that no record names (an attempt died before its commit)."""
    named = {output.url.rstrip("/").rsplit("/", 1)[-1] for record in records.values() for output in record.outputs}
    stray = [
        join(directory, name)
        for directory in (layout.data_dir, layout.errors_dir)
        for name in storage.list_names(directory)
        if name not in named
    ]
    storage.delete(stray)
    return len(stray)
