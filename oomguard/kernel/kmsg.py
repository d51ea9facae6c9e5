"""Read records from /dev/kmsg without blocking and without losing track of what was lost.

/dev/kmsg hands out exactly one record per read(2), each carrying a sequence number. The
kernel keeps them in a fixed-size ring; a reader that falls behind gets EPIPE once and then
continues at the oldest record still there. Sequence numbers make both that loss and the
catch-up after an agent restart exact, which is why this reader tracks them instead of
timestamps.
"""

from __future__ import annotations

import errno
import os

from oomguard.closing import Closing
from oomguard.kernel.parse import KmsgRecord, lost_between, parse_kmsg_record

__all__ = ["DEFAULT_KMSG_PATH", "KmsgReader", "KmsgUnavailable"]

DEFAULT_KMSG_PATH = "/dev/kmsg"

# A read smaller than the record fails with EINVAL. Records are at most 1 KiB of text, but
# escaping (\xNN is 4 bytes per byte) and the dictionary lines can grow that several times.
_READ_SIZE_BYTES = 16384

# EPIPE and EINVAL each move the kernel's read position forward, so a retry makes progress;
# the bound only guards against a kernel that behaves otherwise spinning us forever.
_MAX_ERRORS_PER_DRAIN = 1000

# Reading through the ring at open (`_skip_to_end`): far more records than the largest
# ring holds (32 MiB of records of 50+ bytes), so only an endless flood reaches it.
_MAX_SKIPPED_READS = 1_000_000

_CONSEQUENCE = "OOM kills will be reported from cgroup counters without the victim's name"


class KmsgUnavailable(OSError):
    """The kernel log cannot be read, so kills are known only from cgroup counters.

    Its message is one sentence meant for the operator's log: what failed, the likely
    reason, and what oomguard does instead.
    """

    # What failed and why, without what oomguard does instead: for a caller that has
    # another way to read the kernel log (`open_log` falls back to syslog(2)).
    cause: str = ""

    def __str__(self) -> str:
        return str(self.strerror)


def _unavailable(path: str, exc: OSError) -> KmsgUnavailable:
    code = exc.errno
    if code == errno.EPERM:
        # In a container the runtime's device cgroup refuses /dev/kmsg to unprivileged
        # containers whatever their capabilities (the chart's kmsg.privileged).
        reason = (
            "operation not permitted (in a container: the runtime allows /dev/kmsg only "
            "to privileged containers; on a host: needs CAP_SYSLOG)"
        )
    elif code == errno.EACCES:
        reason = (
            "permission denied (needs root or CAP_SYSLOG, and kernel.dmesg_restrict "
            "may forbid it to others)"
        )
    elif code == errno.ENOENT:
        reason = "no such device (is /dev mounted from the host?)"
    else:
        reason = os.strerror(code) if code is not None else str(exc)
    err = KmsgUnavailable(code or 0, f"cannot read {path}: {reason}; {_CONSEQUENCE}")
    err.cause = f"cannot read {path}: {reason}"
    return err


class KmsgReader(Closing):
    """A non-blocking reader of /dev/kmsg that counts the records it never got to see.

    With `after_seq=None` only records printed from now on are read. With `after_seq=N`,
    reading starts at the oldest record the kernel still holds and everything up to and
    including N is skipped: a restarted agent passes the last sequence number it handled
    and so recovers the kills printed while it was down. Sequence numbers restart at 0 on
    boot, so a caller must only pass a number from the current boot (pass -1 to read
    every retained record).

    A `reader.KernelLogReader`, the one with a descriptor to poll.
    """

    source = "kmsg"

    def __init__(self, path: str = DEFAULT_KMSG_PATH, *, after_seq: int | None = None) -> None:
        self._path = path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise _unavailable(path, exc) from exc
        self._fd: int | None = fd
        # The highest sequence number consumed, whether returned or skipped.
        self._cursor: int | None = after_seq
        self._lost_records = 0
        try:
            if after_seq is None:
                self._skip_to_end(fd)
        except OSError as exc:
            self.close()
            raise _unavailable(path, exc) from exc

    def _skip_to_end(self, fd: int) -> None:
        """Consume every record there is, keeping only the newest sequence number.

        So "from now on" starts at a known record, and `last_seq` is a position to save
        before anything new is printed: an agent restarted on a quiet node resumes exactly
        here. (A seek to the end would be as fast but leave the position unknown until
        the next record.) If a flood keeps the reading from ending, it seeks instead.
        """
        for _ in range(_MAX_SKIPPED_READS):
            try:
                raw = os.read(fd, _READ_SIZE_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.EINVAL):
                    continue  # overwritten, or too large: the kernel moved on
                raise
            if not raw:
                return
            rec = parse_kmsg_record(raw)
            if rec is not None:
                self._cursor = rec.seq
        os.lseek(fd, 0, os.SEEK_END)
        self._cursor = None

    @property
    def path(self) -> str:
        return self._path

    @property
    def lost_records(self) -> int:
        """Records overwritten before we read them, since this reader was opened.

        With `after_seq`, that includes those lost while no reader was running.
        """
        return self._lost_records

    @property
    def last_seq(self) -> int | None:
        """The newest sequence number consumed: what a restarted agent passes as after_seq."""
        return self._cursor

    @property
    def closed(self) -> bool:
        return self._fd is None

    @property
    def pollable_fd(self) -> int | None:
        """The descriptor to poll (`fileno`); None once closed."""
        return self._fd

    def fileno(self) -> int:
        """For select/poll/epoll: the descriptor becomes readable when a record is printed."""
        if self._fd is None:
            raise ValueError("I/O operation on a closed KmsgReader")
        return self._fd

    def read_available(self) -> list[KmsgRecord]:
        """Every record printed since the last call, oldest first; never blocks."""
        fd = self.fileno()
        records: list[KmsgRecord] = []
        errors = 0
        while errors < _MAX_ERRORS_PER_DRAIN:
            try:
                raw = os.read(fd, _READ_SIZE_BYTES)
            except BlockingIOError:
                break
            except BrokenPipeError:
                # The ring overwrote the record we were due to read; the kernel has moved
                # us to the oldest one left. The gap shows up in the next sequence number.
                errors += 1
                continue
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # A record larger than our buffer: the kernel has stepped past it, and
                # the gap in sequence numbers counts it as lost.
                errors += 1
                continue
            if not raw:
                break
            rec = parse_kmsg_record(raw)
            if rec is None:
                continue
            if self._cursor is not None and rec.seq <= self._cursor:
                continue  # handled before a restart (after_seq)
            self._lost_records += lost_between(self._cursor, rec.seq)
            self._cursor = rec.seq
            records.append(rec)
        return records

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"last_seq={self._cursor}"
        return f"KmsgReader({self._path!r}, {state}, lost_records={self._lost_records})"
