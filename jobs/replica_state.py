"""One replica as the driver sees it: its actor and resources, its phase, its deadlines, its heartbeat
and its free slots, with the transitions between phases in one place.

    placing --placed--> starting --started--> up
       |                   |                   |
       +-------------------+--------died-------+--> dead

A replica waits for its node while placing (bounded by resources.capacity_timeout_s), for its engine
while starting (resources.replica_start_timeout_s), and answers heartbeats while up. No Ray here: the
pool (jobs/replicas.py) makes the actor and its placement group, the dispatcher (jobs/dispatch.py)
drives the transitions, and the transitions are tested on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Phase(str, Enum):
    PLACING = "placing"  # its placement group waits for a node (an autoscaler may be adding one)
    STARTING = "starting"  # placed; its engine loads
    UP = "up"  # ready: it takes shards
    DEAD = "dead"  # ended: crashed, stalled, never ready, its node lost, or given up on


# A replica's node when its placement group was placed and then lost before the driver could look.
NODE_LEFT = "<left>"


class PhaseError(RuntimeError):
    """A transition the lifecycle does not have (a bug in the driver, never a replica's fault)."""


@dataclass(eq=False)
class ReplicaState:
    actor: Any
    placement_group: Any
    log_file: str | None = None  # where its output goes (None: the driver's terminal)
    phase: Phase = Phase.PLACING
    since: float = 0.0  # monotonic time it entered its phase
    deadline: float | None = None  # placing: capacity; starting: readiness
    waiting_on: Any = None  # what ends this phase: the placement group's ready(), then the actor's ready()
    node_id: str | None = None  # known once placed: a node lost while the engine loads is told from a crash
    name: str = "?"  # host:pid, once up
    free_slots: int = 0  # shards it can take now
    heartbeat: Any = None  # the heartbeat in flight
    heartbeat_sent: float = 0.0  # when the heartbeat in flight (or the last one) was sent
    verdict_due: float | None = None  # unreachable: when its end counts as a crash if its node is still there

    def _expect(self, *phases: Phase) -> None:
        if self.phase not in phases:
            raise PhaseError(
                f"replica {self.name}: {self.phase.value}, expected {' or '.join(p.value for p in phases)}"
            )

    def await_placement(self, ready: Any, now: float, capacity_timeout_s: float) -> None:
        self._expect(Phase.PLACING)
        self.waiting_on, self.since, self.deadline = ready, now, now + capacity_timeout_s

    def placed(self, node_id: str, ready: Any, now: float, start_timeout_s: float) -> float:
        """Its node is there and its engine starts; returns how long it waited for the node."""
        self._expect(Phase.PLACING)
        waited = now - self.since
        self.phase, self.node_id = Phase.STARTING, node_id
        self.waiting_on, self.since, self.deadline = ready, now, now + start_timeout_s
        return waited

    def started(self, name: str, slots: int, now: float) -> None:
        self._expect(Phase.STARTING)
        self.phase, self.name, self.free_slots = Phase.UP, name, slots
        self.waiting_on, self.since, self.deadline = None, now, None

    def died(self, now: float) -> None:
        self.phase, self.free_slots = Phase.DEAD, 0
        self.waiting_on, self.deadline, self.heartbeat, self.since = None, None, None, now

    def lost_from_sight(self, now: float, verdict_s: float) -> None:
        """Unreachable, not known to have ended: dead to the dispatcher now, and whether it crashed or
        lost its node is decided by `verdict_due` at the latest."""
        self.died(now)
        self.verdict_due = now + verdict_s

    def verdict_given(self) -> None:
        self.verdict_due = None

    def stop_waiting_for_capacity(self) -> None:
        """Past its capacity deadline while others are up: it stays asked for, without a deadline."""
        self._expect(Phase.PLACING)
        self.deadline = None

    def take_slot(self) -> None:
        self._expect(Phase.UP)
        if self.free_slots < 1:
            raise PhaseError(f"replica {self.name}: no free slot")
        self.free_slots -= 1

    def give_slot_back(self) -> None:
        """A shard it held finished; a dead replica's slots are gone with it."""
        if self.phase == Phase.UP:
            self.free_slots += 1

    def overdue(self, now: float) -> bool:
        return self.deadline is not None and self.deadline <= now

    def heartbeat_due(self, now: float, every_s: float) -> bool:
        return self.phase == Phase.UP and self.heartbeat is None and now - self.heartbeat_sent >= every_s

    def heartbeat_sent_now(self, ref: Any, now: float) -> None:
        self._expect(Phase.UP)
        self.heartbeat, self.heartbeat_sent = ref, now

    def heartbeat_answered(self) -> None:
        self.heartbeat = None
