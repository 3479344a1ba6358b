"""herd from Python: the same exactly-once batch generation as the command line.

    import herd

    summary = herd.run("job.yaml")                      # a job file, a dict, or a JobSpec
    report = herd.plan("job.yaml")                      # the dry run, as `herd plan --json` prints it
    frame = herd.generate(df, prompt_column="prompt", model="demo:smollm2-135m-instruct")

Failures raise subclasses of HerdError, each carrying the exit code the command line would exit with.
Importing herd loads neither Ray nor vLLM: they load when a job first needs them.
"""

from common.versions import herd_version
from herd.api import generate, plan, run, shutdown
from schemas.errors import (
    ErrorsOverThreshold,
    ExitCode,
    HerdError,
    JobFailed,
    NoCapacity,
    OutputBusy,
    ShardsFailed,
    SpecError,
    StorageUnavailable,
)
from schemas.job import JobSpec
from schemas.results import RunSummary

__all__ = [
    "ErrorsOverThreshold",
    "ExitCode",
    "HerdError",
    "JobFailed",
    "JobSpec",
    "NoCapacity",
    "OutputBusy",
    "RunSummary",
    "ShardsFailed",
    "SpecError",
    "StorageUnavailable",
    "__version__",
    "generate",
    "plan",
    "run",
    "shutdown",
]


def __getattr__(name: str) -> str:
    # herd.__version__, looked up when asked rather than on every import.
    if name == "__version__":
        return herd_version()
    raise AttributeError(f"module 'herd' has no attribute {name!r}")
