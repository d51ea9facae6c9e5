"""Metrics and the /metrics, /healthz, /readyz server, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from oomguard import __version__
from oomguard.metrics import (
    API_VERBS,
    KillModeResult,
    Metrics,
    ScoreAdjustmentResult,
    Server,
    parse_address,
    serve,
)
from oomguard.records import Constraint

UNLABELLED_COUNTERS = [
    "oomguard_events_sent_total",
    "oomguard_events_retried_total",
    "oomguard_events_failed_total",
    "oomguard_events_dropped_total",
    "oomguard_watch_restarts_total",
    "oomguard_pod_relists_total",
    "oomguard_kmsg_records_lost_total",
    "oomguard_policy_reload_errors_total",
    "oomguard_state_write_errors_total",
    "oomguard_state_files_set_aside_total",
]
KILLS = "oomguard_oom_kills_total"


class Flags:
    """What the server's checks return; tests flip them."""

    def __init__(self) -> None:
        self.alive: bool = True
        self.ready: bool | tuple[bool, str] = (False, "pod cache not synced")

    def is_alive(self) -> bool:
        return self.alive

    def is_ready(self) -> bool | tuple[bool, str]:
        return self.ready


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def flags() -> Flags:
    return Flags()


@pytest.fixture
def server(metrics: Metrics, flags: Flags) -> Iterator[Server]:
    s = serve(metrics, "127.0.0.1:0", ready=flags.is_ready, alive=flags.is_alive)
    try:
        yield s
    finally:
        s.stop()


def get(server: Server, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def scrape(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on /metrics, keyed by name and label set."""
    status, body = get(server, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


def kill_labels(
    namespace: str, pod: str, container: str, constraint: str
) -> frozenset[tuple[str, str]]:
    return labels(namespace=namespace, pod=pod, container=container, constraint=constraint)


# ---------------------------------------------------------------------------------------
# /metrics


def test_series_known_in_advance_read_zero(server: Server) -> None:
    samples = scrape(server)
    for name in UNLABELLED_COUNTERS:
        assert samples[(name, labels())] == 0, name
    for constraint in Constraint:
        assert samples[(KILLS, kill_labels("", "", "", constraint.value))] == 0
    for result in ("applied", "refused", "error"):
        key = ("oomguard_score_adjustments_total", labels(result=result))
        assert samples[key] == 0
    for result in ("applied", "restored", "refused", "unsupported", "error"):
        assert samples[("oomguard_kill_mode_changes_total", labels(result=result))] == 0
    for verb in API_VERBS:
        assert samples[("oomguard_api_request_duration_seconds_count", labels(verb=verb))] == 0
        key = ("oomguard_api_request_duration_seconds_bucket", labels(verb=verb, le="+Inf"))
        assert samples[key] == 0
    assert samples[("oomguard_pods_cached", labels())] == 0
    assert samples[("oomguard_cgroups_watched", labels())] == 0
    assert samples[("oomguard_build_info", labels(version=__version__))] == 1
    assert samples[("process_resident_memory_bytes", labels())] > 0
    # No pod series before a kill, and nothing from the process-wide default registry.
    assert not [k for k in samples if k[0] == KILLS and ("pod", "") not in k[1]]
    assert not [k for k in samples if k[0].startswith("python_")]


def test_increments_show(server: Server, metrics: Metrics) -> None:
    metrics.oom_kill("shop", "cart-7d9f", "app", Constraint.CONTAINER)
    metrics.oom_kill("shop", "cart-7d9f", "app", Constraint.CONTAINER)
    metrics.oom_kill("shop", "cart-7d9f", "", Constraint.POD)
    metrics.oom_kill_without_pod(Constraint.SYSTEM)
    metrics.events_sent.inc()
    metrics.events_dropped.inc(3)
    metrics.kmsg_records_lost.inc(12)
    metrics.score_adjustment(ScoreAdjustmentResult.APPLIED)
    metrics.score_adjustment(ScoreAdjustmentResult("error"))
    metrics.kill_mode_change(KillModeResult.APPLIED)
    metrics.kill_mode_change(KillModeResult.APPLIED)
    metrics.kill_mode_change(KillModeResult("error"))
    metrics.observe_api_request("create", 0.02)
    with metrics.time_api_request("patch"):
        pass
    metrics.observe_api_request("delete", 0.5)  # not pre-initialised, still counted
    metrics.pods_cached.set(31)
    metrics.cgroups_watched.set(64)

    samples = scrape(server)
    assert samples[(KILLS, kill_labels("shop", "cart-7d9f", "app", "container"))] == 2
    assert samples[(KILLS, kill_labels("shop", "cart-7d9f", "", "pod"))] == 1
    assert samples[(KILLS, kill_labels("", "", "", "system"))] == 1
    assert samples[(KILLS, kill_labels("", "", "", "container"))] == 0
    assert samples[("oomguard_events_sent_total", labels())] == 1
    assert samples[("oomguard_events_dropped_total", labels())] == 3
    assert samples[("oomguard_kmsg_records_lost_total", labels())] == 12
    assert samples[("oomguard_score_adjustments_total", labels(result="applied"))] == 1
    assert samples[("oomguard_score_adjustments_total", labels(result="error"))] == 1
    assert samples[("oomguard_score_adjustments_total", labels(result="refused"))] == 0
    kill_modes = "oomguard_kill_mode_changes_total"
    assert samples[(kill_modes, labels(result="applied"))] == 2
    assert samples[(kill_modes, labels(result="error"))] == 1
    assert samples[(kill_modes, labels(result="restored"))] == 0
    count = "oomguard_api_request_duration_seconds_count"
    assert samples[(count, labels(verb="create"))] == 1
    assert samples[(count, labels(verb="patch"))] == 1
    assert samples[(count, labels(verb="delete"))] == 1
    assert samples[(count, labels(verb="list"))] == 0
    bucket = "oomguard_api_request_duration_seconds_bucket"
    assert samples[(bucket, labels(verb="create", le="0.025"))] == 1
    assert samples[(bucket, labels(verb="create", le="0.01"))] == 0
    assert samples[("oomguard_pods_cached", labels())] == 31
    assert samples[("oomguard_cgroups_watched", labels())] == 64


def test_pod_cache_totals_become_increments(metrics: Metrics) -> None:
    def value(name: str) -> float | None:
        return metrics.registry.get_sample_value(name)

    metrics.observe_pod_cache(relists=1, watch_restarts=0, pods_cached=5)
    metrics.observe_pod_cache(relists=1, watch_restarts=3, pods_cached=6)
    metrics.observe_pod_cache(relists=2, watch_restarts=3, pods_cached=4)
    assert value("oomguard_pod_relists_total") == 2
    assert value("oomguard_watch_restarts_total") == 3
    assert value("oomguard_pods_cached") == 4
    # A new cache starts its totals from zero: its counts are added, not subtracted.
    metrics.observe_pod_cache(relists=1, watch_restarts=0, pods_cached=4)
    assert value("oomguard_pod_relists_total") == 3
    assert value("oomguard_watch_restarts_total") == 3
    with pytest.raises(ValueError, match="negative"):
        metrics.observe_pod_cache(relists=-1, watch_restarts=0, pods_cached=0)


def test_figures_refreshed_at_scrape_time_are_current_on_each_scrape(
    server: Server, metrics: Metrics
) -> None:
    """What the agent only computes when someone looks (pods cached, headrooms, the
    parts' counters): each scrape sees the state at that moment; a refresher that
    fails leaves the scrape answering with the rest."""
    state = {"pods": 3}
    metrics.before_scrape(lambda: metrics.pods_cached.set(state["pods"]))

    def broken() -> None:
        raise RuntimeError("a bug in a refresher")

    metrics.before_scrape(broken)
    assert scrape(server)[("oomguard_pods_cached", labels())] == 3
    state["pods"] = 110
    assert scrape(server)[("oomguard_pods_cached", labels())] == 110
    assert ("oomguard_build_info", labels(version=__version__)) in scrape(server)


def test_metrics_endpoint_takes_query_and_openmetrics(server: Server, metrics: Metrics) -> None:
    metrics.events_sent.inc()
    status, body = get(server, "/metrics?name[]=oomguard_events_sent_total")
    assert status == 200
    assert "oomguard_events_sent_total 1.0" in body
    assert "oomguard_pods_cached" not in body
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().decode().rstrip().endswith("# EOF")


# ---------------------------------------------------------------------------------------
# Cardinality


def test_forget_pod_removes_only_that_pods_series(server: Server, metrics: Metrics) -> None:
    metrics.oom_kill("shop", "cart-1", "app", Constraint.CONTAINER)
    metrics.oom_kill("shop", "cart-1", "sidecar", Constraint.POD)
    metrics.oom_kill("shop", "cart-2", "app", Constraint.CONTAINER)
    metrics.oom_kill("other", "cart-1", "app", Constraint.CONTAINER)  # same name, other ns
    metrics.oom_kill_without_pod(Constraint.SYSTEM)

    metrics.forget_pod("shop", "cart-1")
    metrics.forget_pod("shop", "cart-1")  # twice: no error
    metrics.forget_pod("shop", "never-seen")
    metrics.forget_pod("", "")  # the no-pod series are not a pod's

    kills = {k[1]: v for k, v in scrape(server).items() if k[0] == KILLS}
    pods = {(dict(k)["namespace"], dict(k)["pod"]) for k in kills}
    assert pods == {("shop", "cart-2"), ("other", "cart-1"), ("", "")}
    assert kills[kill_labels("", "", "", "system")] == 1
    assert len([k for k in kills if ("pod", "") in k]) == len(Constraint)

    # A kill reported after the pod was forgotten starts its series again.
    metrics.oom_kill("shop", "cart-1", "app", Constraint.CONTAINER)
    assert scrape(server)[(KILLS, kill_labels("shop", "cart-1", "app", "container"))] == 1


def test_bad_label_values_are_refused(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="oom_kill_without_pod"):
        metrics.oom_kill("", "", "", Constraint.SYSTEM)
    with pytest.raises(ValueError, match="oom_kill_without_pod"):
        metrics.oom_kill("shop", "", "app", Constraint.CONTAINER)
    with pytest.raises(ValueError):
        metrics.oom_kill("shop", "cart", "app", "memcg")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        metrics.score_adjustment("skipped")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        metrics.kill_mode_change("skipped")  # type: ignore[arg-type]


def test_two_instances_do_not_collide(flags: Flags) -> None:
    first, second = Metrics(version="1.0.0"), Metrics(version="2.0.0")
    first.events_sent.inc(5)
    second.oom_kill("a", "b", "c", Constraint.CONTAINER)
    with (
        serve(first, "127.0.0.1:0", flags.is_ready, flags.is_alive) as s1,
        serve(second, "127.0.0.1:0", flags.is_ready, flags.is_alive) as s2,
    ):
        assert s1.port != s2.port
        one, two = scrape(s1), scrape(s2)
    assert one[("oomguard_events_sent_total", labels())] == 5
    assert two[("oomguard_events_sent_total", labels())] == 0
    assert (KILLS, kill_labels("a", "b", "c", "container")) not in one
    assert two[(KILLS, kill_labels("a", "b", "c", "container"))] == 1
    assert ("oomguard_build_info", labels(version="1.0.0")) in one
    assert ("oomguard_build_info", labels(version="1.0.0")) not in two


# ---------------------------------------------------------------------------------------
# /healthz, /readyz, 404


def test_healthz_follows_alive(server: Server, flags: Flags) -> None:
    assert get(server, "/healthz") == (200, "ok\n")
    flags.alive = False
    assert get(server, "/healthz") == (503, "not alive\n")
    flags.alive = True
    assert get(server, "/healthz") == (200, "ok\n")


def test_readyz_follows_ready_with_reason(server: Server, flags: Flags) -> None:
    assert get(server, "/readyz") == (503, "pod cache not synced\n")
    flags.ready = (False, "0 of 2 watched:\n  cgroups not\twatched yet")
    assert get(server, "/readyz") == (503, "0 of 2 watched: cgroups not watched yet\n")
    flags.ready = (False, "x" * 1000)
    status, body = get(server, "/readyz")
    assert status == 503
    assert len(body) == 201
    assert body.endswith("...\n")
    flags.ready = (False, "")
    assert get(server, "/readyz") == (503, "not ready\n")
    flags.ready = (True, "synced")
    assert get(server, "/readyz") == (200, "ok\n")
    flags.ready = False  # a plain bool works too
    assert get(server, "/readyz") == (503, "not ready\n")
    flags.ready = True
    assert get(server, "/readyz") == (200, "ok\n")
    # Readiness and liveness are independent.
    flags.alive = False
    assert get(server, "/readyz")[0] == 200
    assert get(server, "/healthz")[0] == 503


def test_a_check_that_raises_fails_without_killing_the_server(metrics: Metrics) -> None:
    def broken() -> bool:
        raise RuntimeError("cache lock\npoisoned")

    with serve(metrics, "127.0.0.1:0", ready=broken, alive=lambda: True) as s:
        assert get(s, "/readyz") == (
            503,
            "ready check failed: RuntimeError: cache lock poisoned\n",
        )
        assert get(s, "/healthz") == (200, "ok\n")


@pytest.mark.parametrize("path", ["/", "/metricsx", "/healthz/", "/readyz/x", "/favicon.ico"])
def test_other_paths_are_404(server: Server, path: str) -> None:
    assert get(server, path)[0] == 404


def test_probes_answer_only_get(server: Server) -> None:
    assert get(server, "/healthz", method="POST")[0] == 405
    assert get(server, "/metrics", method="POST")[0] == 405


# ---------------------------------------------------------------------------------------
# Lifecycle and addresses


def test_stop_frees_the_port(metrics: Metrics, flags: Flags) -> None:
    s = serve(metrics, "127.0.0.1:0", flags.is_ready, flags.is_alive)
    port = s.port
    assert get(s, "/healthz")[0] == 200
    s.stop()
    s.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    with socket.socket() as probe:
        # SO_REUSEADDR (as every server sets) lets this bind past the TIME_WAIT our own
        # request left, but on Linux not past a socket that still listens.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()
    # ... and a new server can take the same port again.
    with serve(metrics, f"127.0.0.1:{port}", flags.is_ready, flags.is_alive) as again:
        assert again.port == port
        assert get(again, "/healthz")[0] == 200


def test_port_in_use_is_an_os_error(metrics: Metrics, flags: Flags) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve(metrics, f"127.0.0.1:{port}", flags.is_ready, flags.is_alive)


def test_ipv6_loopback(metrics: Metrics, flags: Flags) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with serve(metrics, "[::1]:0", flags.is_ready, flags.is_alive) as s:
        assert s.host == "::1"
        with urllib.request.urlopen(f"http://[::1]:{s.port}/healthz", timeout=5) as response:
            assert response.status == 200


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("0.0.0.0:9753", ("0.0.0.0", 9753)),
        ("[::]:9753", ("::", 9753)),
        ("[::1]:0", ("::1", 0)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        (":9753", ("0.0.0.0", 9753)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_good_addresses(address: str, parsed: tuple[str, int]) -> None:
    assert parse_address(address) == parsed


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("", "no port"),
        ("9753", "no port"),
        ("localhost", "no port"),
        ("127.0.0.1:", "not a number"),
        ("127.0.0.1:http", "not a number"),
        ("127.0.0.1:-1", "not a number"),
        ("127.0.0.1:+80", "not a number"),
        ("127.0.0.1: 80", "not a number"),
        ("127.0.0.1:8_0", "not a number"),
        ("127.0.0.1:\u0668\u0660", "not a number"),  # Arabic-Indic "80"
        ("127.0.0.1:65536", "out of range"),
        ("127.0.0.1:99999999999999999999", "out of range"),
        ("::1:9753", "needs brackets"),
        ("::", "needs brackets"),
        ("[::1:9753", "unbalanced"),
        ("::1]:9753", "unbalanced"),
        ("[127.0.0.1]:80", "not an IPv6 address"),
        ("[localhost]:80", "not an IPv6 address"),
        ("local host:80", "spaces"),
    ],
)
def test_bad_addresses(metrics: Metrics, flags: Flags, address: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as error:
        serve(metrics, address, flags.is_ready, flags.is_alive)
    assert repr(address) in str(error.value)
    assert "host:port" in str(error.value)


def test_kernel_log_source_says_which_one_is_read(server: Server, metrics: Metrics) -> None:
    key = "oomguard_kernel_log_source"
    assert {s: scrape(server)[(key, labels(source=s))] for s in ("kmsg", "syslog", "none")} == {
        "kmsg": 0,
        "syslog": 0,
        "none": 0,
    }
    metrics.set_kernel_log_source("syslog")
    metrics.set_kernel_log_source("syslog")
    samples = scrape(server)
    assert [s for s in ("kmsg", "syslog", "none") if samples[(key, labels(source=s))]] == ["syslog"]
    with pytest.raises(ValueError, match="unknown kernel log source"):
        metrics.set_kernel_log_source("dmesg")
