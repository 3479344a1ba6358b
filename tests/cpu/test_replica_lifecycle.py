"""A replica's lifecycle on its own, without Ray: placing, starting, up, dead, and what each allows."""

from __future__ import annotations

import pytest

from jobs.replica_state import Phase, PhaseError, ReplicaState


def _placing(now: float = 100.0) -> ReplicaState:
    replica = ReplicaState(actor="actor", placement_group="group")
    replica.await_placement("placement-ready", now, capacity_timeout_s=30.0)
    return replica


def test_a_replica_goes_placing_starting_up_with_a_deadline_for_each_wait():
    replica = _placing()
    assert replica.phase == Phase.PLACING and replica.waiting_on == "placement-ready" and replica.deadline == 130.0
    assert not replica.overdue(129.9) and replica.overdue(130.0)

    waited = replica.placed("node-1", "actor-ready", 112.0, start_timeout_s=600.0)
    assert waited == 12.0
    assert replica.phase == Phase.STARTING and replica.node_id == "node-1"
    assert replica.waiting_on == "actor-ready" and replica.deadline == 712.0

    replica.started("host:42", slots=2, now=150.0)
    assert replica.phase == Phase.UP and replica.name == "host:42" and replica.free_slots == 2
    assert replica.waiting_on is None and replica.deadline is None and not replica.overdue(10**9)


def test_slots_are_taken_and_given_back_and_a_dead_replica_has_none():
    replica = _placing()
    replica.placed("node-1", "ready", 101.0, 600.0)
    replica.started("host:1", slots=2, now=102.0)
    replica.take_slot()
    replica.take_slot()
    with pytest.raises(PhaseError, match="no free slot"):
        replica.take_slot()
    replica.give_slot_back()
    assert replica.free_slots == 1
    replica.died(103.0)
    replica.give_slot_back()  # the shard it held came back after it died: nothing to give
    assert replica.phase == Phase.DEAD and replica.free_slots == 0
    with pytest.raises(PhaseError, match="dead, expected up"):
        replica.take_slot()


def test_transitions_the_lifecycle_lacks_are_refused():
    replica = _placing()
    with pytest.raises(PhaseError, match="placing, expected starting"):
        replica.started("host:1", slots=2, now=101.0)
    replica.placed("node-1", "ready", 101.0, 600.0)
    with pytest.raises(PhaseError, match="starting, expected placing"):
        replica.placed("node-2", "ready", 102.0, 600.0)
    with pytest.raises(PhaseError):
        replica.stop_waiting_for_capacity()


def test_heartbeats_go_only_to_a_replica_that_is_up_and_not_already_asked():
    replica = _placing()
    assert not replica.heartbeat_due(1000.0, every_s=5.0)  # placing: nothing to ask
    replica.placed("node-1", "ready", 101.0, 600.0)
    replica.started("host:1", slots=2, now=102.0)
    assert replica.heartbeat_due(102.0, every_s=5.0)  # never asked yet
    replica.heartbeat_sent_now("beat", 102.0)
    assert not replica.heartbeat_due(200.0, every_s=5.0)  # one in flight
    replica.heartbeat_answered()
    assert not replica.heartbeat_due(106.0, every_s=5.0) and replica.heartbeat_due(107.0, every_s=5.0)
    replica.died(108.0)
    assert not replica.heartbeat_due(1000.0, every_s=5.0)


def test_an_unreachable_replica_is_dead_at_once_and_its_verdict_is_due_later():
    replica = _placing()
    replica.placed("node-1", "ready", 101.0, 600.0)
    replica.started("host:1", slots=2, now=102.0)
    replica.lost_from_sight(110.0, verdict_s=60.0)
    assert replica.phase == Phase.DEAD and replica.free_slots == 0 and replica.verdict_due == 170.0
    replica.verdict_given()
    assert replica.verdict_due is None


def test_a_replica_past_its_capacity_deadline_stays_asked_for_without_one():
    replica = _placing()
    assert replica.overdue(131.0)
    replica.stop_waiting_for_capacity()
    assert replica.phase == Phase.PLACING and replica.waiting_on == "placement-ready" and not replica.overdue(10**9)
