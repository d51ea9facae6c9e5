"""The labels of namespaces, for the admin policy's namespace selectors.

The policy may choose trusted namespaces (and default rules) by a label selector; the
labels live on the Namespace object, not on the pod. The agent keeps them current with
one list and one watch of all namespaces (`GET /api/v1/namespaces`, then
`?watch=true` from the list's resourceVersion; RBAC: `list` and `watch` on
`namespaces`), run by `list_watch.ListWatch` as the pod cache is: bookmarks, a
server-side timeout, resume from the last version, 410 -> relist, backoff or the
server's Retry-After on failures. In steady state that is one watch request per node
every `watch_timeout_s` (5 minutes), whatever the number of namespaces or pods; a
label added or removed takes effect as soon as the watch brings it (milliseconds).

- Lazy: the watch starts when a policy with a selector first asks
  (`AdminPolicy.uses_namespace_selector`); without one, no namespace request is ever
  made. With no call for `idle_stop_s` (the policy lost its selector), the watch ends
  at its next round, and starts again on the next call.
- The call that starts it waits for the first list, but never longer than
  `first_list_wait_s` (a pass that guessed "no labels" would refuse a trusted pod and
  say so in a Warning Event); calls made meanwhile wait for the same deadline, none
  after it.
- Compact: only each namespace's labels are kept (a tuple of pairs, strings
  interned), for at most `max_namespaces` namespaces (Kubernetes' scalability limit is
  10,000 per cluster); beyond it, the namespaces asked for are kept first (one asked
  for but left out is listed again when the current watch ends) and the overflow is
  said once.
- Fail safe: labels that are unknown are `NO_LABELS`, so the namespace matches no
  selector (policy `names` still work): before the first list, for a namespace the
  list and watch do not know (not created yet, deleted), without the grant (403: said
  once, clearly), and when the watch has been broken for longer than `stale_for_s`.
  Within that time, a short API outage keeps the last labels known in use.
- Each distinct cause of failure is logged once as a warning (not once per retry); a
  watch that works again after a failure says so once.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from oomguard.k8s.client import ApiConnectionError, ApiStatusError, KubeApi
from oomguard.k8s.list_watch import (
    ListWatch,
    ListWatchCounters,
    ListWatchSettings,
    StreamEndedEarly,
)
from oomguard.say_once import SaidOnce
from oomguard.steer.admin import NO_LABELS

log = logging.getLogger(__name__)

NAMESPACES_PATH = "/api/v1/namespaces"
# Distinct causes remembered for logging once each.
_MAX_LOGGED_CAUSES = 256
# What the API validates for labels (a longer one is not a label a real server sends):
# a key is an optional DNS subdomain prefix (253) and a name (63), a value at most 63.
_MAX_LABEL_KEY_CHARS = 317
_MAX_LABEL_VALUE_CHARS = 63
_MAX_NAME_CHARS = 63
# A namespace with more labels than this is kept as unknown rather than in part: a
# selector with NotIn or DoesNotExist would match a label left out.
MAX_LABELS_PER_NAMESPACE = 256

_Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class NamespaceLabelsSettings:
    # How long the call that starts the watch (and any call meanwhile) waits for the
    # first list; a pass then goes on with what is known.
    first_list_wait_s: float = 2.0
    # While the watch is broken, how long the last labels known stay in use.
    stale_for_s: float = 300.0
    # Namespaces whose labels are kept (Kubernetes' tested limit: 10,000 per cluster).
    max_namespaces: int = 10_000
    # No call for this long: the watch ends at its next round (a new call restarts it).
    idle_stop_s: float = 900.0
    # The list/watch loop. Backoff up to a minute: a missing grant (403) then costs a
    # node about one request a minute, as the per-namespace reads it replaces did.
    watch: ListWatchSettings = field(default_factory=lambda: ListWatchSettings(backoff_max_s=60.0))


class MalformedNamespace(ValueError):
    """A namespace object no real API server would send."""


def project_labels(obj: Mapping[str, Any]) -> tuple[str, _Labels]:
    """(name, labels) of a Namespace object; raises MalformedNamespace for one the agent
    cannot use whole."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        raise MalformedNamespace("namespace without metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME_CHARS:
        raise MalformedNamespace(f"namespace without a usable name: {str(name)[:80]!r}")
    labels = metadata.get("labels")
    if labels is None:
        return sys.intern(name), ()
    if not isinstance(labels, Mapping) or len(labels) > MAX_LABELS_PER_NAMESPACE:
        raise MalformedNamespace(f"namespace {name}: labels unusable or too many")
    pairs = []
    for key, value in labels.items():
        if (
            not isinstance(key, str)
            or not isinstance(value, str)
            or not 0 < len(key) <= _MAX_LABEL_KEY_CHARS
            or len(value) > _MAX_LABEL_VALUE_CHARS
        ):
            raise MalformedNamespace(f"namespace {name}: a label no API server accepts")
        pairs.append((sys.intern(key), sys.intern(value)))
    return sys.intern(name), tuple(sorted(pairs))


class NamespaceLabels:
    """`labels(namespace)`: the namespace's labels as the watch last brought them, or
    NO_LABELS when they are not known.

    Callable as `namespace_labels(namespace)` (what `Reconciler` and the new-container
    steering take; one object serves both). Never raises for an API failure.
    Thread-safe; a call never waits for the API except the first list's bounded wait.
    `close()` ends the watch (the agent's shutdown); so does closing the KubeApi.
    """

    def __init__(
        self,
        api: KubeApi,
        settings: NamespaceLabelsSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        observe_latency: Callable[[str, float], None] | None = None,
    ) -> None:
        self.settings = settings or NamespaceLabelsSettings()
        self._api = api
        self._clock = clock
        self._observe = observe_latency
        self._lock = threading.Lock()  # everything below
        self._known: dict[str, _Labels] = {}
        self._asked: set[str] = set()  # namespaces callers asked about: kept first
        self._watch: ListWatch | None = None
        self._first_list_by = float("-inf")  # calls wait for the first list until then
        self._last_call = float("-inf")
        self._forbidden = False
        self._closed = False
        self._said: SaidOnce[str] = SaidOnce(_MAX_LOGGED_CAUSES)
        self._stale_said = False
        self._overflow = 0  # namespaces not kept, over max_namespaces
        self.malformed = 0  # namespace objects or events skipped as unusable
        self._retired = ListWatchCounters()  # totals of watches ended for idleness

    def __call__(self, namespace: str) -> Mapping[str, str]:
        return self.labels(namespace)

    def labels(self, namespace: str) -> Mapping[str, str]:
        with self._lock:
            if self._closed or self._api.closed:  # closed, or the agent's client is
                return NO_LABELS
            now = self._clock()
            self._last_call = now
            if len(self._asked) < self.settings.max_namespaces:
                self._asked.add(namespace)
            watch = self._watch
            if watch is None or not watch.running:
                watch = self._start(now)
            wait_s = self._first_list_by - now
        if wait_s > 0 and not watch.synced.is_set():
            watch.synced.wait(wait_s)
        with self._lock:
            return self._answer(namespace, watch)

    def close(self) -> None:
        """Ends the watch; later calls answer NO_LABELS."""
        with self._lock:
            self._closed = True
            watch = self._watch
        if watch is not None:
            watch.stop()

    @property
    def counters(self) -> ListWatchCounters:
        """Requests and errors of the watch since this object was made (for tests)."""
        with self._lock:
            watch, retired = self._watch, self._retired
        if watch is None:
            return retired
        now = watch.counters
        return ListWatchCounters(
            relists=retired.relists + now.relists,
            watch_restarts=retired.watch_restarts + now.watch_restarts,
            errors=retired.errors + now.errors,
            events=retired.events + now.events,
            last_error=now.last_error or retired.last_error,
        )

    @property
    def watching(self) -> bool:
        with self._lock:
            return self._watch is not None and self._watch.running

    # -- internals (callers hold self._lock unless said otherwise) -----------------------

    def _start(self, now: float) -> ListWatch:
        if self._watch is not None:  # ended for idleness: keep its totals
            old = self._watch.counters
            r = self._retired
            self._retired = ListWatchCounters(
                relists=r.relists + old.relists,
                watch_restarts=r.watch_restarts + old.watch_restarts,
                errors=r.errors + old.errors,
                events=r.events + old.events,
                last_error=old.last_error or r.last_error,
            )
        self._known.clear()
        self._forbidden = False
        watch = ListWatch(
            self._api,
            NAMESPACES_PATH,
            name="namespace",
            settings=self.settings.watch,
            replace=self._replace,
            apply=self._apply,
            on_failure=self._failed,
            on_recovered=self._recovered,
            on_malformed=self._skipped,
            keep_going=self._wanted,
            observe=self._observe,
            clock=self._clock,
        )
        self._watch = watch
        self._first_list_by = now + self.settings.first_list_wait_s
        watch.start()
        return watch

    def _answer(self, namespace: str, watch: ListWatch) -> Mapping[str, str]:
        if not watch.synced.is_set() or self._forbidden or self._watch is not watch:
            return NO_LABELS
        current_at = watch.current_at
        if not watch.watching and (
            current_at is None or self._clock() - current_at >= self.settings.stale_for_s
        ):
            if not self._stale_said:
                self._stale_said = True
                log.warning(
                    "namespace labels not known for %.0f s (the watch is broken, its log "
                    "says why): they count as none from now on, so the policy's namespace "
                    "selectors match no namespace until the watch works again",
                    self.settings.stale_for_s,
                )
            return NO_LABELS
        pairs = self._known.get(namespace)
        if pairs is None:
            if self._overflow:  # perhaps left out for room: the next list keeps it first
                self._overflow = 0
                watch.relist_next_round()
            return NO_LABELS
        return MappingProxyType(dict(pairs))

    def _wanted(self) -> bool:
        """The loop asks before each round: stop when nobody asked for a long time."""
        with self._lock:
            wanted = not self._closed and (
                self._clock() - self._last_call < self.settings.idle_stop_s
            )
        if not wanted:
            log.info("namespace labels not asked for in a while: the namespace watch ends")
        return wanted

    def _keep(self, name: str, pairs: _Labels) -> None:
        if name not in self._known and len(self._known) >= self.settings.max_namespaces:
            if name in self._asked:  # make room: one nobody asked about goes
                spare = next((n for n in self._known if n not in self._asked), None)
                if spare is not None:
                    del self._known[spare]
                    self._known[name] = pairs
                    return
            self._overflow += 1
            if self._said.first("overflow"):
                log.warning(
                    "more than %d namespaces: the labels of the others are not kept, so "
                    "the policy's selectors match none of them (their pods' namespaces "
                    "are kept first)",
                    self.settings.max_namespaces,
                )
            return
        self._known[name] = pairs

    # -- the list/watch loop's hooks (on its thread) -----------------------------------

    def _replace(self, items: list[object]) -> None:
        projected: list[tuple[str, _Labels]] = []
        malformed = 0
        for item in items:
            try:
                if not isinstance(item, Mapping):
                    raise MalformedNamespace("namespace item is not a JSON object")
                projected.append(project_labels(item))
            except MalformedNamespace as exc:
                malformed += 1
                log.warning("skipping a namespace the API listed: %s", exc)
        with self._lock:
            asked = self._asked
            projected.sort(key=lambda pair: pair[0] not in asked)  # asked for first
            self._known.clear()
            self._overflow = 0
            for name, pairs in projected:
                self._keep(name, pairs)
            self._forbidden = False
            self._stale_said = False
            self.malformed += malformed

    def _apply(self, kind: str, obj: Mapping[str, Any]) -> None:
        name, pairs = project_labels(obj)
        with self._lock:
            if kind == "DELETED":
                self._known.pop(name, None)
            else:
                self._keep(name, pairs)
            self._stale_said = False

    def _skipped(self, kind: str, exc: BaseException | None) -> None:
        with self._lock:
            self.malformed += 1
        if exc is not None and self._said.first(f"malformed {kind}"):
            log.warning("skipping a namespace %s event: %s", kind, exc)

    def _failed(self, exc: BaseException, attempt: int, wait_s: float) -> None:
        if isinstance(exc, StreamEndedEarly):
            log.debug("namespace watch: %s; again in %.1fs", exc, wait_s)
            return
        if isinstance(exc, ApiStatusError) and exc.status == 403:
            with self._lock:
                self._known.clear()
                self._forbidden = True
            watch = self._watch
            if watch is not None:
                watch.relist_next_round()  # what comes back after the grant: a full list
            if self._said.first("forbidden"):
                log.warning(
                    "cannot list and watch namespaces (%s): the agent's ClusterRole needs "
                    "`list` and `watch` on `namespaces` (the chart grants them); until then "
                    "the policy's namespace selectors match no namespace (namespaces named "
                    "in the policy still work)",
                    exc,
                )
            return
        if isinstance(exc, ApiStatusError):
            cause = f"status {exc.status}"
        elif isinstance(exc, ApiConnectionError):
            cause = "no connection"
        else:
            cause = type(exc).__name__
        if self._said.first(cause):
            log.warning(
                "cannot watch namespace labels (%s); the last labels known stay in use for "
                "up to %.0f s, then none (the namespace then matches no selector of the "
                "policy); retrying (next in %.1f s)",
                exc,
                self.settings.stale_for_s,
                wait_s,
            )

    def _recovered(self) -> None:
        log.info("namespace labels can be read again")
        self._said.forget(keep=lambda key: key == "overflow" or key.startswith("malformed "))
