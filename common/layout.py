"""Where everything lives under a job's output path: the one place that knows the names."""

from __future__ import annotations

from dataclasses import dataclass

from common.storage import join


@dataclass(frozen=True)
class OutputLayout:
    """The names relative to the output's root (for a Folder of it), and their full URLs."""

    root: str

    DATA = "data"
    ERRORS = "errors"
    MANIFEST = "manifest"
    LOGS = "logs"  # replicas' logs, for a local output (an s3:// output's stay on each node: see jobs/replicas.py)
    SUMMARY = "summary.json"
    REPORT = "report.html"  # a page about the run, with plots (see jobs/report.py)
    SUCCESS = "_SUCCESS"
    LEASE = "_lease.json"  # who runs on this output now (see jobs/lease.py)
    JOB_RECORD = "job.json"  # the spec and fingerprint of the job that owns this output

    @property
    def data_dir(self) -> str:
        return join(self.root, self.DATA)

    @property
    def errors_dir(self) -> str:
        return join(self.root, self.ERRORS)

    @property
    def manifest_dir(self) -> str:
        return join(self.root, self.MANIFEST)

    @property
    def logs_dir(self) -> str:
        return join(self.root, self.LOGS)

    @property
    def summary(self) -> str:
        return join(self.root, self.SUMMARY)

    @property
    def report(self) -> str:
        return join(self.root, self.REPORT)

    @property
    def success_marker(self) -> str:
        return join(self.root, self.SUCCESS)

    @property
    def lease(self) -> str:
        return join(self.root, self.LEASE)

    @property
    def job_record(self) -> str:
        return join(self.root, self.JOB_RECORD)

    def data_file(self, shard_id: str, attempt_token: str, file_format: str) -> str:
        # The attempt token makes every object name new: a retried shard never writes over what an
        # earlier attempt may have left; the manifest says which one counts.
        return join(self.data_dir, f"{shard_id}.{attempt_token}.{file_format}")

    def errors_file(self, shard_id: str, attempt_token: str, file_format: str) -> str:
        return join(self.errors_dir, f"{shard_id}.{attempt_token}.{file_format}")

    def shard_record(self, shard_id: str) -> str:
        return join(self.manifest_dir, f"{shard_id}.json")
