"""What a restarted detector resumes from, loaded and saved in one place.

Two files of the state directory say how far the detector's findings were handed on:
the kernel log position (`log_position.LogPosition`, `kmsg-position.json`) and each
cgroup's `oom_kill` counter with its `oom` count (`counter_snapshot`,
`oom-kill-counters.json`). At start, `Checkpoints.load` turns them into one `Resume`
for the loop. While it runs, the loop's `HandedOn` marks come through the agent's queue
after the records they cover; `take` merges them in memory and `save`, once per turn of
the agent's loop (never per kill), writes the counters first and the position only once
they are on disk. So the position never runs ahead of the counters: a crash in between
leaves it behind, which reads a report back (harmless: its kill id is known, and its
credit pairs with the counter increase), never ahead, which would take a counted kill
for one whose report was lost. A write that fails is tried again by the next `save`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from oomguard.kernel.reader import KERNEL_LOG_SOURCES
from oomguard.records import HandedOn
from oomguard.state.counter_snapshot import CounterSnapshotFile, apply_handed_on
from oomguard.state.files import StateWrites
from oomguard.state.log_position import LogPosition

__all__ = ["Checkpoints", "Resume"]


@dataclasses.dataclass(frozen=True, slots=True)
class Resume:
    """Where a (re)started detector picks up; the default: a first start.

    `log_after`: per kernel log reader ("kmsg", "syslog"), the position to read after
    (-1: everything the kernel still holds, a new boot); a reader not listed reads only
    what is printed from now on. `counters`: per cgroup, the `oom_kill` value handed on
    (None: take the baseline from disk). `limit_hits`: per cgroup, the `oom` count handed
    on with them (cgroup v2; None: unknown).
    """

    log_after: Mapping[str, int] = dataclasses.field(default_factory=dict)
    counters: Mapping[str, int] | None = None
    limit_hits: Mapping[str, int] | None = None


class Checkpoints:
    """The detector's progress in the state directory: `load` once, then `take` and `save`."""

    def __init__(
        self, state_dir: Path, boot_id: str | None, writes: StateWrites | None = None
    ) -> None:
        self.position = LogPosition(state_dir, boot_id, writes)
        self.counters = CounterSnapshotFile(state_dir, boot_id, writes)
        # What the marks taken so far say; None before the first complete mark.
        self._oom_kill: dict[str, int] | None = None
        self._limit_hits: dict[str, int] | None = None
        self._log: tuple[str, int] | None = None  # (reader, position)
        self._unsaved = False

    def load(self) -> Resume:
        """What the files say for this boot; never raises (a bad file is set aside)."""
        counters = self.counters.load()
        log_after = {
            source: at
            for source in KERNEL_LOG_SOURCES
            if (at := self.position.resume_after(source)) is not None
        }
        return Resume(log_after, counters, self.counters.loaded_limit_hits)

    def take(self, mark: HandedOn) -> None:
        """One mark of the detector's progress, in the order they came."""
        self._oom_kill = apply_handed_on(self._oom_kill, mark)
        if mark.limit_hits is not None:
            self._limit_hits = dict(mark.limit_hits)
        if mark.log_position is not None and mark.log_source is not None:
            self._log = (mark.log_source, mark.log_position)
        self._unsaved = True

    def save(self) -> None:
        """Write what the marks moved, counters before position; a failed write waits.

        Nothing before the first complete mark: a partial one would drop the cgroups it
        does not list.
        """
        if not self._unsaved or self._oom_kill is None:
            return
        if not self.counters.save(self._oom_kill, self._limit_hits):
            return  # said in the log; tried again next turn
        if self._log is not None:
            source, at = self._log
            self.position.save(at, source=source)
        self._unsaved = False
