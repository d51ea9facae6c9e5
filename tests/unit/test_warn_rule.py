"""The warning rule, one cgroup's episode at a time: when a kill is near, and when an
episode ends so that the next climb is warned about again."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from oomguard.warn.rule import Episode, Signal, Verdict, WarnRule, growth_per_s

MIB = 1024 * 1024
LIMIT = 512 * MIB
RULE = WarnRule()  # 90 %, early 75 %, re-armed below 60 % for 30 s


def pct(percent: float, limit: int = LIMIT) -> int:
    return int(limit * percent / 100)


def look(e: Episode, at: float, ws_percent: float, **kernel: object) -> Verdict | None:
    """One full look at a cgroup whose usage is at its limit (page cache on top)."""
    return e.observe(
        at,
        working_set_bytes=pct(ws_percent),
        usage_bytes=LIMIT,
        limit_bytes=LIMIT,
        **kernel,  # type: ignore[arg-type]
    )


def feed(
    episode: Episode,
    looks: Iterable[tuple[float, float]],
    *,
    usage_percent: float | None = None,
    limit: int = LIMIT,
) -> list[tuple[float, Verdict]]:
    """(time, working set %) looks; the verdicts given, with their times."""
    out: list[tuple[float, Verdict]] = []
    for at, percent in looks:
        ws = pct(percent, limit)
        usage = ws if usage_percent is None else max(ws, pct(usage_percent, limit))
        verdict = episode.observe(at, working_set_bytes=ws, usage_bytes=usage, limit_bytes=limit)
        if verdict is not None:
            out.append((at, verdict))
    return out


def steady(
    percent: float, start: float, end: float, every: float = 0.25
) -> list[tuple[float, float]]:
    n = round((end - start) / every)
    return [(start + i * every, percent) for i in range(n + 1)]


def ramp(
    start_percent: float, percent_per_s: float, start: float, end: float, every: float = 0.25
) -> list[tuple[float, float]]:
    n = round((end - start) / every)
    return [(start + i * every, start_percent + percent_per_s * i * every) for i in range(n + 1)]


# ----- the levels -------------------------------------------------------------------


def test_default_levels() -> None:
    assert (RULE.warn_at_percent, RULE.early_percent, RULE.rearm_percent) == (90, 75, 60)
    assert RULE.early_bytes(LIMIT) == 384 * MIB


@pytest.mark.parametrize(
    ("warn_at", "early", "rearm"), [(99, 84, 69), (50, 35, 20), (20, 5, 2.5), (10, 1, 0.5)]
)
def test_levels_follow_warn_at(warn_at: int, early: int, rearm: float) -> None:
    rule = WarnRule(warn_at_percent=warn_at)
    assert (rule.early_percent, rule.rearm_percent) == (early, rearm)


# ----- when a kill is near ----------------------------------------------------------------


def test_below_the_early_level_nothing_is_said_whatever_the_kernel_does() -> None:
    e = Episode(RULE)
    for i in range(40):
        verdict = e.observe(
            i * 0.25,
            working_set_bytes=pct(74),
            usage_bytes=LIMIT,
            limit_bytes=LIMIT,
            limit_hits=i * 50,
            pressure_some_avg10=80.0,
        )
        assert verdict is None


def test_working_set_at_warn_at_is_a_threshold_warning() -> None:
    e = Episode(RULE)
    v = e.observe(1.0, working_set_bytes=pct(91), usage_bytes=pct(97), limit_bytes=LIMIT)
    assert v is not None
    assert v.signal is Signal.THRESHOLD
    assert (v.working_set_bytes, v.usage_bytes, v.limit_bytes) == (pct(91), pct(97), LIMIT)
    assert v.reclaims_10s is None and v.pressure_some_avg10 is None
    assert v.growth_bytes_per_s is None and v.seconds_to_limit is None
    assert e.warned


def test_parked_between_early_and_warn_at_is_no_warning() -> None:
    """A container that sits at 85 % with no reclaim, no pressure and no growth."""
    assert feed(Episode(RULE), steady(85, 0, 60)) == []


def test_page_cache_at_the_limit_is_no_warning() -> None:
    """Usage 100 %, the kernel reclaiming and stalling: but it is page cache it drops."""
    e = Episode(RULE)
    for i in range(200):
        verdict = e.observe(
            i * 0.25,
            working_set_bytes=pct(5),
            usage_bytes=LIMIT,
            limit_bytes=LIMIT,
            limit_hits=i * 100,
            pressure_some_avg10=40.0,
        )
        assert verdict is None


def test_pressure_from_the_early_level() -> None:
    e = Episode(RULE)
    assert look(e, 0.0, 80, pressure_some_avg10=9.9) is None
    v = look(e, 0.25, 80, pressure_some_avg10=10.0)
    assert v is not None and v.signal is Signal.PRESSURE
    assert v.pressure_some_avg10 == 10.0


def test_pressure_threshold_is_the_rules() -> None:
    e = Episode(WarnRule(pressure_percent=30.0))
    assert look(e, 0.0, 80, pressure_some_avg10=25.0) is None


def test_reclaim_from_the_early_level() -> None:
    e = Episode(RULE)
    assert look(e, 0.0, 80, limit_hits=100) is None
    assert look(e, 1.0, 80, limit_hits=100) is None
    v = look(e, 2.0, 80, limit_hits=140)
    assert v is not None and v.signal is Signal.RECLAIM
    assert v.reclaims_10s == 40


def test_reclaim_older_than_ten_seconds_does_not_count() -> None:
    e = Episode(RULE)
    e.observe(0.0, working_set_bytes=pct(80), usage_bytes=LIMIT, limit_bytes=LIMIT, limit_hits=0)
    e.observe(1.0, working_set_bytes=pct(80), usage_bytes=LIMIT, limit_bytes=LIMIT, limit_hits=50)
    # The hits happened between 0 and 1 s; 11 s later both looks are out of the window.
    for at in (11.5, 12.0):
        v = e.observe(
            at, working_set_bytes=pct(80), usage_bytes=LIMIT, limit_bytes=LIMIT, limit_hits=50
        )
        assert v is None
    assert e.reclaims() == 0


def test_a_counter_that_went_down_is_no_reclaim() -> None:
    """A cgroup removed and made again under the same name starts its counters at 0."""
    e = Episode(RULE)
    e.observe(0.0, working_set_bytes=pct(80), usage_bytes=LIMIT, limit_bytes=LIMIT, limit_hits=90)
    v = e.observe(
        1.0, working_set_bytes=pct(80), usage_bytes=LIMIT, limit_bytes=LIMIT, limit_hits=0
    )
    assert v is None


def test_pressure_wins_over_reclaim_and_threshold() -> None:
    e = Episode(RULE)
    assert look(e, 0.0, 80, limit_hits=0) is None
    v = look(e, 0.5, 95, limit_hits=9, pressure_some_avg10=55.0)
    assert v is not None and v.signal is Signal.PRESSURE
    assert v.reclaims_10s == 9


# ----- growth -------------------------------------------------------------------------------


def test_a_steady_leak_is_warned_at_the_early_level() -> None:
    """50 MiB/s into 512 MiB (~9.8 %/s): warned before the plain 90 % threshold."""
    looks = ramp(70, 50 * 100 / 512, 0.0, 3.0)
    warned = feed(Episode(RULE), looks)
    assert len(warned) == 1
    v = warned[0][1]
    assert v.signal is Signal.THRESHOLD
    assert RULE.early_percent <= 100 * v.working_set_bytes / LIMIT < RULE.warn_at_percent
    assert v.growth_bytes_per_s == pytest.approx(50 * MIB, rel=0.01)
    assert v.seconds_to_limit is not None
    expected = (LIMIT - v.working_set_bytes) / (50 * MIB)
    assert v.seconds_to_limit == pytest.approx(expected, rel=0.02)


def test_a_slow_leak_is_warned_when_the_limit_is_within_the_horizon() -> None:
    """1 %/s from 75 %: 25 s to the limit, inside the 30 s horizon."""
    warned = feed(Episode(RULE), ramp(75, 1.0, 0.0, 10.0))
    assert len(warned) == 1
    assert warned[0][1].seconds_to_limit is not None
    assert warned[0][1].seconds_to_limit <= RULE.horizon_s


def test_growth_beyond_the_horizon_waits_for_warn_at() -> None:
    """0.25 %/s from 76 %: the limit 96 s away; warned only when it reaches 90 %."""
    warned = feed(Episode(RULE), ramp(76, 0.25, 0.0, 60.0))
    assert len(warned) == 1
    at, v = warned[0]
    assert at == pytest.approx(56.0, abs=0.3)
    assert 100 * v.working_set_bytes / LIMIT >= 90


def test_a_shorter_horizon_waits_longer() -> None:
    looks = ramp(75, 1.0, 0.0, 10.0)
    assert feed(Episode(WarnRule(horizon_s=5.0)), looks) == []


def test_growth_needs_three_looks() -> None:
    e = Episode(RULE)
    assert feed(e, [(0.0, 76), (1.0, 86)]) == []
    assert len(feed(e, [(1.1, 88)])) == 1


def test_growth_needs_half_a_second() -> None:
    e = Episode(RULE)
    assert feed(e, [(0.0, 76), (0.1, 80), (0.2, 84), (0.3, 88), (0.4, 89)]) == []


def test_wobble_below_one_percent_is_not_growth() -> None:
    wobble = [(i * 0.25, 80 + (0.4 if i % 2 else 0.0) + i * 0.01) for i in range(40)]
    assert feed(Episode(RULE), wobble) == []


def test_falling_working_set_is_not_growth() -> None:
    assert feed(Episode(RULE), ramp(89, -1.0, 0.0, 10.0)) == []


def test_growth_per_s() -> None:
    assert growth_per_s([]) is None
    assert growth_per_s([(1.0, 5)]) is None
    assert growth_per_s([(1.0, 5), (1.0, 9)]) is None  # no time passed
    assert growth_per_s([(0.0, 0), (1.0, 10), (2.0, 20)]) == pytest.approx(10.0)
    assert growth_per_s([(0.0, 10), (1.0, 0)]) == pytest.approx(-10.0)


def test_rising_bytes_per_s_is_for_the_schedule() -> None:
    e = Episode(RULE)
    assert e.rising_bytes_per_s is None
    feed(e, ramp(76, 1.0, 0.0, 1.0))
    assert e.rising_bytes_per_s == pytest.approx(LIMIT / 100, rel=0.02)
    feed(e, ramp(77, -1.0, 1.25, 4.0))
    assert e.rising_bytes_per_s is None


# ----- hysteresis: one warning per episode ------------------------------------------------


def test_hovering_around_warn_at_gives_one_warning() -> None:
    looks = [(i * 0.25, 88 + 4 * (i % 3)) for i in range(600)]  # 88, 92, 96, ... for 150 s
    assert len(feed(Episode(RULE), looks)) == 1


def test_a_spike_that_recovers_gives_one_warning() -> None:
    looks = ramp(50, 20.0, 0.0, 2.25) + steady(30, 2.5, 120.0)  # up to 95 %, then 30 %
    warned = feed(Episode(RULE), looks)
    assert len(warned) == 1


def test_a_second_climb_after_a_real_recovery_is_warned_again() -> None:
    e = Episode(RULE)
    first = feed(e, [(0.0, 95), *steady(40, 1.0, 31.0)])
    assert len(first) == 1
    assert not e.warned  # 30 s below 60 %: the episode is over
    second = feed(e, [(32.0, 95)])
    assert len(second) == 1


def test_a_short_dip_does_not_end_the_episode() -> None:
    e = Episode(RULE)
    looks = [(0.0, 95), *steady(40, 1.0, 29.0), (29.5, 95), *steady(40, 30.0, 50.0)]
    assert len(feed(e, looks)) == 1
    assert e.warned  # the dip restarted at 30 s: 20 s below is not enough
    assert len(feed(e, [(51.0, 95)])) == 0


def test_staying_between_rearm_and_early_does_not_end_the_episode() -> None:
    e = Episode(RULE)
    assert len(feed(e, [(0.0, 95), *steady(65, 1.0, 120.0)])) == 1
    assert e.warned
    assert feed(e, [(121.0, 95)]) == []


def test_a_kill_ends_the_episode_without_a_warning() -> None:
    """Looks after a kill that still see the victim's memory say nothing; the first
    look below the re-arm level ends the episode at once (no 30 s wait): a process
    restarted in the same cgroup that climbs again is warned about."""
    e = Episode(RULE)
    assert feed(e, steady(70, 0.0, 2.0)) == []  # between re-arm and early: nothing
    e.killed()
    assert feed(e, steady(99, 2.25, 4.0)) == []  # the victim's memory, not yet freed
    assert e.warned
    assert feed(e, [(4.25, 5)]) == []
    assert not e.warned
    assert len(feed(e, [(5.0, 95)])) == 1  # the restarted process's climb


def test_a_kill_after_a_warning_re_arms_on_the_first_low_look() -> None:
    e = Episode(RULE)
    assert len(feed(e, [(0.0, 95)])) == 1
    e.killed()
    assert feed(e, [(0.5, 97), (0.75, 10)]) == []
    assert len(feed(e, [(1.0, 95)])) == 1


def test_a_kill_forgets_the_growth_before_it() -> None:
    e = Episode(RULE)
    assert feed(e, ramp(40, 5.0, 0.0, 3.0)) == []  # 40 -> 55 %: rising, below early
    e.killed()
    assert e.rising_bytes_per_s is None


def test_rearm_time_is_the_rules() -> None:
    e = Episode(WarnRule(rearm_s=5.0))
    assert len(feed(e, [(0.0, 95), *steady(10, 1.0, 6.0), (7.0, 95)])) == 2


def test_a_low_warn_at_still_re_arms() -> None:
    """warn-at 10 %: early 1 %, the episode ends below 0.5 % (not never)."""
    e = Episode(WarnRule(warn_at_percent=10))
    looks = [(0.0, 12), *steady(0.1, 1.0, 32.0), (33.0, 12)]
    assert len(feed(e, looks)) == 2


def test_the_rule_can_change_mid_episode() -> None:
    """The watcher swaps the rule when an annotation changes; looks are kept."""
    e = Episode(RULE)
    assert feed(e, steady(85, 0.0, 2.0)) == []
    e.rule = WarnRule(warn_at_percent=80)
    assert len(feed(e, [(2.25, 85)])) == 1


def test_no_limit_is_no_warning() -> None:
    e = Episode(RULE)
    assert e.observe(0.0, working_set_bytes=MIB, usage_bytes=MIB, limit_bytes=0) is None
