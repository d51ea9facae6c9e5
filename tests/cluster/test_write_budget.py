"""The write budget over real HTTP: each Event updated at most once per interval with
its create at once, every write within the agent's token bucket, and nothing lost to
either (merged, counted, persisted, delivered later, also across a restart)."""

from __future__ import annotations

import itertools
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from oomguard.k8s import KubeApi
from oomguard.k8s.event_queue import (
    EventQueue,
    EventQueueSettings,
    EventSender,
    EventSenderSettings,
)
from oomguard.k8s.events import REASON_IMMINENT
from oomguard.k8s.policy_events import PolicyEvents
from oomguard.k8s.write_budget import WriteBudget
from tests.cluster.apiserver import EVENTS, ApiServer
from tests.cluster.test_event_delivery import BASE_TIME, FAST, NODE, drive, kill, target
from tests.unit.test_warn_events import make_warning
from tests.unit.test_write_budget import Clock

INTERVAL_S = 0.5


def sender_for(
    server: ApiServer,
    state: Path | None,
    *,
    interval_s: float = INTERVAL_S,
    budget: WriteBudget | None = None,
) -> EventSender:
    return EventSender(
        KubeApi(server.client_configuration()),
        EventQueue(state, EventQueueSettings()),
        NODE,
        boot_id="boot-1",
        settings=EventSenderSettings(
            backoff_initial_s=FAST.backoff_initial_s,
            backoff_max_s=FAST.backoff_max_s,
            backoff_jitter_s=FAST.backoff_jitter_s,
            event_update_interval_s=interval_s,
        ),
        budget=budget,
    )


def counts(server: ApiServer) -> dict[str, int]:
    return {e["involvedObject"]["name"]: e["count"] for e in server.objects(EVENTS)}


def writes(server: ApiServer) -> list[Any]:
    return [r for r in server.requests() if r.resource == "events"]


def test_a_burst_into_one_container_is_one_create_then_updates_an_interval_apart(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    sender = sender_for(apiserver, tmp_path / "state")
    # The first kill is in the API at once: the interval holds back updates only.
    assert sender.submit(kill(1), target())
    assert sender.deliver_once() == 1
    assert counts(apiserver) == {"web-1": 1}
    # Then a kill every 10 ms for 2 s, the sender asked after each, as the agent does.
    seq, started = 1, time.monotonic()
    while time.monotonic() - started < 2.0:
        seq += 1
        assert sender.submit(kill(seq), target())
        sender.deliver_once()
        time.sleep(0.01)
    drive(sender, lambda: sender.queue.pending_kills() == 0)
    assert counts(apiserver) == {"web-1": seq}  # every kill counted, none twice

    calls = writes(apiserver)
    assert [r.verb for r in calls] == ["create"] + ["patch"] * (len(calls) - 1)
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    assert gaps and min(gaps) >= INTERVAL_S  # no update sooner than the interval
    # ~200 kills, one update per interval at most: 2 s / 0.5 s and the last one.
    assert len(calls) - 1 <= 2.0 / INTERVAL_S + 2
    assert sender.counters.sent == seq and sender.counters.created == 1


def test_another_containers_first_kill_is_not_held_back_by_the_interval(
    apiserver: ApiServer,
) -> None:
    sender = sender_for(apiserver, None, interval_s=3600)
    sender.submit(kill(1, 1), target(1))
    sender.deliver_once()
    sender.submit(kill(2, 1), target(1))  # waits an hour for its update
    sender.submit(kill(3, 2), target(2))  # a new Event: created now
    assert sender.deliver_once() == 1
    assert counts(apiserver) == {"web-1": 1, "web-2": 1}
    assert sender.queue.pending_kills() == 1
    assert 3590 < sender.seconds_until_due() <= 3600
    # Stopping: what waits for its interval goes now (the agent's shutdown flush).
    assert sender.deliver_once(final=True) == 1
    assert counts(apiserver) == {"web-1": 2, "web-2": 1}


def test_a_spent_budget_delays_and_never_loses_even_across_a_restart(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    """A budget of one write (refilled only after an hour): the first create goes, the
    other Events wait, kills keep merging into them; the agent is then killed (no
    flush) and its successor, with a budget again, delivers every kill exactly once."""
    state = tmp_path / "state"
    first = sender_for(apiserver, state, budget=WriteBudget(qps=1 / 3600, burst=1))
    for seq in range(1, 4):
        first.submit(kill(seq, seq), target(seq))
    assert first.deliver_once() == 1
    assert counts(apiserver) == {"web-1": 1}
    for seq in range(4, 40):  # a storm meanwhile, into all three
        first.submit(kill(seq, seq % 3 + 1), target(seq % 3 + 1))
        assert first.deliver_once() == 0
    assert len(writes(apiserver)) == 1  # the budget held
    assert first.counters.throttled > 0
    assert first.seconds_until_due() > 3000  # told to wait for the token, not spin
    assert first.queue.pending_kills() == 38 and len(first.queue) == 3  # merged
    del first  # kill -9: what waits is on disk already

    second = sender_for(apiserver, state)  # a fresh budget (25 at once)
    assert second.queue.pending_kills() == 38
    assert second.deliver_once() == 38
    expected = {f"web-{c}": sum(1 for s in range(1, 40) if (s if s < 4 else s % 3 + 1) == c)
                for c in (1, 2, 3)}  # fmt: skip
    assert counts(apiserver) == expected and sum(expected.values()) == 39
    creates = [r for r in writes(apiserver) if r.verb == "create"]
    assert len(creates) == 3  # one per Event, none doubled by the restart
    assert len(writes(apiserver)) == 4  # 1 create, then 2 creates and 1 patch


def test_warnings_take_the_same_path_and_budget(apiserver: ApiServer) -> None:
    budget = WriteBudget(qps=1 / 3600, burst=2)
    sender = sender_for(apiserver, None, budget=budget)
    warning = make_warning(time=BASE_TIME)
    pod = target(1)
    assert sender.submit_warning(warning, pod)
    assert sender.deliver_once() == 1  # its first occurrence at once
    for i in range(1, 6):  # later episodes merge into the next update
        assert sender.submit_warning(make_warning(time=BASE_TIME + timedelta(seconds=i)), pod)
    sender.submit(kill(1, 2), target(2))  # a kill's create spends the last token
    assert sender.deliver_once() == 1
    time.sleep(INTERVAL_S)
    assert sender.deliver_once() == 0  # due, but no token left
    assert sender.counters.throttled == 1
    [imminent] = [e for e in apiserver.objects(EVENTS) if e["reason"] == REASON_IMMINENT]
    assert imminent["count"] == 1
    assert sender.queue.pending_kills() == 5


def test_policy_events_wait_for_the_shared_budget_then_go(apiserver: ApiServer) -> None:
    clock = Clock()
    budget = WriteBudget(qps=1, burst=1, clock=clock)
    sender = sender_for(apiserver, None, budget=budget)
    policy = PolicyEvents(
        KubeApi(apiserver.client_configuration()),
        lambda: sender.builder,
        Path("/etc/oomguard/policy.yaml"),
        budget=budget,
    )
    sender.submit(kill(1), target())
    assert sender.deliver_once() == 1  # the only token
    policy.policy_checked("line 3: not a mapping", "the last good policy")
    assert policy.waiting == 1 and len(writes(apiserver)) == 1
    clock.now += 1.0  # a token again
    policy.policy_checked("line 3: not a mapping", "the last good policy")  # said once
    assert policy.waiting == 0
    [node_event] = apiserver.objects(EVENTS, "default")
    assert node_event["reason"] == "OOMGuardPolicyInvalid" and node_event["count"] == 1
    assert len(writes(apiserver)) == 2
