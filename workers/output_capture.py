"""Sending a process's output (and its children's) to a log file: vLLM, Ray and transformers write
to the file descriptors themselves, not only through Python's streams."""

from __future__ import annotations

import os
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
