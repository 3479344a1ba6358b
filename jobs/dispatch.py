"""Hands shards out to replicas as they free up, retries failures, replaces dead replicas.

Dynamic dispatch, largest shards first: a fast replica simply takes more shards, and the small
ones fill the tail; a node keeps to the file it has copied while that file's shards wait
(jobs/pending_shards.py). A shard whose replica died goes back to the queue for another replica; it is
recorded only when a replica returns its result, so it is never counted twice.

The dispatcher keeps the shard queue, the retries and the commits; each replica's lifecycle (placing,
starting, up, dead, with its deadlines and heartbeats) is its ReplicaState (jobs/replica_state.py),
owned by the pool. A replica goes through three waits, each bounded: for its node (its placement
group placed; an autoscaler may be adding the node: resources.capacity_timeout_s), for its engine
(ready: resources.replica_start_timeout_s), and, while it holds shards, for progress (heartbeats:
resources.stall_timeout_s).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from common.retry import backoff_seconds
from jobs.capacity import cluster_shape, describe_cluster
from jobs.pending_shards import PendingShards
from jobs.progress import Progress
from jobs.replica_state import NODE_LEFT, Phase, ReplicaState
from jobs.replicas import ReplicaPool, last_log_lines
from schemas.errors import OutputBusy, StorageUnavailable
from schemas.job import JobSpec
from schemas.shard import AnyShard, ShardPack, ShardRecord, ShardResult, member_ids, planned_count
from workers.replica import HEALTH_GROUP, EngineDied
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
    # The planned shards this run committed (a pack's members), by id: their records are in the
    # manifest (a million of them would not fit here as objects).
    committed: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # planned shard id -> why
    attempts: int = 0
    replicas_replaced: int = 0  # all replacements, lost nodes included
    replica_crashes: int = 0  # those that count against retry.max_replica_restarts (not lost nodes)
    no_capacity: bool = False  # no replica could be placed within resources.capacity_timeout_s


@dataclass
class _Queue:
    """The shards: waiting, waiting for a retry's backoff, and running (by result ref)."""

    pending: PendingShards
    delayed: list[tuple[float, int, AnyShard]] = field(default_factory=list)  # (not before, tiebreak, shard)
    attempts: Counter[str] = field(default_factory=Counter)
    # result ref -> (replica, the shards of that call: one, or a group of small ones run together)
    running: dict[Any, tuple[ReplicaState, list[AnyShard]]] = field(default_factory=dict)
    next_waiting_log: float = 0.0
    last_start_error: str = ""

    def held_by(self, replica: ReplicaState) -> list[tuple[Any, list[AnyShard]]]:
        return [(ref, shards) for ref, (owner, shards) in self.running.items() if owner is replica]


def dispatch_order(shards: list[AnyShard]) -> list[AnyShard]:
    """Largest first: the long shards start early, the short ones fill the tail."""
    return sorted(shards, key=lambda shard: -shard.estimated_rows)


class Dispatcher:
    def __init__(
        self,
        job: JobSpec,
        pool: ReplicaPool,
        commit: Callable[[list[ShardRecord]], list[Exception | None]],
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """`commit`: commits the records of shards that finished together, each's error or None (a
        ManifestWriter's commit_all); what it raises (OutputBusy, StorageUnavailable) stops the run.
        `stop`: once set, no shard is handed out any more; those running finish and commit, the
        others fail as stopped (a later run resumes them)."""
        self.stop = stop
        self.job = job
        self.pool = pool
        self.commit = commit
        self.policy = job.retry
        self.outcome = DispatchOutcome()
        self.progress = progress
        self._replica_came_up = False

    def _in(self, *phases: Phase) -> list[ReplicaState]:
        return [replica for replica in self.pool.replicas if replica.phase in phases]

    def _replicas_changed(self) -> None:
        if self.progress is None:
            return
        self.progress.replicas(len(self._in(Phase.UP)))
        # Optional: a caller's own progress object (herd.run(progress=...)) may predate it.
        waiting = getattr(self.progress, "replicas_waiting", None)
        if waiting is not None:
            waiting(starting=len(self._in(Phase.STARTING)), placing=len(self._in(Phase.PLACING)))

    def run(self, shards: list[AnyShard]) -> DispatchOutcome:
        queue = _Queue(pending=PendingShards(dispatch_order(shards)))
        # The job goes with every shard: put in the object store once, it is not pickled again for
        # each call (~0.15 ms of the driver's CPU a shard, of ~2-5; `python -m bench driver`).
        self._job_in_store = ray.put(self.job)
        self._total = planned_count(shards)
        self.pool.start_missing()
        for replica in self.pool.replicas:
            if replica.phase == Phase.PLACING and replica.waiting_on is None:
                self._await_placement(replica)
        self._replica_came_up = bool(self._in(Phase.UP))
        # Replicas still up from an earlier job on this pool take shards at once.
        for replica in self._in(Phase.UP):
            replica.free_slots = self.pool.shards_in_flight
        self._replicas_changed()
        while queue.pending or queue.delayed or queue.running:
            if self.stop is not None and self.stop.is_set() and (queue.pending or queue.delayed):
                self._fail_all(queue, "not run: the run was asked to stop")
            self._release_due_retries(queue)
            self._assign(queue)
            waiting_for = {replica.waiting_on: replica for replica in self.pool.replicas if replica.waiting_on}
            verdicts = [replica for replica in self.pool.replicas if replica.verdict_due is not None]
            if not queue.running and not waiting_for and not verdicts:
                if queue.delayed:
                    time.sleep(max(0.0, queue.delayed[0][0] - time.monotonic()))
                    continue
                reason = f"no replica is left to run it (last start error: {queue.last_start_error or 'none'})"
                self._fail_all(queue, reason)
                break
            # Bounded: until the next retry or deadline is due, and never longer than a tick.
            due = [queue.delayed[0][0]] if queue.delayed else []
            due += [replica.deadline for replica in self.pool.replicas if replica.deadline is not None]
            timeout = min([_TICK_S, *(max(0.0, moment - time.monotonic()) for moment in due)])
            waiting = [*queue.running, *waiting_for]
            done = []
            if waiting:
                done, waiting = ray.wait(waiting, num_returns=1, timeout=timeout)
            else:  # only a lost replica's verdict is pending
                time.sleep(timeout)
            if done and waiting:  # and whatever else is already finished, before assigning again
                more, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
                done += more
            finished: list[tuple[AnyShard, ShardResult]] = []
            for ref in done:
                replica = waiting_for.get(ref)
                if replica is not None and replica.waiting_on is ref:
                    if replica.phase == Phase.PLACING:
                        self._on_placed(replica)
                    else:
                        self._on_started(queue, replica)
                elif ref in queue.running:  # not taken back from a stalled replica meanwhile
                    finished += self._on_finished(queue, ref)
            if finished:
                self._commit(queue, finished)
            self._give_up_on_slow_starts(queue)
            self._decide_verdicts(queue)
            self._watch_capacity(queue)
            self._watch_progress(queue)
        return self.outcome

    def _await_placement(self, replica: ReplicaState) -> None:
        """The replica's resources, reserved: at once where they are free, else once the autoscaler
        (or capacity coming back) adds a node."""
        ready = replica.placement_group.ready()
        replica.await_placement(ready, time.monotonic(), self.job.resources.capacity_timeout_s)
        self._replicas_changed()

    def _on_placed(self, replica: ReplicaState) -> None:
        waited = replica.placed(
            self.pool.node_of(replica),
            replica.actor.ready.remote(),
            time.monotonic(),
            self.job.resources.replica_start_timeout_s,
        )
        self._replicas_changed()
        if waited >= _WAITING_NOTICE_S:
            log.info("a replica's node is there after %.0fs; starting its engine", waited)

    def _watch_capacity(self, queue: _Queue) -> None:
        """Says what the job waits for; past resources.capacity_timeout_s with no replica placed at
        all, ends the job (exit 7) instead of waiting for ever."""
        placing = self._in(Phase.PLACING)
        if not placing:
            return
        now = time.monotonic()
        longest = now - min(replica.since for replica in placing)
        if longest >= _WAITING_NOTICE_S and now >= queue.next_waiting_log:
            queue.next_waiting_log = now + _WAITING_LOG_EVERY_S
            log.info(
                "waiting for capacity: %d replica(s) wait for a node (%.0fs so far), %d up; each asks for %s; "
                "the cluster: %s",
                len(placing),
                longest,
                len(self._in(Phase.UP)),
                self.pool.bundles(),
                describe_cluster(cluster_shape(), self.pool.device),
            )
        overdue = [replica for replica in placing if replica.overdue(now)]
        if not overdue:
            return
        limit = self.job.resources.capacity_timeout_s
        if self._in(Phase.STARTING, Phase.UP):
            for replica in overdue:
                replica.stop_waiting_for_capacity()  # it stays asked for: capacity may still come
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
        for replica in placing:
            replica.died(now)
            self.pool.forget(replica)
        self.outcome.no_capacity = True
        self._fail_all(queue, reason)

    def _watch_progress(self, queue: _Queue) -> None:
        """Heartbeats to every replica holding shards; one that made no progress (or did not answer)
        for resources.stall_timeout_s is replaced, and its shards run elsewhere."""
        limit = self.job.resources.stall_timeout_s
        every = min(limit / 4, 10.0)
        now = time.monotonic()
        for replica in {replica for replica, _ in queue.running.values()}:
            if replica.heartbeat is None:
                if replica.heartbeat_due(now, every):
                    ref = replica.actor.heartbeat.options(concurrency_group=HEALTH_GROUP).remote()
                    replica.heartbeat_sent_now(ref, now)
                continue
            if ray.wait([replica.heartbeat], timeout=0)[0]:
                ref = replica.heartbeat
                replica.heartbeat_answered()
                try:
                    idle_for = ray.get(ref, timeout=_FETCH_TIMEOUT_S)
                except Exception:  # noqa: BLE001 - a dead replica is reported by its shards
                    continue
                if idle_for is not None and idle_for > limit:
                    self._take_back_stalled(queue, replica, f"made no progress for {idle_for:.0f}s")
            elif now - replica.heartbeat_sent > limit:
                replica.heartbeat_answered()
                self._take_back_stalled(queue, replica, f"did not answer for {now - replica.heartbeat_sent:.0f}s")

    def _take_back_stalled(self, queue: _Queue, replica: ReplicaState, why: str) -> None:
        why = f"{why} (resources.stall_timeout_s {self.job.resources.stall_timeout_s:g}s)"
        self._take_back(queue, replica, why, f"replica stalled: it {why}")

    def _take_back(
        self, queue: _Queue, replica: ReplicaState, why: str, shard_reason: str, answered: Sequence[AnyShard] = ()
    ) -> None:
        """Replaces a replica that cannot go on (stalled, its engine dead), its shards in flight run
        elsewhere, each using one of its attempts. `answered`: the shards of the call that told, which
        its caller retries."""
        held = queue.held_by(replica)
        holding = [*answered, *(shard for _, shards in held for shard in shards)]
        log.warning(
            "replica %s %s holding shard(s) %s; replacing it, its shards run elsewhere%s",
            replica.name,
            why,
            ", ".join(shard.shard_id for shard in holding),
            last_log_lines(replica),
        )
        for ref, _ in held:
            del queue.running[ref]
        replica.died(time.monotonic())
        self._replicas_changed()
        self._replace(replica, crashed=True)
        for _, shards in held:
            for shard in shards:
                self._retry_or_fail(queue, shard, shard_reason)

    def _give_up_on_slow_starts(self, queue: _Queue) -> None:
        now = time.monotonic()
        for replica in self._in(Phase.STARTING):
            if replica.overdue(now):
                limit = self.job.resources.replica_start_timeout_s
                queue.last_start_error = f"not ready within resources.replica_start_timeout_s ({limit:g}s)"
                log.warning("a replica was %s; replacing it%s", queue.last_start_error, last_log_lines(replica))
                replica.died(now)
                self._replace(replica, crashed=True)

    def _release_due_retries(self, queue: _Queue) -> None:
        now = time.monotonic()
        while queue.delayed and queue.delayed[0][0] <= now:
            queue.pending.append(heapq.heappop(queue.delayed)[2])

    def _assign(self, queue: _Queue) -> None:
        while queue.pending:
            free = [replica for replica in self._in(Phase.UP) if replica.free_slots > 0]
            if not free:
                return
            # Every replica gets its first shard before any gets a second; a second (prefetched)
            # shard is only taken when replicas still starting could not take them all.
            replica = min(free, key=lambda candidate: self.pool.shards_in_flight - candidate.free_slots)
            if replica.free_slots < self.pool.shards_in_flight and len(queue.pending) <= len(self._in(Phase.STARTING)):
                return
            group = queue.pending.take_group(
                replica.node_id or "", self.job.input.rows_per_shard, self.job.input.bytes_per_shard
            )
            replica.take_slot()
            for shard in group:
                queue.attempts[shard.shard_id] += 1
                self.outcome.attempts += 1
            if len(group) == 1:
                ref = replica.actor.process.remote(group[0], self._job_in_store)
            else:
                ref = replica.actor.process_group.remote(group, self._job_in_store)
            queue.running[ref] = (replica, group)

    def _on_started(self, queue: _Queue, replica: ReplicaState) -> None:
        try:
            name = ray.get(replica.waiting_on, timeout=_FETCH_TIMEOUT_S)  # ready: the answer is there
        except Exception as error:  # noqa: BLE001 - the engine could not start; reported below
            reason = _reason(error)
            # The same error twice before any replica came up: a broken checkpoint, a missing
            # library, a setting the engine refuses. Replacing the replica again would only
            # repeat it, for minutes each time with a large model.
            repeated = reason == queue.last_start_error and not self._replica_came_up
            queue.last_start_error = reason
            where = f" (its log: {replica.log_file})" if replica.log_file else ""
            log.warning("a replica failed to start: %s%s", reason, where)
            replica.died(time.monotonic())
            if repeated and not isinstance(error, ActorUnavailableError) and not self._node_lost(replica):
                log.warning("not replacing it: the second start in a row to fail this way, and none came up")
                self.pool.forget(replica)
            elif isinstance(error, RayActorError):
                self._on_replica_death(queue, replica, error)
            else:
                self._replace(replica)
            self._replicas_changed()
            return
        self._replica_came_up = True
        replica.started(name, self.pool.shards_in_flight, time.monotonic())
        log.info("replica %s is ready", name)
        self._replicas_changed()

    def _on_finished(self, queue: _Queue, ref: Any) -> list[tuple[AnyShard, ShardResult]]:
        """The call's shards that succeeded, to commit; the others are retried or failed here."""
        replica, group = queue.running.pop(ref)
        try:
            result = ray.get(ref, timeout=_FETCH_TIMEOUT_S)
        except RayActorError as error:
            log.warning(
                "the replica running shard(s) %s died (%s); re-queuing them%s",
                ", ".join(shard.shard_id for shard in group),
                _reason(error),
                last_log_lines(replica),
            )
            if replica.phase != Phase.DEAD:  # its other in-flight shard reports the same death
                replica.died(time.monotonic())
                self._replicas_changed()
                self._on_replica_death(queue, replica, error)
            for shard in group:
                self._retry_or_fail(queue, shard, f"replica died: {_reason(error)}")
            return []
        except Exception as error:  # noqa: BLE001 - every other failure is the call's shards'
            outcomes = [error] * len(group)
        else:
            outcomes = result if len(group) > 1 else [result]  # process_group answers a list
        replica.give_slot_back()
        causes = [_cause(outcome) for outcome in outcomes]
        engine_died = next((cause for cause in causes if isinstance(cause, EngineDied)), None)
        if engine_died is not None:
            died = f"replica's engine died: {engine_died}"  # the same in every answer of one replica
            if replica.phase != Phase.DEAD:  # its other calls say the same
                self._take_back(queue, replica, f"lost its engine: {engine_died}", died, answered=group)
        succeeded = []
        for shard, outcome, cause in zip(group, outcomes, causes, strict=True):
            if isinstance(cause, EngineDied):
                self._retry_or_fail(queue, shard, died)
            elif isinstance(outcome, BaseException):
                self._on_shard_failed(queue, shard, outcome)
            else:
                succeeded.append((shard, outcome))  # finished before the engine died: committed
        return succeeded

    def _on_shard_failed(self, queue: _Queue, shard: AnyShard, error: BaseException) -> None:
        cause = _cause(error)
        if isinstance(cause, StorageUnavailable):
            # Storage, not the shard: past retry.storage_deadline_s the run ends (exit 6); the
            # shard keeps its attempts for the run that resumes it.
            raise StorageUnavailable(f"shard {shard.shard_id}: {cause}") from None
        if _unpackable(shard):
            self._unpack(queue, shard, _reason(error))
        elif isinstance(cause, ShardInputError):
            self._failed(shard, _reason(error))
        else:
            self._retry_or_fail(queue, shard, _reason(error))

    def _commit(self, queue: _Queue, finished: list[tuple[AnyShard, ShardResult]]) -> None:
        """Commits shards that finished together, their records written at once."""
        records = [
            ShardRecord(**result.model_dump(), attempts=queue.attempts[shard.shard_id]) for shard, result in finished
        ]
        # Raised (OutputBusy: another run took the output over; StorageUnavailable) or returned, either stops it.
        errors = self.commit(records)
        for (shard, _), record, error in zip(finished, records, errors, strict=True):
            if isinstance(error, (OutputBusy, StorageUnavailable)):
                raise error
            if error is not None:  # storage gave up after the retry policy
                # Kept as a pack: storage failed, not the pack (its shards would fail the same way), and
                # its record may have landed all the same, beside which its members' own would be rows twice.
                self._retry_or_fail(queue, shard, f"could not commit: {_reason(error)}", may_unpack=False)
            else:
                self._committed(shard, record)

    def _committed(self, shard: AnyShard, record: ShardRecord) -> None:
        self.outcome.committed.update(member_ids(shard))
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

    def _retry_or_fail(self, queue: _Queue, shard: AnyShard, reason: str, may_unpack: bool = True) -> None:
        attempts = queue.attempts[shard.shard_id]
        if attempts >= self.policy.attempts:
            if may_unpack and _unpackable(shard):
                self._unpack(queue, shard, f"{attempts} attempts: {reason}")
                return
            self._failed(shard, f"failed after {attempts} attempts: {reason}")
            if self.progress is not None:
                self.progress.failed()
            return
        not_before = time.monotonic() + backoff_seconds(self.policy, attempts)
        heapq.heappush(queue.delayed, (not_before, self.outcome.attempts, shard))

    def _unpack(self, queue: _Queue, pack: ShardPack, reason: str) -> None:
        """A pack that failed of itself (a shard's error: one unreadable file, kept columns whose types
        differ between its files), or whose attempts ran out (a row that crashes the engine each time),
        runs again as its shards, each on its own with its own attempts: a bad file or row then fails
        only its own shard, as it would have unpacked. (Not a pack running its error rows again: its
        record is the pack's, so it is retried and failed as a pack, as a shard is.)"""
        log.warning("%s, run as a pack, failed (%s); they run again one by one", pack.file_label, reason)
        for member in pack.members:
            queue.pending.append(member)

    def _failed(self, shard: AnyShard, reason: str) -> None:
        for shard_id in member_ids(shard):
            self.outcome.failed[shard_id] = reason

    def _on_replica_death(self, queue: _Queue, replica: ReplicaState, error: RayActorError) -> None:
        """A replica that died, starting or running: replaced without counting a crash when its node
        is gone, decided later when it is only unreachable, else replaced as a crash."""
        if getattr(error, "preempted", False) or self._node_lost(replica):
            self._replace_after_loss(queue, replica)
        elif isinstance(error, ActorUnavailableError):
            # Unreachable rather than ended: its node may be gone without the cluster having said so
            # yet. Decided in the loop, so the other replicas' results keep flowing.
            replica.lost_from_sight(time.monotonic(), _NODE_VERDICT_S)
        else:
            self._replace(replica, crashed=True)

    @staticmethod
    def _node_lost(replica: ReplicaState) -> bool:
        """Whether the node the replica was placed on has left the cluster (spot loss, preemption)."""
        node = replica.node_id
        if node == NODE_LEFT:
            return True
        return node is not None and not any(entry["NodeID"] == node and entry.get("Alive") for entry in ray.nodes())

    def _replace_after_loss(self, queue: _Queue, replica: ReplicaState) -> None:
        log.warning("its node is gone (preempted or lost): a replacement does not count as a crash")
        if replica.node_id not in (None, NODE_LEFT):
            queue.pending.node_gone(replica.node_id)  # its copy went with it
        self._replace(replica, crashed=False)

    def _decide_verdicts(self, queue: _Queue) -> None:
        """Unreachable replicas: replaced without counting a crash once their node is declared gone;
        counted as a crash if the node is still there when the cluster has had time to decide."""
        for replica in [replica for replica in self.pool.replicas if replica.verdict_due is not None]:
            if self._node_lost(replica):
                replica.verdict_given()
                self._replace_after_loss(queue, replica)
            elif time.monotonic() >= replica.verdict_due:
                replica.verdict_given()
                self._replace(replica, crashed=True)

    def _replace(self, replica: ReplicaState, crashed: bool = True) -> None:
        """A replica in its place. Crashes count against retry.max_replica_restarts; a lost node does
        not (spot capacity comes and goes; herd did nothing wrong)."""
        self.pool.forget(replica)
        if crashed and self.outcome.replica_crashes >= self.policy.max_replica_restarts:
            log.warning("not replacing the replica: retry.max_replica_restarts reached")
            return
        self.outcome.replicas_replaced += 1
        self.outcome.replica_crashes += int(crashed)
        self._await_placement(self.pool.start())

    def _fail_all(self, queue: _Queue, reason: str) -> None:
        for shard in [*queue.pending, *(item[2] for item in queue.delayed)]:
            self._failed(shard, reason)
        queue.pending.clear()
        queue.delayed.clear()


def _cause(outcome: Any) -> Any:
    """What a replica raised, unwrapped from Ray's RayTaskError (which carries it as `cause`)."""
    cause = getattr(outcome, "cause", None)
    return cause if isinstance(cause, BaseException) else outcome


def _unpackable(shard: AnyShard) -> TypeGuard[ShardPack]:
    """A pack not running its error rows again: Dispatcher._unpack says why that one is not."""
    return isinstance(shard, ShardPack) and shard.retry is None


def _reason(error: BaseException) -> str:
    """One line: an unreadable input's whole message (it names the file, and the reader's own error
    may take several lines), else the last line of the error's (a traceback's ends with the error)."""
    error = _cause(error)
    text = str(error).strip().splitlines()
    if isinstance(error, ShardInputError):
        return f"{type(error).__name__}: {' '.join(line.strip() for line in text)}"[:500]
    return f"{type(error).__name__}: {text[-1] if text else ''}"[:500]
