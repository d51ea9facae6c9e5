"""Race-safe /proc access against real processes: exits and PID reuse never hit a stranger."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oomguard.cgroups.scratch import ScratchTree
from oomguard.proc.handle import ProcHandle, read_cgroup_procs

pytestmark = pytest.mark.system


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_reads_and_writes_through_the_pinned_directory() -> None:
    proc = sleeper()
    try:
        with ProcHandle.open(proc.pid) as h:  # type: ignore[union-attr]
            assert h.oom_score_adj() == 0
            assert h.set_oom_score_adj(500)
            assert h.oom_score_adj() == 500
            assert (h.oom_score() or 0) > 500  # the kernel adds the adj to the badness
            assert h.comm() and h.rss_bytes()
    finally:
        proc.kill()
        proc.wait()


def test_exited_process_is_gone_not_an_error() -> None:
    proc = sleeper()
    h = ProcHandle.open(proc.pid)
    assert h is not None
    proc.kill()
    proc.wait()  # reaped: /proc/PID is gone, the PID may be handed out again
    with h:
        assert h.oom_score() is None
        assert h.oom_score_adj() is None
        assert h.set_oom_score_adj(1000) is False


REUSE_SCRIPT = r"""
import subprocess, sys
from oomguard.proc.handle import ProcHandle
first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
h = ProcHandle.open(first.pid)
first.kill(); first.wait()
# Inside our own PID namespace: make the next PID the one just freed.
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(first.pid - 1))
stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
assert stranger.pid == first.pid, (stranger.pid, first.pid)
wrote = h.set_oom_score_adj(1000)
adj = open(f"/proc/{stranger.pid}/oom_score_adj").read().strip()
stranger.kill(); stranger.wait()
print(wrote, adj)
"""


def test_reused_pid_is_never_written() -> None:
    # A private PID namespace (unshare) lets the test hand the freed PID to a new
    # process on purpose, without touching the host's PID allocation.
    result = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", REUSE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        pytest.skip(f"cannot make a PID namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "0"]  # the stranger kept its own value


def test_lowering_without_cap_sys_resource_is_reported_clearly() -> None:
    proc = sleeper()
    try:
        with ProcHandle.open(proc.pid) as h:  # type: ignore[union-attr]
            try:
                ok = h.set_oom_score_adj(-500)
            except PermissionError as exc:
                assert exc.errno == errno.EACCES
                assert h.oom_score_adj() == 0  # nothing written
                return
            assert ok and h.oom_score_adj() == -500  # full root (e.g. the VM)
    finally:
        proc.kill()
        proc.wait()


def test_cgroup_procs_of_a_tree(tree: ScratchTree) -> None:
    cg = tree.make("c")
    s = tree.start_sleeper(cg, "pinned")
    assert read_cgroup_procs(tree.hierarchy.fs_path(cg)) == [s.pid]
    assert read_cgroup_procs(tree.hierarchy.fs_path(cg) / "missing") == []
