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
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime

import pytest

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.scratch import MIB, ScratchTree

pytestmark = pytest.mark.system

# The resync that used to be the only way such a kill came out: far beyond the wait.
RESYNC_S = 3600
WAIT_S = 30.0


@pytest.mark.parametrize("kernel_log", ["kmsg", "syslog"])
def test_kill_in_a_read_only_cgroup_mount_comes_from_the_kernel_log(
    tree: ScratchTree, hierarchy: MemoryHierarchy, kernel_log: str
) -> None:
    if hierarchy.version is not CgroupVersion.V1 or shutil.which("unshare") is None:
        pytest.skip("the read-only eventfd case is cgroup v1's, in a mount namespace")
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    container = tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=48 * MIB)
    extra = "" if kernel_log == "kmsg" else " --kmsg-path /nonexistent/kmsg"
    agent = (
        f"mount -o remount,bind,ro {hierarchy.mount} && exec {sys.executable} -m oomguard.cli "
        f"watch --json --resync-interval-s {RESYNC_S} --cgroup-root {tree.top}{extra}"
    )
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", agent],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        warning = proc.stderr.readline()
        assert "Read-only file system" in warning, warning
        banner = proc.stderr.readline()
        assert "watching" in banner, banner
        if kernel_log == "syslog":
            assert "every 1 s (some cgroups cannot signal their OOMs)" in banner, banner
        hog = tree.start_hog(container, "memhog")
        assert hog.wait(timeout=30) == -9
        reaped = time.time()
        line = _readline(proc, WAIT_S)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert line, f"no record within {WAIT_S:g} s (the resync is {RESYNC_S} s away)"
    record = json.loads(line)
    assert record["pid"] == hog.pid and record["command"] == "memhog"
    assert record["container_id"] == cid and record["source"] == kernel_log
    stamped = record["time"].replace("Z", "+00:00")
    assert abs(datetime.fromisoformat(stamped).timestamp() - reaped) < 1.0


def _readline(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """One stdout line, or "" when none came within `timeout_s`."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            return ""
    return proc.stdout.readline()
