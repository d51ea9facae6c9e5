"""How often one agent may write to the API: a token bucket for every write, and at most
one update of an Event per interval.

An agent runs on every node, so its writes are multiplied by the cluster: a storm of
kills on many nodes at once (a bad rollout) must cost the control plane a bounded,
known rate, not one write per kill. Two limits, both pure (the clock is given):

- `UpdateSchedule`: an Event is updated at most once per `event_update_interval_s`;
  kills in between merge into the next update (counted exactly, persisted by the queue
  meanwhile). Its first occurrence is never held back: a container's first kill must
  be in the API at once, the repeats are what can wait.
- `WriteBudget`: every write of the agent (OOM Event creates and patches, the policy
  side's Events) takes a token from one bucket of `api_burst` tokens refilled at
  `api_qps` per second. A write that finds no token waits; nothing is dropped for it.

Defaults, against the two budgets the same control plane already grants:

- client-go gives every client QPS 5, burst 10 by default, for all its requests; the
  kubelet's recorder gives one node's Events eventRecordQPS 50, eventBurst 100.
- `api_qps` 5: a default client-go agent's rate, and a tenth of the kubelet's Event
  rate on the same node, counting writes only (the agent's reads are one list and one
  watch per resource, outside the bucket). With the 10 s update interval it keeps 50
  busy Events updating at full cadence; beyond that the interval stretches, counts stay
  exact. A 1,000-node storm is then at most 5,000 writes/s in the worst case, where one
  write per kill made it ~14,000.
- `api_burst` 25: above client-go's 10 so that the first kills of a node-wide pressure
  (every container of a node killed in the same second) are created at once rather than
  trickled at 5/s; a quarter of the kubelet's eventBurst 100, and the burst client-go's
  event spam filter itself allows one object (25).
- `event_update_interval_s` 10: 1,000 kills a minute in 20 containers cost 20 creates
  and ~120 updates (each Event at most 6 times a minute) instead of ~850; a count in
  `kubectl get events` is at most 10 s behind, well inside the 15 s an operator waits.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

DEFAULT_API_QPS = 5.0
DEFAULT_API_BURST = 25
DEFAULT_EVENT_UPDATE_INTERVAL_S = 10.0

__all__ = [
    "DEFAULT_API_BURST",
    "DEFAULT_API_QPS",
    "DEFAULT_EVENT_UPDATE_INTERVAL_S",
    "UpdateSchedule",
    "WriteBudget",
]


class WriteBudget:
    """A token bucket shared by every writer of one agent. Thread-safe.

    `try_take` is for a write that can wait for a later round (the Event queue keeps
    it); `reserve` is for a write that must go now that it has begun (the second
    request of one delivery, after a 409 or 404): the token is taken ahead, the level
    goes below zero, and the caller sleeps the returned time, so the rate holds exactly
    either way.
    """

    def __init__(
        self,
        qps: float = DEFAULT_API_QPS,
        burst: int = DEFAULT_API_BURST,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (qps > 0 and math.isfinite(qps)):
            raise ValueError(f"api qps must be a positive number, not {qps!r}")
        if burst < 1:
            raise ValueError(f"api burst must be at least 1, not {burst!r}")
        self.qps = float(qps)
        self.burst = int(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(self.burst)  # a fresh agent may write its burst at once
        self._at = clock()
        self.taken = 0  # writes paid for since start
        self.refused = 0  # try_take calls that found the bucket empty

    def _refill(self, now: float) -> None:
        # A clock that went back (a test's, or a bad monotonic source) refills nothing.
        elapsed = max(0.0, now - self._at)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.qps)
        self._at = max(self._at, now)

    def try_take(self, now: float | None = None) -> bool:
        """Take a token if one is there now."""
        with self._lock:
            self._refill(self._clock() if now is None else now)
            if self._tokens < 1.0:
                self.refused += 1
                return False
            self._tokens -= 1.0
            self.taken += 1
            return True

    def reserve(self, now: float | None = None) -> float:
        """Take a token, borrowing ahead if none is there; how long to wait before
        using it (0: at once)."""
        with self._lock:
            self._refill(self._clock() if now is None else now)
            self._tokens -= 1.0
            self.taken += 1
            return 0.0 if self._tokens >= 0.0 else -self._tokens / self.qps

    def available(self, now: float | None = None) -> int:
        """Whole tokens there now."""
        with self._lock:
            self._refill(self._clock() if now is None else now)
            return max(0, int(self._tokens))

    def seconds_until_available(self, now: float | None = None) -> float:
        """How long until one token is there (0: now)."""
        with self._lock:
            self._refill(self._clock() if now is None else now)
            return max(0.0, (1.0 - self._tokens) / self.qps)


class UpdateSchedule:
    """When each Event may be written next: its first write at once, then at most once
    per interval after the last write that got through.

    Keys are Event refs; times are the caller's clock (monotonic). Not thread-safe: the
    sender's one delivering thread owns it. Not persisted: after a restart an Event's
    next update may come early once, which the budget still bounds.
    """

    def __init__(self, interval_s: float) -> None:
        if not (interval_s >= 0 and math.isfinite(interval_s)):
            raise ValueError(f"event update interval must be >= 0 s, not {interval_s!r}")
        self.interval_s = float(interval_s)
        self._written: dict[str, float] = {}

    def wait_s(self, ref: str, *, created: bool, now: float) -> float:
        """How long `ref` must wait before its next write (0: it may go now)."""
        if not created:
            return 0.0  # the first occurrence is never held back
        last = self._written.get(ref)
        if last is None:
            return 0.0
        return max(0.0, last + self.interval_s - now)

    def wrote(self, ref: str, now: float) -> None:
        """A write of `ref` got through at `now` (after its answer)."""
        self._written[ref] = now
        if len(self._written) > 1024:
            self.forget_before(now)

    def forget_before(self, now: float) -> None:
        """Drop Events whose interval has passed: they would be due anyway."""
        horizon = now - self.interval_s
        for ref in [r for r, t in self._written.items() if t <= horizon]:
            del self._written[ref]

    def __len__(self) -> int:
        return len(self._written)
