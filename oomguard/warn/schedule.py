"""When to look at a cgroup next (pure): often near the limit, rarely far from it.

The cost of watching is the number of looks, so each cgroup is looked at as rarely as
the lead time allows. Below the early level a look is one small read (usage), and the
next one is due when usage could have reached the early level at `ASSUMED_GROWTH`
(100 MiB/s, or twice the growth measured, whichever is more), clamped to
[`MIN_INTERVAL_S`, `MAX_INTERVAL_S`]: a container at 20 % of a 2 GiB limit is read
every 5 s, one at 70 % of 512 MiB every 0.25 s. Where the kernel pushes a crossing of
the early level (cgroup v1: a usage threshold on an eventfd), the cheap looks below it
are not needed at all, only a slow safety look (`PUSHED_INTERVAL_S`).

At or above the early level (of usage) every look is a full one (working set, reclaim,
pressure), and the working set it read plans the next look: page cache at the limit
with a small working set is looked at as if below the early level (not left to a push,
which fires only when usage crosses from below). A working set at or above the early
level is looked at `HOT_INTERVAL_S` apart for the first `HOT_SETTLE_S` there and
whenever it rises (the growth needs a few close looks to be measured),
`HOT_STEADY_INTERVAL_S` while it holds still below a warning (a container parked at
80 %), and `HOT_WARNED_INTERVAL_S` once it has been warned about and is steady:
bounded, and still enough to see an episode end or a new climb begin.
"""

from __future__ import annotations

MIB = 1024 * 1024
ASSUMED_GROWTH = 100 * MIB  # bytes/s a look below the early level must not miss
MIN_INTERVAL_S = 0.25
MAX_INTERVAL_S = 5.0
PUSHED_INTERVAL_S = 120.0  # a safety look: the kernel pushes the crossing itself
HOT_INTERVAL_S = 0.25
HOT_SETTLE_S = 2.0
HOT_STEADY_INTERVAL_S = 1.0
HOT_WARNED_INTERVAL_S = 2.0


def next_look_in(
    *,
    usage_bytes: int,
    early_bytes: int,
    pushed_below_early: bool,
    warned: bool,
    rising_bytes_per_s: float | None,
    hot_for_s: float = 0.0,
) -> float:
    """Seconds until the next look at a cgroup after one that saw `usage_bytes`
    (`hot_for_s`: how long it has been at or above the early level)."""
    if usage_bytes >= early_bytes:
        if rising_bytes_per_s or hot_for_s < HOT_SETTLE_S:
            return HOT_INTERVAL_S
        return HOT_WARNED_INTERVAL_S if warned else HOT_STEADY_INTERVAL_S
    if pushed_below_early:
        return PUSHED_INTERVAL_S
    rate = max(float(ASSUMED_GROWTH), 2.0 * (rising_bytes_per_s or 0.0))
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, (early_bytes - usage_bytes) / rate))
