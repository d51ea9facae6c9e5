"""When the warning watcher looks at a cgroup next: rarely far from the limit, often near it.

The cost of watching a node is the number of looks; the lead time of a warning is how
soon a look sees a climb. These pin both ends.
"""

from __future__ import annotations

import pytest

from oomguard.warn.schedule import (
    ASSUMED_GROWTH,
    HOT_INTERVAL_S,
    HOT_SETTLE_S,
    HOT_STEADY_INTERVAL_S,
    HOT_WARNED_INTERVAL_S,
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    PUSHED_INTERVAL_S,
    next_look_in,
)

MIB = 1024 * 1024
GIB = 1024 * MIB


def below(usage: int, early: int, *, pushed: bool = False, rising: float | None = None) -> float:
    return next_look_in(
        usage_bytes=usage,
        early_bytes=early,
        pushed_below_early=pushed,
        warned=False,
        rising_bytes_per_s=rising,
    )


def hot(*, warned: bool = False, rising: float | None = None, hot_for_s: float = 10.0) -> float:
    return next_look_in(
        usage_bytes=400 * MIB,
        early_bytes=384 * MIB,
        pushed_below_early=True,
        warned=warned,
        rising_bytes_per_s=rising,
        hot_for_s=hot_for_s,
    )


def test_far_from_the_limit_is_looked_at_rarely() -> None:
    """20 % of a 2 GiB limit (early 75 %): 1.1 GiB away, more than MAX_INTERVAL_S at 100 MiB/s."""
    assert below(int(0.2 * 2 * GIB), int(0.75 * 2 * GIB)) == MAX_INTERVAL_S


def test_the_look_comes_before_assumed_growth_reaches_the_early_level() -> None:
    """70 % of 512 MiB, early at 384 MiB: 25.6 MiB away is 0.256 s at 100 MiB/s."""
    interval = below(int(0.7 * 512 * MIB), 384 * MIB)
    assert interval == pytest.approx((384 - 0.7 * 512) * MIB / ASSUMED_GROWTH)
    assert MIN_INTERVAL_S <= interval < 0.3


def test_just_below_the_early_level_is_not_a_busy_loop() -> None:
    assert below(384 * MIB - 1, 384 * MIB) == MIN_INTERVAL_S


def test_measured_growth_faster_than_assumed_brings_the_look_closer() -> None:
    usage, early = 100 * MIB, 384 * MIB
    assumed = below(usage, early)
    assert below(usage, early, rising=400 * MIB) < assumed  # twice 400 MiB/s is used
    assert below(usage, early, rising=400 * MIB) == pytest.approx(284 * MIB / (800 * MIB))
    assert below(usage, early, rising=10 * MIB) == assumed  # slower than assumed: no change


@pytest.mark.parametrize("usage_mib", [0, 10, 200, 383])
def test_where_the_kernel_pushes_the_crossing_only_a_safety_look_is_due(usage_mib: int) -> None:
    assert below(usage_mib * MIB, 384 * MIB, pushed=True) == PUSHED_INTERVAL_S


def test_at_the_early_level_looks_are_close_while_settling() -> None:
    for hot_for_s in (0.0, 0.5, HOT_SETTLE_S - 0.01):
        assert hot(hot_for_s=hot_for_s) == HOT_INTERVAL_S


def test_at_the_early_level_rising_keeps_the_looks_close() -> None:
    assert hot(rising=MIB) == HOT_INTERVAL_S
    assert hot(rising=MIB, warned=True) == HOT_INTERVAL_S


def test_parked_at_the_early_level_is_looked_at_every_second() -> None:
    assert hot() == HOT_STEADY_INTERVAL_S


def test_warned_and_steady_is_looked_at_less() -> None:
    """A page-cache workload at 100 % usage, or a container parked after its warning."""
    assert hot(warned=True) == HOT_WARNED_INTERVAL_S
    assert HOT_STEADY_INTERVAL_S < HOT_WARNED_INTERVAL_S <= MAX_INTERVAL_S


def test_above_the_early_level_pushes_do_not_stretch_the_looks() -> None:
    """The v1 threshold fires once on the crossing, not on each change above it."""
    for pushed in (True, False):
        interval = next_look_in(
            usage_bytes=500 * MIB,
            early_bytes=384 * MIB,
            pushed_below_early=pushed,
            warned=False,
            rising_bytes_per_s=None,
            hot_for_s=60.0,
        )
        assert interval == HOT_STEADY_INTERVAL_S


@pytest.mark.parametrize("usage", [0, 1, 100 * MIB, 384 * MIB - 1, 384 * MIB, 10 * GIB])
@pytest.mark.parametrize("rising", [None, 0.0, 1.0, 1e12])
def test_every_interval_is_bounded(usage: int, rising: float | None) -> None:
    for pushed in (False, True):
        for warned in (False, True):
            interval = next_look_in(
                usage_bytes=usage,
                early_bytes=384 * MIB,
                pushed_below_early=pushed,
                warned=warned,
                rising_bytes_per_s=rising,
                hot_for_s=5.0,
            )
            assert min(MIN_INTERVAL_S, HOT_INTERVAL_S) <= interval <= PUSHED_INTERVAL_S


def test_a_leak_at_fifty_mib_s_is_seen_within_half_a_second_of_the_early_level() -> None:
    """Looks below the early level at 50 MiB/s into 512 MiB: none lands further than
    ASSUMED_GROWTH allows past the early level (the lead time rests on it)."""
    early = 384 * MIB
    rate = 50 * MIB
    t, usage = 0.0, 0
    while usage < early:
        step = below(usage, early, rising=rate if t > 0 else None)
        t += step
        usage = int(rate * t)
    overshoot = (usage - early) / rate
    assert overshoot <= MIN_INTERVAL_S + 1e-9
