"""When the loop reads a kernel log it cannot poll (syslog(2)): `ReadTiming` on a fake clock.

Each case is what happened, in order, and when the next read is then due. The same
timing drives real reads in tests/system/test_syslog_detection.py.
"""

from __future__ import annotations

import itertools

import pytest

from oomguard.kernel.read_timing import (
    SYSLOG_AFTER_V1_SIGNAL_S,
    SYSLOG_IDLE_READ_INTERVAL_S,
    SYSLOG_MIN_READ_GAP_S,
    SYSLOG_RETRY_S,
    SYSLOG_UNPUSHED_READ_INTERVAL_S,
    ReadTiming,
)


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# Steps: ("at", t) moves the clock; ("read",) a read begins now; ("count",) a counter
# increase; ("v1",) a cgroup v1 OOM signal; ("turn", awaiting, decision_at, pushed) the
# end of a loop turn.
Step = tuple[object, ...]

READ_AT_100: list[Step] = [("at", 100.0), ("read",)]

CASES: list[tuple[str, bool, list[Step], float | None]] = [
    # name, read on demand, steps, due
    ("starts with a read of what came while down", True, [("at", 7.0)], 7.0),
    ("a counter increase: read now", True, [*READ_AT_100, ("at", 101.0), ("count",)], 101.0),
    (
        "a counter increase right after a read waits for the gap",
        True,
        [*READ_AT_100, ("at", 100.01), ("count",)],
        100.0 + SYSLOG_MIN_READ_GAP_S,
    ),
    (
        "a v1 signal: read a moment later",
        True,
        [*READ_AT_100, ("at", 101.0), ("v1",)],
        101.0 + SYSLOG_AFTER_V1_SIGNAL_S,
    ),
    (
        "a v1 signal within the gap waits for the gap",
        True,
        [*READ_AT_100, ("v1",)],
        100.0 + SYSLOG_MIN_READ_GAP_S,
    ),
    (
        "a report awaited: read again soon",
        True,
        [*READ_AT_100, ("at", 100.2), ("turn", True, None, True)],
        100.2 + SYSLOG_RETRY_S,
    ),
    (
        "a bare-line decision: read by then",
        True,
        [*READ_AT_100, ("at", 100.2), ("turn", False, 100.4, True)],
        100.4,
    ),
    (
        "a decision due within the gap waits for the gap",
        True,
        [*READ_AT_100, ("turn", False, 100.001, True)],
        100.0 + SYSLOG_MIN_READ_GAP_S,
    ),
    (
        "the earlier of a decision and a report awaited",
        True,
        [*READ_AT_100, ("at", 100.2), ("turn", True, 100.25, True)],
        100.25,
    ),
    (
        "idle, every cgroup pushed: the idle interval after the last read",
        True,
        [*READ_AT_100, ("at", 102.0), ("turn", False, None, True)],
        100.0 + SYSLOG_IDLE_READ_INTERVAL_S,
    ),
    (
        "idle, some cgroup cannot signal: sooner",
        True,
        [*READ_AT_100, ("at", 100.5), ("turn", False, None, False)],
        100.0 + SYSLOG_UNPUSHED_READ_INTERVAL_S,
    ),
    (
        "an earlier ask wins over a later one",
        True,
        [*READ_AT_100, ("at", 100.2), ("turn", True, None, True), ("count",)],
        100.2,
    ),
    (
        "a later ask never postpones a read",
        True,
        [*READ_AT_100, ("at", 100.2), ("count",), ("turn", True, None, True)],
        100.2,
    ),
    (
        "a read asked for keeps the idle read from being scheduled",
        True,
        [*READ_AT_100, ("at", 100.2), ("turn", True, None, False)],
        100.2 + SYSLOG_RETRY_S,
    ),
    (
        "a read answers every ask before it",
        True,
        [*READ_AT_100, ("at", 100.2), ("count",), ("read",)],
        None,
    ),
    # A log that is polled (/dev/kmsg), or none at all: never asked for.
    ("polled: no read at start", False, [("at", 7.0)], None),
    (
        "polled: nothing asks for a read",
        False,
        [*READ_AT_100, ("at", 101.0), ("count",), ("v1",), ("turn", True, 101.5, False)],
        None,
    ),
]


def run(
    on_demand: bool, steps: list[Step], *, idle_s: float = SYSLOG_IDLE_READ_INTERVAL_S
) -> ReadTiming:
    """Start at the first step's time, then take the others in order."""
    first, *rest = steps
    assert first[0] == "at"
    clock = FakeClock(float(first[1]))  # type: ignore[arg-type]
    timing = ReadTiming(clock, idle_read_interval_s=idle_s)
    timing.start(on_demand=on_demand)
    for step in rest:
        if step[0] == "at":
            clock.now = float(step[1])  # type: ignore[arg-type]
        elif step[0] == "read":
            timing.read_started(clock())
        elif step[0] == "count":
            timing.counter_changed()
        elif step[0] == "v1":
            timing.v1_signalled()
        else:
            _, awaiting, decision_at, pushed = step
            timing.turn_ended(
                awaiting_reports=bool(awaiting),
                decision_at=decision_at,  # type: ignore[arg-type]
                fully_pushed=bool(pushed),
            )
    return timing


@pytest.mark.parametrize(
    ("on_demand", "steps", "due"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_when_the_next_read_is_due(on_demand: bool, steps: list[Step], due: float | None) -> None:
    timing = run(on_demand, steps)
    if due is None:
        assert timing.due is None
    else:
        assert timing.due == pytest.approx(due)


def test_is_due_from_the_moment_it_is_due() -> None:
    clock = FakeClock(100.0)
    timing = ReadTiming(clock)
    timing.start(on_demand=True)
    timing.read_started(100.0)
    timing.counter_changed()
    assert not timing.is_due()
    clock.now = 100.0 + SYSLOG_MIN_READ_GAP_S
    assert timing.is_due()


def test_reads_never_come_closer_than_the_gap() -> None:
    # A storm: a counter increase every millisecond for a second, each read made the
    # moment it is due. One read per gap, however many asks.
    clock = FakeClock(0.0)
    timing = ReadTiming(clock)
    timing.start(on_demand=True)
    reads: list[float] = []
    for ms in range(1000):
        clock.now = ms / 1000
        timing.counter_changed()
        if timing.is_due():
            reads.append(clock.now)
            timing.read_started(clock.now)
    gaps = [b - a for a, b in itertools.pairwise(reads)]
    assert len(reads) == pytest.approx(1 / SYSLOG_MIN_READ_GAP_S, abs=1)
    assert min(gaps) >= SYSLOG_MIN_READ_GAP_S - 1e-9


@pytest.mark.parametrize(
    ("idle_s", "pushed", "expected"),
    [
        (5.0, True, 5.0),
        (5.0, False, SYSLOG_UNPUSHED_READ_INTERVAL_S),
        (0.5, False, 0.5),
        (0.01, True, SYSLOG_MIN_READ_GAP_S),  # never closer than the gap
    ],
)
def test_idle_reads_follow_the_interval(idle_s: float, pushed: bool, expected: float) -> None:
    timing = run(True, [*READ_AT_100, ("turn", False, None, pushed)], idle_s=idle_s)
    assert timing.due == pytest.approx(100.0 + expected)


@pytest.mark.parametrize(
    ("on_demand", "idle_s", "pushed", "said"),
    [
        (True, 5.0, True, "on each cgroup OOM signal and every 5 s"),
        (
            True,
            5.0,
            False,
            "on each cgroup OOM signal and every 0.75 s (some cgroups cannot signal their OOMs)",
        ),
        (
            True,
            0.5,
            False,
            "on each cgroup OOM signal and every 0.5 s (some cgroups cannot signal their OOMs)",
        ),
        (False, 5.0, False, ""),
    ],
)
def test_the_status_says_when_the_log_is_read(
    on_demand: bool, idle_s: float, pushed: bool, said: str
) -> None:
    timing = ReadTiming(FakeClock(), idle_read_interval_s=idle_s)
    timing.start(on_demand=on_demand)
    assert timing.describe(pushed) == said
