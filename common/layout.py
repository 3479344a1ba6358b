"""Where everything lives under a job's output path: the one place that knows the names."""

from __future__ import annotations

from dataclasses import dataclass

from common.storage import join


@dataclass(frozen=True)
class OutputLayout:
    root: str

    @property
    def data_dir(self) -> str:
        return join(self.root, "data")

    @property
    def errors_dir(self) -> str:
        return join(self.root, "errors")

    @property
    def manifest_dir(self) -> str:
        return join(self.root, "manifest")

    @property
    def logs_dir(self) -> str:
        """Replicas' logs, for a local output (an s3:// output's stay on each node: see jobs/replicas.py)."""
        return join(self.root, "logs")

    @property
    def summary(self) -> str:
        return join(self.root, "summary.json")

    @property
    def report(self) -> str:
        """A page about the run, with plots (see jobs/report.py)."""
        return join(self.root, "report.html")

    @property
    def success_marker(self) -> str:
        return join(self.root, "_SUCCESS")

    @property
    def lease(self) -> str:
        """Who runs on this output now (see jobs/lease.py)."""
        return join(self.root, "_lease.json")

    @property
    def job_record(self) -> str:
        """The spec and fingerprint of the job that owns this output."""
        return join(self.root, "job.json")

    def data_file(self, shard_id: str, attempt_token: str, file_format: str) -> str:
        # The attempt token makes every object name new: a retried shard never writes over what an
        # earlier attempt may have left; the manifest says which one counts.
        return join(self.data_dir, f"{shard_id}.{attempt_token}.{file_format}")

    def errors_file(self, shard_id: str, attempt_token: str, file_format: str) -> str:
        return join(self.errors_dir, f"{shard_id}.{attempt_token}.{file_format}")

    @property
    def manifest_index(self) -> str:
        """All records of the manifest in one file, rewritten at the end of each run."""
        return join(self.manifest_dir, "_index.jsonl")

    def shard_record(self, shard_id: str) -> str:
        return join(self.manifest_dir, f"{shard_id}.json")
