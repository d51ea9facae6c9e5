"""When the loop reads a kernel log it cannot poll (syslog(2)): pure, on an injected clock.

syslog(2) has no descriptor that says a line was printed, so the loop reads it when it has
a reason to: on every counter increase (before the joiner starts waiting for its report),
just after a cgroup v1 OOM signal, while a counter increase still waits for its report,
by the time the joiner is to decide a bare kill line, and at each resync. Reads coalesce,
at most one per SYSLOG_MIN_READ_GAP_S. A kill no watched counter shows (a node OOM taking
a process outside the watched tree; v1 where eventfds cannot be registered and counters
are only rescanned) gives no such reason: an idle read every `idle_read_interval_s`
reports it within that time, and every SYSLOG_UNPUSHED_READ_INTERVAL_S where some cgroup
cannot signal its OOMs. A log that can be polled (/dev/kmsg) is never asked for here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = [
    "SYSLOG_AFTER_V1_SIGNAL_S",
    "SYSLOG_IDLE_READ_INTERVAL_S",
    "SYSLOG_MIN_READ_GAP_S",
    "SYSLOG_RETRY_S",
    "SYSLOG_UNPUSHED_READ_INTERVAL_S",
    "ReadTiming",
]

# Each read makes the kernel format its whole log buffer (~2 ms for 128 KiB on a 2-core
# machine), so a storm of counter changes shares one read per 50 ms; while a counter
# increase waits for its report, the log is read again every 100 ms.
SYSLOG_MIN_READ_GAP_S = 0.05
SYSLOG_RETRY_S = 0.1
# cgroup v1 signals an OOM at its start, before the kill is counted and its line printed
# (~0.2 ms later here): the log is read this soon after, not at the counter's recheck.
SYSLOG_AFTER_V1_SIGNAL_S = 0.005
# With no other reason to read, the log is read this often (~2 ms a read: 0.04 % of a
# core), so that a kill no watched counter shows is reported within it.
SYSLOG_IDLE_READ_INTERVAL_S = 5.0
# Where the kernel cannot push a cgroup's kills (a read-only v1 cgroup mount refuses the
# eventfd registration), the kernel log is the only prompt source: read this often
# (~0.9 ms a read here: 0.12 % of a core), so such a kill is reported within a second,
# with room for a loaded node.
SYSLOG_UNPUSHED_READ_INTERVAL_S = 0.75


class ReadTiming:
    """When the next read of a log without a descriptor is due (`due`; None: no reason yet).

    The loop tells it what happened (`counter_changed`, `v1_signalled`, `turn_ended`,
    `read_started`) and reads when `is_due`. Until `start(on_demand=True)` it never asks
    for a read: the log is polled, or there is none.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        idle_read_interval_s: float = SYSLOG_IDLE_READ_INTERVAL_S,
    ) -> None:
        self._clock = clock
        self.idle_read_interval_s = idle_read_interval_s
        self._on_demand = False
        self._due: float | None = None
        self._last_read = -math.inf

    @property
    def due(self) -> float | None:
        """When the log is to be read next, on the clock; None: not asked for."""
        return self._due

    def start(self, *, on_demand: bool) -> None:
        """`on_demand`: the log cannot be polled, so it is read from here.

        At once, the first time: what was printed while no agent ran.
        """
        self._on_demand = on_demand
        self._due = self._clock() if on_demand else None

    def idle_interval_s(self, fully_pushed: bool) -> float:
        """How long the log goes unread with nothing else to prompt a read."""
        if fully_pushed:
            return self.idle_read_interval_s
        return min(self.idle_read_interval_s, SYSLOG_UNPUSHED_READ_INTERVAL_S)

    def describe(self, fully_pushed: bool) -> str:
        """When the log is read, for the status line; "" for a log not read on demand."""
        if not self._on_demand:
            return ""
        why = "" if fully_pushed else " (some cgroups cannot signal their OOMs)"
        every = self.idle_interval_s(fully_pushed)
        return f"on each cgroup OOM signal and every {every:g} s{why}"

    def is_due(self) -> bool:
        return self._due is not None and self._clock() >= self._due

    def read_started(self, at: float) -> None:
        """A read began at `at` (on the clock): what it brings answers every ask so far."""
        self._last_read = at
        self._due = None

    def counter_changed(self) -> None:
        """A kill counted: its report is printed right after, read it now (or at the gap)."""
        self._want_at(self._clock())

    def v1_signalled(self) -> None:
        """A cgroup v1 OOM signal: the kill is counted and printed a moment later."""
        self._want_at(self._clock() + SYSLOG_AFTER_V1_SIGNAL_S)

    def turn_ended(
        self, *, awaiting_reports: bool, decision_at: float | None, fully_pushed: bool
    ) -> None:
        """End of a loop turn: read again while a counter increase waits for its report,
        by the joiner's next decision (`decision_at`), else after the idle interval."""
        if awaiting_reports:
            self._want_at(self._clock() + SYSLOG_RETRY_S)
        if decision_at is not None:
            self._want_at(decision_at)
        self.schedule_idle(fully_pushed)

    def schedule_idle(self, fully_pushed: bool) -> None:
        """With no other reason to read, read after the idle interval since the last read."""
        if not self._on_demand or self._due is not None:
            return
        gap = max(self.idle_interval_s(fully_pushed), SYSLOG_MIN_READ_GAP_S)
        self._due = self._last_read + gap

    def _want_at(self, at: float) -> None:
        """Asks coalesce: the earliest wins, and none is before the gap after the last read."""
        if not self._on_demand:
            return
        at = max(at, self._last_read + SYSLOG_MIN_READ_GAP_S)
        if self._due is None or at < self._due:
            self._due = at
