"""The commit protocol's driver side, apart from the manifest's records (jobs/committed.py): the
job's fingerprint, its claim on the output, and clean-up.

A shard is done when, and only when, its manifest record exists. Replicas write data and error
files under names no earlier attempt used; the record names the files that count, and files that
no record names (left by an attempt that died) are deleted before the run is marked successful.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from common.layout import OutputLayout
from common.storage import FileInfo, Storage
from jobs.committed import CHECKPOINT_FILE, LEGACY_INDEX, RECORD_FILE, CommittedShards
from schemas.errors import SpecError
from schemas.job import JobSpec, without_secrets
from schemas.shard import PLANNER_VERSION, SHARD_ID_PATTERN

# The names herd gives what it writes under data/, errors/ and manifest/; nothing else there is
# ever deleted by herd.
_SHARD_FILE = re.compile(rf"(?:{SHARD_ID_PATTERN})\.[0-9a-f]{{12}}\.(?:parquet|jsonl)")
_MANIFEST_FILE = re.compile(rf"{RECORD_FILE.pattern}|{CHECKPOINT_FILE.pattern}|{re.escape(LEGACY_INDEX)}")
_REPLICA_LOG = re.compile(r"replica-\d+-\d+\.log")
_TEMPORARY_FILE = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")  # a local write that died before its rename


class OutputInUse(SpecError):
    """The output holds results of a different job; mixing them would corrupt both."""


# Engine settings that change how fast or in how much memory a job runs, not what it generates.
_ENGINE_OPTIONS_NOT_IN_FINGERPRINT = frozenset(
    {
        "gpu_memory_utilization",
        "max_num_seqs",
        "max_num_batched_tokens",
        "swap_space",
        "cpu_offload_gb",
        "enforce_eager",
        "disable_log_stats",
        "block_size",
        "enable_chunked_prefill",
        "max_seq_len_to_capture",
        "num_gpu_blocks_override",
        "max_parallel_loading_workers",
        "distributed_executor_backend",
        "pipeline_parallel_size",
        "disable_custom_all_reduce",
        "preemption_mode",
        "scheduling_policy",
        "async_scheduling",
    }
)


def fingerprint(job: JobSpec, files: list[FileInfo], storage: Storage) -> dict[str, Any]:
    """Everything that decides the output's content. Left out: resources (replicas, tensor
    parallelism), engine settings of speed and memory, and input settings that do not change rows."""
    from workers.model_source import adapter_identity, model_identity

    fields = {
        "planner": PLANNER_VERSION,
        "inputs": [{"url": info.url, "size": info.size, "version": info.version} for info in files],
        "input": _dump(job.input, exclude={"path", "new_files", "require_rows"}),
        "model": {
            "path": job.model.path,
            "identity": model_identity(job.model.path, storage),
            "dtype": job.model.dtype,
            "max_model_len": job.model.max_model_len,
            "engine_options": without_secrets(
                {
                    name: value
                    for name, value in sorted(job.model.engine_options.items())
                    if name not in _ENGINE_OPTIONS_NOT_IN_FINGERPRINT
                }
            ),
        },
        "prompt": _dump(job.prompt),
        "sampling": job.sampling.model_dump(mode="json"),
        "optimize": job.optimize.model_dump(mode="json"),
        "output_format": job.output.format,
    }
    if job.model.adapters:  # only then: outputs written before adapters existed keep resuming
        fields["model"]["adapters"] = [adapter_identity(adapter, storage) for adapter in job.model.adapters]
    if job.model.name is not None:  # likewise for outputs written before names existed
        fields["model"]["name"] = job.model.name
    return fields


# Options added after outputs were written: in the fingerprint only when set, so that those outputs
# keep resuming.
_FINGERPRINTED_WHEN_SET = frozenset({"encoding", "regenerate_final_answer"})


def _dump(section: BaseModel, exclude: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    unset = {
        name
        for name in _FINGERPRINTED_WHEN_SET & set(type(section).model_fields)
        if getattr(section, name) == type(section).model_fields[name].default
    }
    return section.model_dump(mode="json", exclude=set(exclude) | unset)


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            changed += [f"{key}.{inner}" for inner in _changes(old[key], new[key])]
        elif old.get(key) != new.get(key):
            changed.append(key)
    return changed


@dataclass(frozen=True)
class OutputClaim:
    """What check_claim decided about the output, to be taken once the job has planned."""

    fingerprint: dict[str, Any]
    runs: list[dict[str, Any]]  # job.json's run history, kept
    files_added: list[str]  # input files new since the last run (input.new_files: process)
    replaces: bool  # --overwrite of an existing output: what herd wrote there goes first


def check_claim(
    storage: Storage, layout: OutputLayout, job: JobSpec, files: list[FileInfo], overwrite: bool
) -> OutputClaim:
    """Refuses, writing nothing, if another job's results are at the output, or anything herd did not
    write; else says how take_claim makes this job its owner. Also a SpecError for a model or adapter
    path that is not one (the fingerprint lists their files): all before any engine starts."""
    current = fingerprint(job, files, storage)
    if not storage.exists(layout.job_record):
        if storage.has_entries(
            layout.root, ignoring={posixpath.basename(layout.lease) + suffix for suffix in ("", ".lock")}
        ):
            raise OutputInUse(
                f"{layout.root} is not empty and holds no herd job.json: herd writes only into an empty path "
                "or one holding its own job's output, and never deletes files it did not write; choose "
                "another output path"
            )
        return OutputClaim(current, [], [], replaces=False)
    stored = json.loads(storage.read_text(layout.job_record))
    previous, runs = stored.get("fingerprint", {}), stored.get("runs", [])
    if overwrite:
        return OutputClaim(current, [], [], replaces=True)
    added: list[str] | None = []
    if previous != current:
        added = _only_new_files(previous, current) if job.input.new_files == "process" else None
        if added is None:
            raise OutputInUse(_refusal(layout, previous, current))
    return OutputClaim(current, runs, added, replaces=False)


def take_claim(storage: Storage, layout: OutputLayout, job: JobSpec, claim: OutputClaim) -> None:
    """Records this job as the output's owner (job.json), after clearing herd's files of the output it
    replaces."""
    if claim.replaces:
        clear_output(storage, layout)
    _write_job_record(storage, layout, job, claim.fingerprint, claim.runs)


def _write_job_record(
    storage: Storage, layout: OutputLayout, job: JobSpec, current: dict[str, Any], runs: list[dict[str, Any]]
) -> None:
    spec = without_secrets(job.model_dump(mode="json"))
    record = {"job": job.name, "fingerprint": current, "spec": spec, "runs": runs}
    storage.write_text(layout.job_record, json.dumps(record, indent=2, sort_keys=True))


def record_run(storage: Storage, layout: OutputLayout, run: dict[str, Any]) -> None:
    """Adds this run to job.json's history (when, which files it added, what it did)."""
    stored = json.loads(storage.read_text(layout.job_record))
    stored["runs"] = [*stored.get("runs", []), run]
    storage.write_text(layout.job_record, json.dumps(stored, indent=2, sort_keys=True))


def _file_changes(previous: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """Input files (changed, vanished, added) between two fingerprints."""
    before = {entry["url"]: entry for entry in previous.get("inputs", [])}
    after = {entry["url"]: entry for entry in current.get("inputs", [])}
    changed = [url for url in before if url in after and before[url] != after[url]]
    vanished = [url for url in before if url not in after]
    added = [url for url in after if url not in before]
    return changed, vanished, added


def _only_new_files(previous: dict[str, Any], current: dict[str, Any]) -> list[str] | None:
    """The added files, if nothing but added files tells the two fingerprints apart; else None."""
    if {**previous, "inputs": None} != {**current, "inputs": None}:
        return None
    changed, vanished, added = _file_changes(previous, current)
    return None if changed or vanished else added


def _refusal(layout: OutputLayout, previous: dict[str, Any], current: dict[str, Any]) -> str:
    if previous.get("planner") != current["planner"]:
        return (
            f"{layout.root} holds an output planned by another version of herd (planner "
            f"{previous.get('planner', 1)}; this one plans version {current['planner']}: Parquet shards are "
            "row ranges now), and its shards cannot be mixed with this plan's; use --overwrite to replace "
            "it, or another output path"
        )
    changes = [change for change in _changes(previous, current) if change != "inputs"]
    changed, vanished, added = _file_changes(previous, current)
    files = [
        f"{what}: {', '.join(urls[:5])}{' ...' if len(urls) > 5 else ''}"
        for what, urls in (("input files changed", changed), ("vanished", vanished), ("added", added))
        if urls
    ]
    hint = ""
    if added and not (changed or vanished or changes):
        hint = "; set input.new_files: process to run the added files into this output"
    return (
        f"{layout.root} holds the output of a different job (changed: {'; '.join(changes + files)}){hint}; "
        "use another output path, or --overwrite to replace it"
    )


def clear_output(storage: Storage, layout: OutputLayout) -> None:
    """Deletes what herd wrote here, and only that: files of other origins in the same folders stay,
    and nothing outside the output's root can be named (a Folder of it)."""
    output = storage.folder(layout.root)
    own = [
        f"{folder}/{name}"
        for folder, pattern in (
            (layout.DATA, _SHARD_FILE),
            (layout.ERRORS, _SHARD_FILE),
            (layout.MANIFEST, _MANIFEST_FILE),
            (layout.LOGS, _REPLICA_LOG),
        )
        for name in output.list_names(folder)
        if pattern.fullmatch(name) or _TEMPORARY_FILE.fullmatch(name)
    ]
    # job.json last: until it goes, a crash here leaves an output herd still recognises as its own.
    output.delete([*own, layout.SUCCESS, layout.SUMMARY, layout.REPORT, layout.JOB_RECORD])


def remove_uncommitted_files(storage: Storage, layout: OutputLayout, records: CommittedShards) -> int:
    """Deletes data and error files of herd's that no manifest record names (an attempt died before
    its commit). `records` must be the manifest as listed from storage (committed_shards), not what
    this driver believes it committed: a commit whose write landed although the client saw an error
    keeps its files."""
    # By folder and name: an attempt's data and error files share a name in two folders, and a retry
    # of error rows keeps the one and replaces the other. (Not by whole path: the output's root may be
    # spelled differently from one run to the next.)
    named = records.output_names()
    output = storage.folder(layout.root)
    stray = [
        f"{folder}/{name}"
        for folder in (layout.DATA, layout.ERRORS)
        for name in output.list_names(folder)
        if (folder, name) not in named and (_SHARD_FILE.fullmatch(name) or _TEMPORARY_FILE.fullmatch(name))
    ]
    output.delete(stray)
    return len(stray)
