"""Which kernel log to read: /dev/kmsg, else syslog(2), else none; and the one line saying so.

/dev/kmsg first: it can be polled (a kill's line is read the moment it is printed) and it
numbers its records. Where it cannot be opened (an unprivileged container: the runtime's
device cgroup refuses it), syslog(2) reads the same log without a device. Where neither
is allowed, the kills are still counted by the cgroups, without the victim's name: that
is said once, with why, and is never fatal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from oomguard.kernel.kmsg import KmsgReader, KmsgUnavailable
from oomguard.kernel.reader import KernelLogReader
from oomguard.kernel.syslog import SyslogReader, SyslogUnavailable

__all__ = ["COUNTERS_ONLY", "OpenedLog", "open_kernel_log"]

COUNTERS_ONLY = "OOM kills will be reported from cgroup counters without the victim's name"


@dataclasses.dataclass(frozen=True, slots=True)
class OpenedLog:
    """The reader in use (None: counters only) and what is said about it."""

    reader: KernelLogReader | None
    # The one line said at start: which log is read, or why none is. For syslog(2), the
    # loop adds when it reads (`with_reads`), known once the cgroups are watched.
    status: str
    # Why the kernel log cannot be read (a warning for the agent); None: it is read, or
    # reading it was turned off.
    error: str | None = None

    @property
    def source(self) -> str:
        """ "kmsg", "syslog" or "none"."""
        return "none" if self.reader is None else self.reader.source

    def with_reads(self, reads: str) -> OpenedLog:
        """The status completed with when the log is read ("" for a polled one)."""
        return dataclasses.replace(self, status=f"{self.status}, {reads}") if reads else self


NOT_OPENED = OpenedLog(None, "the kernel log is not read")


def open_kernel_log(
    kmsg_path: str | None,
    *,
    syslog_fallback: bool = True,
    after: Mapping[str, int] | None = None,
) -> OpenedLog:
    """/dev/kmsg at `kmsg_path` (None: read no kernel log), else syslog(2), else none.

    `after`: per reader (`reader.KERNEL_LOG_SOURCES`), the position a restarted agent
    resumes after (-1: everything the kernel still holds); a reader not listed reads
    only what is printed from now on.
    """
    after = after or {}
    if kmsg_path is None:
        return OpenedLog(None, f"the kernel log is not read (disabled); {COUNTERS_ONLY}")
    try:
        kmsg = KmsgReader(kmsg_path, after_seq=after.get(KmsgReader.source))
    except KmsgUnavailable as exc:
        kmsg_exc = exc
    else:
        return OpenedLog(kmsg, f"reading the kernel log from {kmsg_path}")
    if not syslog_fallback:
        return OpenedLog(None, str(kmsg_exc), error=str(kmsg_exc))
    try:
        syslog = SyslogReader(after_pos=after.get(SyslogReader.source))
    except SyslogUnavailable as exc:
        why = f"{kmsg_exc.cause}; {exc.cause}; {COUNTERS_ONLY}"
        return OpenedLog(None, why, error=why)
    return OpenedLog(syslog, f"{kmsg_exc.cause}; reading the kernel log through syslog(2) instead")
