"""Counter files to numbers, and the diff that says a kill happened."""

from __future__ import annotations

import pytest

from oomguard.cgroups.counters import (
    MemoryCounters,
    counters_from_v1,
    counters_from_v2,
    kills_between,
    limit_hits_rose,
    limit_was_hit,
    parse_flat_keyed,
    parse_single_int,
    resume_baseline,
)

# Verbatim: the test host (v1, 6.18) and the VM (v2, 6.1) after one kill.
V1_OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"
V2_EVENTS = "low 0\nhigh 0\nmax 38\noom 1\noom_kill 1\noom_group_kill 0\n"


def test_v1() -> None:
    c = counters_from_v1(parse_flat_keyed(V1_OOM_CONTROL))
    assert c == MemoryCounters(oom_kill=1, limit_hits=0)


def test_v2() -> None:
    assert counters_from_v2(parse_flat_keyed(V2_EVENTS)) == MemoryCounters(1, 1, 0)


@pytest.mark.parametrize(
    "text",
    ["", "oom_kill", "oom_kill -1", "oom_kill 1 2", "oom_kill x", "oom_kill \u0661", "\x00 5"],
)
def test_odd_contents_count_as_zero(text: str) -> None:
    assert counters_from_v2(parse_flat_keyed(text)).oom_kill == 0


@pytest.mark.parametrize(("text", "value"), [("max\n", None), ("", None), ("42", 42)])
def test_single_int(text: str, value: int | None) -> None:
    assert parse_single_int(text) == value


def test_kills_between() -> None:
    a, b = MemoryCounters(3, 5), MemoryCounters(5, 9)
    assert kills_between(None, b) == 0  # first sight is the baseline
    assert kills_between(a, b) == 2
    assert kills_between(b, MemoryCounters(1, 0)) == 1  # removed and made again
    assert limit_was_hit(a, b) and not limit_was_hit(a, a) and not limit_was_hit(None, a)


@pytest.mark.parametrize(
    ("on_disk", "handed_on", "start"),
    [
        # No snapshot of this boot: from disk; kills before the agent first ran are history.
        (MemoryCounters(3, 2, 1), None, MemoryCounters(3, 2, 1)),
        # The snapshot's value: the 2 kills counted since are news.
        (MemoryCounters(5, 2, 1), 3, MemoryCounters(3, 2, 1)),
        (MemoryCounters(3, 0), 3, MemoryCounters(3, 0)),
        # Not in the snapshot (0): a cgroup made while the agent was down, or killed first then.
        (MemoryCounters(2, 0), 0, MemoryCounters(0, 0)),
        # Lower than the snapshot: removed and made again under the same name, counted from 0.
        (MemoryCounters(1, 0), 4, MemoryCounters(0, 0)),
        # Gone: nothing to start from either way.
        (None, 3, None),
        (None, None, None),
    ],
)
def test_resume_baseline(
    on_disk: MemoryCounters | None, handed_on: int | None, start: MemoryCounters | None
) -> None:
    assert resume_baseline(on_disk, handed_on) == start


@pytest.mark.parametrize(
    ("saved", "on_disk", "rose"),
    [
        (None, 3, None),  # no count kept (v1, an old snapshot): unknown
        (2, 2, False),
        (2, 3, True),
        (0, 1, True),  # made while the agent was down, or not listed (0)
        (0, 0, False),
        (5, 1, True),  # lower: made again under the same name, counted from 0
        (5, 0, False),
    ],
)
def test_limit_hits_rose(saved: int | None, on_disk: int, rose: bool | None) -> None:
    assert limit_hits_rose(saved, on_disk) is rose
