"""Hands shards out to replicas as they free up, retries failures, replaces dead replicas.

Dynamic dispatch, largest shards first: a fast replica simply takes more shards, and the small
ones fill the tail. A shard whose replica died goes back to the queue for another replica; it is
recorded only when a replica returns its result, so it is never counted twice.

A replica goes through three waits, each bounded: for its node (its placement group placed; an
autoscaler may be adding the node: resources.capacity_timeout_s), for its engine (ready:
resources.replica_start_timeout_s), and, while it holds shards, for progress (heartbeats:
resources.stall_timeout_s).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.util.placement_group import placement_group_table

from common.retry import backoff_seconds
from jobs.capacity import cluster_shape, describe_cluster
from jobs.progress import Progress
from jobs.replicas import ReplicaPool
from schemas.errors import OutputBusy
from schemas.job import JobSpec
from schemas.shard import Shard, ShardRecord
from workers.replica import HEALTH_GROUP
from workers.shard_io import ShardInputError

log = logging.getLogger(__name__)

# How long the cluster may take to declare dead the node of a replica that stopped answering (Ray's
# health checks: 10-20 s, more on a loaded head); past it, the replica's end counts as a crash.
_NODE_VERDICT_S = 60.0
# The longest the driver sleeps between looks at its deadlines, heartbeats and waiting replicas.
_TICK_S = 1.0
# How long a replica waits for its node before the log says so, and how often it says so again.
_WAITING_NOTICE_S = 3.0
_WAITING_LOG_EVERY_S = 30.0
# A ready result is fetched at once; this only bounds a fetch from a node that vanished meanwhile.
_FETCH_TIMEOUT_S = 60.0


@dataclass
class DispatchOutcome:
    committed: dict[str, ShardRecord] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # shard id -> why
    attempts: int = 0
    replicas_replaced: int = 0  # all replacements, lost nodes included
    replica_crashes: int = 0  # those that count against retry.max_replica_restarts (not lost nodes)
    no_capacity: bool = False  # no replica could be placed within resources.capacity_timeout_s


@dataclass
class _State:
    pending: deque[Shard]
    delayed: list[tuple[float, int, Shard]] = field(default_factory=list)  # (not before, tiebreak, shard)
    attempts: Counter[str] = field(default_factory=Counter)
    placing: dict[Any, Any] = field(default_factory=dict)  # placement group ready ref -> actor
    placing_since: dict[Any, float] = field(default_factory=dict)  # placement ref -> monotonic time
    place_deadlines: dict[Any, float] = field(default_factory=dict)  # placement ref -> capacity deadline
    next_waiting_log: float = 0.0
    starting: dict[Any, Any] = field(default_factory=dict)  # ready ref -> actor
    start_deadlines: dict[Any, float] = field(default_factory=dict)  # ready ref -> monotonic deadline
    placed_on: dict[Any, str] = field(default_factory=dict)  # actor -> its node's id, once placed
    up: set[Any] = field(default_factory=set)  # replicas started (their engine ready), dead ones too
    names: dict[Any, str] = field(default_factory=dict)  # actor -> host:pid
    heartbeats: dict[Any, tuple[Any, float]] = field(default_factory=dict)  # actor -> (ref, sent at)
    last_heartbeat: dict[Any, float] = field(default_factory=dict)  # actor -> when the last one was sent
    verdicts: dict[Any, float] = field(default_factory=dict)  # unreachable actor -> when to call it a crash
    running: dict[Any, tuple[Any, Shard]] = field(default_factory=dict)  # result ref -> (actor, shard)
    idle: list[Any] = field(default_factory=list)  # one entry per free slot of a replica
    dead: set[Any] = field(default_factory=set)
    last_start_error: str = ""


def dispatch_order(shards: list[Shard]) -> list[Shard]:
    """Largest first: the long shards start early, the short ones fill the tail."""
    return sorted(shards, key=lambda shard: -shard.estimated_rows)


class Dispatcher:
    def __init__(
        self,
        job: JobSpec,
        pool: ReplicaPool,
        commit: Callable[[ShardRecord], None],
        progress: Progress | None = None,
    ) -> None:
        self.job = job
        self.pool = pool
        self.commit = commit
        self.policy = job.retry
        self.outcome = DispatchOutcome()
        self.progress = progress

    def _replicas_changed(self, state: _State) -> None:
        if self.progress is not None:
            # Up: started and not dead since.
            self.progress.replicas(len(state.up - state.dead))

    def run(self, shards: list[Shard]) -> DispatchOutcome:
        state = _State(pending=deque(dispatch_order(shards)))
        self._total = len(shards)
        while len(self.pool.actors) < self.pool.size:
            self.pool.start()
        for actor in self.pool.actors:
            self._await_placement(state, actor)
        while state.pending or state.delayed or state.running:
            self._release_due_retries(state)
            self._assign(state)
            if not state.running and not state.starting and not state.placing and not state.verdicts:
                if state.delayed:
                    time.sleep(max(0.0, state.delayed[0][0] - time.monotonic()))
                    continue
                self._fail_all(
                    state, f"no replica is left to run it (last start error: {state.last_start_error or 'none'})"
                )
                break
            # Bounded: until the next retry or deadline is due, and never longer than a tick.
            due = [state.delayed[0][0]] if state.delayed else []
            due += [*state.start_deadlines.values(), *state.place_deadlines.values()]
            timeout = min([_TICK_S, *(max(0.0, moment - time.monotonic()) for moment in due)])
            waiting = [*state.running, *state.starting, *state.placing]
            done = []
            if waiting:
                done, waiting = ray.wait(waiting, num_returns=1, timeout=timeout)
            else:  # only a lost replica's verdict is pending
                time.sleep(timeout)
            if done and waiting:  # and whatever else is already finished, before assigning again
                more, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
                done += more
            for ref in done:
                if ref in state.placing:
                    self._on_placed(state, ref)
                elif ref in state.starting:
                    self._on_started(state, ref)
                elif ref in state.running:  # not taken back from a stalled replica meanwhile
                    self._on_finished(state, ref)
            self._give_up_on_slow_starts(state)
            self._decide_verdicts(state)
            self._watch_capacity(state)
            self._watch_progress(state)
        return self.outcome

    def _await_placement(self, state: _State, actor: Any) -> None:
        """The replica's resources, reserved: at once where they are free, else once the autoscaler
        (or capacity coming back) adds a node."""
        ref = self.pool.placement_group_of(actor).ready()
        state.placing[ref] = actor
        state.placing_since[ref] = time.monotonic()
        state.place_deadlines[ref] = time.monotonic() + self.job.resources.capacity_timeout_s

    def _on_placed(self, state: _State, ref: Any) -> None:
        actor = state.placing.pop(ref)
        waited = time.monotonic() - state.placing_since.pop(ref)
        state.place_deadlines.pop(ref, None)
        # The replica runs in its group's first bundle: from now on its node is known, so a node lost
        # while the engine loads (minutes, for 70B) is told from a crash.
        state.placed_on[actor] = placement_group_table(self.pool.placement_group_of(actor))["bundles_to_node_id"][0]
        if waited >= _WAITING_NOTICE_S:
            log.info("a replica's node is there after %.0fs; starting its engine", waited)
        self._await_start(state, actor)

    def _watch_capacity(self, state: _State) -> None:
        """Says what the job waits for; past resources.capacity_timeout_s with no replica placed at
        all, ends the job (exit 7) instead of waiting for ever."""
        if not state.placing:
            return
        now = time.monotonic()
        longest = now - min(state.placing_since.values())
        if longest >= _WAITING_NOTICE_S and now >= state.next_waiting_log:
            state.next_waiting_log = now + _WAITING_LOG_EVERY_S
            log.info(
                "waiting for capacity: %d replica(s) wait for a node (%.0fs so far), %d up; each asks for %s; "
                "the cluster: %s",
                len(state.placing),
                longest,
                len(state.up - state.dead),
                self.pool.bundles(),
                describe_cluster(cluster_shape(), self.pool.device),
            )
        overdue = [ref for ref, deadline in state.place_deadlines.items() if deadline <= now]
        if not overdue:
            return
        limit = self.job.resources.capacity_timeout_s
        if state.starting or state.up - state.dead:
            for ref in overdue:
                del state.place_deadlines[ref]  # it stays asked for: capacity may still come
            log.warning(
                "%d replica(s) found no node within resources.capacity_timeout_s (%gs); going on with those "
                "placed (the rest join if capacity comes)",
                len(overdue),
                limit,
            )
            return
        reason = (
            f"no capacity: no replica was placed within resources.capacity_timeout_s ({limit:g}s); each asks for "
            f"{self.pool.bundles()}; the cluster: {describe_cluster(cluster_shape(), self.pool.device)}"
        )
        log.error("%s", reason)
        for actor in list(state.placing.values()):
            self.pool.forget(actor)
        state.placing.clear()
        state.placing_since.clear()
        state.place_deadlines.clear()
        self.outcome.no_capacity = True
        self._fail_all(state, reason)

    def _watch_progress(self, state: _State) -> None:
        """Heartbeats to every replica holding shards; one that made no progress (or did not answer)
        for resources.stall_timeout_s is replaced, and its shards run elsewhere."""
        limit = self.job.resources.stall_timeout_s
        every = min(limit / 4, 10.0)
        now = time.monotonic()
        for actor in {actor for actor, _ in state.running.values()}:
            sent = state.heartbeats.get(actor)
            if sent is None:
                if now - state.last_heartbeat.get(actor, 0.0) >= every:
                    ref = actor.heartbeat.options(concurrency_group=HEALTH_GROUP).remote()
                    state.heartbeats[actor] = (ref, now)
                    state.last_heartbeat[actor] = now
                continue
            ref, sent_at = sent
            if ray.wait([ref], timeout=0)[0]:
                del state.heartbeats[actor]
                try:
                    idle_for = ray.get(ref, timeout=_FETCH_TIMEOUT_S)
                except Exception:  # noqa: BLE001 - a dead replica is reported by its shards
                    continue
                if idle_for is not None and idle_for > limit:
                    self._take_back(state, actor, f"made no progress for {idle_for:.0f}s")
            elif now - sent_at > limit:
                del state.heartbeats[actor]
                self._take_back(state, actor, f"did not answer for {now - sent_at:.0f}s")

    def _take_back(self, state: _State, actor: Any, why: str) -> None:
        held = [(ref, shard) for ref, (owner, shard) in state.running.items() if owner is actor]
        limit = self.job.resources.stall_timeout_s
        log.warning(
            "replica %s %s (resources.stall_timeout_s %gs) holding shard(s) %s; replacing it, its shards run "
            "elsewhere%s",
            state.names.get(actor, "?"),
            why,
            limit,
            ", ".join(shard.shard_id for _, shard in held),
            self.pool.last_log_lines(actor),
        )
        for ref, _ in held:
            del state.running[ref]
        state.dead.add(actor)
        state.idle = [slot for slot in state.idle if slot != actor]
        self._replicas_changed(state)
        self._replace(state, actor, crashed=True)
        for _, shard in held:
            self._retry_or_fail(state, shard, f"replica stalled: it {why}")

    def _await_start(self, state: _State, actor: Any) -> None:
        ref = actor.ready.remote()
        state.starting[ref] = actor
        state.start_deadlines[ref] = time.monotonic() + self.job.resources.replica_start_timeout_s

    def _give_up_on_slow_starts(self, state: _State) -> None:
        now = time.monotonic()
        for ref, deadline in list(state.start_deadlines.items()):
            if deadline <= now and ref in state.starting:
                actor = state.starting.pop(ref)
                del state.start_deadlines[ref]
                limit = self.job.resources.replica_start_timeout_s
                state.last_start_error = f"not ready within resources.replica_start_timeout_s ({limit:g}s)"
                log.warning("a replica was %s; replacing it%s", state.last_start_error, self.pool.last_log_lines(actor))
                self._replace(state, actor, crashed=True)

    def _release_due_retries(self, state: _State) -> None:
        now = time.monotonic()
        while state.delayed and state.delayed[0][0] <= now:
            state.pending.append(heapq.heappop(state.delayed)[2])

    def _assign(self, state: _State) -> None:
        while state.idle and state.pending:
            in_flight = Counter(actor for actor, _ in state.running.values())
            # Every replica gets its first shard before any gets a second; a second (prefetched)
            # shard is only taken when replicas still starting could not take them all.
            index = min(range(len(state.idle)), key=lambda slot: in_flight[state.idle[slot]])
            if in_flight[state.idle[index]] and len(state.pending) <= len(state.starting):
                return
            actor, shard = state.idle.pop(index), state.pending.popleft()
            state.attempts[shard.shard_id] += 1
            self.outcome.attempts += 1
            state.running[actor.process.remote(shard, self.job)] = (actor, shard)

    def _on_started(self, state: _State, ref: Any) -> None:
        actor = state.starting.pop(ref)
        state.start_deadlines.pop(ref, None)
        try:
            name = ray.get(ref, timeout=_FETCH_TIMEOUT_S)  # ready: the answer is there
        except Exception as error:  # noqa: BLE001 - the engine could not start; reported below
            state.last_start_error = _reason(error)
            log.warning("a replica failed to start: %s", state.last_start_error)
            if isinstance(error, RayActorError):
                self._on_replica_death(state, actor, error)
            else:
                self._replace(state, actor)
            return
        state.up.add(actor)
        state.names[actor] = name
        log.info("replica %s is ready", name)
        state.idle.extend([actor] * self.pool.shards_in_flight)
        self._replicas_changed(state)

    def _on_finished(self, state: _State, ref: Any) -> None:
        actor, shard = state.running.pop(ref)
        try:
            result = ray.get(ref, timeout=_FETCH_TIMEOUT_S)
        except RayActorError as error:
            log.warning(
                "the replica running shard %s died (%s); re-queuing it%s",
                shard.shard_id,
                _reason(error),
                self.pool.last_log_lines(actor),
            )
            if actor not in state.dead:  # its other in-flight shard reports the same death
                state.dead.add(actor)
                state.heartbeats.pop(actor, None)
                self._replicas_changed(state)
                state.idle = [slot for slot in state.idle if slot != actor]
                self._on_replica_death(state, actor, error)
            self._retry_or_fail(state, shard, f"replica died: {_reason(error)}")
            return
        except Exception as error:  # noqa: BLE001 - every other failure is this shard's
            state.idle.append(actor)
            if isinstance(getattr(error, "cause", None), ShardInputError) or isinstance(error, ShardInputError):
                self.outcome.failed[shard.shard_id] = _reason(error)
            else:
                self._retry_or_fail(state, shard, _reason(error))
            return
        state.idle.append(actor)
        record = ShardRecord(**result.model_dump(), attempts=state.attempts[shard.shard_id])
        try:
            self.commit(record)
        except OutputBusy:
            raise  # another run took the output over: this one stops
        except Exception as error:  # noqa: BLE001 - storage gave up after the retry policy
            self._retry_or_fail(state, shard, f"could not commit: {_reason(error)}")
            return
        self.outcome.committed[shard.shard_id] = record
        if self.progress is not None:
            self.progress.committed(record, shard)
        log.info(
            "[%d/%d] %s: %d rows out, %d errors, %d tokens in %.1fs (%s)",
            len(self.outcome.committed),
            self._total,
            shard.shard_id,
            record.rows_out,
            record.error_rows,
            record.completion_tokens,
            record.shard_seconds,
            record.replica,
        )

    def _retry_or_fail(self, state: _State, shard: Shard, reason: str) -> None:
        attempts = state.attempts[shard.shard_id]
        if attempts >= self.policy.attempts:
            self.outcome.failed[shard.shard_id] = f"failed after {attempts} attempts: {reason}"
            if self.progress is not None:
                self.progress.failed()
            return
        not_before = time.monotonic() + backoff_seconds(self.policy, attempts)
        heapq.heappush(state.delayed, (not_before, self.outcome.attempts, shard))

    def _on_replica_death(self, state: _State, actor: Any, error: RayActorError) -> None:
        """A replica that died, starting or running: replaced without counting a crash when its node
        is gone, decided later when it is only unreachable, else replaced as a crash."""
        if getattr(error, "preempted", False) or self._node_lost(state, actor):
            self._replace_after_loss(state, actor)
        elif isinstance(error, ActorUnavailableError):
            # Unreachable rather than ended: its node may be gone without the cluster having said so
            # yet. Decided in the loop, so the other replicas' results keep flowing.
            state.verdicts[actor] = time.monotonic() + _NODE_VERDICT_S
        else:
            self._replace(state, actor, crashed=True)

    @staticmethod
    def _node_lost(state: _State, actor: Any) -> bool:
        """Whether the node the replica was placed on has left the cluster (spot loss, preemption)."""
        node = state.placed_on.get(actor)
        return node is not None and not any(entry["NodeID"] == node and entry.get("Alive") for entry in ray.nodes())

    def _replace_after_loss(self, state: _State, actor: Any) -> None:
        log.warning("its node is gone (preempted or lost): a replacement does not count as a crash")
        self._replace(state, actor, crashed=False)

    def _decide_verdicts(self, state: _State) -> None:
        """Unreachable replicas: replaced without counting a crash once their node is declared gone;
        counted as a crash if the node is still there when the cluster has had time to decide."""
        for actor, deadline in list(state.verdicts.items()):
            if self._node_lost(state, actor):
                del state.verdicts[actor]
                self._replace_after_loss(state, actor)
            elif time.monotonic() >= deadline:
                del state.verdicts[actor]
                self._replace(state, actor, crashed=True)

    def _replace(self, state: _State, actor: Any, crashed: bool = True) -> None:
        """A replica in its place. Crashes count against retry.max_replica_restarts; a lost node does
        not (spot capacity comes and goes; herd did nothing wrong)."""
        self.pool.forget(actor)
        if crashed and self.outcome.replica_crashes >= self.policy.max_replica_restarts:
            log.warning("not replacing the replica: retry.max_replica_restarts reached")
            return
        self.outcome.replicas_replaced += 1
        self.outcome.replica_crashes += int(crashed)
        self._await_placement(state, self.pool.start())

    def _fail_all(self, state: _State, reason: str) -> None:
        for shard in [*state.pending, *(item[2] for item in state.delayed)]:
            self.outcome.failed[shard.shard_id] = reason
        state.pending.clear()
        state.delayed.clear()


def _reason(error: BaseException) -> str:
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"[:500]
