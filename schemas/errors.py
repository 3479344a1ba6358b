"""Readable messages for invalid job specs: the field's dotted path, what was wrong, what is allowed."""

from __future__ import annotations

import difflib
from enum import IntEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError


class ExitCode(IntEnum):
    """What `herd run` exits with, and what herd's errors carry; schedulers branch on these."""

    SUCCESS = 0
    FAILED = 1  # an unexpected error; the message says what
    INVALID = 2  # invalid spec or input, or the output belongs to another job; nothing was generated
    ERRORS_OVER_THRESHOLD = 3  # finished, but more rows failed than max_error_fraction allows
    SHARDS_FAILED = 4  # some shards failed after every retry; the rest are committed
    OUTPUT_BUSY = 5  # another run holds the output (or took it over): nothing of this run's was committed after that
    STORAGE_UNAVAILABLE = 6  # storage kept failing (throttling, 5xx, connections) after every retry: run again later
    NO_CAPACITY = 7  # no replica's node appeared within resources.capacity_timeout_s; committed shards are kept
    INTERRUPTED = 130  # stopped by Ctrl-C or SIGTERM; re-run the same command to resume


class HerdError(Exception):
    """Every error herd raises on purpose; `exit_code` is what the command line exits with for it."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class SpecError(HerdError, ValueError):
    """The job spec or its inputs are invalid; the message is meant for the user as it is."""

    exit_code = ExitCode.INVALID


class UnplannableFiles(SpecError):
    """Input files that cannot be planned (not readable as their format, a named column missing), each
    with why: found in one pass, so that a few bad files among thousands are fixed in one go. Planning
    stops at `MOST_NAMED` of them (a column missing from every file would otherwise read them all)."""

    MOST_NAMED: ClassVar[int] = 20

    def __init__(self, problems: list[str], stopped: bool = False) -> None:
        self.problems, self.stopped = problems, stopped
        if len(problems) == 1 and not stopped:
            message = problems[0]
        else:
            more = "; planning stopped there, others may follow" if stopped else ""
            message = f"{len(problems)} input files cannot be planned{more}:\n" + "\n".join(
                f"  {problem}" for problem in problems
            )
        super().__init__(message)

    def __reduce__(self) -> tuple:  # a planning process sends it to the driver pickled
        return (UnplannableFiles, (self.problems, self.stopped))

    @classmethod
    def joined(cls, errors: list[UnplannableFiles], stopped: bool = False) -> UnplannableFiles:
        """The problems of several slices of the files, in their order. `stopped`: files were left
        unplanned besides those slices."""
        problems = [problem for error in errors for problem in error.problems]
        stopped = stopped or any(error.stopped for error in errors) or len(problems) > cls.MOST_NAMED
        return cls(problems[: cls.MOST_NAMED], stopped=stopped)


class StorageUnavailable(HerdError):
    """Storage kept failing in ways that may pass (throttling, 5xx, dropped connections) after every
    retry; the job itself may be fine: run it again later."""

    exit_code = ExitCode.STORAGE_UNAVAILABLE


class OutputBusy(HerdError):
    """Another run holds the output's lease, or took it over from this one; the message says who."""

    exit_code = ExitCode.OUTPUT_BUSY


class JobFailed(HerdError):
    """The run finished without succeeding; `summary` (a RunSummary) says what was done and what not.
    Committed shards are kept: running the job again resumes it."""

    def __init__(self, message: str, summary: Any) -> None:
        super().__init__(message)
        self.summary = summary


class ErrorsOverThreshold(JobFailed):
    """Every shard ran, but more rows failed than max_error_fraction allows."""

    exit_code = ExitCode.ERRORS_OVER_THRESHOLD


class ShardsFailed(JobFailed):
    """Some shards failed after every retry; the others are committed."""

    exit_code = ExitCode.SHARDS_FAILED


class NoCapacity(JobFailed):
    """No replica found a node within resources.capacity_timeout_s."""

    exit_code = ExitCode.NO_CAPACITY


def _allowed_fields(model: type[BaseModel], location: tuple) -> list[str]:
    """The field names allowed at the mapping that holds `location`'s last element."""
    current: type[BaseModel] | None = model
    for part in location[:-1]:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return []
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return sorted(current.model_fields) if current is not None else []


def format_validation_error(error: ValidationError, source: str, model: type[BaseModel]) -> str:
    lines = [f"{source}: invalid job spec"]
    for problem in error.errors():
        location = tuple(problem["loc"])
        field = ".".join(str(part) for part in location) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, location)
            message = "unknown field"
            # A misspelt name is the usual cause: name the field it most likely meant first.
            meant = difflib.get_close_matches(str(location[-1]), allowed, n=1, cutoff=0.75)
            if meant:
                message += f" (did you mean {meant[0]}?)"
            if allowed:
                message += f"; allowed here: {', '.join(allowed)}"
        elif problem["type"] == "missing":
            message = "required field is missing"
        elif "input" in problem and problem["type"] not in ("model_type",):
            given = problem["input"]
            if not isinstance(given, dict):
                message += f" (got {given!r})"
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)
