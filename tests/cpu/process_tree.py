"""Reading a process tree from /proc (Linux): which processes a replica started, and their priority."""

from __future__ import annotations

from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every process `pid` started, and those they started, parents first."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children + [grandchild for child in children for grandchild in descendants(child)]


def niceness(pid: int) -> int:
    # /proc/PID/stat: the command name is in parentheses and may hold spaces; niceness is field 19.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])


def command_line(pid: int) -> str:
    """What `pid` runs, as ps shows it (vLLM names its engine processes VLLM::EngineCore, VLLM::Worker)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()


def pids_mentioning(text: str) -> list[int]:
    """The processes whose command line holds `text` (a test's own temporary directory or port)."""
    import os

    matched = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    matched.append(int(entry.name))
            except OSError:
                continue  # ended meanwhile, or not ours to read
    return matched


def end_processes_mentioning(text: str) -> None:
    """SIGKILLs, by pid, every process whose command line holds `text`, and every process they
    started: never anything by name."""
    import os
    import signal

    matched = pids_mentioning(text)
    doomed = set(matched)
    for pid in matched:
        try:
            doomed.update(descendants(pid))
        except OSError:
            continue
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
