"""Prometheus metrics and the agent's /metrics, /healthz and /readyz endpoints.

`Metrics` owns its own `CollectorRegistry` (never the process-wide default), so several
agents or tests in one process do not collide and nothing a library registers globally
leaks into the agent's scrape. Every series whose labels are known in advance is
created at start, so a dashboard reads 0 rather than nothing.

Metrics (all names start with `oomguard_`; counters end in `_total`)
--------------------------------------------------------------------
    oom_kills_total{namespace,pod,container,constraint}
        OOM kills seen. `constraint` is a `records.Constraint` value (container, pod,
        node-allocatable, system, other). Kills that belong to no pod (a system daemon,
        a kill the cache could not attribute) are counted with namespace="" pod=""
        container=""; those five series exist from the start. A pod's series appear
        with its first kill.
    oom_warnings_total{namespace,pod,container,constraint,signal}
        OOMImminent warnings given (one per episode, `oomguard.warn`): `constraint` the
        limit that binds (container, pod, node-allocatable; off Kubernetes other),
        `signal` what fired (threshold, pressure, reclaim). The node-allocatable
        cgroup's with namespace="" pod="" container="". A pod's series appear with its
        first warning.
    memory_headroom_bytes{namespace,pod,container} (gauge)
        Bytes between a container's working set and the limit that binds it (its own,
        or its pod's when closer), for containers with such a limit and a pod in the
        cache, as of the warning watcher's last look (near the limit a few times a
        second; far from it, usage stands in for the working set, so it may read low
        there). Gone with the container.
    ready (gauge)
        1 while /readyz says ready, else 0: alert on it, a Pod's readiness is not in
        Prometheus without kube-state-metrics.
    events_sent_total, events_retried_total, events_failed_total, events_dropped_total
        Kubernetes Events: kills accepted by the API; attempts retried after an error;
        kills given up on (a permanent error such as 403 or 422); kills discarded
        because the queue was full (merged into an aggregated Event is not dropped:
        its count says it).
    watch_restarts_total, pod_relists_total
        The pod cache's watch reopened; full lists (the first one included).
    api_request_duration_seconds{verb} (histogram)
        Kubernetes API latency by verb. For a watch, time to the response headers, not
        the stream's life. get, list, watch, create and patch exist from the start.
    pods_cached, cgroups_watched (gauges)
    kmsg_records_lost_total
        Records the kernel overwrote before they were read: exact from /dev/kmsg's
        sequence gaps; through syslog(2), one per overrun seen (at least that many).
    kernel_log_source{source} (gauge)
        1 for where the kernel's OOM reports are read from, 0 for the others: kmsg
        (/dev/kmsg), syslog (syslog(2), when /dev/kmsg cannot be opened), none (cgroup
        counters only: victims unknown). All three exist from the start.
    score_adjustments_total{result}
        oom_score_adj work, result in applied (a value was written), refused (the
        policy refused a pod's request; the baseline stands), error (the write failed).
    kill_mode_changes_total{result}
        Kill mode work (memory.oom.group of container cgroups, cgroup v2), result in
        applied (oomguard wrote a mode: 0 for "process", 1 for "container"), restored
        (it wrote back the value it found before its first write, after the
        oomguard.io/oom-kill request went away), refused (the policy refused a pod's
        request, or its value was invalid: counted with the OOMKillModeRefused Warning,
        once per distinct message per pod), unsupported (a pod asked on a cgroup v1
        node, which has no group kill: once per pod, with the OOMKillModeUnsupported
        Warning), error (a write failed: the cgroup mount is read-only (EROFS, the
        chart's cgroup.readOnly: true), EACCES, or another errno; counted on every
        attempt, so once per pass per container while it lasts; alert on its rate).
        A write refused by the kernel is an error here, not `refused`, which is the
        policy's word. A dry run counts refused and unsupported only.
    policy_reload_errors_total
        Admin policy ConfigMaps rejected (the last good policy stays in force).
    state_write_errors_total
        Writes to the state directory that failed (full, read-only): the agent goes on
        from memory, Events are still delivered, but a restart now could report kills
        twice or lose undelivered ones. Retried on each change.
    state_files_set_aside_total
        State files that could not be used (corrupt, too large, nested too deeply, not
        a regular file) and were moved aside as <name>.corrupt-<time> at start.
    policy_valid (gauge)
        1 while the policy file in force is the file as it is now (or there is no file);
        0 while its current version is rejected and the previous policy (or, if none was
        ever valid, the default one) stays in force. Alert on it: the counter above only
        says that something was rejected once.
    build_info{version} (gauge, always 1)
    process_* (resident memory, CPU, open fds; Linux only)

Cardinality: `oom_kills_total` and `oom_warnings_total` carry pod labels only for pods
that had a kill or a warning, `memory_headroom_bytes` for running containers with a
limit. Pods come and go, so their series must go too: `Metrics.forget_pods_except` is
called with the pods the cache still knows (deleted ones are kept for a retention,
since a kill is often reported after its pod is gone), and the headroom gauge is set
whole each time (`set_headrooms`). Everything else has a fixed label set.

Endpoints (`serve`)
-------------------
    GET /metrics   Prometheus text format (OpenMetrics when the scraper asks for it)
    GET /healthz   200 "ok" while `alive()` holds, else 503
    GET /readyz    200 "ok" while `ready()` holds, else 503 with a one-line reason
    anything else  404

The server is bounded whatever its clients do (WORKER_THREADS request threads,
MAX_CONNECTIONS held open, idle connections closed) and says what goes wrong with a
client in the log, never on stderr (`_BoundedServer`).
"""

from __future__ import annotations

import contextlib
import enum
import io
import ipaddress
import logging
import queue
import selectors
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO, TypeAlias
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from oomguard import __version__
from oomguard.records import Constraint

log = logging.getLogger(__name__)

NAMESPACE = "oomguard"

# The verbs the agent's RBAC allows (oomguard/k8s/rbac.py): their
# latency series exist from the start. Other verbs are accepted and appear on first use.
API_VERBS = ("get", "list", "watch", "create", "patch")

# Where the engine reads the kernel's OOM reports from (OomWatcher.kernel_log_source).
KERNEL_LOG_SOURCES = ("kmsg", "syslog", "none")

# Kubernetes API latency: a healthy apiserver answers in milliseconds, an overloaded one
# in seconds, and a list of a big node can take tens of seconds.
API_DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ScoreAdjustmentResult(enum.StrEnum):
    """The `result` label of `oomguard_score_adjustments_total`."""

    APPLIED = "applied"  # a value was written to /proc/PID/oom_score_adj
    REFUSED = "refused"  # the policy refused a pod's request: the baseline stands
    ERROR = "error"  # the write failed


class KillModeResult(enum.StrEnum):
    """The `result` label of `oomguard_kill_mode_changes_total`."""

    APPLIED = "applied"  # memory.oom.group written to the mode asked for
    RESTORED = "restored"  # the value found before oomguard's first write put back
    REFUSED = "refused"  # the policy refused a pod's request, or it was invalid
    UNSUPPORTED = "unsupported"  # a pod asked on cgroup v1 (no memory.oom.group)
    ERROR = "error"  # a write failed (read-only mount, EACCES, ...)


class Metrics:
    """The agent's Prometheus metrics, in a registry of their own (`registry`).

    Thread-safe. Unlabelled metrics are public attributes and used directly
    (`metrics.events_sent.inc()`, `metrics.pods_cached.set(n)`); labelled ones go
    through the methods below, which keep their label sets bounded.
    """

    def __init__(self, version: str = __version__, *, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # First in the registry, so it runs before the others are read (the registry
        # collects in registration order).
        self._before_scrape: list[Callable[[], None]] = []
        r.register(_BeforeScrape(self._before_scrape))

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, labels, namespace=NAMESPACE, registry=r)

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(name, doc, labels, namespace=NAMESPACE, registry=r)

        self.oom_kills = counter(
            "oom_kills_total",
            "OOM kills, by victim (namespace, pod, container empty when no pod) "
            "and the limit that was hit.",
            ("namespace", "pod", "container", "constraint"),
        )
        self.oom_warnings = counter(
            "oom_warnings_total",
            "OOMImminent warnings, by container and the limit that binds it, and what fired.",
            ("namespace", "pod", "container", "constraint", "signal"),
        )
        self.memory_headroom = gauge(
            "memory_headroom_bytes",
            "Bytes between a container's working set and the limit that binds it.",
            ("namespace", "pod", "container"),
        )
        self.ready = gauge("ready", "1 while the agent is ready (/readyz), else 0.")
        self.events_sent = counter("events_sent_total", "Kubernetes Events the API accepted.")
        self.events_retried = counter(
            "events_retried_total", "Kubernetes Event requests retried after an error."
        )
        self.events_failed = counter(
            "events_failed_total", "Kubernetes Events given up on after a permanent error."
        )
        self.events_dropped = counter(
            "events_dropped_total",
            "Kills discarded because the Event queue was full.",
        )
        self.watch_restarts = counter(
            "watch_restarts_total", "Pod watches that ended or dropped and were reopened."
        )
        self.pod_relists = counter(
            "pod_relists_total", "Full lists of this node's pods, the first one included."
        )
        self.api_request_duration = Histogram(
            "api_request_duration_seconds",
            "Kubernetes API request latency (for a watch: until the response headers).",
            ("verb",),
            namespace=NAMESPACE,
            registry=r,
            buckets=API_DURATION_BUCKETS_S,
        )
        self.pods_cached = gauge("pods_cached", "Pods of this node in the pod cache.")
        self.cgroups_watched = gauge("cgroups_watched", "Memory cgroups being watched.")
        self.kmsg_records_lost = counter(
            "kmsg_records_lost_total",
            "Kernel log records overwritten before they were read (through syslog(2): "
            "overruns, each at least one record).",
        )
        self.kernel_log_source = gauge(
            "kernel_log_source",
            "1 for where OOM reports are read from: kmsg, syslog, or none (counters only).",
            ("source",),
        )
        self.score_adjustments = counter(
            "score_adjustments_total",
            "oom_score_adj adjustments: applied, refused by the policy, or failed.",
            ("result",),
        )
        self.kill_mode_changes = counter(
            "kill_mode_changes_total",
            "memory.oom.group work: applied, restored, refused by the policy, "
            "unsupported (cgroup v1), or failed.",
            ("result",),
        )
        self.policy_reload_errors = counter(
            "policy_reload_errors_total",
            "Admin policy documents rejected (the last good policy stays in force).",
        )
        self.policy_valid = gauge(
            "policy_valid",
            "1 if the admin policy file as it is now is in force, 0 while it is rejected.",
        )
        self.policy_valid.set(1)
        self.state_write_errors = counter(
            "state_write_errors_total",
            "Writes to the state directory that failed (full or read-only); retried.",
        )
        self.state_files_set_aside = counter(
            "state_files_set_aside_total",
            "State files that could not be used and were moved aside at start.",
        )
        self.build_info = gauge("build_info", "The running oomguard build; always 1.", ("version",))
        if process_metrics:
            ProcessCollector(registry=r)

        for constraint in Constraint:
            self.oom_kills.labels("", "", "", constraint.value)
        for verb in API_VERBS:
            self.api_request_duration.labels(verb)
        for result in ScoreAdjustmentResult:
            self.score_adjustments.labels(result.value)
        for kill_result in KillModeResult:
            self.kill_mode_changes.labels(kill_result.value)
        for source in KERNEL_LOG_SOURCES:
            self.kernel_log_source.labels(source).set(0)
        self.build_info.labels(version).set(1)

        self._lock = threading.Lock()
        # (namespace, pod) -> {(container, constraint)}: the series forget_pod removes.
        self._pod_series: dict[tuple[str, str], set[tuple[str, str]]] = {}
        # The same for warnings: (namespace, pod) -> {(container, constraint, signal)}.
        self._warning_series: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
        self._headroom_series: set[tuple[str, str, str]] = set()
        self._pod_cache_seen = (0, 0)  # relists, watch_restarts at the last observation

    def before_scrape(self, refresh: Callable[[], None]) -> None:
        """Call `refresh` at each scrape (each read of the registry), before the series
        are read: for figures that only need to be right when someone looks."""
        self._before_scrape.append(refresh)

    def oom_kill(self, namespace: str, pod: str, container: str, constraint: Constraint) -> None:
        """Count a kill in a pod (`container` may be "" when the container is unknown)."""
        if not namespace or not pod:
            raise ValueError(
                f"an OOM kill in a pod needs its namespace and name (got {namespace!r}/"
                f"{pod!r}); count kills that belong to no pod with oom_kill_without_pod"
            )
        value = Constraint(constraint).value
        with self._lock:
            self._pod_series.setdefault((namespace, pod), set()).add((container, value))
            self.oom_kills.labels(namespace, pod, container, value).inc()

    def oom_kill_without_pod(self, constraint: Constraint) -> None:
        """Count a kill that belongs to no pod (namespace, pod and container are "")."""
        self.oom_kills.labels("", "", "", Constraint(constraint).value).inc()

    def set_kernel_log_source(self, source: str) -> None:
        """Say which kernel log the reports come from (one of KERNEL_LOG_SOURCES)."""
        if source not in KERNEL_LOG_SOURCES:
            raise ValueError(f"unknown kernel log source {source!r}")
        for name in KERNEL_LOG_SOURCES:
            self.kernel_log_source.labels(name).set(1 if name == source else 0)

    def forget_pod(self, namespace: str, pod: str) -> None:
        """Remove a deleted pod's series. Unknown pods are ignored; a later kill re-adds."""
        with self._lock:
            for container, constraint in self._pod_series.pop((namespace, pod), ()):
                self.oom_kills.remove(namespace, pod, container, constraint)
            for container, constraint, signal in self._warning_series.pop((namespace, pod), ()):
                self.oom_warnings.remove(namespace, pod, container, constraint, signal)

    def forget_pods_except(self, keep: set[tuple[str, str]]) -> int:
        """Remove the kill and warning series of every pod not in `keep` ((namespace,
        name) pairs); returns how many pods were forgotten."""
        with self._lock:
            gone = [key for key in {*self._pod_series, *self._warning_series} if key not in keep]
        for namespace, pod in gone:
            self.forget_pod(namespace, pod)
        return len(gone)

    def oom_warning(
        self, namespace: str, pod: str, container: str, constraint: Constraint, signal: str
    ) -> None:
        """Count a warning ("" names for the node-allocatable cgroup's)."""
        value = Constraint(constraint).value
        with self._lock:
            if namespace and pod:
                self._warning_series.setdefault((namespace, pod), set()).add(
                    (container, value, signal)
                )
            self.oom_warnings.labels(namespace, pod, container, value, signal).inc()

    def set_headrooms(self, headrooms: dict[tuple[str, str, str], int]) -> None:
        """Set the headroom gauge to exactly these (namespace, pod, container) series."""
        with self._lock:
            for labels in self._headroom_series - headrooms.keys():
                self.memory_headroom.remove(*labels)
            for labels, value in headrooms.items():
                self.memory_headroom.labels(*labels).set(value)
            self._headroom_series = set(headrooms)

    def score_adjustment(self, result: ScoreAdjustmentResult) -> None:
        """Count one oom_score_adj adjustment by its result."""
        self.score_adjustments.labels(ScoreAdjustmentResult(result).value).inc()

    def kill_mode_change(self, result: KillModeResult) -> None:
        """Count one piece of kill mode work by its result."""
        self.kill_mode_changes.labels(KillModeResult(result).value).inc()

    def observe_api_request(self, verb: str, seconds: float) -> None:
        """Record one Kubernetes API request's duration."""
        self.api_request_duration.labels(verb).observe(seconds)

    def time_api_request(self, verb: str) -> contextlib.AbstractContextManager[Any]:
        """A context manager that records the duration of the block it wraps."""
        return self.api_request_duration.labels(verb).time()

    def observe_pod_cache(self, *, relists: int, watch_restarts: int, pods_cached: int) -> None:
        """Bring the pod-cache metrics up to the cache's own running totals.

        For `PodCacheCounters`, which are totals since the cache started: the counters
        grow by the difference since the last call. Totals that went down (a new cache)
        count from zero again.
        """
        with self._lock:
            last_relists, last_restarts = self._pod_cache_seen
            self.pod_relists.inc(_growth(last_relists, relists))
            self.watch_restarts.inc(_growth(last_restarts, watch_restarts))
            self._pod_cache_seen = (relists, watch_restarts)
        self.pods_cached.set(pods_cached)


class _BeforeScrape(Collector):
    """Yields no series: runs the refreshers before the registry reads the rest."""

    def __init__(self, refreshers: list[Callable[[], None]]) -> None:
        self._refreshers = refreshers

    def describe(self) -> list[Metric]:
        return []  # nothing of its own; and auto_describe must not call collect()

    def collect(self) -> list[Metric]:
        for refresh in self._refreshers:
            try:
                refresh()
            except Exception:  # a scrape must still answer with what there is
                log.exception("refreshing metrics before a scrape failed")
        return []


def _growth(last: int, total: int) -> int:
    if total < 0:
        raise ValueError(f"a running total cannot be negative: {total}")
    return total - last if total >= last else total


# ---------------------------------------------------------------------------------------
# HTTP

HealthCheck: TypeAlias = Callable[[], bool | tuple[bool, str]]
"""What `serve` calls on each probe, from the server's threads (so: cheap, thread-safe).

Return True/False, or (ok, reason) to say why in the 503's body; the reason should be one
short line (newlines are replaced and it is cut to 200 characters). A check that raises
counts as failing, with the exception as the reason. A plain `Callable[[], bool]` fits.
"""

# The server's bounds. Connections that have not sent a request yet wait in one selector
# and cost no thread; requests are handled by a fixed pool of threads.
WORKER_THREADS = 4  # requests handled at once: a scrape and both probes, and one spare
MAX_CONNECTIONS = 64  # held open at once; past it the longest idle one is closed
IDLE_TIMEOUT_S = 10.0  # a connection silent this long is closed (a probe sends at once)
REQUEST_DEADLINE_S = 30.0  # the most one request may take, however slowly it is sent
# While connections are held, how often the serving loop looks for expired ones. With
# none held it sleeps until a connection comes or stop() wakes it: an idle agent's
# metrics thread costs nothing between scrapes.
_HELD_CHECK_S = 1.0
_REASON_MAX_CHARS = 200


class Server:
    """A running metrics/health server. Stop it with `stop()` (or use it as a context)."""

    def __init__(self, httpd: _BoundedServer) -> None:
        self._httpd = httpd
        self._stopped = False
        self._stop_lock = threading.Lock()
        self.host = str(httpd.server_address[0])
        self.port = int(httpd.server_address[1])

    def stop(self) -> None:
        """Stop serving and close the listening socket (the port is free on return)."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            self._httpd.stop()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(
    metrics: Metrics,
    address: str,
    ready: HealthCheck,
    alive: HealthCheck,
    *,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> Server:
    """Serve /metrics, /healthz and /readyz on `address` from daemon threads.

    `address` is "host:port": "0.0.0.0:9753", "[::]:9753" (IPv6 and IPv4),
    "127.0.0.1:0" (an ephemeral port: read `Server.port`), ":9753" (all IPv4
    interfaces). Raises ValueError for an address that cannot be meant, OSError when
    the port cannot be bound (in use, not permitted).

    Bounded whatever clients do: WORKER_THREADS threads handle requests, one more
    accepts; at most MAX_CONNECTIONS are held open (a new one closes the longest idle);
    a connection silent for `idle_timeout_s`, or slower than REQUEST_DEADLINE_S, is
    closed. What goes wrong with a client is logged (`oomguard.metrics`, debug for the
    ordinary: idle, reset), never printed to stderr.
    """
    host, port = parse_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ValueError(f"metrics address {address!r}: cannot resolve {host!r}: {error}") from None
    family, _, _, _, sockaddr = infos[0]
    server_class = _IPv6Server if family == socket.AF_INET6 else _IPv4Server
    app = _dispatcher(make_wsgi_app(metrics.registry), ready=ready, alive=alive)
    try:
        httpd = make_server(str(sockaddr[0]), port, app, server_class, handler_class=_QuietHandler)
    except OSError as error:
        raise OSError(error.errno, f"cannot listen on {address}: {error.strerror}") from None
    httpd.start(idle_timeout_s)
    server = Server(httpd)
    log.info("serving /metrics, /healthz and /readyz on %s port %d", server.host, server.port)
    return server


def parse_address(address: str) -> tuple[str, int]:
    """Split "host:port" ("[v6]:port" for IPv6) into its parts, or raise ValueError."""

    def bad(why: str) -> ValueError:
        return ValueError(
            f"metrics address {address!r}: {why}; expected host:port such as "
            f"0.0.0.0:9753, [::]:9753 or 127.0.0.1:0"
        )

    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise bad("no port")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise bad("unbalanced brackets")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise bad("an IPv6 address needs brackets, as in [::1]:9753")
    elif host == "":
        host = "0.0.0.0"
    if any(c.isspace() for c in host):
        raise bad("spaces in the host")
    # ASCII digits only: int() would also take " 80", "+80", "8_0" and "\u0668\u0660".
    if not (port_text.isascii() and port_text.isdigit()):
        raise bad(f"port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise bad(f"port {port} is out of range 0..65535")
    return host, port


class _BoundedServer(WSGIServer):
    """The stdlib's WSGI server with bounded resources and errors in the log.

    ThreadingWSGIServer (prometheus_client's) starts a thread per connection with no cap,
    and socketserver prints a traceback to stderr for each connection that ends badly
    (an idle one timing out: about 17 lines each, outside the agent's log format). Here
    one thread accepts and keeps connections that have not sent a request yet in a
    selector (costing no thread), hands each to a fixed pool once it has something to
    read, and closes those idle too long or past the request deadline. (waitress does
    this too, but has no supported way to stop a server, which the agent and its tests
    need: Pylons/waitress#372.)
    """

    request_queue_size = MAX_CONNECTIONS  # the listen backlog (socketserver's is 5)

    def start(self, idle_timeout_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._ready: queue.SimpleQueue[tuple[socket.socket, Any] | None] = queue.SimpleQueue()
        self._waiting: dict[socket.socket, tuple[Any, float]] = {}  # oldest first
        self._busy: dict[socket.socket, float] = {}  # -> deadline
        self._held = 0  # waiting + ready + busy
        self.socket.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()  # stop() wakes the accept loop
        self._wake_r.setblocking(False)
        port = self.server_address[1]
        self._threads = [
            threading.Thread(target=self._accept_loop, name=f"oomguard-metrics-{port}", daemon=True)
        ]
        self._threads += [
            threading.Thread(
                target=self._work_loop, name=f"oomguard-metrics-{port}-worker-{n}", daemon=True
            )
            for n in range(WORKER_THREADS)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._threads[0].join()
        self._wake_r.close()
        self._wake_w.close()
        for _ in range(WORKER_THREADS):
            self._ready.put(None)
        with self._lock:
            for conn in self._busy:
                _shut(conn)  # a request in progress ends now
        for thread in self._threads[1:]:
            thread.join()
        while (item := self._ready.get_nowait() if not self._ready.empty() else None) is not None:
            item[0].close()
        self.server_close()

    # -- the accepting thread --------------------------------------------------------

    def _accept_loop(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.socket, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                with self._lock:
                    held = self._held
                for key, _ in selector.select(_HELD_CHECK_S if held else None):
                    if key.fileobj is self._wake_r:
                        continue  # stop(): the loop's condition ends it
                    if key.fileobj is self.socket:
                        while self._accept(selector):
                            pass
                    else:
                        conn = key.fileobj
                        assert isinstance(conn, socket.socket)
                        selector.unregister(conn)
                        address, _ = self._waiting.pop(conn)
                        self._ready.put((conn, address))
                self._expire(selector)
        except Exception:
            log.exception("the metrics server stopped accepting connections")
        finally:
            for conn in self._waiting:
                conn.close()
            self._waiting.clear()
            selector.close()

    def _accept(self, selector: selectors.BaseSelector) -> bool:
        """Take one connection from the backlog; False when there is none to take."""
        try:
            conn, address = self.socket.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except ConnectionAbortedError:
            return True  # the client gave up before we took it
        except OSError as error:  # EMFILE and the like: say it, keep serving
            log.warning("the metrics server cannot accept a connection: %s", error)
            return False
        conn.setblocking(True)
        with self._lock:
            full = self._held >= MAX_CONNECTIONS
            if not full:
                self._held += 1
        if full:
            if not self._waiting:  # every connection is a request in progress
                log.debug("refused a connection from %s: %d held", address[0], MAX_CONNECTIONS)
                conn.close()
                return True
            oldest = next(iter(self._waiting))
            old_address, _ = self._waiting.pop(oldest)
            selector.unregister(oldest)
            oldest.close()
            log.debug(
                "closed an idle connection from %s to make room (%d held)",
                old_address[0],
                MAX_CONNECTIONS,
            )
        self._waiting[conn] = (address, time.monotonic() + self.idle_timeout_s)
        selector.register(conn, selectors.EVENT_READ)
        return True

    def _expire(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for conn, (address, deadline) in list(self._waiting.items()):
            if deadline > now:
                break  # oldest first: the rest are younger
            del self._waiting[conn]
            selector.unregister(conn)
            conn.close()
            self._release()
            log.debug(
                "closed a connection from %s: idle %.1f s without a request",
                address[0],
                self.idle_timeout_s,
            )
        with self._lock:
            for conn, deadline in self._busy.items():
                if deadline <= now:
                    _shut(conn)  # its worker's read or write fails, the worker goes on

    def _release(self) -> None:
        with self._lock:
            self._held -= 1

    # -- the workers -----------------------------------------------------------------

    def _work_loop(self) -> None:
        while (item := self._ready.get()) is not None:
            conn, address = item
            with self._lock:
                self._busy[conn] = time.monotonic() + REQUEST_DEADLINE_S
            try:
                conn.settimeout(self.idle_timeout_s)  # per read or write
                self.finish_request(conn, address)
            except Exception:
                self.handle_error(conn, address)
            finally:
                with self._lock:
                    del self._busy[conn]
                self._release()
                self.shutdown_request(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Say what went wrong with one client in the log, instead of a stderr traceback."""
        error = sys.exc_info()[1]
        who = client_address[0] if isinstance(client_address, tuple) else client_address
        if isinstance(error, TimeoutError):
            log.debug(
                "closed a connection from %s: idle %.1f s in the middle of a request",
                who,
                self.idle_timeout_s,
            )
        elif isinstance(error, OSError):
            log.debug("connection from %s ended: %s", who, error)
        else:
            log.warning("request from %s failed: %r", who, error, exc_info=True)


def _shut(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


class _IPv4Server(_BoundedServer):
    address_family = socket.AF_INET

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the host's FQDN (socket.getfqdn), which can
        # hang for seconds on a node whose resolver is down; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()


class _IPv6Server(_IPv4Server):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        # "[::]" serves IPv4 too, whatever net.ipv6.bindv6only says (as http.server does).
        with contextlib.suppress(OSError):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _LogStream(io.StringIO):
    """What wsgiref's handler takes for stderr: a failing app's traceback goes to the
    log as one record (at flush) instead of to the process's stderr."""

    def flush(self) -> None:
        text = self.getvalue().strip()
        if text:
            log.error("the metrics server's application failed: %s", text)
        self.seek(0)
        self.truncate()


class _QuietHandler(WSGIRequestHandler):
    """Probes every few seconds would flood stderr: requests go to the debug log.

    The socket's timeout is set by the worker (`idle_timeout_s`), none here.
    """

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def get_stderr(self) -> TextIO:
        return _LogStream()


def _dispatcher(
    metrics_app: WSGIApplication, *, ready: HealthCheck, alive: HealthCheck
) -> WSGIApplication:
    checks = {"/healthz": ("alive", alive), "/readyz": ("ready", ready)}

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path not in checks:
            return _text(start_response, "404 Not Found", "not found: try /metrics\n")
        if environ.get("REQUEST_METHOD") != "GET":
            return _text(start_response, "405 Method Not Allowed", "use GET\n", allow="GET")
        what, check = checks[path]
        ok, reason = _run_check(what, check)
        if ok:
            return _text(start_response, "200 OK", "ok\n")
        return _text(start_response, "503 Service Unavailable", reason + "\n")

    return app


def _run_check(what: str, check: HealthCheck) -> tuple[bool, str]:
    try:
        result = check()
    except Exception as error:
        log.warning("the %s check failed: %r", what, error)
        return False, _one_line(f"{what} check failed: {type(error).__name__}: {error}")
    if isinstance(result, tuple):
        ok, reason = result
        return bool(ok), _one_line(str(reason)) or f"not {what}"
    return bool(result), f"not {what}"


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    if len(line) > _REASON_MAX_CHARS:
        line = line[: _REASON_MAX_CHARS - 3] + "..."
    return line


def _text(
    start_response: StartResponse, status: str, body: str, *, allow: str | None = None
) -> list[bytes]:
    data = body.encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(data))),
        ("Cache-Control", "no-store"),
    ]
    if allow is not None:
        headers.append(("Allow", allow))
    start_response(status, headers)
    return [data]
