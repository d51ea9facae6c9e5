"""Pairing kill lines that name no cgroup with counter increases, by time.

Past the kernel's report rate limit (10 headers per 5 s, machine-wide) a kill prints
only "Killed process PID (comm) ...", and so do the kills of everyone else on the host.
The times below are on CLOCK_MONOTONIC, in seconds; a line's kernel stamp is its print
time (the joiners here have a kernel clock offset of 0). Shapes measured on the test
host: a line is printed 0.05-0.3 ms after its cgroup's v1 OOM signal and 0.1-3 ms
before the read that shows its count (up to ~8 ms with the CPUs busy).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from oomguard.cgroups.watch import CounterChange
from oomguard.detect.join import KillJoiner, line_distance_s
from oomguard.kernel.clock import KernelClock
from oomguard.records import Constraint, KernelOomKill
from tests.unit.test_detector import CONTAINER, POD, WALL

OTHER = f"{POD}/{'b' * 64}"
WINDOW = KillJoiner.PAIR_WINDOW_S
TOL = KillJoiner.PRINT_TOLERANCE_S


def bare(pid: int, printed: float, *, scope: str = "memory cgroup") -> KernelOomKill:
    """A kill line whose report header the kernel rate-limited away, printed at `printed`."""
    return KernelOomKill(
        seq=pid,
        kernel_time_us=round(printed * 1_000_000),
        pid=pid,
        command=f"p{pid}",
        anon_rss_kb=1000,
        file_rss_kb=0,
        shmem_rss_kb=0,
        scope=scope,
    )


def counted(
    seen: float,
    *,
    cgroup: str = CONTAINER,
    since: float | None = None,
    signal: float | None = None,
    kills: int = 1,
) -> CounterChange:
    return CounterChange(
        cgroup,
        kills,
        frozenset({cgroup}),
        seen_mono=seen,
        since_mono=since,
        signal_mono=signal,
    )


@pytest.mark.parametrize(
    ("printed", "seen", "since", "signal", "expected"),
    [
        # Read 0.3 ms after the line: its kill.
        (10.0, 10.0003, None, None, 0.0003),
        # Printed a little after the read (the count comes first): within the tolerance.
        (10.001, 10.0, None, None, 0.001),
        (10.0 + TOL + 0.001, 10.0, None, None, None),
        # Before the read that did not show the kill yet: an earlier kill's line.
        (9.99, 10.0, 9.995, None, None),
        # A v1 recheck 50 ms after the signal: close to the signal is what counts.
        (10.0002, 10.05, 10.0001, 10.0, 0.0002),
        # Far from both the read and the signal: someone else's.
        (9.9, 10.0, None, None, None),
        (10.0 - WINDOW - 0.001, 10.0, None, None, None),
        (10.0 - WINDOW + 0.001, 10.0, None, None, WINDOW - 0.001),
    ],
)
def test_line_distance(
    printed: float, seen: float, since: float | None, signal: float | None, expected: float | None
) -> None:
    got = line_distance_s(printed, seen, since, signal, window_s=WINDOW, tolerance_s=TOL)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-9)


def joiner(*, whole_tree: bool = False) -> KillJoiner:
    j = KillJoiner(kmsg_available=True, grace_s=2.0, report_unpaired=whole_tree)
    j.kernel_log_read(0.0)  # the engine says how far the log has been read
    return j


@dataclass(frozen=True)
class Line:
    pid: int
    printed: float
    read: float  # when the engine handed it in


@dataclass(frozen=True)
class Count:
    change: CounterChange
    cgroup_victim: int | None  # the pid that must be named for it; None: victim unknown


def run(j: KillJoiner, lines: list[Line], counts: list[Count], *, until: float) -> dict[int, str]:
    """Feed lines and increases in the order the engine would, the log read as it goes."""
    events: list[tuple[float, int, Line | Count]] = [(x.read, 0, x) for x in lines]
    events += [(c.change.seen_mono or 0.0, 1, c) for c in counts]
    events.sort(key=lambda e: (e[0], e[1]))
    records = []
    for at, _, what in events:
        j.kernel_log_read(at)
        if isinstance(what, Line):
            got = j.on_kernel_kill(
                bare(what.pid, what.printed), None, counted=False, now_mono=at, now_wall=WALL
            )
            records += [got] if got is not None else []
        else:
            records += j.on_counter_change(what.change, now_mono=at, now_wall=WALL)
    j.kernel_log_read(until)
    records += j.on_tick(now_mono=until)
    assert len(records) == len([c for c in counts for _ in range(c.change.kills)]), records
    return {r.pid or -i: r.cgroup or "" for i, r in enumerate(records)}


def test_ours_is_named_and_a_foreign_line_30_ms_away_is_not() -> None:
    # Another tenant's kill 30 ms before ours, then ours, read 0.5 ms later.
    j = joiner()
    named = run(
        j,
        [Line(900, 10.0, 10.0005), Line(100, 10.03, 10.0302)],
        [Count(counted(10.0303, signal=10.0299), 100)],
        until=20.0,
    )
    assert named == {100: CONTAINER}
    assert j.ambiguous == 0


def test_a_foreign_line_alone_is_never_our_victim() -> None:
    # Our kill's own line was lost; a foreign line 40 ms earlier does not stand in.
    j = joiner()
    named = run(j, [Line(900, 10.0, 10.0005)], [Count(counted(10.04), None)], until=20.0)
    assert list(named.values()) == [CONTAINER] and all(pid < 1 for pid in named)


def test_syslog_order_the_line_read_after_the_increase() -> None:
    # syslog(2): the increase is seen first, the line read 50 ms later.
    j = joiner()
    named = run(
        j,
        [Line(100, 10.0, 10.05), Line(901, 10.02, 10.05)],
        [Count(counted(10.0004, signal=10.0), 100)],
        until=20.0,
    )
    assert named == {100: CONTAINER}


def test_a_v1_recheck_pairs_by_the_signal() -> None:
    # The counter was read before the kill was counted (`since`); the recheck 50 ms later
    # showed it. A foreign line 30 ms after the signal is closer to that read but not to
    # the signal.
    j = joiner()
    named = run(
        j,
        [Line(100, 10.0002, 10.0004), Line(901, 10.03, 10.0302)],
        [Count(counted(10.0501, since=10.0001, signal=10.0), 100)],
        until=20.0,
    )
    assert named == {100: CONTAINER}


def test_two_containers_killed_5_ms_apart_each_get_their_own() -> None:
    j = joiner()
    named = run(
        j,
        [Line(100, 10.0, 10.0003), Line(101, 10.005, 10.0053)],
        [
            Count(counted(10.0004, signal=10.0), 100),
            Count(counted(10.0052, cgroup=OTHER, signal=10.005), 101),
        ],
        until=20.0,
    )
    assert named == {100: CONTAINER, 101: OTHER}


def test_two_lines_as_close_leave_the_victim_unknown_and_nothing_counts_twice() -> None:
    # A foreign kill printed 0.2 ms after ours: the kernel cannot tell them apart.
    j = joiner(whole_tree=True)
    named = run(
        j,
        [Line(100, 10.0, 10.0003), Line(900, 10.0002, 10.0003)],
        [Count(counted(10.0004), None)],
        until=20.0,
    )
    assert list(named.values()) == [CONTAINER] and all(pid < 1 for pid in named)
    assert j.ambiguous == 1


def test_a_line_as_close_to_two_containers_names_neither() -> None:
    j = joiner()
    records = run(
        j,
        [Line(100, 10.0, 10.0003)],
        [Count(counted(10.0004), None), Count(counted(10.0004, cgroup=OTHER), None)],
        until=20.0,
    )
    assert sorted(records.values()) == sorted([CONTAINER, OTHER])
    assert all(pid < 1 for pid in records)


def test_the_decision_waits_until_the_log_is_read_past_the_kill() -> None:
    # A foreign line is there first; ours comes in the next read. Deciding on the first
    # read would have named the foreign victim.
    j = joiner()
    j.kernel_log_read(10.0)
    assert (
        j.on_kernel_kill(bare(900, 9.998), None, counted=False, now_mono=10.0, now_wall=WALL)
        is None
    )
    assert j.on_counter_change(counted(10.0005), now_mono=10.0005, now_wall=WALL) == []
    assert j.next_decision() == pytest.approx(10.0005 + TOL)
    assert j.on_tick(now_mono=10.001) == []
    j.kernel_log_read(10.0005 + TOL)
    rec = j.on_kernel_kill(bare(100, 10.0004), None, counted=False, now_mono=10.004, now_wall=WALL)
    assert rec is not None and (rec.pid, rec.cgroup) == (100, CONTAINER)
    assert rec.constraint is Constraint.CONTAINER  # from the counters: no header
    assert j.next_decision() is None


def test_increases_read_long_after_their_lines_pair_with_nothing() -> None:
    # The engine fell behind a burst: every increase read 0.5-1 s after the lines.
    j = joiner()
    lines = [Line(100 + i, 10.0 + 0.08 * i, 11.0) for i in range(6)]
    counts = [
        Count(counted(11.0 + 0.001 * i, cgroup=cg), None)
        for i, cg in enumerate([CONTAINER, OTHER] * 3)
    ]
    named = run(j, lines, counts, until=20.0)
    assert all(pid < 1 for pid in named)
    assert j.ambiguous == 0


def test_a_global_bare_line_with_no_increase_is_still_a_system_oom() -> None:
    j = joiner()
    j.kernel_log_read(10.001)
    assert (
        j.on_kernel_kill(
            bare(900, 10.0, scope="global"), None, counted=False, now_mono=10.001, now_wall=WALL
        )
        is None
    )
    (rec,) = j.on_tick(now_mono=13.0)
    assert (rec.pid, rec.cgroup, rec.constraint) == (900, None, Constraint.SYSTEM)


def test_a_named_report_teaches_the_kernel_clock() -> None:
    # The kernel clock runs 7.7 ms behind CLOCK_MONOTONIC; a read brackets it to within
    # 38 ms (its lines are new since a read at 9.93, the newest read 0 ms after it was
    # printed): too loose to place a bare line. A report naming its cgroup, counted
    # after a read at 10.0001 and seen by one at 10.0003, brackets it to 0.1 ms.
    clock = KernelClock()
    j = KillJoiner(kmsg_available=True, grace_s=2.0, report_unpaired=False, kernel_clock=clock)
    behind = 0.0077
    clock.note_read(10.003, 9_995_300, oldest_us=9_960_000, previous_mono=9.93)
    assert clock.uncertainty_s(10.003) > KillJoiner.PAIR_WINDOW_S
    j.kernel_log_read(10.0)
    change = counted(10.0003, since=10.0001, signal=10.0)
    assert j.on_counter_change(change, now_mono=10.0003, now_wall=WALL) == []
    named = KernelOomKill(
        seq=1,
        kernel_time_us=round((10.0002 - behind) * 1e6),
        pid=100,
        command="p100",
        task_memcg=CONTAINER,
        oom_memcg=CONTAINER,
        constraint="CONSTRAINT_MEMCG",
    )
    rec = j.on_kernel_kill(named, CONTAINER, counted=True, now_mono=10.001, now_wall=WALL)
    assert rec is not None and rec.pid == 100
    assert clock.uncertainty_s(10.001) < 0.0002
    offset = clock.offset_s(10.001)
    assert offset is not None and abs(offset - behind) < 0.0003
    # Now a bare line 5 ms later is placed, and paired.
    j.kernel_log_read(10.006)
    assert j.on_counter_change(counted(10.0054), now_mono=10.0054, now_wall=WALL) == []
    j.kernel_log_read(10.0054 + TOL)
    line = bare(101, 10.0052 - behind)
    rec = j.on_kernel_kill(line, None, counted=False, now_mono=10.009, now_wall=WALL)
    assert rec is not None and (rec.pid, rec.cgroup) == (101, CONTAINER)


def test_without_a_known_kernel_clock_no_line_is_placed() -> None:
    j = KillJoiner(
        kmsg_available=True, grace_s=2.0, report_unpaired=False, kernel_clock=KernelClock()
    )
    j.kernel_log_read(10.0)
    assert (
        j.on_kernel_kill(bare(100, 10.0), None, counted=False, now_mono=10.0, now_wall=WALL) is None
    )
    j.kernel_log_read(11.0)
    assert j.on_counter_change(counted(10.0003), now_mono=10.0003, now_wall=WALL) == []
    (rec,) = j.on_tick(now_mono=13.0)
    assert rec.pid is None and rec.cgroup == CONTAINER
