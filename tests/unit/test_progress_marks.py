"""When the loop says what it has handed on, and what (`ProgressMarks`): tables of turns.

Each turn gives what the loop has at its end (counters the joiner says moved, the kernel
log position, the `oom` counts, the time, whether records were handed on); each expects
the mark said, summed up as (complete, counters, position, limit_hits), or None.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from oomguard.detect.marks import ProgressMarks

EVERY_S = 60.0  # the resync interval: how often the position alone is said
A = "/kubepods/burstable/poda/ctr"


@dataclass(frozen=True)
class Turn:
    now: float
    position: int | None = 10
    counters: dict[str, int] = field(default_factory=dict)
    limit_hits: dict[str, int] | None = None
    records: bool = False  # records were handed on during the turn


Said = tuple[bool, dict[str, int], int | None, dict[str, int] | None] | None

CASES: list[tuple[str, list[Turn], list[Said]]] = [
    (
        "the first mark is complete, with the position, even with nothing to say",
        [Turn(0.0)],
        [(True, {}, 10, None)],
    ),
    (
        "nothing moved: nothing said",
        [Turn(0.0), Turn(1.0), Turn(2.0)],
        [(True, {}, 10, None), None, None],
    ),
    (
        "the position alone waits for the interval",
        [Turn(0.0), Turn(1.0, position=12), Turn(EVERY_S - 0.1, 13), Turn(EVERY_S, 14)],
        [(True, {}, 10, None), None, None, (False, {}, 14, None)],
    ),
    (
        "the position goes with records handed on",
        [Turn(0.0), Turn(1.0, position=12, records=True)],
        [(True, {}, 10, None), (False, {}, 12, None)],
    ),
    (
        "the position goes with counters that moved",
        [Turn(0.0), Turn(1.0, position=12, counters={A: 1})],
        [(True, {}, 10, None), (False, {A: 1}, 12, None)],
    ),
    (
        "counters that moved are said without a position that did not",
        [Turn(0.0), Turn(1.0, counters={A: 1})],
        [(True, {}, 10, None), (False, {A: 1}, None, None)],
    ),
    (
        "records handed on without a new position: nothing to say",
        [Turn(0.0), Turn(1.0, records=True)],
        [(True, {}, 10, None), None],
    ),
    (
        "a mark restarts the interval",
        [Turn(0.0), Turn(30.0, 11, {A: 1}), Turn(EVERY_S, 12), Turn(30.0 + EVERY_S, 13)],
        [(True, {}, 10, None), (False, {A: 1}, 11, None), None, (False, {}, 13, None)],
    ),
    (
        "oom counts are said when they change, and only then",
        [
            Turn(0.0, limit_hits={}),
            Turn(1.0, limit_hits={}),
            Turn(2.0, limit_hits={A: 1}),
            Turn(3.0, limit_hits={A: 1}),
        ],
        [(True, {}, 10, {}), None, (False, {}, None, {A: 1}), None],
    ),
    (
        "no kernel log: counters only",
        [Turn(0.0, position=None), Turn(1.0, position=None, counters={A: 2})],
        [(True, {}, None, None), (False, {A: 2}, None, None)],
    ),
    (
        "v1: no oom counts ever",
        [Turn(0.0, limit_hits=None), Turn(1.0, limit_hits=None)],
        [(True, {}, 10, None), None],
    ),
]


@pytest.mark.parametrize(("turns", "said"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_marks(turns: list[Turn], said: list[Said]) -> None:
    marks = ProgressMarks(log_every_s=EVERY_S)
    got: list[Said] = []
    for turn in turns:
        if turn.records:
            marks.handed_on()
        mark = marks.mark(
            complete=marks.take_first(),
            counters=turn.counters,
            log_position=turn.position,
            log_source="kmsg",
            limit_hits=turn.limit_hits,
            now=turn.now,
        )
        got.append(
            None
            if mark is None
            else (mark.complete, mark.oom_kill, mark.log_position, mark.limit_hits)
        )
        if mark is not None and mark.log_position is not None:
            assert mark.log_source == "kmsg"
    assert got == said


def test_the_first_mark_is_taken_once() -> None:
    marks = ProgressMarks(log_every_s=EVERY_S)
    assert [marks.take_first() for _ in range(3)] == [True, False, False]
