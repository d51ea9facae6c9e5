"""The cgroup `oom_kill` counter values the agent has handed on, kept across restarts.

One JSON file in the state directory, `oom-kill-counters.json`:

    {"format": "oomguard/oom-kill-counters/v1", "boot_id": "...",
     "oom_kill": {"/kubepods/burstable/pod<uid>/<id>": 2},
     "limit_hits": {"/kubepods/burstable/pod<uid>/<id>": 3}}

Per cgroup, the counter value up to which every kill it counted has been handed on:
submitted to the event queue as a record, or explained by a kernel report that was.
Only nonzero values are listed; a cgroup the file does not list had none then, or did
not exist yet. A restarted agent of the same boot starts each cgroup's counter from here
(`counters.resume_baseline`), so the kills counted while it was down reach the detector
as counter increases: paired with the kernel log's reports when it is readable (victim
known), else records of their own (victim unknown). No file, or one from another boot:
the baseline is what is on disk, and kills before the agent first ran are not invented.

`limit_hits` (cgroup v2 only; absent on v1 and in files of earlier versions, which this
one still reads): per cgroup, its own `oom` count (memory.events.local), the number of
times its limit was hit, as far as the kills that followed are handed on. A kill found
from the counters after a restart has no live evidence of whose limit it hit; a cgroup
on its line whose count rose meanwhile is that evidence (without it, the high-water
marks are: see `classify.limit_reached_while_down`). Only nonzero values are listed.

The detector's progress arrives as `HandedOn` marks through the queue that carries its
records, after the records they cover (`apply_handed_on` merges them); `Checkpoints`
writes the file once per turn of the agent's loop when it changed, never per kill, and
before the kernel log position, which therefore never runs ahead of it (see
checkpoints.py).

The file holds for one boot (counters start at zero with every boot). An unreadable file,
or one in a format this version does not know, is moved aside as `<name>.corrupt-<time>`
with a log line and the agent starts as without one: never fatal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from oomguard.records import HandedOn
from oomguard.state.files import StateFile, StateWrites, parse_versioned

log = logging.getLogger(__name__)

STATE_FILE = "oom-kill-counters.json"
STATE_FORMAT = "oomguard/oom-kill-counters/v1"


class SnapshotFormatError(ValueError):
    """The file is not a counter snapshot this version can read."""


@dataclass(frozen=True, slots=True)
class CounterSnapshot:
    """Everything in the file. Equal snapshots are never written twice."""

    boot_id: str | None
    oom_kill: Mapping[str, int] = field(default_factory=dict)  # cgroup -> value, never 0
    limit_hits: Mapping[str, int] | None = None  # cgroup -> `oom` count, never 0; None: unknown

    def to_bytes(self) -> bytes:
        body: dict[str, object] = {
            "format": STATE_FORMAT,
            "boot_id": self.boot_id,
            "oom_kill": dict(sorted(self.oom_kill.items())),
        }
        if self.limit_hits is not None:
            body["limit_hits"] = dict(sorted(self.limit_hits.items()))
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> CounterSnapshot:
        """Parse a file's content; `SnapshotFormatError` says what is wrong with it."""
        body, boot_id = parse_versioned(
            raw, STATE_FORMAT, "an oom_kill counter snapshot", SnapshotFormatError
        )
        oom_kill = _counts(body.get("oom_kill", {}), "oom_kill")
        limit_hits = body.get("limit_hits")
        return cls(
            boot_id=boot_id,
            oom_kill=oom_kill,
            limit_hits=None if limit_hits is None else _counts(limit_hits, "limit_hits"),
        )


def _counts(counters: object, name: str) -> dict[str, int]:
    """One of the file's cgroup -> count objects, without its zeros."""
    if not isinstance(counters, dict):
        raise SnapshotFormatError(f"{name} is not an object")
    out: dict[str, int] = {}
    for cgroup, value in counters.items():
        if not cgroup.startswith("/"):
            raise SnapshotFormatError(f"cgroup {cgroup!r} is not a path from the root")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SnapshotFormatError(f"the value of {cgroup} is not a count ({value!r})")
        if value:
            out[cgroup] = value
    return out


def apply_handed_on(current: Mapping[str, int] | None, mark: HandedOn) -> dict[str, int] | None:
    """The handed-on values after one mark of the detector's progress.

    A complete mark replaces everything (cgroups it does not list are gone or at 0); the
    others update the cgroups they list, 0 meaning forget. Before the first complete mark
    of a run there is nothing to update: None stays None.
    """
    if mark.complete:
        return {cg: v for cg, v in mark.oom_kill.items() if v > 0}
    if current is None:
        return None
    merged = dict(current)
    for cgroup, value in mark.oom_kill.items():
        if value > 0:
            merged[cgroup] = value
        else:
            merged.pop(cgroup, None)
    return merged


class CounterSnapshotFile(StateFile[CounterSnapshot]):
    """The agent's side: load once at start, then save each snapshot that differs."""

    def __init__(
        self, state_dir: Path, boot_id: str | None, writes: StateWrites | None = None
    ) -> None:
        super().__init__(
            Path(state_dir) / STATE_FILE,
            boot_id,
            CounterSnapshot.from_bytes,
            log=log,
            without="counter baselines are taken from disk, so OOM kills while the agent "
            "was down are known only from the kernel log",
            stale="counter baselines are taken from disk",
            unsaved="after a restart, OOM kills already reported may be found again (the "
            "event queue drops those it remembers)",
            writes=writes,
        )
        # The `oom` counts `load` found (None: none, or a file without them).
        self.loaded_limit_hits: dict[str, int] | None = None

    def load(self) -> dict[str, int] | None:
        """The counter baseline to resume from in this boot; None: take it from disk.

        Never raises: an unreadable file is set aside, another boot's is ignored.
        """
        snapshot = self.read_this_boot()
        if snapshot is None:
            return None
        if snapshot.limit_hits is not None:
            self.loaded_limit_hits = dict(snapshot.limit_hits)
        return dict(snapshot.oom_kill)

    def save(
        self, oom_kill: Mapping[str, int], limit_hits: Mapping[str, int] | None = None
    ) -> bool:
        """Write these values if they differ from what the file holds.

        True when the file now holds them (written, or already so); False when the write
        failed: logged, and retried by the next call (memory still has it all).
        """
        return self.write(
            CounterSnapshot(
                self.boot_id, dict(oom_kill), None if limit_hits is None else dict(limit_hits)
            )
        )
