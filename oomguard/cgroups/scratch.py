"""Throwaway memory cgroups and memory hogs, for `oomguard demo`, tests and benchmarks.

Everything is made inside the caller's own memory cgroup, so the caller's limits
still bound it and nothing outside is touched; `close()` kills every process left
in the tree and removes it bottom-up, also after a failure.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy, own_cgroup
from oomguard.closing import Closing
from oomguard.proc.handle import read_cgroup_procs

MIB = 1024 * 1024

# Allocates and touches 1 MiB at a time until the kernel kills it. It waits for a
# line on stdin first, so the caller can move it into its cgroup before it grows.
HOG_SOURCE = r"""
import sys
name = sys.argv[1] if len(sys.argv) > 1 else "memhog"
try:
    with open("/proc/self/comm", "w") as f:
        f.write(name)
except OSError:
    pass
sys.stdin.readline()
hoard = []
while True:
    chunk = bytearray(1 << 20)
    for i in range(0, len(chunk), 4096):
        chunk[i] = 1
    hoard.append(chunk)
"""

# Grows at a steady pace (argv: name, MiB/s, MiB to reach or 0 for "until killed",
# seconds to hold there, then frees it all and sleeps): a leak, or a spike that
# recovers. Touches every page, so what it holds is anonymous memory the kernel cannot
# drop. Waits for a line on stdin first, like the hog; prints "freed" when it let go.
GROWER_SOURCE = r"""
import sys, time
name, rate, top, hold = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
try:
    with open("/proc/self/comm", "w") as f:
        f.write(name)
except OSError:
    pass
sys.stdin.readline()
hoard = []
start = time.monotonic()
while top == 0 or len(hoard) < top:
    due = start + len(hoard) / rate
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    chunk = bytearray(1 << 20)
    for i in range(0, len(chunk), 4096):
        chunk[i] = 1
    hoard.append(chunk)
time.sleep(hold)
hoard.clear()
sys.stdout.write("freed\n"); sys.stdout.flush()
while True:
    time.sleep(3600)
"""

# Reads a file (argv: name, path) from start to end, over and over: its page cache
# fills the cgroup's limit and the kernel reclaims it, which is no danger to anyone.
READER_SOURCE = r"""
import os, sys
name, path = sys.argv[1], sys.argv[2]
try:
    with open("/proc/self/comm", "w") as f:
        f.write(name)
except OSError:
    pass
sys.stdin.readline()
while True:
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
"""

SLEEPER_SOURCE = r"""
import sys, time
name = sys.argv[1] if len(sys.argv) > 1 else "sleeper"
try:
    with open("/proc/self/comm", "w") as f:
        f.write(name)
except OSError:
    pass
sys.stdout.write("ready\n"); sys.stdout.flush()
while True:
    time.sleep(3600)
"""


class ScratchError(RuntimeError):
    """The scratch tree could not be made; the message says why in one sentence."""


class ScratchTree(Closing):
    """A tree of memory cgroups below the current process's own."""

    def __init__(self, hierarchy: MemoryHierarchy, name: str) -> None:
        self.hierarchy = hierarchy
        parent = own_cgroup(hierarchy)
        self.top_cgroup = parent.rstrip("/") + "/" + name
        self.top = hierarchy.fs_path(self.top_cgroup)
        self._procs: list[subprocess.Popen[bytes]] = []
        try:
            self.top.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            raise ScratchError(
                f"cannot create a scratch cgroup at {self.top}: {exc.strerror} "
                "(the demo and the system tests need root)"
            ) from exc
        if hierarchy.version is CgroupVersion.V2:
            self._enable_memory(hierarchy.fs_path(parent))
            self._enable_memory(self.top)

    @staticmethod
    def _enable_memory(directory: Path) -> None:
        try:
            with open(directory / "cgroup.subtree_control", "w") as f:
                f.write("+memory")
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise ScratchError(
                    f"cannot enable the memory controller below {directory}: it holds "
                    "processes (cgroup v2 'no internal processes' rule); run from a "
                    "delegated cgroup, e.g. systemd-run --scope -p Delegate=yes"
                ) from exc
            raise

    def make(self, relative: str, *, limit_bytes: int | None = None) -> str:
        """Create `relative` (a/b/c) below the top; returns its cgroup path."""
        current = self.top
        parts = [p for p in relative.split("/") if p]
        for i, part in enumerate(parts):
            current = current / part
            current.mkdir(exist_ok=True)
            if self.hierarchy.version is CgroupVersion.V2 and i < len(parts) - 1:
                self._enable_memory(current)
        if limit_bytes is not None:
            self.set_limit(current, limit_bytes)
        return self.hierarchy.cgroup_of(current)

    def enable_children(self, cgroup: str) -> None:
        """On v2, let a cgroup that will get children of its own hand down memory."""
        if self.hierarchy.version is CgroupVersion.V2:
            self._enable_memory(self.hierarchy.fs_path(cgroup))

    def set_limit(self, directory: Path | str, limit_bytes: int) -> None:
        d = self.hierarchy.fs_path(directory) if isinstance(directory, str) else directory
        if self.hierarchy.version is CgroupVersion.V2:
            (d / "memory.max").write_text(str(limit_bytes))
            swap = d / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
        else:
            (d / "memory.limit_in_bytes").write_text(str(limit_bytes))
            memsw = d / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                with contextlib.suppress(OSError):
                    memsw.write_text(str(limit_bytes))

    def spawn(self, cgroup: str, source: str, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start a Python child and move it into `cgroup` before it does anything."""
        proc = subprocess.Popen(
            [sys.executable, "-c", source, name, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._procs.append(proc)
        (self.hierarchy.fs_path(cgroup) / "cgroup.procs").write_text(str(proc.pid))
        return proc

    def start_hog(self, cgroup: str, name: str = "memhog") -> subprocess.Popen[bytes]:
        """A process that grows until killed; it starts growing at once."""
        proc = self.spawn(cgroup, HOG_SOURCE, name)
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        return proc

    def start_grower(
        self,
        cgroup: str,
        rate_mib_s: float,
        *,
        top_mib: int = 0,
        hold_s: float = 0.0,
        name: str = "grower",
    ) -> subprocess.Popen[bytes]:
        """A process growing at `rate_mib_s` (to `top_mib`, held `hold_s`, then freed;
        0: until killed); it starts growing at once."""
        proc = self.spawn(cgroup, GROWER_SOURCE, name, str(rate_mib_s), str(top_mib), str(hold_s))
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        return proc

    def start_reader(
        self, cgroup: str, path: Path, name: str = "reader"
    ) -> subprocess.Popen[bytes]:
        """A process reading `path` over and over (page cache, no danger)."""
        proc = self.spawn(cgroup, READER_SOURCE, name, str(path))
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        return proc

    def start_sleeper(self, cgroup: str, name: str = "sleeper") -> subprocess.Popen[bytes]:
        """A small process that stays; returns once it has renamed itself."""
        proc = self.spawn(cgroup, SLEEPER_SOURCE, name)
        assert proc.stdout is not None
        proc.stdout.readline()
        return proc

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        remove_tree(self.top)


def remove_tree(top: Path, timeout_s: float = 10.0) -> None:
    """Kill what is left in a cgroup tree we made, then rmdir it bottom-up."""
    if not top.is_dir():
        return
    deadline = time.monotonic() + timeout_s
    dirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True)
    for d in dirs:
        while True:
            pids = read_cgroup_procs(d)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
