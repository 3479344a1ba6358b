"""The state of an output, local or s3://, from what it holds alone: which job, what is committed,
what is missing or failed, whether a run holds it now, and the last summary. Imports no Ray."""

from __future__ import annotations

import json
import time
from typing import Any

from common.layout import OutputLayout
from common.storage import FileInfo, Storage
from jobs.committed import committed_shards
from jobs.lease import describe_holder, holder_is_gone
from jobs.planner import plan_shards
from schemas.errors import SpecError
from schemas.job import JobSpec, RetrySpec, StorageSpec
from schemas.results import throughput_text


def output_state(root: str, storage_spec: StorageSpec | None = None) -> dict[str, Any]:
    """Raises SpecError when `root` holds no herd job."""
    layout = OutputLayout(root)
    probe = Storage(storage_spec or StorageSpec(), RetrySpec(attempts=2, storage_deadline_s=10.0))
    if not probe.exists(layout.job_record):
        raise SpecError(f"{root}: no herd job.json here; this is not the output of a herd job")
    stored = json.loads(probe.read_text(layout.job_record))
    job = JobSpec.model_validate(stored["spec"])
    if storage_spec is not None:  # where this machine reaches the storage (the job may have run elsewhere)
        job = job.model_copy(update={"storage": storage_spec})
    storage = Storage(job.storage, job.retry)
    # The shards of the job as it was recorded (its input files as they were), not as the inputs are now.
    files = [FileInfo(entry["url"], entry["size"], entry["version"]) for entry in stored["fingerprint"]["inputs"]]
    planned = plan_shards(job.input, files, storage, job.prompt)
    committed = committed_shards(storage, layout)
    summary = json.loads(storage.read_text(layout.summary)) if storage.exists(layout.summary) else None
    failed = {line.split(":", 1)[0]: line.split(": ", 1)[-1] for line in (summary or {}).get("shards_failed", [])}
    missing = [shard for shard in planned if shard.shard_id not in committed]
    records = committed.only([shard.shard_id for shard in planned])  # columns: quick at a million shards
    return {
        "output": root,
        "job": stored.get("job"),
        "model": job.model.path,
        "runs": stored.get("runs", []),
        "run_in_progress": _lease_state(storage, layout),
        "succeeded": storage.exists(layout.success_marker),
        "shards": {
            "planned": len(planned),
            "committed": records.planned_shards(),
            "missing": [
                {
                    "shard": shard.shard_id,
                    "file": shard.file_label,
                    "range": [shard.start, shard.end],
                    "failed": failed.get(shard.shard_id),
                }
                for shard in missing
            ],
        },
        "rows": {
            "in": records.total("rows_in"),
            "out": records.total("rows_out"),
            "errors": records.total("error_rows"),
        },
        "last_summary": summary,
    }


def _lease_state(storage: Storage, layout: OutputLayout) -> dict[str, Any] | None:
    try:
        text, _ = storage.read_versioned(layout.lease)
    except FileNotFoundError:
        return None
    holder = json.loads(text)
    gone = holder_is_gone(holder, time.time())
    return {
        "holder": describe_holder(holder),
        "renewed_s_ago": round(time.time() - float(holder.get("renewed_at", 0)), 1),
        "live": gone is None,
        "stale_because": gone,
    }


def describe_state(state: dict[str, Any]) -> str:
    """The state as a person reads it."""
    shards = state["shards"]
    lines = [
        f"output:   {state['output']}",
        f"job:      {state['job']} (model {state['model']}), {len(state['runs'])} run(s)"
        + (f", last at {state['runs'][-1]['at']} ({state['runs'][-1]['status']})" if state["runs"] else ""),
    ]
    lease = state["run_in_progress"]
    if lease is None:
        lines.append("running:  no run holds this output now")
    elif lease["live"]:
        lines.append(f"running:  yes, {lease['holder']} (renewed {lease['renewed_s_ago']}s ago)")
    else:
        lines.append(f"running:  no; a stale lease, {lease['holder']}: {lease['stale_because']}")
    lines.append(
        f"shards:   {shards['committed']} of {shards['planned']} committed, {len(shards['missing'])} missing"
        + ("; _SUCCESS present" if state["succeeded"] else "")
    )
    rows = state["rows"]
    lines.append(f"rows:     {rows['in']} in, {rows['out']} out, {rows['errors']} error rows (committed shards)")
    for shard in shards["missing"][:20]:
        why = f"  failed: {shard['failed']}" if shard["failed"] else ""
        lines.append(f"missing:  {shard['shard']}  {shard['file']} {shard['range'][0]}-{shard['range'][1]}{why}")
    if len(shards["missing"]) > 20:
        lines.append(f"missing:  ... and {len(shards['missing']) - 20} more (--json lists them all)")
    summary = state["last_summary"]
    if summary:
        lines.append(
            f"summary:  {summary['status']}: {summary['rows_in']} rows in, {summary['rows_out']} out, "
            f"{summary['error_rows']} errors, "
            f"{throughput_text(summary['tokens_per_s'], summary.get('shards_run', 1), summary['wall_seconds'])}"
        )
    return "\n".join(lines)
