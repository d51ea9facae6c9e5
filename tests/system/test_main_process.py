"""Was the victim its container's main process? Real kills, real pid namespaces (lane 1).

The container's process tree is rebuilt as a runtime makes it: the main process's
parent lives outside the container (here the test, there the shim), a forked worker's
parent inside; `unshare --pid` makes the main process pid 1 of its own namespace, and
`nsenter --pid` into that namespace starts a process the way `kubectl exec` does.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest

from oomguard.scratch import HOG_SOURCE, MIB, SLEEPER_SOURCE, ScratchTree
from tests.conftest import Collector

pytestmark = pytest.mark.system

LIMIT = 48 * MIB

# A main process that forks a worker; the worker (same cgroup, parent inside it)
# grows until killed, the main process stays.
FORKING_MAIN = r"""
import os, sys, time
with open("/proc/self/comm", "w") as f:
    f.write("app-main")
sys.stdin.readline()
pid = os.fork()
if pid == 0:
    with open("/proc/self/comm", "w") as f:
        f.write("app-worker")
    hoard = []
    while True:
        chunk = bytearray(1 << 20)
        for i in range(0, len(chunk), 4096):
            chunk[i] = 1
        hoard.append(chunk)
sys.stdout.write(f"{pid}\n"); sys.stdout.flush()
os.waitpid(pid, 0)
time.sleep(3600)
"""


def _container(tree: ScratchTree) -> str:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    return tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=LIMIT)


def _only_child(pid: int, timeout_s: float = 10.0) -> int:
    """The single child `pid` forked (unshare/nsenter fork before running the program)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
                children = [int(x) for x in f.read().split()]
        except OSError:
            children = []
        if children:
            return children[0]
        time.sleep(0.01)
    raise AssertionError(f"process {pid} forked no child")


def _start_in_namespace(
    tree: ScratchTree, cgroup: str, wrapper: list[str], source: str, name: str
) -> tuple[subprocess.Popen[bytes], int]:
    """Run `source` under a namespace wrapper (which stays outside the container, as a
    shim does) and move only the wrapped program into `cgroup`. Returns (wrapper, pid)."""
    proc = subprocess.Popen(
        [*wrapper, sys.executable, "-c", source, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    tree._procs.append(proc)  # killed by tree.close() whatever happens
    child = _only_child(proc.pid)
    (tree.hierarchy.fs_path(cgroup) / "cgroup.procs").write_text(str(child))
    return proc, child


def test_process_started_into_the_container_is_its_main_process(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    container = _container(tree)
    col = watch()
    hog = tree.start_hog(container, "app-main")
    kills = col.wait_for(1)
    assert hog.wait(timeout=30) == -9
    assert [(k.pid, k.main_process) for k in kills] == [(hog.pid, True)]
    assert kills[0].to_json_dict()["main_process"] is True


def test_forked_worker_is_not_the_main_process(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    container = _container(tree)
    col = watch()
    main = tree.spawn(container, FORKING_MAIN, "app-main")
    assert main.stdin is not None and main.stdout is not None
    main.stdin.write(b"go\n")
    main.stdin.flush()
    worker_pid = int(main.stdout.readline())
    kills = col.wait_for(1)
    assert [(k.pid, k.command, k.main_process) for k in kills] == [
        (worker_pid, "app-worker", False)
    ]
    assert main.poll() is None, "the main process must survive its worker's kill"


@pytest.mark.skipif(
    shutil.which("unshare") is None or shutil.which("nsenter") is None,
    reason="needs util-linux unshare and nsenter",
)
def test_pid_namespace_init_is_main_and_exec_d_process_is_not(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    container = _container(tree)
    col = watch()
    # The container's init: pid 1 of a new pid namespace, parent outside the cgroup.
    _, init_pid = _start_in_namespace(
        tree, container, ["unshare", "--pid", "--fork"], SLEEPER_SOURCE, "app-init"
    )
    with open(f"/proc/{init_pid}/status", encoding="ascii") as f:
        assert any(line.split()[-1] == "1" for line in f if line.startswith("NSpid:"))
    # `kubectl exec`: a process entering the container's pid namespace from outside.
    ns = f"--pid=/proc/{init_pid}/ns/pid"
    exec_proc, exec_pid = _start_in_namespace(
        tree, container, ["nsenter", ns, "--"], HOG_SOURCE, "exec-hog"
    )
    assert exec_proc.stdin is not None
    exec_proc.stdin.write(b"go\n")
    exec_proc.stdin.flush()
    kills = col.wait_for(1)
    assert [(k.pid, k.command, k.main_process) for k in kills] == [(exec_pid, "exec-hog", False)]
    assert os.path.exists(f"/proc/{init_pid}"), "the container's init must survive"

    # Now the init itself grows past the limit: the container's main process.
    os.kill(init_pid, 9)  # ends the namespace; a fresh init is the new main process
    init_proc, hog_init = _start_in_namespace(
        tree, container, ["unshare", "--pid", "--fork"], HOG_SOURCE, "init-hog"
    )
    assert init_proc.stdin is not None
    init_proc.stdin.write(b"go\n")
    init_proc.stdin.flush()
    kills = col.wait_for(2)
    assert [(k.pid, k.command, k.main_process) for k in kills[1:]] == [(hog_init, "init-hog", True)]
