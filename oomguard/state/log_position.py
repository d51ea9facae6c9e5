"""Where the kernel log has been handed on up to, per boot: `kmsg-position.json`.

    {"seq": N, "boot_id": "...", "source": "kmsg"}

A restarted agent of the same boot reads the kernel log from just after this position,
so the kills printed while it was down are reported (and those handed on before are
not read again, or are dropped by the event queue's memory of kill ids); a new boot
reads the whole ring buffer. The file name keeps its first name (`kmsg`) so that an
upgraded agent finds the position an older one wrote.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from oomguard.state.files import StateFile, StateWrites, load_json

log = logging.getLogger(__name__)

LOG_POSITION_FILE = "kmsg-position.json"


@dataclasses.dataclass(frozen=True, slots=True)
class _Position:
    """What `kmsg-position.json` holds: {"seq": N, "boot_id": "...", "source": "kmsg"}."""

    seq: int
    boot_id: str | None
    source: str = "kmsg"

    def to_bytes(self) -> bytes:
        body = {"seq": self.seq, "boot_id": self.boot_id, "source": self.source}
        return json.dumps(body).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> _Position:
        data = load_json(raw)  # StateFileError (a ValueError) when not JSON or too deep
        try:
            return cls(int(data["seq"]), str(data["boot_id"]), str(data.get("source", "kmsg")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a kernel log position ({type(exc).__name__}: {exc})") from None


class LogPosition(StateFile[_Position]):
    """The last kernel log position handed on, per boot (numbers restart at boot).

    Per reader too: a /dev/kmsg sequence number and a syslog(2) position (kernel/syslog.py)
    are different numbers, so the file says whose it is (`source`; absent: kmsg).
    """

    def __init__(
        self, state_dir: Path, boot_id: str | None, writes: StateWrites | None = None
    ) -> None:
        super().__init__(
            state_dir / LOG_POSITION_FILE,
            boot_id,
            _Position.from_bytes,
            log=log,
            without="the kernel log is read from its end, so OOM kills while the agent was "
            "down are known only from the cgroup counters",
            unsaved="after a restart, kernel log reports already handed on are read again "
            "(the event queue drops the kills it remembers)",
            writes=writes,
        )

    def resume_after(self, source: str = "kmsg") -> int | None:
        """Where a (re)started agent reads the kernel log from, with reader `source`.

        No state: only new records (kills before the first install are history).
        Same boot: after the last kill handed on. A new boot: the whole ring buffer,
        since kills at boot happened while no agent ran. Same boot, but the position is
        the other reader's (the agent's privileges changed): only new records, since
        the one number means nothing to the other reader.
        """
        saved = self.read()
        if saved is None:
            return None
        if self.boot_id is not None and saved.boot_id == self.boot_id:
            if saved.source != source:
                return None
            self.saved = saved
            return saved.seq
        return -1

    def save(self, seq: int, source: str = "kmsg") -> None:
        if self.saved is not None and source == self.saved.source and seq <= self.saved.seq:
            return
        self.write(_Position(seq, self.boot_id, source))
