"""A read-only cgroup mount, as a hardened DaemonSet has it: kills still reported at once.

On cgroup v1 the kernel pushes a cgroup's OOM only through an eventfd registered by
writing `cgroup.event_control`, which a read-only mount refuses (EROFS); its counters
are then read at each resync only. The kernel log still names the victim and its
cgroup: the record must come from it, promptly, not from the resync. The agent runs in
a mount namespace of its own where the memory hierarchy is remounted read-only (the
truly read-only case: not a bind of /sys/fs/cgroup, whose v1 submounts stay writable).
"""

from __future__ import annotations

import json
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime

import pytest

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.cgroups.scratch import MIB, ScratchTree
from tests.watch_process import is_warning

pytestmark = pytest.mark.system

# The resync that used to be the only way such a kill came out: far beyond the wait.
RESYNC_S = 3600
WAIT_S = 30.0


def _agent(hierarchy: MemoryHierarchy, tree: ScratchTree, kernel_log: str) -> subprocess.Popen[str]:
    extra = "" if kernel_log == "kmsg" else " --kmsg-path /nonexistent/kmsg"
    agent = (
        f"mount -o remount,bind,ro {hierarchy.mount} && exec {sys.executable} -m oomguard.cli "
        f"watch --json --resync-interval-s {RESYNC_S} --cgroup-root {tree.top}{extra}"
    )
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", agent],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("kernel_log", ["kmsg", "syslog"])
def test_kill_in_a_read_only_cgroup_mount_comes_from_the_kernel_log(
    tree: ScratchTree, hierarchy: MemoryHierarchy, kernel_log: str
) -> None:
    if hierarchy.version is not CgroupVersion.V1 or shutil.which("unshare") is None:
        pytest.skip("the read-only eventfd case is cgroup v1's, in a mount namespace")
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    container = tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=48 * MIB)
    proc = _agent(hierarchy, tree, kernel_log)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        warning = proc.stderr.readline()
        assert "Read-only file system" in warning, warning
        banner = proc.stderr.readline()
        assert "watching" in banner, banner
        if kernel_log == "syslog":
            assert "every 0.75 s (some cgroups cannot signal their OOMs)" in banner, banner
        lines = _Lines(proc)
        hog = tree.start_hog(container, "memhog")
        assert hog.wait(timeout=30) == -9
        reaped = time.time()
        line = lines.next(WAIT_S)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert line, f"no record within {WAIT_S:g} s (the resync is {RESYNC_S} s away)"
    record = json.loads(line)
    assert record["pid"] == hog.pid and record["command"] == "memhog"
    assert record["container_id"] == cid and record["source"] == kernel_log
    stamped = record["time"].replace("Z", "+00:00")
    assert abs(datetime.fromisoformat(stamped).timestamp() - reaped) < 1.0


class _Lines:
    """The agent's stdout lines as they come, from a thread: a buffered readline after a
    select would leave lines in Python's buffer that the next select never sees."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout
        threading.Thread(target=lambda: [self._queue.put(x) for x in stream], daemon=True).start()

    def next(self, timeout_s: float) -> str:
        """One line, or "" when none came within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return ""
            if not is_warning(line):  # kills only: a hog passes 90 % on its way
                return line


@pytest.mark.parametrize("kernel_log", ["kmsg", "syslog"])
def test_bare_kill_lines_in_a_read_only_mount_are_paired_at_once(
    tree: ScratchTree, hierarchy: MemoryHierarchy, kernel_log: str
) -> None:
    """The kernel prints at most 10 report headers per 5 s; past that only the bare
    "Killed process" line, which names no cgroup. With no OOM signal from a read-only
    mount, the line itself prompts a read of the counters that cannot signal, and
    pairs with the increase it finds: the victim is named, not left to the rescan."""
    if hierarchy.version is not CgroupVersion.V1 or shutil.which("unshare") is None:
        pytest.skip("the read-only eventfd case is cgroup v1's, in a mount namespace")
    burst = [
        tree.make(
            f"kubepods/burstable/pod{uuid.uuid4()}/{secrets.token_hex(32)}", limit_bytes=32 * MIB
        )
        for _ in range(10)
    ]
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    last = tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=32 * MIB)
    proc = _agent(hierarchy, tree, kernel_log)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        while "watching" not in proc.stderr.readline():
            pass
        lines = _Lines(proc)
        # The kernel allows 10 report headers per 5 s window, which a window's first
        # OOM opens: after 5.5 s without OOMs (earlier tests' kills), ten kills at once
        # use up the headers of a new window, all named, and the next kill prints bare.
        time.sleep(5.5)
        hogs = [tree.start_hog(c, f"burst-{n}") for n, c in enumerate(burst)]
        assert [h.wait(timeout=60) for h in hogs] == [-9] * len(hogs)
        records = [json.loads(lines.next(WAIT_S) or "null") for _ in hogs]
        assert None not in records, f"not every kill of the burst was reported: {records}"
        hog = tree.start_hog(last, "memhog")
        assert hog.wait(timeout=30) == -9
        line = lines.next(WAIT_S)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert line, f"no record within {WAIT_S:g} s (the resync is {RESYNC_S} s away)"
    record = json.loads(line)
    assert record["container_id"] == cid
    assert record["pid"] == hog.pid and record["command"] == "memhog", record
    assert record["constraint"] == "container", record  # its own limit, by the peaks
