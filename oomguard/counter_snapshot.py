"""The cgroup `oom_kill` counter values the agent has handed on, kept across restarts.

One JSON file in the state directory, `oom-kill-counters.json`:

    {"format": "oomguard/oom-kill-counters/v1", "boot_id": "...",
     "oom_kill": {"/kubepods/burstable/pod<uid>/<id>": 2}}

Per cgroup, the counter value up to which every kill it counted has been handed on:
submitted to the event queue as a record, or explained by a kernel report that was.
Only nonzero values are listed; a cgroup the file does not list had none then, or did
not exist yet. A restarted agent of the same boot starts each cgroup's counter from here
(`counters.resume_baseline`), so the kills counted while it was down reach the detector
as counter increases: paired with the kernel log's reports when it is readable (victim
known), else records of their own (victim unknown). No file, or one from another boot:
the baseline is what is on disk, and kills before the agent first ran are not invented.

The detector's progress arrives as `HandedOn` marks through the queue that carries its
records, after the records they cover (`apply_handed_on` merges them); the agent writes
the file once per turn of its loop when it changed, never per kill, and before the kmsg
position, which therefore never runs ahead of it (see agent.py).

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
from oomguard.statefile import atomic_write, set_aside

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

    def to_bytes(self) -> bytes:
        body = {
            "format": STATE_FORMAT,
            "boot_id": self.boot_id,
            "oom_kill": dict(sorted(self.oom_kill.items())),
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> CounterSnapshot:
        """Parse a file's content; `SnapshotFormatError` says what is wrong with it."""
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SnapshotFormatError(f"not JSON ({exc})") from None
        if not isinstance(body, dict):
            raise SnapshotFormatError(
                f"not an oom_kill counter snapshot (a JSON {type(body).__name__})"
            )
        if body.get("format") != STATE_FORMAT:
            raise SnapshotFormatError(
                f"format {body.get('format')!r}, this version reads only {STATE_FORMAT!r}"
            )
        boot_id = body.get("boot_id")
        if boot_id is not None and not isinstance(boot_id, str):
            raise SnapshotFormatError("boot_id is not a string")
        counters = body.get("oom_kill", {})
        if not isinstance(counters, dict):
            raise SnapshotFormatError("oom_kill is not an object")
        oom_kill: dict[str, int] = {}
        for cgroup, value in counters.items():
            if not cgroup.startswith("/"):
                raise SnapshotFormatError(f"cgroup {cgroup!r} is not a path from the root")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SnapshotFormatError(f"the value of {cgroup} is not a count ({value!r})")
            if value:
                oom_kill[cgroup] = value
        return cls(boot_id=boot_id, oom_kill=oom_kill)


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


class CounterSnapshotFile:
    """The agent's side: load once at start, then save each snapshot that differs."""

    def __init__(self, state_dir: Path, boot_id: str | None) -> None:
        self.path = Path(state_dir) / STATE_FILE
        self.boot_id = boot_id
        self.saved: CounterSnapshot | None = None  # what the file holds (as far as we know)
        self.save_errors = 0

    def load(self) -> dict[str, int] | None:
        """The counter baseline to resume from in this boot; None: take it from disk.

        Never raises: an unreadable file is set aside, another boot's is ignored.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error(
                "cannot read %s (%s); counter baselines are taken from disk, so OOM kills "
                "while the agent was down are known only from the kernel log",
                self.path,
                exc,
            )
            return None
        try:
            snapshot = CounterSnapshot.from_bytes(raw)
        except SnapshotFormatError as exc:
            self._set_aside(exc)
            return None
        if self.boot_id is None or snapshot.boot_id != self.boot_id:
            log.info(
                "%s is from another boot (or the boot is unknown): counter baselines are "
                "taken from disk",
                self.path,
            )
            return None
        self.saved = snapshot
        return dict(snapshot.oom_kill)

    def save(self, oom_kill: Mapping[str, int]) -> bool:
        """Write these values if they differ from what the file holds.

        True when the file now holds them (written, or already so); False when the write
        failed: logged, and retried by the next call (memory still has it all).
        """
        snapshot = CounterSnapshot(self.boot_id, dict(oom_kill))
        if snapshot == self.saved:
            return True
        try:
            atomic_write(self.path, snapshot.to_bytes())
        except OSError as exc:
            self.save_errors += 1
            if self.save_errors == 1 or self.save_errors % 1000 == 0:
                log.error(
                    "cannot write %s (%s, %d times so far); after a restart, OOM kills "
                    "already reported may be found again (the event queue drops those it "
                    "remembers)",
                    self.path,
                    exc,
                    self.save_errors,
                )
            return False
        self.saved = snapshot
        return True

    def _set_aside(self, why: BaseException) -> None:
        try:
            aside = set_aside(self.path)
        except OSError as exc:
            log.error(
                "%s is unreadable (%s) and could not be moved aside (%s); counter baselines "
                "are taken from disk and the file will be overwritten",
                self.path,
                why,
                exc,
            )
        else:
            log.error(
                "%s is unreadable (%s); moved it aside to %s. Counter baselines are taken "
                "from disk: OOM kills while the agent was down are known only from the "
                "kernel log",
                self.path,
                why,
                aside.name,
            )
