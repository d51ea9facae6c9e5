"""The kernel log's clock on CLOCK_MONOTONIC, bracketed from what the engine sees."""

from __future__ import annotations

import math

import pytest

from oomguard.kclock import KernelClock

DRIFT = KernelClock.MAX_DRIFT


def test_knows_nothing_before_a_read() -> None:
    clock = KernelClock()
    assert clock.offset_s(1.0) is None
    assert clock.monotonic(1_000_000, 1.0) is None
    assert math.isinf(clock.uncertainty_s(1.0))


def test_reads_bracket_the_offset() -> None:
    clock = KernelClock()
    # Lines stamped 99.995-100.000 s, new since a read that began at 100.005 (so printed
    # after it), read by 100.012: the offset is at least 10 ms and at most 12 ms.
    clock.note_read(100.012, 100_000_000, oldest_us=99_995_000, previous_mono=100.005)
    assert clock.offset_s(100.012) == pytest.approx(0.011)
    assert clock.uncertainty_s(100.012) == pytest.approx(0.002)
    assert clock.monotonic(100_000_000, 100.012) == pytest.approx(100.011)
    # A later read that tightens neither side changes nothing but the age.
    clock.note_read(100.030, 100_010_000, oldest_us=100_010_000, previous_mono=100.012)
    assert clock.uncertainty_s(100.030) == pytest.approx(0.002 + 2 * DRIFT * 0.018)


def test_a_bracket_forms_from_both_sides() -> None:
    clock = KernelClock()
    clock.note_read(10.010, 10_000_000)  # at most 10 ms; no lower side yet
    assert clock.offset_s(10.010) == pytest.approx(0.010)
    assert math.isinf(clock.uncertainty_s(10.010))
    clock.bound_below(0.0075, 10.010)
    assert clock.offset_s(10.010) == pytest.approx(0.00875)
    assert clock.uncertainty_s(10.010) == pytest.approx(0.0025)
    assert clock.monotonic(10_000_000, 10.010) == pytest.approx(10.00875)


def test_bounds_age_by_the_largest_drift_and_a_contradicted_one_gives_way() -> None:
    clock = KernelClock()
    clock.bound_above(0.0080, 0.0)
    clock.bound_below(0.0078, 0.0)
    assert clock.uncertainty_s(1000.0) == pytest.approx(0.0002 + 2 * DRIFT * 1000)
    # A second later the offset is found to be at least 8.9 ms: the upper bound (8.5 ms
    # by then) was wrong, and gives way until a new one comes.
    clock.bound_below(0.0089, 1.0)
    assert clock.offset_s(1.0) == pytest.approx(0.0089)
    assert math.isinf(clock.uncertainty_s(1.0))
    clock.bound_above(0.0091, 1.0)
    assert clock.offset_s(1.0) == pytest.approx(0.0090)


def test_a_measured_seed_is_both_sides() -> None:
    fixed = KernelClock(7700)
    assert fixed.offset_s(1e6) == pytest.approx(0.0077)  # fixed: it does not age
    assert fixed.uncertainty_s(1e6) == 0.0
    seeded = KernelClock(7700, at_mono=5.0)
    assert seeded.uncertainty_s(7.0) == pytest.approx(4 * DRIFT)
