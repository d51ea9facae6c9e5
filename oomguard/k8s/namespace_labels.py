"""The labels of namespaces, for the admin policy's namespace selectors.

The policy may choose trusted namespaces (and default rules) by a label selector; the
labels live on the Namespace object, not on the pod, so the agent reads them with
`GET /api/v1/namespaces/{name}` (RBAC: `get` on `namespaces`). The reconciler asks only
while the policy in force has a selector (`AdminPolicy.uses_namespace_selector`).

- Each namespace's labels are kept `ttl_s` (60 s): a label added or removed takes
  effect within a minute, and a node with pods in a handful of namespaces makes a
  handful of small requests a minute.
- The reconcile pass waits for a read it needs (a pass that guessed "no labels" would
  refuse a trusted pod and say so in a Warning Event), but never for long: each read
  has a short timeout (`request_timeout_s`, urllib3 retrying it up to three times), and
  after a transient failure no namespace is read for `retry_after_error_s`.
- Fail safe: labels that cannot be read count as none, so the namespace matches no
  selector (policy `names` still work). 403 (the ClusterRole lacks `get namespaces`)
  and 404 (no such namespace) are answers: no labels, kept `ttl_s` like any answer.
  A transient failure (5xx, 429, no connection, an undecodable body) keeps the last
  labels read until `stale_for_s` after they expired, so a short API outage does not
  take protection away from a trusted namespace's pods; after that, none.
- Each distinct cause is logged once as a warning (not once per pass); a read that
  works again after a failure says so once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import quote

from oomguard.k8s.client import ApiConnectionError, ApiStatusError, KubeApi, KubeApiError
from oomguard.say_once import SaidOnce

log = logging.getLogger(__name__)

NO_LABELS: Mapping[str, str] = MappingProxyType({})
# Distinct "not found" namespaces remembered for logging once each.
_MAX_LOGGED_CAUSES = 256


@dataclass(frozen=True, slots=True)
class NamespaceLabelsSettings:
    # How long one read of a namespace's labels (or a 403/404 for it) is used.
    ttl_s: float = 60.0
    # After a transient failure, how long past `ttl_s` the last labels read still count.
    stale_for_s: float = 300.0
    # Read (and connect) timeout of one request; urllib3 retries it up to three times.
    request_timeout_s: float = 2.0
    # After a transient failure, no namespace is read for this long.
    retry_after_error_s: float = 10.0
    # Namespaces kept; beyond it, the oldest reads are forgotten.
    max_namespaces: int = 4096


@dataclass(frozen=True, slots=True)
class _Read:
    labels: Mapping[str, str]
    at: float  # clock time of the answer


def _labels_of(body: Mapping[str, object]) -> Mapping[str, str]:
    metadata = body.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    if not isinstance(labels, Mapping):
        return NO_LABELS
    return MappingProxyType(
        {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}
    )


class NamespaceLabels:
    """`labels(namespace)`: the namespace's labels as of at most `ttl_s` ago, or none.

    Callable as `namespace_labels(namespace)` (what `Reconciler` takes). Never raises
    for an API failure. Thread-safe, one call at a time: the reconcile pass and the new
    container steering share one cache (a call that waits for the API makes the other
    thread wait, which is what sharing the cache costs).
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
        self._reads: dict[str, _Read] = {}
        self._paused_until = float("-inf")
        self._said: SaidOnce[str] = SaidOnce(_MAX_LOGGED_CAUSES)
        self._failing = False  # a read failed since the last that worked ("works again")
        self.requests = 0  # requests sent since start
        self.failures = 0  # of which failed (any error status or no answer)
        self._lock = threading.Lock()

    def __call__(self, namespace: str) -> Mapping[str, str]:
        return self.labels(namespace)

    def labels(self, namespace: str) -> Mapping[str, str]:
        with self._lock:
            return self._labels(namespace)

    def _labels(self, namespace: str) -> Mapping[str, str]:
        now = self._clock()
        read = self._reads.get(namespace)
        if read is not None and now - read.at < self.settings.ttl_s:
            return read.labels
        if now >= self._paused_until:
            fresh = self._fetch(namespace, now)
            if fresh is not None:
                return fresh.labels
        # No answer now: the last labels read, within the bound, else none.
        if read is not None and now - read.at < self.settings.ttl_s + self.settings.stale_for_s:
            return read.labels
        return NO_LABELS

    # -- internals --------------------------------------------------------------------

    def _fetch(self, namespace: str, now: float) -> _Read | None:
        """Ask the API; the answer kept (labels, or none for 403/404), or None if there
        was no usable answer."""
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}"
        self.requests += 1
        started = time.perf_counter()
        try:
            body = self._api.get(path, timeout_s=self.settings.request_timeout_s)
        except ApiStatusError as exc:
            self.failures += 1
            if exc.status == 403:
                self._warn(
                    "forbidden",
                    "cannot read namespace labels (%s): the agent's ClusterRole needs `get` "
                    "on `namespaces` (the chart grants it); until then the policy's "
                    "namespace selectors match no namespace (namespaces named in the "
                    "policy still work)",
                    exc,
                )
                return self._keep(namespace, NO_LABELS, now)
            if exc.status == 404:
                self._warn(
                    f"not found {namespace}",
                    "namespace %s not found (%s): it has no labels, so it matches no "
                    "namespace selector of the policy",
                    namespace,
                    exc,
                    failing=False,
                )
                return self._keep(namespace, NO_LABELS, now)
            self._transient(f"status {exc.status}", exc)
            return None
        except ApiConnectionError as exc:
            self.failures += 1
            self._transient("no connection", exc)
            return None
        except KubeApiError as exc:
            self.failures += 1
            self._transient("bad answer", exc)
            return None
        finally:
            if self._observe is not None:
                self._observe("get", time.perf_counter() - started)
        if self._failing:
            self._failing = False
            log.info("namespace labels can be read again")
            self._said.forget(keep=lambda key: key.startswith("not found "))
        return self._keep(namespace, _labels_of(body), now)

    def _keep(self, namespace: str, labels: Mapping[str, str], now: float) -> _Read:
        if namespace not in self._reads and len(self._reads) >= self.settings.max_namespaces:
            oldest = sorted(self._reads, key=lambda name: self._reads[name].at)
            for name in oldest[: max(1, len(oldest) // 4)]:
                del self._reads[name]
        read = _Read(labels, now)
        self._reads[namespace] = read
        return read

    def _transient(self, cause: str, exc: KubeApiError) -> None:
        self._paused_until = self._clock() + self.settings.retry_after_error_s
        s = self.settings
        self._warn(
            cause,
            "cannot read namespace labels (%s); the last labels read stay in use up to "
            "%.0f s after they expire, then none (the namespace then matches no selector "
            "of the policy); next try in %.0f s",
            exc,
            s.stale_for_s,
            s.retry_after_error_s,
        )

    def _warn(self, cause: str, message: str, *args: object, failing: bool = True) -> None:
        self._failing = self._failing or failing
        if self._said.first(cause):
            log.warning(message, *args)
