"""The write budget's pure parts on a clock the test moves: the token bucket, the
per-Event update schedule, and the queue merging kills that wait for the same Event."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from oomguard.k8s.event_queue import EventQueue
from oomguard.k8s.events import EventBuilder
from oomguard.k8s.write_budget import UpdateSchedule, WriteBudget
from tests.cluster.test_event_delivery import NODE, kill, target


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the token bucket -------------------------------------------------------------------


def test_a_fresh_bucket_gives_its_burst_then_paces_at_qps() -> None:
    clock = Clock()
    budget = WriteBudget(qps=5, burst=3, clock=clock)
    assert [budget.try_take() for _ in range(4)] == [True, True, True, False]
    assert budget.seconds_until_available() == pytest.approx(0.2)
    clock.now += 0.1
    assert not budget.try_take()  # half a token is no token
    clock.now += 0.1
    assert budget.try_take() and not budget.try_take()
    assert (budget.taken, budget.refused) == (4, 3)


def test_a_long_pause_refills_no_more_than_the_burst() -> None:
    clock = Clock()
    budget = WriteBudget(qps=5, burst=3, clock=clock)
    for _ in range(3):
        budget.try_take()
    clock.now += 3600
    assert budget.available() == 3
    assert sum(budget.try_take() for _ in range(10)) == 3


def test_writes_over_any_stretch_stay_within_burst_plus_qps_times_its_length() -> None:
    clock = Clock()
    budget = WriteBudget(qps=5, burst=10, clock=clock)
    taken_at: list[float] = []
    for _ in range(20_000):  # a writer trying every 7 ms for 140 s
        if budget.try_take():
            taken_at.append(clock.now)
        clock.now += 0.007
    for i, start in enumerate(taken_at):
        for length in (1.0, 10.0, 60.0):
            inside = sum(1 for t in taken_at[i:] if t < start + length)
            assert inside <= 10 + 5 * length
    assert len(taken_at) == pytest.approx(10 + 5 * 140, abs=2)  # and it does use it


def test_reserve_borrows_ahead_and_says_how_long_to_wait() -> None:
    clock = Clock()
    budget = WriteBudget(qps=4, burst=1, clock=clock)
    assert budget.reserve() == 0.0
    assert budget.reserve() == pytest.approx(0.25)
    assert budget.reserve() == pytest.approx(0.5)
    assert not budget.try_take()  # what was borrowed is paid back first
    clock.now += 0.5  # the borrowed ones' turns (0.25, 0.5)
    assert not budget.try_take()
    clock.now += 0.25  # the next write's turn, as if none was borrowed
    assert budget.try_take() and not budget.try_take()


def test_a_clock_going_back_refills_nothing() -> None:
    clock = Clock()
    budget = WriteBudget(qps=1, burst=1, clock=clock)
    assert budget.try_take()
    clock.now -= 100
    assert not budget.try_take()
    clock.now += 100.5
    assert not budget.try_take()  # half a second after the last take
    clock.now += 0.5
    assert budget.try_take()


def test_threads_sharing_a_bucket_take_no_more_than_it_holds() -> None:
    budget = WriteBudget(qps=1e-9, burst=500, clock=Clock())
    taken: list[int] = []

    def writer() -> None:
        taken.append(sum(budget.try_take() for _ in range(200)))

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(taken) == 500 == budget.taken


@pytest.mark.parametrize(
    ("qps", "burst", "message"),
    [
        (0.0, 1, "api qps must be a positive number"),
        (-1.0, 1, "api qps must be a positive number"),
        (float("nan"), 1, "api qps must be a positive number"),
        (float("inf"), 1, "api qps must be a positive number"),
        (1.0, 0, "api burst must be at least 1"),
    ],
)
def test_a_budget_that_cannot_pace_is_refused(qps: float, burst: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WriteBudget(qps=qps, burst=burst)


# -- the update schedule ----------------------------------------------------------------


def test_a_create_is_never_held_back_an_update_waits_its_interval() -> None:
    schedule = UpdateSchedule(10.0)
    assert schedule.wait_s("ns/a", created=False, now=0.0) == 0.0
    schedule.wrote("ns/a", 0.5)
    assert schedule.wait_s("ns/a", created=True, now=1.0) == pytest.approx(9.5)
    assert schedule.wait_s("ns/a", created=True, now=10.5) == 0.0
    # Deleted on the server meanwhile (404): created again at once.
    assert schedule.wait_s("ns/a", created=False, now=1.0) == 0.0
    # Another Event is not held back by this one.
    assert schedule.wait_s("ns/b", created=True, now=1.0) == 0.0


def test_the_schedule_forgets_events_past_their_interval() -> None:
    schedule = UpdateSchedule(10.0)
    for i in range(2000):
        schedule.wrote(f"ns/e{i}", float(i))
    assert len(schedule) <= 1025  # what it holds stays bounded in a long storm
    assert schedule.wait_s("ns/e1999", created=True, now=2000.0) == pytest.approx(9.0)
    schedule.forget_before(3000.0)
    assert len(schedule) == 0


def test_interval_zero_writes_every_round() -> None:
    schedule = UpdateSchedule(0.0)
    schedule.wrote("ns/a", 5.0)
    assert schedule.wait_s("ns/a", created=True, now=5.0) == 0.0
    with pytest.raises(ValueError, match="update interval"):
        UpdateSchedule(-1.0)


# -- merging in the queue ---------------------------------------------------------------


def test_kills_waiting_for_one_event_merge_with_an_exact_count(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path)
    builder = EventBuilder(NODE)
    for seq in range(1, 501):
        k = kill(seq, pid=10_000 + seq)
        assert queue.offer(f"k{seq}", builder.occurrence(k, target()))
    queue.offer("other", builder.occurrence(kill(999, 2), target(2)))
    assert len(queue) == 2 and queue.pending_kills() == 501  # one entry per Event
    assert queue.offer_many((f"k{s}", builder.occurrence(kill(s), target())) for s in (1, 2)) == 0
    (web1, created), (web2, _) = queue.pending_events()
    assert not created
    [batch] = queue.take_batches(frozenset({web1}))
    assert batch.count == 500 and batch.involved_object["name"] == "web-1"
    assert batch.first == kill(1).time and batch.last == kill(500).time
    assert "pid 10500" in batch.message  # the newest kill's
    # The other Event was left out: its kills stay unassigned, so new ones still merge.
    queue.offer("other-2", builder.occurrence(kill(1000, 2), target(2)))
    assert len(queue) == 2 and queue.pending_kills() == 502
    # Kills arriving while a batch is in flight wait for the next one, merged together.
    queue.offer("k501", builder.occurrence(kill(501), target()))
    queue.offer("k502", builder.occurrence(kill(502), target()))
    assert len(queue) == 3 and queue.pending_kills() == 504
    again = EventQueue(tmp_path)  # all of it is on disk as it waits
    assert again.pending_kills() == 504 and len(again) == 3
    [resent] = again.take_batches(frozenset({web1}))
    assert resent.id == batch.id and resent.count == 500  # the batch in flight, as it was
    queue.complete(batch, event_count=500, first=batch.first, last=batch.last)
    [next_batch] = queue.take_batches(frozenset({web1}))
    assert next_batch.count == 2 and next_batch.delivered_count == 500
    assert web2 in dict(queue.pending_events())
