"""What the joiner says it has handed on: counter values and the oldest report not yet settled.

A restarted agent resumes from these numbers, so each must only cover kills already
returned as records (or explained by a report that was); the kills still waiting hold
them back.
"""

from __future__ import annotations

import dataclasses

from oomguard.cgroups.watch import CounterChange
from oomguard.detect.join import KillJoiner
from tests.unit.test_detector import CONTAINER, POD, WALL, bare_kill, joiner, kernel_kill

OTHER = f"{POD}/{'b' * 64}"


def counted(kills: int, value: int | None, cgroup: str = CONTAINER) -> CounterChange:
    return CounterChange(cgroup, kills, frozenset(), value=value)


def test_counter_records_carry_the_value_each_kill_made() -> None:
    j = joiner(kmsg=False)
    recs = j.on_counter_change(counted(2, 5), now_mono=1.0, now_wall=WALL)
    assert [r.oom_kill_counter for r in recs] == [4, 5]
    assert j.take_handed_on() == {CONTAINER: 5}
    assert j.take_handed_on() == {}  # said once, until it moves again


def test_a_kill_waiting_for_its_report_holds_its_value_back() -> None:
    j = joiner()
    assert j.on_counter_change(counted(1, 4), now_mono=1.0, now_wall=WALL) == []
    assert j.take_handed_on() == {CONTAINER: 3}
    rec = j.on_kernel_kill(
        kernel_kill(10, 100), CONTAINER, counted=True, now_mono=1.1, now_wall=WALL
    )
    assert rec is not None and (rec.pid, rec.oom_kill_counter) == (100, 4)
    assert j.take_handed_on() == {CONTAINER: 4}


def test_a_report_first_is_settled_when_its_counter_comes() -> None:
    j = joiner()
    j.on_kernel_kill(kernel_kill(10, 100), CONTAINER, counted=True, now_mono=1.0, now_wall=WALL)
    assert j.oldest_unsettled_seq() == 10  # returned, but its increase not seen yet
    assert j.take_handed_on() == {}
    assert j.on_counter_change(counted(1, 1), now_mono=1.01, now_wall=WALL) == []
    assert j.oldest_unsettled_seq() is None
    assert j.take_handed_on() == {CONTAINER: 1}


def test_a_lost_report_settles_after_the_grace_with_the_top_value() -> None:
    j = joiner()
    j.on_kernel_kill(kernel_kill(10, 100), CONTAINER, counted=True, now_mono=1.0, now_wall=WALL)
    assert j.on_counter_change(counted(2, 7), now_mono=1.1, now_wall=WALL) == []
    # The report explained the first of the two (6); the second (7) waits.
    assert j.take_handed_on() == {CONTAINER: 6}
    (rec,) = j.on_tick(now_mono=5.0)
    assert (rec.source, rec.oom_kill_counter) == ("counters", 7)
    assert j.take_handed_on() == {CONTAINER: 7}


def test_a_held_bare_report_holds_the_kernel_log_position() -> None:
    j = joiner()
    assert (
        j.on_kernel_kill(bare_kill(20, 100), None, counted=False, now_mono=1.0, now_wall=WALL)
        is None
    )
    assert j.oldest_unsettled_seq() == 20
    (rec,) = j.on_counter_change(counted(1, 3), now_mono=1.01, now_wall=WALL)
    assert (rec.pid, rec.oom_kill_counter, rec.kmsg_seq) == (100, 3, 20)
    assert j.oldest_unsettled_seq() is None
    assert j.take_handed_on() == {CONTAINER: 3}


def test_the_oldest_of_several_outstanding_reports_counts() -> None:
    j = joiner()
    j.on_kernel_kill(kernel_kill(30, 100), CONTAINER, counted=True, now_mono=1.0, now_wall=WALL)
    j.on_kernel_kill(kernel_kill(31, 101), OTHER, counted=True, now_mono=1.0, now_wall=WALL)
    j.on_repeat_kill(OTHER, now_mono=1.0, report=kernel_kill(29, 101))
    assert j.oldest_unsettled_seq() == 29
    j.on_counter_change(counted(2, 2, OTHER), now_mono=1.1, now_wall=WALL)
    assert j.oldest_unsettled_seq() == 30
    # A credit that never meets its increase stops holding the position when it expires.
    j.on_tick(now_mono=1.0 + KillJoiner.CREDIT_TTL_S + 1)
    assert j.oldest_unsettled_seq() is None


def test_a_removed_cgroup_is_forgotten_once_nothing_of_it_waits() -> None:
    j = joiner()
    j.note_counters({CONTAINER: 2, OTHER: 1})
    assert j.take_handed_on() == {CONTAINER: 2, OTHER: 1}
    j.on_counter_change(counted(1, 3), now_mono=1.0, now_wall=WALL)
    j.cgroup_removed(CONTAINER)
    j.cgroup_removed(OTHER)
    assert j.take_handed_on() == {CONTAINER: 2, OTHER: 0}
    (rec,) = j.on_tick(now_mono=5.0)  # the kill made before the removal is still handed on
    assert rec.oom_kill_counter == 3
    assert j.take_handed_on() == {CONTAINER: 0}
    assert j.take_handed_on(everything=True) == {}


def test_everything_lists_every_cgroup_known() -> None:
    j = joiner(kmsg=False)
    j.note_counters({CONTAINER: 2})
    j.take_handed_on()
    j.on_counter_change(counted(1, 1, OTHER), now_mono=1.0, now_wall=WALL)
    assert j.take_handed_on(everything=True) == {CONTAINER: 2, OTHER: 1}


def test_a_change_without_a_value_hands_on_no_number() -> None:
    j = joiner(kmsg=False)
    (rec,) = j.on_counter_change(counted(1, None), now_mono=1.0, now_wall=WALL)
    assert rec.oom_kill_counter is None
    assert j.take_handed_on() == {}


def test_credits_left_after_a_start_are_forgotten() -> None:
    # Read back at a start: two reports, one increase since the baseline. Once every
    # counter has been read after the reports, the report left over was of a kill the
    # baseline counted already: no increase will come for it.
    j = joiner()
    j.on_kernel_kill(kernel_kill(40, 100), CONTAINER, counted=True, now_mono=9.0, now_wall=WALL)
    j.on_kernel_kill(kernel_kill(41, 101), CONTAINER, counted=True, now_mono=9.0, now_wall=WALL)
    assert j.on_counter_change(counted(1, 3), now_mono=9.1, now_wall=WALL) == []
    assert j.oldest_unsettled_seq() == 41
    assert j.forget_credits() == 1
    assert j.oldest_unsettled_seq() is None
    # Nothing left to swallow a later kill whose report is lost.
    j.on_counter_change(counted(1, 4), now_mono=10.0, now_wall=WALL)
    (rec,) = j.on_tick(now_mono=20.0)
    assert (rec.source, rec.oom_kill_counter) == ("counters", 4)


def test_the_report_start_holds_the_position() -> None:
    # Reading back from the kill line alone would lose the report's header.
    j = joiner()
    report = dataclasses.replace(kernel_kill(50, 100), report_seq=12)
    j.on_kernel_kill(report, CONTAINER, counted=True, now_mono=1.0, now_wall=WALL)
    assert j.oldest_unsettled_seq() == 12
