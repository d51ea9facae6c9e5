"""Crash-safe writes to the agent's state directory.

Write to a temp file, fsync, rename over the old file, fsync the directory: a crash
at any point leaves the old file or the new one, never half of either. Every state
file of the agent (event queue, kmsg position, oom_score_adj state) is written through
here. Each state file that only holds for one boot carries the boot id (`read_boot_id`).
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path

# The default of `oomguard run --state-dir` (and of `oomguard top --state-dir`, which
# reads what the agent publishes there).
DEFAULT_STATE_DIR = Path("/var/lib/oomguard")
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def read_boot_id(path: str = BOOT_ID_PATH) -> str | None:
    """This boot's id, or None off Linux / when unreadable."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def set_aside(path: Path) -> Path:
    """Move an unreadable state file out of the way as `<name>.corrupt-<UTC time>`.

    Kept for a human to look at; the caller logs why and starts without it.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, aside)
    return aside
