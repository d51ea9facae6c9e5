"""When the loop says what it has handed on (`records.HandedOn`), and what: pure.

A mark is said after the records it covers, at the end of a turn that moved something,
never per kill: the counters as they settle (the joiner says which), the kernel log
position with them, or at each resync interval when only lines of no interest were
printed (the position moves with every line the kernel prints: said each turn, it would
rewrite the state file all the time on a chatty node), the `oom` counts when they
changed. The first mark after a start is complete: it replaces whatever came before.
"""

from __future__ import annotations

from collections.abc import Mapping

from oomguard.records import HandedOn

__all__ = ["ProgressMarks"]


class ProgressMarks:
    """What the loop's last marks said, to say only what moved (`mark`)."""

    def __init__(self, *, log_every_s: float) -> None:
        # How often the kernel log position alone is said (the resync interval).
        self._log_every_s = log_every_s
        self._first_taken = False
        self._news = False  # records handed on since the last mark
        self._log_said: int | None = None
        self._next_log_mark = 0.0
        self._limit_hits_said: Mapping[str, int] | None = None

    def take_first(self) -> bool:
        """Whether this turn's mark is the first, complete one: True once, then False.

        Asked before the joiner's counters, which it decides (all of them, or the moved).
        """
        first, self._first_taken = not self._first_taken, True
        return first

    def handed_on(self) -> None:
        """Records were handed on: the next mark says the log position with them."""
        self._news = True

    def mark(
        self,
        *,
        complete: bool,
        counters: dict[str, int],
        log_position: int | None,
        log_source: str,
        limit_hits: dict[str, int] | None,
        now: float,
    ) -> HandedOn | None:
        """The mark to say this turn; None: nothing moved."""
        due = self._news or bool(counters) or now >= self._next_log_mark
        moved = log_position is not None and log_position != self._log_said and due
        if limit_hits == self._limit_hits_said:
            limit_hits = None  # unchanged
        if not (complete or counters or moved or limit_hits is not None):
            return None
        self._news = False
        self._next_log_mark = now + self._log_every_s
        if moved:
            self._log_said = log_position
        if limit_hits is not None:
            self._limit_hits_said = limit_hits
        return HandedOn(
            oom_kill=counters,
            log_position=log_position if moved else None,
            log_source=log_source if moved else None,
            complete=complete,
            limit_hits=limit_hits,
        )
