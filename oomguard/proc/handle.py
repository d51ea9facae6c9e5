"""Race-safe access to one process's /proc files.

A PID can be reused the moment its process exits. Opening `/proc/PID` once as a
directory and reading or writing everything relative to that descriptor pins the
process we looked at: if it exits, later reads fail (ESRCH/ENOENT) instead of landing
on whichever process got the number next. A process that exits half-way is normal on
a busy node, so "gone" is a return value here, not an exception.
"""

from __future__ import annotations

import errno
import os

from oomguard.closing import Closing
from oomguard.safe_text import decode

_GONE_ERRNOS = frozenset({errno.ESRCH, errno.ENOENT})
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class ProcHandle(Closing):
    """An open `/proc/PID` directory."""

    def __init__(self, pid: int, dir_fd: int) -> None:
        self.pid = pid
        self._fd = dir_fd

    @classmethod
    def open(cls, pid: int, proc_root: str = "/proc") -> ProcHandle | None:
        """Pin a process; None when it has already exited."""
        try:
            fd = os.open(f"{proc_root}/{int(pid)}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                return None
            raise
        return cls(pid, fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read(self, name: str) -> str | None:
        """One /proc/PID file as text; None when the process is gone."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._fd)
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                return None
            raise
        try:
            chunks: list[bytes] = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            return decode(b"".join(chunks))
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                return None
            raise
        finally:
            os.close(fd)

    def _read_int(self, name: str) -> int | None:
        text = self.read(name)
        if text is None:
            return None
        try:
            return int(text.strip())
        except ValueError:
            return None

    def oom_score(self) -> int | None:
        return self._read_int("oom_score")

    def oom_score_adj(self) -> int | None:
        return self._read_int("oom_score_adj")

    def set_oom_score_adj(self, value: int) -> bool:
        """Write oom_score_adj; False when the process is gone.

        PermissionError (lowering without CAP_SYS_RESOURCE, or another user's process
        without CAP_DAC_OVERRIDE) is raised: the caller must say so, not hide it.
        """
        if not -1000 <= value <= 1000:
            raise ValueError(f"oom_score_adj {value} is outside -1000..1000")
        try:
            fd = os.open("oom_score_adj", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self._fd)
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                return False
            raise
        try:
            os.write(fd, str(value).encode())
            return True
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                return False
            raise
        finally:
            os.close(fd)

    def comm(self) -> str | None:
        text = self.read("comm")
        return None if text is None else text.rstrip("\n")

    def rss_bytes(self) -> int | None:
        text = self.read("statm")
        if text is None:
            return None
        fields = text.split()
        if len(fields) < 2 or not fields[1].isdigit():
            return None
        return int(fields[1]) * _PAGE_SIZE

    def cgroup(self) -> str | None:
        return self.read("cgroup")


def list_pids(proc_root: str = "/proc") -> list[int]:
    """Every process visible in this PID namespace."""
    return [int(name) for name in os.listdir(proc_root) if name.isdigit()]


def read_cgroup_procs(directory: str | os.PathLike[str]) -> list[int]:
    """PIDs in one cgroup (not its children); empty when the cgroup is gone."""
    try:
        with open(os.path.join(directory, "cgroup.procs"), "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return []
        raise
    return [int(x) for x in data.split() if x.isdigit()]
