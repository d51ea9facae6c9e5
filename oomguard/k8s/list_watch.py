"""One list, then a watch that follows resourceVersion: the loop behind the pod cache and
the namespace labels.

Why a hand-written loop and not the client's Watch or SharedInformer: on an in-stream 410
the client's Watch retries once with the same stale version and then raises; its
`deserialize=False` mode crashes on ERROR events; SharedInformer relists on 410 with no
backoff (56 relists in 2 s against a permanent 410). Here:

- One list (`resourceVersion=0` the first time, served from the API server's watch
  cache, cheap for a DaemonSet on every node; `""` after a 410, a consistent read), then
  a watch from the list's resourceVersion with bookmarks and a server-side timeout.
- Every event and every bookmark moves the version on, so a watch that ends (its
  timeout), drops (a cut connection) or meets a restarted API server resumes from where
  it was, without a list: the server sends a bookmark to its watchers when it shuts
  down (KEP-1904), so the version is as fresh as its restarted watch cache.
- A 410 in either form (HTTP status, or an in-stream ERROR event) relists at once. A
  second 410 with no event in between means the server keeps expiring fresh versions:
  back off rather than spin.
- Failures (no connection, 5xx, 403, an undecodable answer) back off with jittered
  exponential waits, random in [0, min(max, initial * 2**n)], so a fleet of agents does
  not stampede a recovering API server. When the server said how long to wait
  (Retry-After on a 429 from API Priority and Fairness, or on a 5xx), that is the wait
  instead (client-go waits exactly that too); the client caps it (client.py).
- A watch that ends before delivering anything, not even a bookmark, backs off too: a
  proxy that answers every watch with an empty 200 must not make it spin.

The kind-specific part (what an object becomes, where it is kept, what a failure means
to the user) is the owner's: it passes `replace` (a list's items), `apply` (one ADDED,
MODIFIED or DELETED object) and optional hooks.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tenacity

from oomguard.k8s.client import (
    ApiConnectionError,
    ApiStatusError,
    KubeApi,
    KubeApiError,
    WatchStream,
    retry_after_s,
)

log = logging.getLogger(__name__)

WATCH_EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED"})


@dataclasses.dataclass(frozen=True)
class ListWatchSettings:
    # Server-side end of each watch: bounds how long a silently broken stream can last.
    watch_timeout_s: float = 300.0
    # Added to watch_timeout_s for the client read timeout, so only a dead connection
    # (not a quiet one) trips it.
    watch_read_slack_s: float = 30.0
    list_timeout_s: float = 60.0
    # Jittered exponential backoff after failures: random in [0, min(max, initial * 2**n)].
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


@dataclasses.dataclass(frozen=True)
class ListWatchCounters:
    """Totals since start (a snapshot)."""

    relists: int = 0  # full lists, the first one included
    watch_restarts: int = 0  # watches that ended or dropped normally and were reopened
    errors: int = 0  # failed attempts that led to a backoff
    events: int = 0  # ADDED/MODIFIED/DELETED events received (bookmarks not counted)
    last_error: str | None = None


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410): relist."""

    def __init__(self, message: object = "", *, after_events: bool = False) -> None:
        super().__init__(message)
        self.after_events = after_events


class StreamEndedEarly(Exception):
    """The watch ended before delivering anything: back off instead of spinning."""


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _version(obj: object) -> str | None:
    value = _dict(_dict(obj).get("metadata")).get("resourceVersion")
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None


class ListWatch:
    """Lists and watches one collection on a thread of its own; see the module docstring.

    `replace(items)` gets a list's items; `apply(type, obj)` one watch event's object
    and may raise for an object it cannot use (the event is then skipped and passed to
    `on_malformed`). Hooks, all called on the loop's thread:
    - `on_failure(exc, attempt, wait_s)`: an attempt failed and the loop waits `wait_s`;
      `exc` is a StreamEndedEarly for a watch that ended with nothing (not an error);
    - `on_recovered()`: a list or watch request was answered after failures;
    - `on_malformed(type, exc)`: an event skipped (`exc` None: its object was no object);
    - `keep_going()`: asked before each round; False ends the loop as `stop()` does;
    - `observe(verb, seconds)`: the duration of each list request.
    """

    def __init__(
        self,
        api: KubeApi,
        path: str,
        *,
        name: str,
        replace: Callable[[list[object]], None],
        apply: Callable[[str, Mapping[str, Any]], None],
        query: Sequence[tuple[str, str]] = (),
        settings: ListWatchSettings | None = None,
        on_failure: Callable[[BaseException, int, float], None] | None = None,
        on_recovered: Callable[[], None] | None = None,
        on_malformed: Callable[[str, BaseException | None], None] | None = None,
        keep_going: Callable[[], bool] | None = None,
        observe: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self.path = path
        self.name = name
        self.settings = settings or ListWatchSettings()
        self._query = tuple(query)
        self._replace = replace
        self._apply = apply
        self._on_failure = on_failure
        self._on_recovered = on_recovered
        self._on_malformed = on_malformed
        self._keep_going = keep_going
        self._observe = observe
        self._clock = clock
        self.synced = threading.Event()  # the first list is in
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream_lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._counters = ListWatchCounters()
        self._counters_lock = threading.Lock()
        self._resource_version: str | None = None
        self._gone_streak = 0
        self._failing = False
        self._relist_wanted = False
        self._watching = False
        self._current_at: float | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} list/watch: start() called twice")
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ends the watch at once (shutting its socket down) and waits for the thread.
        (Closing the KubeApi it runs on ends it too, for an owner nobody closes.)

        A list request in flight is not interrupted: it ends by its own timeout, on a
        daemon thread, after this returns."""
        self._stopping.set()
        with self._stream_lock:
            if self._stream is not None:
                self._stream.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- state ------------------------------------------------------------------------

    @property
    def counters(self) -> ListWatchCounters:
        with self._counters_lock:
            return self._counters

    @property
    def resource_version(self) -> str | None:
        return self._resource_version

    @property
    def watching(self) -> bool:
        """A watch stream is open: what was received is current."""
        return self._watching

    @property
    def current_at(self) -> float | None:
        """Clock time at which what was received was last known to be current (a list
        answered, a watch opened, an event or bookmark came, a watch ended); None
        before the first list."""
        return self._current_at

    def relist_next_round(self) -> None:
        """List again when the current watch ends (say, after the owner dropped what it
        kept); from any thread."""
        self._relist_wanted = True

    def _count(self, **deltas: int) -> None:
        with self._counters_lock:
            values = {k: getattr(self._counters, k) + v for k, v in deltas.items()}
            self._counters = dataclasses.replace(self._counters, **values)

    def _current(self) -> None:
        if self.synced.is_set():
            self._current_at = self._clock()

    # -- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        retrying = tenacity.Retrying(
            wait=self._wait,
            stop=lambda _: self._stopping.is_set() or self._api.closed,
            sleep=self._sleep,
            before_sleep=self._note_failure,
            reraise=True,
        )
        while not self._stopping.is_set() and not self._api.closed:
            try:
                retrying(self._round)
            except Exception:  # only when stopping: tenacity re-raises the last failure
                if not self._stopping.is_set() and not self._api.closed:
                    log.exception("%s list/watch loop failed; restarting it", self.name)
        log.debug("%s list/watch stopped", self.name)

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _wait(self, retry_state: tenacity.RetryCallState) -> float:
        """What the server asked for (Retry-After), else the jittered backoff."""
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        told = retry_after_s(exc)
        if told:
            return told
        backoff = tenacity.wait_random_exponential(
            multiplier=self.settings.backoff_initial_s, max=self.settings.backoff_max_s
        )
        return float(backoff(retry_state))

    def _note_failure(self, retry_state: tenacity.RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if exc is None:
            return
        wait_s = retry_state.next_action.sleep if retry_state.next_action else 0.0
        if not isinstance(exc, StreamEndedEarly):
            self._failing = True
            with self._counters_lock:
                self._counters = dataclasses.replace(
                    self._counters, errors=self._counters.errors + 1, last_error=repr(exc)
                )
        if self._on_failure is not None:
            self._on_failure(exc, retry_state.attempt_number, wait_s)

    def _answered(self) -> None:
        if self._failing:
            self._failing = False
            if self._on_recovered is not None:
                self._on_recovered()

    def _round(self) -> None:
        """One list (when needed) and one watch. Returns when the watch ended normally;
        raises to make tenacity back off."""
        if self._api.closed or (self._keep_going is not None and not self._keep_going()):
            self._stopping.set()
        if self._stopping.is_set():
            return
        listed = False
        if self._relist_wanted:
            self._relist_wanted = False
            self._resource_version = None
        if self._resource_version is None:
            self._relist()
            listed = True
        try:
            self._watch()
        except WatchExpired as gone:
            self._resource_version = None
            log.info("%s watch expired (410): %s; relisting", self.name, gone)
            # One 410 is routine: relist at once. A second with no event in between means
            # the server keeps expiring fresh versions: back off rather than spin.
            self._gone_streak = 0 if gone.after_events else self._gone_streak + 1
            if listed and self._gone_streak >= 2:
                raise

    def _relist(self) -> None:
        since = "0" if not self.synced.is_set() else ""
        started = time.perf_counter()
        try:
            body = self._api.get(
                self.path,
                [*self._query, ("resourceVersion", since)],
                timeout_s=self.settings.list_timeout_s,
            )
        finally:
            if self._observe is not None:
                self._observe("list", time.perf_counter() - started)
        self._answered()
        items = body.get("items")
        version = _version(body)
        if not isinstance(items, list) or version is None:
            raise KubeApiError(f"{self.name} list without items or resourceVersion")
        self._replace(items)
        self._resource_version = version
        self._count(relists=1)
        self.synced.set()
        self._current()
        log.debug("listed %d %s at resourceVersion %s", len(items), self.name, version)

    def _watch(self) -> None:
        settings = self.settings
        assert self._resource_version is not None
        query = [
            *self._query,
            ("resourceVersion", self._resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(max(1, round(settings.watch_timeout_s)))),
        ]
        try:
            stream = self._api.watch(
                self.path,
                query,
                read_timeout_s=settings.watch_timeout_s + settings.watch_read_slack_s,
            )
        except ApiStatusError as exc:
            if exc.is_gone:
                self._answered()
                raise WatchExpired(exc.message) from exc
            raise
        self._answered()
        with self._stream_lock:
            self._stream = stream
            if self._stopping.is_set():
                stream.close()
        self._watching = True
        self._current()
        received = 0
        try:
            for event in stream:
                try:
                    self.apply_event(event)
                except WatchExpired as gone:
                    raise WatchExpired(str(gone), after_events=received > 0) from None
                received += 1
        except ApiConnectionError:
            if self._stopping.is_set() or self._api.closed:
                return
            if not received:
                raise StreamEndedEarly(f"{self.name} watch dropped before any event") from None
            log.debug("%s watch dropped after %d events; resuming", self.name, received)
        finally:
            self._watching = False
            self._current()
            with self._stream_lock:
                self._stream = None
            stream.close()
        if self._stopping.is_set():
            return
        if not received:
            raise StreamEndedEarly(f"{self.name} watch ended before any event")
        self._count(watch_restarts=1)

    def apply_event(self, event: Mapping[str, Any]) -> None:
        """One watch event as the server streamed it (the owner's input boundary).

        Any ADDED/MODIFIED/DELETED/BOOKMARK event, however malformed its object, is
        applied or skipped and never raises; an ERROR event raises (410: WatchExpired,
        relist; others: ApiStatusError, back off), as the loop expects."""
        kind, obj = event.get("type"), event.get("object")
        if kind == "ERROR":
            status = _dict(obj)
            code = status.get("code")
            code = code if isinstance(code, int) and not isinstance(code, bool) else 0
            if code == 410:
                raise WatchExpired(status.get("message"))
            raise ApiStatusError.from_status(code or 500, dict(status))
        name = kind if isinstance(kind, str) else repr(kind)
        if not isinstance(obj, Mapping):
            if self._on_malformed is not None:
                self._on_malformed(name, None)
            return
        try:
            if kind in WATCH_EVENT_TYPES:
                self._apply(name, obj)
            elif kind != "BOOKMARK":
                raise ValueError(f"unknown watch event type {kind!r}")
        except Exception as exc:  # one odd object must not stop the watch
            if self._on_malformed is not None:
                self._on_malformed(name, exc)
        version = _version(obj)
        if version is not None:
            self._resource_version = version
        if kind != "BOOKMARK":
            self._count(events=1)
        self._current()


__all__ = [
    "ListWatch",
    "ListWatchCounters",
    "ListWatchSettings",
    "StreamEndedEarly",
    "WatchExpired",
]
