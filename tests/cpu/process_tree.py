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
