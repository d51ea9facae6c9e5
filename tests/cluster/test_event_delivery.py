"""OOM Events delivered to the test API server over real HTTP with the real client:
placement, aggregation, outages, refusals, restarts, corrupt state and storms."""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from oomguard.k8s import KubeApi, PodCache, PodCacheSettings
from oomguard.k8s.attribution import Target, TargetKind, attribute
from oomguard.k8s.event_queue import (
    STATE_FILE,
    EventQueue,
    EventQueueSettings,
    EventSender,
    EventSenderSettings,
)
from oomguard.k8s.events import DELIVERY_ANNOTATION, REASON_LIMIT, EventBuilder, window_start
from oomguard.records import Constraint, OomKill
from tests.cluster.apiserver import EVENTS, ApiServer
from tests.unit.test_events import make_kill

NODE = "node-1"
NS = "shop"
# No update interval: each round writes every Event with kills waiting (the interval
# and the write budget have tests of their own below).
FAST = EventSenderSettings(
    backoff_initial_s=0.05, backoff_max_s=0.3, backoff_jitter_s=0.05, event_update_interval_s=0
)


def cid(n: int) -> str:
    return f"{n:064x}"


# Early in one 600 s window, fixed for the whole run: a test's kills never straddle two
# windows however long it takes.
BASE_TIME = window_start(datetime.now(UTC), 600) + timedelta(seconds=1)


def kill(seq: int, container: int = 1, **fields: Any) -> OomKill:
    fields.setdefault("time", BASE_TIME + timedelta(milliseconds=seq))
    return make_kill(container_id=cid(container), kmsg_seq=seq, **fields)


def target(container: int = 1) -> Target:
    return Target(
        kind=TargetKind.POD,
        namespace=NS,
        name=f"web-{container}",
        uid=f"uid-{container}",
        container="app",
        field_path="spec.containers{app}",
    )


def events(server: ApiServer) -> list[dict[str, Any]]:
    return server.objects(EVENTS)


def drive(sender: EventSender, done: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not delivered in time: {sender.counters}")
        sender.deliver_once()
        time.sleep(max(0.005, min(0.05, sender.seconds_until_due())))


def make_sender(server: ApiServer, state_dir: Path | None, **queue_settings: Any) -> EventSender:
    queue = EventQueue(state_dir, EventQueueSettings(**queue_settings))
    return EventSender(
        KubeApi(server.client_configuration()), queue, NODE, boot_id="boot-1", settings=FAST
    )


@pytest.fixture
def sender(apiserver: ApiServer, tmp_path: Path) -> EventSender:
    return make_sender(apiserver, tmp_path / "state")


# -- placement --------------------------------------------------------------------------


def pod(name: str, uid: str, containers: dict[str, str], init: dict[str, str]) -> dict[str, Any]:
    def statuses(items: dict[str, str]) -> list[dict[str, Any]]:
        return [
            {"name": c, "containerID": f"containerd://{i}", "state": {"running": {}}}
            for c, i in items.items()
        ]

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": uid},
        "spec": {
            "nodeName": NODE,
            "initContainers": [{"name": c, "image": "busybox"} for c in init],
            "containers": [{"name": c, "image": "busybox"} for c in containers],
        },
        "status": {
            "phase": "Running",
            "containerStatuses": statuses(containers),
            "initContainerStatuses": statuses(init),
        },
    }


@pytest.fixture
def cache(apiserver: ApiServer) -> Iterator[PodCache]:
    apiserver.apply(pod("web-0", "uid-web-0", {"app": cid(1)}, {"proxy": cid(2)}))
    cache = PodCache(KubeApi(apiserver.client_configuration()), NODE, PodCacheSettings())
    cache.start()
    try:
        assert cache.synced.wait(5)
        yield cache
    finally:
        cache.stop()


@pytest.mark.parametrize(
    ("container", "field_path", "constraint", "reason"),
    [
        (1, "spec.containers{app}", Constraint.CONTAINER, "OOMKilled"),
        (2, "spec.initContainers{proxy}", Constraint.NODE_ALLOCATABLE, "OOMKilledNodePressure"),
    ],
)
def test_event_on_the_right_pod_and_container(
    apiserver: ApiServer,
    cache: PodCache,
    sender: EventSender,
    container: int,
    field_path: str,
    constraint: Constraint,
    reason: str,
) -> None:
    k = kill(1, container, constraint=constraint)
    assert cache.wait_for_container(cid(container), 5) is not None
    assert sender.submit(k, attribute(k, cache))
    assert sender.deliver_once() == 1
    [event] = events(apiserver)
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "web-0",
        "namespace": NS,
        "uid": "uid-web-0",
        "fieldPath": field_path,
    }
    assert event["reason"] == reason and event["type"] == "Warning"
    assert event["count"] == 1 and event["reportingInstance"] == NODE
    assert 'Killed process "python3" (pid 4242' in event["message"]
    assert sender.counters.sent == 1 and sender.counters.created == 1
    assert len(sender.latencies_s) == 1


def test_node_event_when_nothing_matches(apiserver: ApiServer, sender: EventSender) -> None:
    k = make_kill(constraint=Constraint.SYSTEM, container_id=None, pod_uid=None, kmsg_seq=9)
    sender.submit(k, Target.node())
    sender.deliver_once()
    [event] = apiserver.objects(EVENTS, "default")
    assert event["involvedObject"]["kind"] == "Node"
    assert event["involvedObject"]["name"] == NODE
    assert event["reason"] == "OOMKilledNodePressure"


# -- aggregation ------------------------------------------------------------------------


def test_repeats_aggregate_into_one_event(apiserver: ApiServer, sender: EventSender) -> None:
    for seq in range(1, 4):
        assert sender.submit(kill(seq), target())
        sender.deliver_once()
    for seq in range(4, 8):  # several pending at once: one patch for all of them
        sender.submit(kill(seq), target())
    sender.deliver_once()
    [event] = events(apiserver)
    assert event["count"] == 7
    assert len(apiserver.requests("create", "events")) == 1
    assert len(apiserver.requests("patch", "events")) == 3
    # The same kill offered again (kmsg replay) is not counted again.
    assert not sender.submit(kill(5), target())
    assert sender.deliver_once() == 0
    assert events(apiserver)[0]["count"] == 7


def test_event_deleted_meanwhile_is_created_again(
    apiserver: ApiServer, sender: EventSender
) -> None:
    sender.submit(kill(1), target())
    sender.deliver_once()
    [event] = events(apiserver)
    apiserver.delete(EVENTS, NS, event["metadata"]["name"])
    sender.submit(kill(2), target())
    assert sender.deliver_once() == 1
    [event] = events(apiserver)
    assert event["count"] == 2


# -- outages and refusals ---------------------------------------------------------------


@pytest.mark.parametrize("refuse", [True, False], ids=["refused", "503"])
def test_outage_every_event_delivered_once(
    apiserver: ApiServer, sender: EventSender, refuse: bool
) -> None:
    submitted: collections.Counter[str] = collections.Counter()
    sender.submit(kill(1, 1), target(1))
    submitted["web-1"] += 1
    sender.deliver_once()
    apiserver.outage(1.5, refuse=refuse)
    started = time.monotonic()
    seq = 2
    while time.monotonic() - started < 1.2:  # kills keep coming during the outage
        sender.submit(kill(seq, seq % 3), target(seq % 3))
        submitted[f"web-{seq % 3}"] += 1
        sender.deliver_once()
        seq += 1
        time.sleep(0.02)
    assert sender.counters.retried > 0
    drive(sender, lambda: len(sender.queue) == 0)
    counts = {e["involvedObject"]["name"]: e["count"] for e in events(apiserver)}
    assert counts == dict(submitted)
    assert sum(counts.values()) == seq - 1 == sender.counters.sent
    # One create per Event: nothing was created twice.
    creates = apiserver.requests("create", "events")
    assert len(creates) == len(counts)


def test_transient_5xx_is_retried(apiserver: ApiServer, sender: EventSender) -> None:
    apiserver.fail_next(2, 500, verb="create", resource="events")
    sender.submit(kill(1), target())
    drive(sender, lambda: len(sender.queue) == 0)
    assert sender.counters.retried == 2
    assert [e["count"] for e in events(apiserver)] == [1]


def test_a_429_with_retry_after_waits_as_told_and_loses_nothing(
    apiserver: ApiServer, sender: EventSender
) -> None:
    """API Priority and Fairness drops the create (429, Retry-After: 1): the sender's
    own backoff (a tenth of a second here) gives way to the server's word."""
    apiserver.throttle_next(1, 1, verb="create", resource="events")
    sender.submit(kill(1), target())
    assert sender.deliver_once() == 0
    assert sender.seconds_until_due() > FAST.backoff_max_s  # the server's wait, not ours
    sender.submit(kill(2), target())  # another kill meanwhile: merged, not lost
    drive(sender, lambda: len(sender.queue) == 0)
    first, second = apiserver.requests("create", "events")
    assert first.faulted == 429 and second.faulted is None
    assert second.at - first.at >= 1.0  # not before the server said
    assert [e["count"] for e in events(apiserver)] == [2]
    assert sender.counters.retried == 1 and sender.counters.sent == 2


def test_a_patch_throttled_for_long_waits_at_most_a_minute(
    apiserver: ApiServer, sender: EventSender
) -> None:
    """A Retry-After of an hour (not APF: it asks 32 s at most) is capped at 60 s."""
    sender.submit(kill(1), target())
    assert sender.deliver_once() == 1
    apiserver.fail_next(1, 503, verb="patch", resource="events", retry_after_s=3600)
    sender.submit(kill(2), target())
    assert sender.deliver_once() == 0
    assert 50 < sender.seconds_until_due() <= 60
    assert sender.counters.retried == 1 and "Retry-After 60.0 s" in (
        sender.counters.last_error or ""
    )


def test_forbidden_is_a_clear_failure_not_a_crash(
    apiserver: ApiServer, sender: EventSender, caplog: pytest.LogCaptureFixture
) -> None:
    apiserver.allow({("patch", "events")})
    sender.submit(kill(1), target())
    sender.submit(kill(2, 2), target(2))
    with caplog.at_level(logging.ERROR):
        assert sender.deliver_once() == 0
    assert sender.counters.failed == 2 and sender.counters.retried == 0
    assert len(sender.queue) == 0  # dropped, not retried forever
    assert "forbidden" in caplog.text and "not retrying" in caplog.text
    assert "web-1" in caplog.text
    apiserver.allow(None)
    sender.submit(kill(3), target())
    assert sender.deliver_once() == 1


# -- restarts ---------------------------------------------------------------------------


def test_restart_delivers_the_undelivered_and_resends_nothing(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = make_sender(apiserver, state)
    for seq in range(1, 4):
        first.submit(kill(seq), target())
    first.deliver_once()
    for seq in range(4, 6):  # accepted, then the agent is killed before sending
        first.submit(kill(seq), target())
    first.submit(kill(6, 2), target(2))
    del first  # kill -9: nothing flushed beyond what each step wrote

    second = make_sender(apiserver, state)
    assert second.queue.pending_kills() == 3
    assert second.deliver_once() == 3
    counts = {e["involvedObject"]["name"]: e["count"] for e in events(apiserver)}
    assert counts == {"web-1": 5, "web-2": 1}
    # kmsg replayed after the restart: every kill is known, nothing is sent.
    for seq in range(1, 6):
        assert not second.submit(kill(seq), target())
    assert not second.submit(kill(6, 2), target(2))
    before = len(apiserver.requests())
    assert second.deliver_once() == 0
    assert len(apiserver.requests()) == before

    third = make_sender(apiserver, state)  # a clean restart after all was delivered
    assert third.deliver_once() == 0 and len(apiserver.requests()) == before


@pytest.mark.parametrize("already_created", [False, True], ids=["create", "patch"])
def test_crash_after_send_before_recording_does_not_double(
    apiserver: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, already_created: bool
) -> None:
    state = tmp_path / "state"
    first = make_sender(apiserver, state)
    if already_created:
        first.submit(kill(1), target())
        first.deliver_once()
    first.submit(kill(2), target())
    first.submit(kill(3), target())
    # The API takes the batch, then the agent dies before writing that down.
    apiserver.allow({("create", "events"), ("patch", "events")})
    monkeypatch.setattr(first.queue, "complete", lambda *a, **k: None)
    first.deliver_once()
    expected = 3 if already_created else 2
    assert events(apiserver)[0]["count"] == expected
    monkeypatch.undo()

    second = make_sender(apiserver, state)
    assert second.queue.pending_kills() == 2
    second.submit(kill(4), target())  # a new kill meanwhile waits for its own batch
    drive(second, lambda: len(second.queue) == 0)
    [event] = events(apiserver)
    assert event["count"] == expected + 1
    assert event["metadata"]["annotations"][DELIVERY_ANNOTATION]


def test_lost_state_adds_to_the_existing_event(apiserver: ApiServer, tmp_path: Path) -> None:
    apiserver.allow({("create", "events"), ("patch", "events")})  # the least RBAC
    first = make_sender(apiserver, tmp_path / "a")
    first.submit(kill(1), target())
    first.deliver_once()
    other = make_sender(apiserver, tmp_path / "b")  # state dir wiped: knows nothing
    other.submit(kill(2), target())
    assert other.deliver_once() == 1
    assert [e["count"] for e in events(apiserver)] == [2]


# -- state files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"format": "someone-else/v9", "pending": []}', b"[]", b"\x00\xff" * 10],
    ids=["garbage", "foreign", "wrong-type", "binary"],
)
def test_corrupt_state_is_set_aside(
    apiserver: ApiServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    content: bytes,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_bytes(content)
    with caplog.at_level(logging.ERROR):
        sender = make_sender(apiserver, state)
    aside = list(state.glob(f"{STATE_FILE}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content
    assert "moved it aside" in caplog.text and aside[0].name in caplog.text
    assert sender.queue.counters.state_files_set_aside == 1
    sender.submit(kill(1), target())
    assert sender.deliver_once() == 1
    saved = json.loads((state / STATE_FILE).read_text())
    assert saved["format"] == "oomguard/event-queue/v1" and saved["pending"] == []


def test_state_writes_are_atomic(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path)
    queue.offer("k1", EventBuilder(NODE).occurrence(kill(1), target()))
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temp file left
    assert (tmp_path / STATE_FILE).stat().st_mode & 0o777 == 0o600


# -- storms and bounds ------------------------------------------------------------------


def test_storm_is_bounded_and_aggregated(apiserver: ApiServer, tmp_path: Path) -> None:
    sender = make_sender(apiserver, tmp_path / "state", max_pending=100)
    biggest = 0
    for seq in range(1000):
        sender.submit(kill(seq + 1, seq % 10), target(seq % 10))
        biggest = max(biggest, len(sender.queue))
        if seq % 250 == 249:
            sender.deliver_once()
    drive(sender, lambda: len(sender.queue) == 0)
    stored = events(apiserver)
    assert len(stored) == 10
    assert sum(e["count"] for e in stored) == 1000
    assert all(e["count"] == 100 and e["reason"] == REASON_LIMIT for e in stored)
    # Kills waiting for the same Event merge as they come: one entry per Event, never
    # near the bound, nothing dropped.
    assert biggest <= 10
    assert sender.queue.counters.dropped == 0
    assert sum(sender.queue.delivered_counts().values()) == 1000
    assert sender.counters.sent == 1000
    assert (tmp_path / "state" / STATE_FILE).stat().st_size < 64 * 1024


def test_full_queue_drops_the_oldest_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    queue = EventQueue(None, EventQueueSettings(max_pending=5))
    builder = EventBuilder(NODE)
    with caplog.at_level(logging.WARNING):
        for c in range(8):  # 8 different Events: nothing to merge
            queue.offer(f"k{c}", builder.occurrence(kill(c, c), target(c)))
    assert len(queue) == 5 and queue.counters.dropped == 3
    assert "dropped" in caplog.text
    names = {b.involved_object["name"] for b in queue.take_batches()}
    assert names == {f"web-{c}" for c in range(3, 8)}  # the oldest went
