"""Read the kernel log through syslog(2), for when /dev/kmsg cannot be opened.

Why: in a Kubernetes container that is not privileged, opening /dev/kmsg fails with EPERM
whatever its capabilities, because the runtime's device cgroup allow-list (runc's default
devices) has no char 1:11. syslog(2) is a system call, not a device: no device cgroup
applies. SYSLOG_ACTION_READ_ALL needs CAP_SYSLOG where kernel.dmesg_restrict=1 (nothing
where it is 0), and the runtimes' default seccomp profiles (RuntimeDefault) allow the call
to a container holding CAP_SYSLOG: moby's profiles/seccomp/default.json has
`{"names": ["syslog"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYSLOG"]}}`,
and containerd's contrib/seccomp/seccomp_default.go adds "syslog" for CAP_SYSLOG in the
bounding set (both also for CAP_SYS_ADMIN). An LSM may still refuse it (SELinux checks
syslog_read); that is an EPERM like the others, and the agent works from the counters.

What READ_ALL returns: the newest records that fit the caller's buffer, as text, one line
per line of a record (a multi-line record gives several lines with the same prefix):

    <3>[10113.078811] Memory cgroup out of memory: Killed process 13020 (storm14) ...
    <6>[  123.456789][  T123] a line, with CONFIG_PRINTK_CALLER's caller id
    <6>a line read while printk.time=0

The prefix is `<facility * 8 + level>`, then the printk time and the caller id when the
kernel prints them. There are no sequence numbers, no escaping (bytes come raw, so a
newline in a command name splits its line and that report goes unread: the kill is still
counted, victim unknown), and nothing to poll: the loop reads when it has a reason to
(read_timing.py).

Positions. Each line gets a pseudo-sequence number, `time_us * 1000 + n`, n counting the
earlier lines of the same read with the same timestamp. It is the same number for the same
line in every read and after an agent restart within a boot, it grows along the log, and
it is what `KmsgRecord.seq` carries for a line read here. It is not a /dev/kmsg sequence
number: kill ids and the saved resume point name their source ("syslog"), so the two never
meet. Without timestamps (printk.time=0, which the kernel applies to a whole read) a line
has no position and a line read twice cannot be told from a new one: such a read hands on
nothing and the reader says so; found at start, it makes the reader unavailable and the
agent works from the counters.

New lines. The reader remembers the last line it handed on (position and a CRC of the
line) and finds it again in the next read; what follows is new. Found nowhere, and the
oldest line read is newer: the ring buffer overwrote lines between two reads (or someone
cleared it), which counts as lost (at least one; how many cannot be told without sequence
numbers), and everything there is handed on. The search is by identity, not by comparing
positions, because lines printed on different CPUs can be a little out of timestamp order.

Cost. On every READ_ALL the kernel formats each record in its buffer to find the first one
that fits, so a read costs about the same whatever the buffer passed; the buffer bounds
the copy and our parsing. A read starts with a small window and doubles it only while the
last line handed on is not in it.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple

from oomguard.kernel.parse import KmsgRecord
from oomguard.kernel.reader import ReadFailed
from oomguard.safe_text import decode

__all__ = [
    "LINES_PER_US",
    "NewLines",
    "NumberedLine",
    "SyslogCursor",
    "SyslogLine",
    "SyslogReader",
    "SyslogUnavailable",
    "new_since",
    "number_lines",
    "parse_syslog_line",
]

log = logging.getLogger(__name__)

# klogctl(3) actions (include/linux/syslog.h).
SYSLOG_ACTION_READ_ALL = 3
SYSLOG_ACTION_SIZE_BUFFER = 10

# Positions leave room for this many lines with one timestamp (microsecond). One record is
# at most ~2 KiB of text as printed, so even a record of empty lines stays far below.
LINES_PER_US = 1000

# The first window read; doubled while the last line handed on is not in it.
_INITIAL_WINDOW_BYTES = 16 * 1024
# A read shorter than its window by this much holds every record there is: the next
# older one would have fit (a printed record is at most 2 KiB on 6.x, 8 KiB on 4.x-5.x).
_MAX_RECORD_BYTES = 8192

_CONSEQUENCE = "OOM kills will be reported from cgroup counters without the victim's name"


# --- Pure: one line, a numbered read, what is new in it ----------------------------


@dataclass(frozen=True)
class SyslogLine:
    """One line of the kernel log as syslog(2) READ_ALL prints it."""

    facility: int  # 0 = the kernel itself; user-space lines (/dev/kmsg writes) have 1
    level: int  # 0 (emerg) .. 7 (debug)
    time_us: int | None  # printk time, microseconds since boot; None with printk.time=0
    caller: str | None  # "T123" (thread id) or "C1" (CPU), with CONFIG_PRINTK_CALLER
    message: str


# info_print_prefix() in kernel/printk/printk.c: "<%u>", then "[%5lu.%06lu]" when printk
# time is on, then "[%6s]" of T<tid>/C<cpu> with CONFIG_PRINTK_CALLER, then one space if
# either was printed. A message that itself starts with "[" (the OOM task table's
# "[  pid]") is told apart by that space and by the caller's T/C.
_PREFIX_RE = re.compile(
    rb"""
    < (?P<prio>[0-9]{1,10}) >                    # facility * 8 + level
    (?:
        (?: \[\ * (?P<sec>[0-9]{1,12}) \.        # seconds, right-aligned in 5
              (?P<usec>[0-9]{6}) \] )?           # microseconds
        (?: \[\ * (?P<caller>[TC][0-9]{1,10}) \] )?   # caller id, right-aligned in 6
        (?<= \] ) \                              # the space, only after one of them
    )?
    """,
    re.VERBOSE,
)


def parse_syslog_line(line: bytes) -> SyslogLine | None:
    """Parse one line of READ_ALL output; None for anything that is not one.

    Never raises: a malformed line must cost that line only.
    """
    m = _PREFIX_RE.match(line)
    if m is None:
        return None
    prio = int(m["prio"])
    sec, usec = m["sec"], m["usec"]
    caller = m["caller"]
    return SyslogLine(
        facility=prio >> 3,
        level=prio & 7,
        time_us=None if sec is None else int(sec) * 1_000_000 + int(usec),
        caller=None if caller is None else caller.decode("ascii"),
        message=decode(line[m.end() :]),
    )


class NumberedLine(NamedTuple):
    """A line with a timestamp, and its place in the log (a tuple: thousands per read)."""

    position: int  # time_us * LINES_PER_US + n (module docstring)
    time_us: int
    raw: bytes  # the whole line, prefix included

    @property
    def crc(self) -> int:
        """CRC-32 of the line: tells two lines with the same position apart."""
        return zlib.crc32(self.raw)


def number_lines(raw_lines: Iterable[bytes]) -> tuple[list[NumberedLine], int]:
    """The lines of one read that carry a timestamp, numbered; and how many did not.

    Only the prefix is parsed here (`parse_syslog_line` does the rest for the lines
    handed on): a read holds thousands of lines and nearly all were seen before.
    """
    out: list[NumberedLine] = []
    untimed = 0
    same_time: dict[int, int] = {}
    match = _PREFIX_RE.match
    for raw in raw_lines:
        m = match(raw)
        if m is None:
            continue
        sec = m["sec"]
        if sec is None:
            untimed += 1
            continue
        time_us = int(sec) * 1_000_000 + int(m["usec"])
        n = same_time.get(time_us, 0)
        same_time[time_us] = n + 1
        out.append(NumberedLine(time_us * LINES_PER_US + min(n, LINES_PER_US - 1), time_us, raw))
    return out, untimed


@dataclass(frozen=True)
class SyslogCursor:
    """The last line handed on. `crc` None: known by position only (a saved resume point)."""

    position: int
    crc: int | None = None


@dataclass(frozen=True)
class NewLines:
    """What one read holds after the cursor."""

    lines: list[NumberedLine]  # to hand on, oldest first
    overrun: bool  # the cursor was overwritten: lines before lines[0] were never seen
    complete: bool  # False: the cursor may lie before this window; read a wider one


def new_since(
    cursor: SyslogCursor | None, lines: Sequence[NumberedLine], *, whole_log: bool
) -> NewLines:
    """The lines of a read that follow `cursor` (None: all of them).

    `lines` is the newest part of the log (`whole_log`: all of it that the kernel keeps).
    In a partial window the lines sharing the first line's timestamp may have earlier
    companions outside it, so their positions are not certain: the cursor is looked for
    after them only.
    """
    if cursor is None:
        return NewLines(list(lines) if whole_log else [], overrun=False, complete=whole_log)
    certain_from = 0
    if not whole_log and lines:
        first = lines[0].time_us
        certain_from = next((i for i, nl in enumerate(lines) if nl.time_us != first), len(lines))
    for i in range(len(lines) - 1, certain_from - 1, -1):
        nl = lines[i]
        if nl.position == cursor.position and cursor.crc in (None, nl.crc):
            return NewLines(list(lines[i + 1 :]), overrun=False, complete=True)
    if not whole_log:
        return NewLines([], overrun=False, complete=False)
    if lines and lines[0].position > cursor.position:
        return NewLines(list(lines), overrun=True, complete=True)
    # The cursor's line should be here and is not (its text changed under the same
    # position, which takes an overwritten line of the same microsecond): go by position.
    return NewLines(
        [nl for nl in lines if nl.position > cursor.position], overrun=False, complete=True
    )


# --- The reader -------------------------------------------------------------------


class SyslogUnavailable(OSError):
    """syslog(2) cannot read the kernel log; `cause` says why in one phrase."""

    def __init__(self, code: int, cause: str) -> None:
        super().__init__(code, f"{cause}; {_CONSEQUENCE}")
        self.cause = cause

    def __str__(self) -> str:
        return str(self.strerror)


def _unavailable(exc: OSError) -> SyslogUnavailable:
    code = exc.errno or 0
    if code in (errno.EPERM, errno.EACCES):
        reason = (
            "operation not permitted (needs CAP_SYSLOG while kernel.dmesg_restrict=1; in a "
            "container the seccomp profile allows syslog only with CAP_SYSLOG, and an LSM "
            "such as SELinux may refuse it)"
        )
    elif code == errno.ENOSYS:
        reason = "not implemented by this kernel (CONFIG_PRINTK off?)"
    else:
        reason = os.strerror(code) if code else str(exc)
    return SyslogUnavailable(code, f"cannot read the kernel log through syslog(2): {reason}")


class _Klogctl:
    """klogctl(3) through ctypes; one buffer, grown as needed and reused."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._call = libc.klogctl  # AttributeError: not this libc
        self._call.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        self._call.restype = ctypes.c_int
        self._buffer: ctypes.Array[ctypes.c_char] | None = None

    def _check(self, result: int) -> int:
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return result

    def size(self) -> int:
        return self._check(self._call(SYSLOG_ACTION_SIZE_BUFFER, None, 0))

    def read_all(self, window: int) -> bytes:
        if self._buffer is None or len(self._buffer) < window:
            self._buffer = ctypes.create_string_buffer(window)
        n = self._check(self._call(SYSLOG_ACTION_READ_ALL, self._buffer, window))
        return ctypes.string_at(self._buffer, n)


class SyslogReader:
    """Reads new kernel log lines through syslog(2) READ_ALL, as `KmsgRecord`s.

    The same use as `KmsgReader`, without a descriptor: call `read_available` when there is
    a reason to. `after_pos` works like KmsgReader's `after_seq`: None, only lines printed
    from now on; -1, every line the kernel still holds; a position, the lines after it (a
    restarted agent passes back what it had handed on; see `new_since` for a position no
    line has).

    `read_log(window) -> bytes` and `log_size() -> int` replace the system calls in tests.

    A `reader.KernelLogReader` without a descriptor to poll (`read_timing` says when
    the loop reads it).
    """

    source = "syslog"

    def __init__(
        self,
        *,
        after_pos: int | None = None,
        read_log: Callable[[int], bytes] | None = None,
        log_size: Callable[[], int] | None = None,
    ) -> None:
        if read_log is None or log_size is None:
            try:
                klog = _Klogctl()
            except (AttributeError, OSError) as exc:
                cause = f"cannot read the kernel log through syslog(2): no klogctl ({exc})"
                raise SyslogUnavailable(errno.ENOSYS, cause) from exc
            read_log = read_log or klog.read_all
            log_size = log_size or klog.size
        self._read_log = read_log
        try:
            size = log_size()
        except OSError as exc:
            raise _unavailable(exc) from exc
        # Prefixes make the printed log longer than the buffer (~10 % here); twice is ample.
        self._max_window = max(2 * size, _INITIAL_WINDOW_BYTES)
        self._cursor: SyslogCursor | None = None
        self._lost_records = 0
        self._closed = False
        self._untimed_said = False
        try:
            lines, untimed = self._read_window(_INITIAL_WINDOW_BYTES)[:2]
        except OSError as exc:
            raise _unavailable(exc) from exc
        if untimed and not lines:
            raise SyslogUnavailable(
                errno.EINVAL,
                "cannot use the kernel log through syslog(2): its lines carry no timestamp "
                "(printk.time=0), so a line read twice cannot be told from a new one",
            )
        if after_pos is None:
            # Only what comes next. An empty log: then everything that comes is new.
            self._cursor = SyslogCursor(lines[-1].position, lines[-1].crc) if lines else None
        elif after_pos >= 0:
            self._cursor = SyslogCursor(after_pos)

    @property
    def lost_records(self) -> int:
        """Overruns seen: times the last line handed on was overwritten before a read.

        Each counts one, though more lines may have gone (syslog(2) has no sequence
        numbers to tell how many). With `after_pos`, that includes while no agent ran.
        """
        return self._lost_records

    @property
    def last_seq(self) -> int | None:
        """The position of the last line handed on: what a restarted agent passes back."""
        return None if self._cursor is None else self._cursor.position

    @property
    def pollable_fd(self) -> int | None:
        """None: nothing tells when a line is printed."""
        return None

    @property
    def closed(self) -> bool:
        return self._closed

    def _read_window(self, window: int) -> tuple[list[NumberedLine], int, bool]:
        raw = self._read_log(window)
        whole = len(raw) + _MAX_RECORD_BYTES <= window or window >= self._max_window
        lines, untimed = number_lines(raw.split(b"\n"))
        return lines, untimed, whole

    def read_available(self) -> list[KmsgRecord]:
        """Every line printed since the last call, oldest first; never blocks.

        Raises `ReadFailed` when the system call fails: it did not at start, so the
        failure is a passing one (ENOMEM), and the next read tries again.
        """
        if self._closed:
            raise ValueError("I/O operation on a closed SyslogReader")
        # Nothing handed on yet: everything there is wanted, at once.
        window = _INITIAL_WINDOW_BYTES if self._cursor is not None else self._max_window
        while True:
            try:
                lines, untimed, whole = self._read_window(window)
            except OSError as exc:
                raise ReadFailed(
                    exc.errno or 0, f"cannot read the kernel log through syslog(2): {exc}"
                ) from exc
            if untimed and not lines:
                if not self._untimed_said:
                    self._untimed_said = True
                    log.warning(
                        "kernel log lines read through syslog(2) carry no timestamp "
                        "(printk.time=0): they cannot be told from lines read before, so "
                        "none is used until timestamps are back; OOM kills meanwhile are "
                        "reported from cgroup counters, victim unknown"
                    )
                return []
            self._untimed_said = False
            found = new_since(self._cursor, lines, whole_log=whole)
            if found.complete:
                break
            window = min(2 * window, self._max_window)
        if found.overrun:
            self._lost_records += 1
        records: list[KmsgRecord] = []
        for nl in found.lines:
            line = parse_syslog_line(nl.raw)
            if line is None:  # cannot be: number_lines matched the same prefix
                continue
            records.append(
                KmsgRecord(
                    seq=nl.position,
                    time_us=nl.time_us,
                    priority=line.level,
                    facility=line.facility,
                    message=line.message,
                    after_gap=found.overrun and not records,
                )
            )
        if found.lines:
            last = found.lines[-1]
            self._cursor = SyslogCursor(last.position, last.crc)
        return records

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> SyslogReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"last_seq={self.last_seq}"
        return f"SyslogReader({state}, lost_records={self._lost_records})"
