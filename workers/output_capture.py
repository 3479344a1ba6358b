"""Sending a process's output (and its children's) to a log file: vLLM, Ray and transformers write
to the file descriptors themselves, not only through Python's streams; and reading back from it
why an engine failed to start."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def send_output_to(log_file: str) -> None:
    """From now on, this process's stdout and stderr, and those of the processes it starts, go to
    `log_file`."""
    os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
    descriptor = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)


@contextmanager
def output_sent_to(log_file: str) -> Iterator[None]:
    """send_output_to for the duration of the block; the output goes back where it was after."""
    saved = [os.dup(1), os.dup(2)]
    try:
        send_output_to(log_file)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in saved:
            os.close(descriptor)


class EngineStartFailed(RuntimeError):
    """An engine that could not start, named by the first error its log holds: vLLM's engine core
    runs in a child process on GPU, and what reaches the caller is only "Engine core initialization
    failed. See root cause above." The root cause is in the log, "above" it."""


@contextmanager
def start_failure_explained(log_file: str | None) -> Iterator[None]:
    """Re-raises what the block raises as EngineStartFailed naming the first error written to
    `log_file` meanwhile, when there is one that the error itself does not already say."""
    start = os.path.getsize(log_file) if log_file is not None and os.path.exists(log_file) else 0
    try:
        yield
    except Exception as error:
        cause = first_error_in(log_file, start) if log_file is not None else None
        if cause is None or cause in str(error):
            raise
        raise EngineStartFailed(f"the engine did not start: {cause}") from error


# A line as vLLM's processes write it: "(EngineCore pid=3121) " before the text, and for log
# records "ERROR 12-04 16:05:02 [core.py:1510] " too.
_PROCESS_PREFIX = re.compile(r"^\([\w\s]*pid=\d+\) ")
_RECORD_PREFIX = re.compile(r"^[A-Z]+ \d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \[[^\]]*\] ")
_TRACEBACK_READ_LIMIT = 4 << 20


def first_error_in(log_file: str, start: int = 0) -> str | None:
    """The exception line ("ModuleNotFoundError: No module named 'flashinfer'") that ends the first
    traceback written to `log_file` from byte `start` on; None if it holds no traceback. The first
    one: an error in a child process is followed by the errors it causes in its parents."""
    try:
        with open(log_file, "rb") as handle:
            handle.seek(start)
            text = handle.read(_TRACEBACK_READ_LIMIT).decode("utf-8", errors="replace")
    except OSError:
        return None
    in_traceback = False
    for raw in text.splitlines():
        line = _RECORD_PREFIX.sub("", _PROCESS_PREFIX.sub("", raw))
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and line.strip() and not line[0].isspace():
            return line.strip()[:500]
    return None


def recent_first_error_in(log_file: str, since: int) -> str | None:
    """first_error_in from byte `since` on, or over the log's last few MB if it has grown past them
    since: a replica's log may grow for days before its engine dies."""
    try:
        size = os.path.getsize(log_file)
    except OSError:
        return None
    return first_error_in(log_file, max(since, size - _TRACEBACK_READ_LIMIT))
