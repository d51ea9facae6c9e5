"""The kernel log's clock on CLOCK_MONOTONIC, from what the engine sees (no probe)."""

from __future__ import annotations

import math

import pytest

from oomguard.kernel.clock import KernelClock

DRIFT = KernelClock.MAX_DRIFT


def test_before_a_read_the_prior_is_that_both_clocks_count_from_boot() -> None:
    clock = KernelClock()
    assert clock.offset_s(1.0) == 0.0
    assert clock.monotonic(1_000_000, 1.0) == pytest.approx(1.0)
    assert clock.middle(1_000_000, 1.0) is None  # pairing places nothing yet
    assert math.isinf(clock.uncertainty_s(1.0))


def test_reads_bracket_the_offset() -> None:
    clock = KernelClock()
    # Lines stamped 99.995-100.000 s, new since a read that began at 100.005 (so printed
    # after it), read by 100.012: the offset is at least 10 ms and at most 12 ms.
    clock.note_read(100.012, 100_000_000, oldest_us=99_995_000, previous_mono=100.005)
    assert clock.middle_offset_s(100.012) == pytest.approx(0.011)
    assert clock.uncertainty_s(100.012) == pytest.approx(0.002)
    assert clock.middle(100_000_000, 100.012) == pytest.approx(100.011)
    # A bracket this narrow: its middle is the estimate.
    assert clock.offset_s(100.012) == pytest.approx(0.011)
    # A later read that tightens neither side changes nothing but the age.
    clock.note_read(100.030, 100_010_000, oldest_us=100_010_000, previous_mono=100.012)
    assert clock.uncertainty_s(100.030) == pytest.approx(0.002 + 2 * DRIFT * 0.018)


def test_a_prompt_read_anchors_the_estimate() -> None:
    clock = KernelClock()
    clock.note_read(10.0105, 10_000_000, prompt=True)  # printed just before 10.0105
    assert clock.offset_s(10.0105) == pytest.approx(0.0105)
    assert math.isinf(clock.uncertainty_s(10.0105))
    clock.bound_below(0.0075, 10.0105)  # a narrow bracket: its middle
    assert clock.middle_offset_s(10.0105) == pytest.approx(0.009)
    assert clock.offset_s(10.0105) == pytest.approx(0.009)
    later = KernelClock()
    later.note_read(10.0105, 10_000_000, prompt=True)
    later.bound_below(-0.5, 10.0105)
    assert later.offset_s(10.0105) == pytest.approx(0.0105)


def _idle_then_kill(clock: KernelClock, offset: float, start: float, idle_s: float) -> float:
    """The engine's evidence for one kill after `idle_s` of silence; returns the
    estimate's error (estimate minus truth) for the kill's line."""
    # The last look before the idle gap found nothing new (its start is the lower side).
    last_look = start
    kill_at = start + idle_s
    stamp_us = round((kill_at - offset) * 1e6)
    # The kill's push woke the loop 2.5 ms after the line; the read ended 0.3 ms later.
    read_end = kill_at + 0.0028
    clock.note_read(
        read_end, stamp_us, oldest_us=stamp_us - 800, previous_mono=last_look, prompt=True
    )
    return clock.monotonic(stamp_us, read_end + 0.001) - kill_at


@pytest.mark.parametrize("idle_s", [1.0, 60.0, 600.0, 3600.0, 86400.0, 7 * 86400.0])
def test_the_kill_time_holds_after_any_idle_gap(idle_s: float) -> None:
    offset = 0.0077
    clock = KernelClock()
    clock.note_read(100.0, round((100.0 - offset - 5) * 1e6))  # the start-up backlog
    error = _idle_then_kill(clock, offset, 100.0, idle_s)
    # The old estimate (the bracket's middle) was early by half the idle time.
    assert 0.0 <= error <= 0.003


def test_the_kill_time_follows_a_drift_over_days() -> None:
    """NTP slews CLOCK_MONOTONIC: here by 50 ppm, 100 times the test host's drift; each
    kill's own prompt read re-anchors the estimate."""
    rate, offset0 = 50e-6, 0.0017
    clock = KernelClock()
    now = 10.0
    for _ in range(10):
        offset = offset0 + rate * now
        error = _idle_then_kill(clock, offset, now, 86400.0)
        assert 0.0 <= error <= 0.003, error
        now += 86400.0


def test_a_loose_bound_does_not_replace_a_tight_anchor() -> None:
    """An idle read (every 5 s through syslog(2)) returns a line printed seconds before:
    a true bound, but loose; it does not move the estimate off the kill's own read."""
    clock = KernelClock()
    clock.note_read(50.003, 50_000_000, prompt=True)
    clock.note_read(3600.0, 3_597_000_000)  # a line printed 3 s before this read
    assert clock.offset_s(3600.0) == pytest.approx(0.003)


def test_bounds_age_by_the_largest_drift_and_a_contradicted_one_gives_way() -> None:
    clock = KernelClock()
    clock.bound_above(0.0080, 0.0)
    clock.bound_below(0.0078, 0.0)
    assert clock.uncertainty_s(1000.0) == pytest.approx(0.0002 + 2 * DRIFT * 1000)
    # A second later the offset is found to be at least 8.9 ms: the upper bound (8.5 ms
    # by then) was wrong, and gives way until a new one comes.
    clock.bound_below(0.0089, 1.0)
    assert clock.middle_offset_s(1.0) == pytest.approx(0.0089)
    assert clock.offset_s(1.0) == pytest.approx(0.0089)  # the prior, clamped up
    assert math.isinf(clock.uncertainty_s(1.0))
    clock.bound_above(0.0091, 1.0)
    assert clock.middle_offset_s(1.0) == pytest.approx(0.0090)


def test_a_measured_seed_is_both_sides() -> None:
    fixed = KernelClock(7700)
    assert fixed.offset_s(1e6) == pytest.approx(0.0077)  # fixed: it does not age
    assert fixed.uncertainty_s(1e6) == 0.0
    seeded = KernelClock(7700, at_mono=5.0)
    assert seeded.uncertainty_s(7.0) == pytest.approx(4 * DRIFT)
