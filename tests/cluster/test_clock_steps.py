"""The wall clock stepped under a running agent (NTP after a bad RTC, a VM restored):
Events stay exact.

The detector stamps a record from the wall clock at the time it makes it (`time` is
now minus the delay since the kernel's line, measured on CLOCK_MONOTONIC), so a kill
after a step carries the stepped time, as every other log on the node does. What must
not follow the step is the bookkeeping: a kill is known by its kill id (kernel sequence
number or counter value), never by its time, so a replay after a step is recognised;
retries run on CLOCK_MONOTONIC; an Event window the queue has forgotten and meets
again on the server (409) adds its count instead of overwriting it. The queue's wall
clock is injected here, as the kernel's cannot be stepped in a test.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

from oomguard.k8s import KubeApi
from oomguard.k8s.event_queue import EventQueue, EventQueueSettings, EventSender
from oomguard.k8s.events import timestamp
from oomguard.records import OomKill
from tests.cluster.apiserver import EVENTS, ApiServer
from tests.cluster.test_event_delivery import BASE_TIME, FAST, NODE, drive, kill, target


class SteppedClock:
    """A wall clock an admin (or NTP) can step."""

    def __init__(self) -> None:
        self.now = BASE_TIME

    def __call__(self) -> Any:
        return self.now

    def step(self, delta: timedelta) -> None:
        self.now += delta


def _sender(server: ApiServer, state: Path, clock: SteppedClock) -> EventSender:
    queue = EventQueue(state, EventQueueSettings(), clock=clock)
    return EventSender(
        KubeApi(server.client_configuration()), queue, NODE, boot_id="boot-1", settings=FAST
    )


def _stamped(seq: int, clock: SteppedClock) -> OomKill:
    """A record made now, by the stepped clock."""
    return kill(seq, time=clock.now)


def _counts(server: ApiServer) -> int:
    return sum(int(e["count"]) for e in server.objects(EVENTS))


def test_steps_back_and_forward_neither_lose_nor_double_a_kill(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    clock = SteppedClock()
    sender = _sender(apiserver, tmp_path / "state", clock)
    sent: list[OomKill] = []

    def one(seq: int) -> None:
        k = _stamped(seq, clock)
        assert sender.submit(k, target())
        sent.append(k)
        drive(sender, lambda: _counts(apiserver) == len(sent))
        clock.step(timedelta(seconds=1))

    one(1)
    one(2)
    clock.step(timedelta(hours=-1))  # NTP steps the clock back an hour
    one(3)
    one(4)
    clock.step(timedelta(days=1))  # and forward a day
    one(5)
    # The kills read again after the steps (a kernel log replay, a restart) are the
    # same kill ids: none is counted twice, whatever the clock says now.
    for k in sent:
        assert not sender.submit(dataclasses.replace(k, time=clock.now), target())
    restarted = _sender(apiserver, tmp_path / "state", clock)
    for k in sent:
        assert not restarted.submit(k, target())
    assert restarted.deliver_once() == 0
    assert _counts(apiserver) == 5
    # Each Event says when its kills happened, as the records said (the node's clock).
    by_first = sorted(apiserver.objects(EVENTS), key=lambda e: e["firstTimestamp"])
    assert [(e["firstTimestamp"], e["lastTimestamp"], e["count"]) for e in by_first] == [
        (timestamp(sent[2].time), timestamp(sent[3].time), 2),
        (timestamp(sent[0].time), timestamp(sent[1].time), 2),
        (timestamp(sent[4].time), timestamp(sent[4].time), 1),
    ]


def test_a_forgotten_window_met_again_after_a_step_back_adds_its_count(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    """Stepped back into a window whose Event the queue has forgotten (its window ended
    long ago by the clock of the time), the create meets the Event on the server: the
    counts add up, the first kill's time stays."""
    clock = SteppedClock()
    sender = _sender(apiserver, tmp_path / "state", clock)
    assert sender.submit(_stamped(1, clock), target())
    drive(sender, lambda: _counts(apiserver) == 1)
    first = clock.now
    clock.step(timedelta(hours=2))  # time passes: the Event is forgotten locally
    assert sender.submit(_stamped(2, clock), target())
    drive(sender, lambda: _counts(apiserver) == 2)
    clock.now = first + timedelta(seconds=30)  # stepped back into the first window
    assert sender.submit(_stamped(3, clock), target())
    drive(sender, lambda: _counts(apiserver) == 3)
    events = sorted(apiserver.objects(EVENTS), key=lambda e: e["firstTimestamp"])
    assert [e["count"] for e in events] == [2, 1]
    assert events[0]["firstTimestamp"] == timestamp(first)
    assert events[0]["lastTimestamp"] == timestamp(first + timedelta(seconds=30))
