"""When a kill is near: the decision rule, one episode at a time (pure).

Levels, in percent of the cgroup's limit (the limit that binds it: a container's own
limit; the pod-level and node-allocatable cgroups are watched against theirs):

- `warn_at` (default 90, per pod `oomguard.io/warn-at`): the working set (usage minus
  inactive file, what the kernel cannot drop) has reached it. Signal `threshold`.
- `early` (`warn_at` - 15): from here the kernel's own signals and the growth count:
  - `pressure`: tasks of the cgroup waited for memory in at least `pressure_percent`
    (10 %) of the last 10 s (v2 PSI `some avg10`): reclaim no longer keeps up.
  - `reclaim`: the kernel had to reclaim to keep the cgroup under its limit (v2
    memory.events `max`; v1 `memory.failcnt` or, where that stays 0 as on kernel 6.18,
    vmpressure signals) in the last 10 s: the cgroup is at its limit and at most
    `100 - early` % of it is memory the kernel can drop.
  - `threshold` again, on growth: the working set rose steadily over the last seconds
    (least squares over >= 3 looks spanning >= 0.5 s, at least 1 % of the limit in all)
    and at that rate reaches the limit within `horizon_s` (30 s). A leak at 50 MiB/s
    into 512 MiB is warned about at the early level, ~2.5 s before the kill, where
    the plain threshold would give 1 s; a slow one (5 MiB/s) ~25 s before.
  Page cache never counts: a container at 100 % usage whose working set is small is
  nowhere near a kill, whatever reclaim and pressure say.

Hysteresis: one warning per episode. After a warning the cgroup is quiet until its
working set has stayed below `early - rearm_margin` (60 % by default) for `rearm_s`
(30 s): a spike that recovers gives one warning, a working set hovering around the
threshold gives one, not a stream, and a second climb after a real recovery is a new
episode that is warned about again. A kill ends an episode too: no warning from the
looks that see the victim's memory not yet freed; the next climb is a new episode.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field

EARLY_MARGIN_PERCENT = 15
HISTORY_S = 10.0  # looks kept: reclaim is counted over this, growth over `GROWTH_S`
GROWTH_S = 5.0
MIN_GROWTH_SPAN_S = 0.5
MIN_GROWTH_LOOKS = 3
MIN_GROWTH_PERCENT = 1.0  # of the limit, over the growth window: below it is noise


class Signal(enum.StrEnum):
    """What fired (JSON `signal`, a public contract)."""

    THRESHOLD = "threshold"
    PRESSURE = "pressure"
    RECLAIM = "reclaim"


@dataclass(frozen=True, slots=True)
class WarnRule:
    """How one cgroup is judged. Percent of the limit that binds it."""

    warn_at_percent: int = 90
    horizon_s: float = 30.0
    pressure_percent: float = 10.0
    rearm_margin_percent: int = 15
    rearm_s: float = 30.0

    @property
    def early_percent(self) -> int:
        return max(1, self.warn_at_percent - EARLY_MARGIN_PERCENT)

    @property
    def rearm_percent(self) -> float:
        """Below this an episode may end. Never 0 (nothing is below 0 %, so an episode
        of a low `warn_at` would never end): at least half the early level."""
        return max(self.early_percent - self.rearm_margin_percent, self.early_percent / 2)

    def early_bytes(self, limit_bytes: int) -> int:
        return limit_bytes * self.early_percent // 100


@dataclass(frozen=True, slots=True)
class Verdict:
    """A kill is near: what fired and what the kernel is doing."""

    signal: Signal
    working_set_bytes: int
    usage_bytes: int
    limit_bytes: int
    reclaims_10s: int | None  # limit hits in the last HISTORY_S; None: not counted here
    pressure_some_avg10: float | None
    growth_bytes_per_s: float | None  # the working set's rise, when measured
    seconds_to_limit: float | None  # at that rate; None when not rising


@dataclass(slots=True)
class _Look:
    at: float
    working_set: int
    limit_hits: int | None


def growth_per_s(looks: list[tuple[float, int]]) -> float | None:
    """The least-squares slope of (time, bytes); None with fewer than two distinct times."""
    n = len(looks)
    if n < 2:
        return None
    mean_t = sum(t for t, _ in looks) / n
    mean_v = sum(v for _, v in looks) / n
    var = sum((t - mean_t) ** 2 for t, _ in looks)
    if var <= 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in looks) / var


@dataclass(slots=True)
class Episode:
    """One cgroup's recent looks and whether it was warned about (see the docstring)."""

    rule: WarnRule
    warned: bool = False
    after_kill: bool = False  # warned stands for a kill, not a warning (see killed)
    below_since: float | None = None
    _looks: collections.deque[_Look] = field(default_factory=collections.deque)

    def observe(
        self,
        at: float,
        *,
        working_set_bytes: int,
        usage_bytes: int,
        limit_bytes: int,
        limit_hits: int | None = None,
        pressure_some_avg10: float | None = None,
    ) -> Verdict | None:
        """Take one full look; a Verdict when this look starts an episode."""
        self._remember(at, working_set_bytes, limit_hits)
        percent = 100.0 * working_set_bytes / limit_bytes if limit_bytes > 0 else 0.0
        if self.warned:
            self._maybe_rearm(at, percent)
            return None
        if percent < self.rule.early_percent:
            return None
        reclaims = self.reclaims()
        growth, to_limit = self.projection(limit_bytes)
        signal: Signal | None = None
        rule = self.rule
        if pressure_some_avg10 is not None and pressure_some_avg10 >= rule.pressure_percent:
            signal = Signal.PRESSURE
        elif reclaims:
            signal = Signal.RECLAIM
        elif percent >= rule.warn_at_percent or (
            to_limit is not None and to_limit <= rule.horizon_s
        ):
            signal = Signal.THRESHOLD
        if signal is None:
            return None
        self.warned = True
        self.below_since = None
        return Verdict(
            signal=signal,
            working_set_bytes=working_set_bytes,
            usage_bytes=usage_bytes,
            limit_bytes=limit_bytes,
            reclaims_10s=reclaims,
            pressure_some_avg10=pressure_some_avg10,
            growth_bytes_per_s=growth,
            seconds_to_limit=to_limit,
        )

    def killed(self) -> None:
        """The kernel killed in the cgroup: the episode ended there. Quiet until a look
        finds the working set below the re-arm level (the victim's memory freed), at
        once rather than after `rearm_s`: a process restarted in the same cgroup that
        climbs again is a new episode, warned about."""
        self.warned = True
        self.after_kill = True
        self.below_since = None
        self._looks.clear()

    def _remember(self, at: float, working_set: int, limit_hits: int | None) -> None:
        self._looks.append(_Look(at, working_set, limit_hits))
        while self._looks and at - self._looks[0].at > HISTORY_S:
            self._looks.popleft()

    def _maybe_rearm(self, at: float, percent: float) -> None:
        if percent >= self.rule.rearm_percent:
            self.below_since = None
        elif self.after_kill:
            self.warned = self.after_kill = False
            self.below_since = None
        elif self.below_since is None:
            self.below_since = at
        elif at - self.below_since >= self.rule.rearm_s:
            self.warned = False
            self.below_since = None

    def reclaims(self) -> int | None:
        """Limit hits over the looks kept (HISTORY_S); None when not counted."""
        counted = [look.limit_hits for look in self._looks if look.limit_hits is not None]
        if len(counted) < 2:
            return None
        return max(0, counted[-1] - counted[0])

    def projection(self, limit_bytes: int) -> tuple[float | None, float | None]:
        """The working set's growth (bytes/s) and the seconds until it reaches the limit
        at that rate; (None, None) when it is not rising steadily enough to say."""
        if not self._looks:
            return None, None
        newest = self._looks[-1].at
        recent = [(lk.at, lk.working_set) for lk in self._looks if newest - lk.at <= GROWTH_S]
        if len(recent) < MIN_GROWTH_LOOKS or recent[-1][0] - recent[0][0] < MIN_GROWTH_SPAN_S:
            return None, None
        rise = recent[-1][1] - recent[0][1]
        if rise * 100 < MIN_GROWTH_PERCENT * limit_bytes:
            return None, None
        slope = growth_per_s(recent)
        if slope is None or slope <= 0:
            return None, None
        return slope, max(0.0, (limit_bytes - recent[-1][1]) / slope)

    @property
    def rising_bytes_per_s(self) -> float | None:
        """The working set's recent growth, for the look schedule (None: not known)."""
        recent = [(lk.at, lk.working_set) for lk in self._looks]
        slope = growth_per_s(recent[-MIN_GROWTH_LOOKS * 2 :])
        return slope if slope is not None and slope > 0 else None
