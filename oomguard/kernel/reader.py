"""What the loop needs of a kernel log reader, whichever interface the kernel lets us use.

The same idea as node-problem-detector's log watchers (one small type per source behind
one interface): the loop holds a `KernelLogReader` and never asks which one it is.
/dev/kmsg (`kmsg.py`) hands out a descriptor to poll and the kernel's sequence numbers;
syslog(2) (`syslog.py`) has no descriptor, so the loop reads it when it has a reason to
(`read_timing.py`), and numbers lines itself. Which one is opened, and why, is
`open_log.open_kernel_log`.
"""

from __future__ import annotations

from typing import Protocol

from oomguard.kernel.parse import KmsgRecord

__all__ = ["KERNEL_LOG_SOURCES", "KernelLogReader", "ReadFailed"]

# The readers' names, as kill ids, the saved position and the kernel_log_source metric
# say them. A position is only ever handed back to the reader that gave it.
KERNEL_LOG_SOURCES = ("kmsg", "syslog")


class ReadFailed(OSError):
    """A read that failed in a way that may pass (syslog(2) ENOMEM): said, then retried.

    Any other error of a reader that worked at start is not expected to pass, and ends
    the loop (the agent's liveness then says so).
    """

    def __str__(self) -> str:
        return str(self.strerror)


class KernelLogReader(Protocol):
    """The kernel log, read without blocking, one `KmsgRecord` per record, oldest first."""

    @property
    def source(self) -> str:
        """One of KERNEL_LOG_SOURCES: whose positions `last_seq` are."""
        ...

    @property
    def last_seq(self) -> int | None:
        """The position of the last record consumed: what a restarted reader resumes after."""
        ...

    @property
    def lost_records(self) -> int:
        """Records the kernel overwrote before they were read, since opening."""
        ...

    @property
    def pollable_fd(self) -> int | None:
        """A descriptor that becomes readable when a record is printed; None: none to poll."""
        ...

    def read_available(self) -> list[KmsgRecord]:
        """Every record printed since the last call; never blocks; `ReadFailed` may pass."""
        ...

    def close(self) -> None: ...
