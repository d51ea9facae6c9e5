"""A cgroup v2 container's `memory.oom.group`: does one OOM kill take all its processes?

`memory.oom.group=1` (the kubelet's setting for every container on cgroup v2, unless
the node opts out with the kubelet's `singleProcessOOMKill`) makes the kernel kill every
process of the cgroup when it picks one of them; `0` lets it kill only the process it
picks. cgroup v1 has no such file: there every OOM kill takes one process.

The file is read and written here and nowhere else (the reconciler writes it, `oomguard
top` reads it). Writes open the existing file only (never create one: a directory that
is not a cgroup v2 cgroup then fails instead of gaining a stray file) and follow no
symlink. Nothing is retried or hidden: the caller counts, says and logs what failed.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

OOM_GROUP_FILE = "memory.oom.group"
_MAX_BYTES = 64  # "0\n" or "1\n"; anything longer is not this file


def read_oom_group(cgroup_dir: str | os.PathLike[str]) -> int | None:
    """The cgroup's `memory.oom.group`, 0 or 1; None when it has no such file (cgroup
    v1, or the cgroup is gone). Raises OSError for other read failures, ValueError when
    the file holds anything but a number."""
    path = Path(cgroup_dir) / OOM_GROUP_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    try:
        raw = os.read(fd, _MAX_BYTES)
    except OSError as exc:
        if exc.errno == errno.ENODEV:  # the cgroup was removed after the open
            return None
        raise
    finally:
        os.close(fd)
    text = raw.decode("ascii", "replace").strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{path} holds {text!r}, not a number")
    return int(text)


def write_oom_group(cgroup_dir: str | os.PathLike[str], value: int) -> None:
    """Set the cgroup's `memory.oom.group` to `value` (0 or 1).

    Raises OSError as the kernel says: EROFS (the cgroup file system is mounted
    read-only, as the chart's `cgroup.readOnly: true` does), EACCES or EPERM (no
    permission), ENOENT (cgroup v1, or the cgroup is gone), ENODEV (removed meanwhile).
    """
    if isinstance(value, bool) or value not in (0, 1):
        raise ValueError(f"memory.oom.group takes 0 or 1, not {value!r}")
    path = Path(cgroup_dir) / OOM_GROUP_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.write(fd, b"%d\n" % value)
    finally:
        os.close(fd)
