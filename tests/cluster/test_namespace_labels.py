"""The namespace labels, by one list and one watch, against the test API server over
real HTTP with the real client.

The requests, statuses, outages and the watch are real; the stale bound (minutes) and
the idle stop use a fake clock that the test moves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from oomguard.k8s.client import KubeApi
from oomguard.k8s.list_watch import ListWatchSettings
from oomguard.k8s.namespace_labels import NO_LABELS, NamespaceLabels, NamespaceLabelsSettings
from tests.cluster.apiserver import NAMESPACE_NAME_LABEL, NAMESPACES, ApiServer

LOOP = ListWatchSettings(watch_timeout_s=10, backoff_initial_s=0.05, backoff_max_s=0.3)
SETTINGS = NamespaceLabelsSettings(first_list_wait_s=2.0, stale_for_s=300.0, watch=LOOP)
LOGGER = "oomguard.k8s.namespace_labels"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(0.01)


@pytest.fixture
def api(k8s_configuration: Any) -> Iterator[KubeApi]:
    client = KubeApi(k8s_configuration)
    yield client
    client.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def observed() -> list[tuple[str, float]]:
    return []


@pytest.fixture
def make_labels(
    api: KubeApi, clock: Clock, observed: list[tuple[str, float]]
) -> Iterator[Callable[..., NamespaceLabels]]:
    made: list[NamespaceLabels] = []

    def make(settings: NamespaceLabelsSettings = SETTINGS) -> NamespaceLabels:
        labels = NamespaceLabels(
            api, settings, clock=clock, observe_latency=lambda v, s: observed.append((v, s))
        )
        made.append(labels)
        return labels

    yield make
    for labels in made:
        labels.close()


@pytest.fixture
def cache(make_labels: Callable[..., NamespaceLabels]) -> NamespaceLabels:
    return make_labels()


def namespace(apiserver: ApiServer, name: str, **labels: str) -> None:
    apiserver.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    )


def verbs(apiserver: ApiServer) -> list[str]:
    return [r.verb for r in apiserver.requests(resource="namespaces")]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


def test_labels_come_from_one_list_and_changes_from_the_watch(
    apiserver: ApiServer, cache: NamespaceLabels, observed: list[tuple[str, float]]
) -> None:
    namespace(apiserver, "db", tier="critical")
    assert apiserver.requests(resource="namespaces") == []  # nobody asked yet: no request
    assert cache("db") == {"tier": "critical", NAMESPACE_NAME_LABEL: "db"}
    wait_until(lambda: apiserver.active_watches() == 1)
    namespace(apiserver, "db", tier="batch")
    wait_until(lambda: cache("db")["tier"] == "batch")  # the watch brought it: no GET
    namespace(apiserver, "shop", trusted="true")  # created later: the watch brings it too
    wait_until(lambda: cache("shop").get("trusted") == "true")
    assert verbs(apiserver) == ["list", "watch"]
    (watch,) = apiserver.requests("watch", "namespaces")
    assert watch.params["allowWatchBookmarks"] == "true"
    assert int(watch.params["resourceVersion"]) > 0  # from the list's version
    assert [verb for verb, _ in observed] == ["list"]
    assert cache.counters.relists == 1


def test_unknown_and_deleted_namespaces_have_no_labels(
    apiserver: ApiServer, cache: NamespaceLabels
) -> None:
    namespace(apiserver, "db", tier="critical")
    assert cache("nowhere") is NO_LABELS  # unknown, told apart from "no labels"
    assert cache("db")["tier"] == "critical"
    apiserver.delete(NAMESPACES, None, "db")
    wait_until(lambda: cache("db") is NO_LABELS)
    assert verbs(apiserver) == ["list", "watch"]


def test_410_relists_at_once(apiserver: ApiServer, cache: NamespaceLabels) -> None:
    namespace(apiserver, "db", tier="critical")
    assert cache("db")["tier"] == "critical"
    wait_until(lambda: apiserver.active_watches() == 1)
    apiserver.expire_watches()  # in-stream ERROR 410 on the open watch
    wait_until(lambda: cache.counters.relists == 2)
    namespace(apiserver, "db", tier="batch")
    wait_until(lambda: cache("db")["tier"] == "batch")
    assert verbs(apiserver) == ["list", "watch", "list", "watch"]
    assert apiserver.requests("list", "namespaces")[1].params["resourceVersion"] == ""
    assert cache.counters.errors == 0  # a 410 is routine


def test_an_outage_keeps_the_last_labels_for_a_bound_then_none(
    apiserver: ApiServer, cache: NamespaceLabels, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    namespace(apiserver, "db", trusted="true")
    assert cache("db")["trusted"] == "true"
    caplog.set_level(logging.INFO, LOGGER)
    apiserver.begin_outage()  # connections refused
    wait_until(lambda: cache.counters.errors >= 2)  # the watch is broken, tried again
    clock.now += 299  # within stale_for_s of the watch breaking: the last labels stay
    assert cache("db")["trusted"] == "true"
    clock.now += 1
    assert cache("db") is NO_LABELS  # past the bound: fail safe
    assert cache("db") is NO_LABELS
    said = warnings(caplog)
    assert len(said) == 2, said  # once per cause, not per retry or per call
    assert "Connection refused" in said[0] and "300 s" in said[0]
    assert "count as none" in said[1]

    apiserver.end_outage()
    wait_until(lambda: cache("db") is not NO_LABELS)
    assert cache("db")["trusted"] == "true"
    assert "namespace labels can be read again" in caplog.text
    assert cache.counters.relists == 1  # resumed from its version: no list
    assert [v for v in verbs(apiserver) if v != "watch"] == ["list"]


def test_forbidden_means_no_labels_said_once_until_granted(
    apiserver: ApiServer, cache: NamespaceLabels, caplog: pytest.LogCaptureFixture
) -> None:
    namespace(apiserver, "db", trusted="true")
    apiserver.allow({("list", "pods"), ("watch", "pods"), ("get", "namespaces")})
    caplog.set_level(logging.INFO, LOGGER)
    assert cache("db") is NO_LABELS
    wait_until(lambda: cache.counters.errors >= 3)
    assert cache("db") is NO_LABELS
    (warning,) = warnings(caplog)
    assert "403" in warning and "`list` and `watch` on `namespaces`" in warning
    assert "named in the policy still work" in warning
    assert apiserver.requests("get", "namespaces") == []

    apiserver.allow(None)  # the ClusterRole is fixed: labels as soon as it is
    wait_until(lambda: cache("db") is not NO_LABELS)
    assert cache("db")["trusted"] == "true"
    assert "namespace labels can be read again" in caplog.text
    assert len(warnings(caplog)) == 1


def test_a_grant_taken_away_drops_the_labels(
    apiserver: ApiServer, cache: NamespaceLabels, caplog: pytest.LogCaptureFixture
) -> None:
    namespace(apiserver, "db", trusted="true")
    assert cache("db")["trusted"] == "true"
    wait_until(lambda: apiserver.active_watches() == 1)
    apiserver.allow({("list", "pods"), ("watch", "pods")})
    apiserver.drop_streams()  # the watch reconnects, and is refused
    wait_until(lambda: cache("db") is NO_LABELS)
    assert any("403" in w for w in warnings(caplog))
    apiserver.allow(None)
    wait_until(lambda: cache("db") is not NO_LABELS)
    assert verbs(apiserver).count("list") == 2  # dropped: a full list brings them back


def test_the_first_call_waits_for_the_list_but_not_long(
    apiserver: ApiServer, make_labels: Callable[..., NamespaceLabels]
) -> None:
    namespace(apiserver, "db", trusted="true")
    apiserver.slow_down(3.0, verb="list", resource="namespaces")
    settings = NamespaceLabelsSettings(first_list_wait_s=0.2, watch=LOOP)
    cache = make_labels(settings)
    assert cache("db") is NO_LABELS  # the list was not in within the bound: none yet
    assert not cache.counters.relists
    wait_until(lambda: cache("db") is not NO_LABELS)  # the same list, once it came
    wait_until(lambda: apiserver.active_watches() == 1)
    assert verbs(apiserver) == ["list", "watch"]  # one list: the wait did not ask again


def test_steady_state_costs_one_list_and_a_watch_per_timeout(
    apiserver: ApiServer, make_labels: Callable[..., NamespaceLabels]
) -> None:
    """The bill of a node in steady state: one list, then one watch request per
    server-side timeout, however many pods and namespaces are asked about how often.
    (A 1 s timeout stands for the 300 s one: a simulated 300 s minutes.)"""
    for i in range(50):
        namespace(apiserver, f"ns-{i}", team=str(i % 5))
    fast = ListWatchSettings(watch_timeout_s=1, backoff_initial_s=0.05, backoff_max_s=0.3)
    cache = make_labels(NamespaceLabelsSettings(watch=fast))
    started = time.monotonic()
    calls = 0
    while cache.counters.watch_restarts < 5:  # five watch timeouts: "five periods"
        for i in range(50):
            assert cache(f"ns-{i}")["team"] == str(i % 5)
            calls += 1
        time.sleep(0.05)
    namespace(apiserver, "ns-0", team="moved")
    wait_until(lambda: cache("ns-0")["team"] == "moved")
    elapsed = time.monotonic() - started
    requests = apiserver.requests(resource="namespaces")
    assert [r.verb for r in requests].count("list") == 1
    watches = [r for r in requests if r.verb == "watch"]
    assert all(r.verb in ("list", "watch") for r in requests)
    # Each watch resumed from a version the last one reached (bookmarks), not from 0.
    versions = [int(r.params["resourceVersion"]) for r in watches]
    assert versions == sorted(versions) and versions[0] > 0
    # No more than one watch per timeout (plus the first), whatever the calls.
    assert calls >= 250
    assert len(watches) <= elapsed / fast.watch_timeout_s + 2


def test_retry_after_on_the_list_is_obeyed(
    apiserver: ApiServer, cache: NamespaceLabels, caplog: pytest.LogCaptureFixture
) -> None:
    namespace(apiserver, "db", trusted="true")
    apiserver.throttle_next(1, 1, verb="list", resource="namespaces")
    cache("db")  # starts the watch; its first list is throttled
    wait_until(lambda: cache("db") is not NO_LABELS)
    first, second = apiserver.requests("list", "namespaces")
    assert first.faulted == 429 and second.faulted is None
    assert second.at - first.at >= 1.0  # not before the server said
    assert "429" in warnings(caplog)[0]


def test_lazy_start_idle_stop_and_close(
    apiserver: ApiServer, cache: NamespaceLabels, clock: Clock
) -> None:
    namespace(apiserver, "db", trusted="true")
    idle = NamespaceLabelsSettings(
        idle_stop_s=600,
        watch=ListWatchSettings(watch_timeout_s=1, backoff_initial_s=0.05, backoff_max_s=0.3),
    )
    cache.close()  # the fixture's: unused, never started
    labels = NamespaceLabels(KubeApi(apiserver.client_configuration()), idle, clock=clock)
    try:
        assert apiserver.requests(resource="namespaces") == []
        assert labels("db")["trusted"] == "true"
        clock.now += 601  # nobody asked for ten minutes (the policy lost its selector)
        wait_until(lambda: not labels.watching)  # ended at its next round
        wait_until(lambda: apiserver.active_watches() == 0)
        before = len(apiserver.requests(resource="namespaces"))
        time.sleep(1.5)  # longer than a watch timeout: nothing asked meanwhile
        assert len(apiserver.requests(resource="namespaces")) == before
        assert labels("db")["trusted"] == "true"  # asked again: listed again
        assert verbs(apiserver).count("list") == 2
    finally:
        labels.close()
    assert not labels.watching
    wait_until(lambda: apiserver.active_watches() == 0)
    assert labels("db") is NO_LABELS  # closed: answers none, starts nothing
    assert verbs(apiserver).count("list") == 2


def test_closing_the_client_ends_the_watch(apiserver: ApiServer) -> None:
    """The agent's shutdown closes its KubeApi last: a namespace watch nobody closed
    ends with it, promptly, and asks for nothing more."""
    namespace(apiserver, "db", trusted="true")
    api = KubeApi(apiserver.client_configuration())
    labels = NamespaceLabels(api, SETTINGS)
    assert labels("db")["trusted"] == "true"
    wait_until(lambda: apiserver.active_watches() == 1)
    api.close()
    wait_until(lambda: not labels.watching)
    wait_until(lambda: apiserver.active_watches() == 0)
    assert labels("db") is NO_LABELS
    assert verbs(apiserver) == ["list", "watch"]


def test_beyond_the_bound_the_namespaces_asked_for_are_kept(
    apiserver: ApiServer,
    make_labels: Callable[..., NamespaceLabels],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in ("a", "b", "c", "d"):
        namespace(apiserver, name, x=name)
    fast = ListWatchSettings(watch_timeout_s=1, backoff_initial_s=0.05, backoff_max_s=0.3)
    cache = make_labels(NamespaceLabelsSettings(max_namespaces=2, watch=fast))
    assert cache("d")["x"] == "d"  # asked first: kept before the others ("a" with it)
    assert cache("c") is NO_LABELS  # no room left when listed
    # Asked for but left out: the next list (when the watch ends) keeps it first.
    wait_until(lambda: cache("c") is not NO_LABELS)
    assert cache("d")["x"] == "d" and cache("c")["x"] == "c"
    said = [w for w in warnings(caplog) if "more than 2 namespaces" in w]
    assert len(said) == 1


def test_malformed_namespaces_are_skipped(
    apiserver: ApiServer, cache: NamespaceLabels, caplog: pytest.LogCaptureFixture
) -> None:
    namespace(apiserver, "db", trusted="true")
    odd = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "odd", "labels": []}}
    apiserver.apply(odd, stamp=False)
    long = {"metadata": {"name": "long", "labels": {"k": "v" * 64}}}
    apiserver.apply(long, rtype=NAMESPACES, stamp=False)
    assert cache("db")["trusted"] == "true"
    assert cache("odd") is NO_LABELS and cache("long") is NO_LABELS
    assert cache.malformed == 2
    namespace(apiserver, "odd", fixed="yes")  # a good version of it later
    wait_until(lambda: cache("odd").get("fixed") == "yes")
