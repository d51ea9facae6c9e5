"""The namespace-label cache against the test API server over real HTTP.

Time is a fake clock (the TTL and the bounds are minutes); the requests, statuses and
outages are real.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from oomguard.k8s.client import KubeApi
from oomguard.k8s.namespace_labels import NamespaceLabels, NamespaceLabelsSettings
from tests.cluster.apiserver import NAMESPACE_NAME_LABEL, ApiServer

SETTINGS = NamespaceLabelsSettings(
    ttl_s=60.0, stale_for_s=300.0, request_timeout_s=2.0, retry_after_error_s=10.0
)
LOGGER = "oomguard.k8s.namespace_labels"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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
def cache(api: KubeApi, clock: Clock, observed: list[tuple[str, float]]) -> NamespaceLabels:
    return NamespaceLabels(
        api, SETTINGS, clock=clock, observe_latency=lambda verb, s: observed.append((verb, s))
    )


def namespace(apiserver: ApiServer, name: str, **labels: str) -> None:
    apiserver.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    )


def reads(apiserver: ApiServer) -> list[str | None]:
    return [r.name for r in apiserver.requests("get", "namespaces")]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


def test_labels_are_read_once_per_ttl(
    apiserver: ApiServer,
    cache: NamespaceLabels,
    clock: Clock,
    observed: list[tuple[str, float]],
) -> None:
    namespace(apiserver, "db", tier="critical")
    assert cache("db") == {"tier": "critical", NAMESPACE_NAME_LABEL: "db"}
    namespace(apiserver, "db", tier="batch")
    clock.now += 59
    assert cache("db")["tier"] == "critical"  # within the TTL: no request
    assert reads(apiserver) == ["db"]
    clock.now += 2
    assert cache("db")["tier"] == "batch"  # a label change shows within a minute
    assert reads(apiserver) == ["db", "db"]
    assert [verb for verb, _ in observed] == ["get", "get"]
    assert (cache.requests, cache.failures) == (2, 0)


def test_forbidden_means_no_labels_with_one_warning_until_granted(
    apiserver: ApiServer,
    cache: NamespaceLabels,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    namespace(apiserver, "db", trusted="true")
    namespace(apiserver, "shop", trusted="true")
    apiserver.allow({("list", "pods"), ("watch", "pods")})
    caplog.set_level(logging.INFO, LOGGER)
    assert cache("db") == {}
    assert cache("shop") == {}  # RBAC is not per namespace: each is asked once
    clock.now += 30
    assert cache("db") == {} and cache("shop") == {}  # the answer is kept like labels
    assert reads(apiserver) == ["db", "shop"]
    (warning,) = warnings(caplog)
    assert "403" in warning and "`get` on `namespaces`" in warning
    assert "named in the policy still work" in warning

    apiserver.allow(None)  # the ClusterRole is fixed: labels within a minute
    clock.now += 31
    assert cache("db")["trusted"] == "true"
    assert "namespace labels can be read again" in caplog.text
    assert len(warnings(caplog)) == 1


def test_a_missing_namespace_has_no_labels(
    apiserver: ApiServer,
    cache: NamespaceLabels,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    assert cache("gone") == {}
    assert cache("gone") == {}
    assert reads(apiserver) == ["gone"]
    clock.now += 61
    assert cache("gone") == {}
    assert reads(apiserver) == ["gone", "gone"]
    (warning,) = warnings(caplog)
    assert "namespace gone not found" in warning
    namespace(apiserver, "db", a="b")
    assert cache("db")["a"] == "b"
    assert "read again" not in caplog.text  # a 404 is an answer, not a failure


def test_transient_errors_keep_the_last_labels_for_a_bound_then_none(
    apiserver: ApiServer,
    cache: NamespaceLabels,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    namespace(apiserver, "db", trusted="true")
    namespace(apiserver, "shop", trusted="true")
    assert cache("db")["trusted"] == "true"
    caplog.set_level(logging.INFO, LOGGER)
    apiserver.fail_next(1000, 503, verb="get", resource="namespaces")

    clock.now += 61  # expired, and the API answers 503: the last labels stay
    assert cache("db")["trusted"] == "true"
    assert cache("shop") == {}  # never read: none (and retried after the pause)
    assert reads(apiserver) == ["db", "db"]  # after one failure, no more requests...
    clock.now += 9
    assert cache("db")["trusted"] == "true" and cache("shop") == {}
    assert reads(apiserver) == ["db", "db"]
    clock.now += 1  # ...until retry_after_error_s has passed
    assert cache("db")["trusted"] == "true"
    assert len(reads(apiserver)) == 3
    (warning,) = warnings(caplog)  # once per cause, not per pass
    assert "503" in warning and "300 s" in warning

    clock.now = 1000 + 60 + 300 - 1  # just inside ttl + stale_for_s of the last read
    assert cache("db")["trusted"] == "true"
    clock.now += 1
    assert cache("db") == {}  # past the bound: fail safe

    apiserver.run(apiserver.handler._failures.clear)
    clock.now += 10
    assert cache("db")["trusted"] == "true"
    assert "namespace labels can be read again" in caplog.text
    assert (cache.requests - cache.failures) == 2


def test_an_outage_costs_one_quick_try_per_pause(
    apiserver: ApiServer,
    cache: NamespaceLabels,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    namespace(apiserver, "db", trusted="true")
    apiserver.begin_outage()  # connections refused
    started = time.monotonic()
    for name in ("db", "shop", "web"):
        assert cache(name) == {}
    assert cache.requests == 1  # the first refusal paused every read
    # No read waited for the API to come back: a refused connection answers in
    # milliseconds, and a read that slept out the pause would take retry_after_error_s.
    # That pause is the bound: loose enough for a loaded 2-core machine.
    assert time.monotonic() - started < cache.settings.retry_after_error_s
    (warning,) = warnings(caplog)
    assert "Connection refused" in warning

    apiserver.end_outage()
    clock.now += 10
    assert cache("db")["trusted"] == "true"
    assert cache("shop") == {}  # not found: an answer
    assert cache.requests == 3
