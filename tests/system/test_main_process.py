"""Was the victim its container's main process? Real kills, real pid namespaces (lane 1).

The container's process tree is rebuilt as a runtime makes it: the main process's
parent lives outside the container (here the test, there the shim), a forked worker's
parent inside; `unshare --pid` makes the main process pid 1 of its own namespace, and
`nsenter --pid` into that namespace starts a process the way `kubectl exec` does.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from oomguard.cgroups.scratch import HOG_SOURCE, MIB, SLEEPER_SOURCE, ScratchTree
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


class NamespaceWrappers:
    """Programs started under `unshare --fork` / `nsenter --pid`, which fork them.

    The program is the wrapper's child, the test's grandchild: killing the wrapper alone
    leaves it running, outside any cgroup of the test if the test stopped before moving
    it (a hog then grows in the test's own cgroup). So each wrapper leads a process group
    of its own and `close()` kills the whole group; `setpriv --pdeathsig` and unshare's
    `--kill-child` take the chain down even if the test process itself is killed (no
    teardown then): the wrapper dies with the test, the namespace init with its wrapper,
    and every process in a pid namespace with its init.
    """

    def __init__(self) -> None:
        self._wrappers: list[subprocess.Popen[bytes]] = []

    def start(
        self, wrapper: list[str], source: str, name: str
    ) -> tuple[subprocess.Popen[bytes], int]:
        """Run `source` under `wrapper`; returns (wrapper, pid of the program)."""
        proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", *wrapper, sys.executable, "-c", source, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a process group of its own, killed whole by close()
        )
        self._wrappers.append(proc)
        return proc, _only_child(proc.pid)

    def close(self) -> None:
        for proc in self._wrappers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self._wrappers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


@pytest.fixture
def namespaced(tree: ScratchTree) -> Iterator[NamespaceWrappers]:
    """Torn down before `tree`, which then kills what is left in the test's cgroups."""
    wrappers = NamespaceWrappers()
    try:
        yield wrappers
    finally:
        wrappers.close()


def _start_in_namespace(
    namespaced: NamespaceWrappers,
    tree: ScratchTree,
    cgroup: str,
    wrapper: list[str],
    source: str,
    name: str,
) -> tuple[subprocess.Popen[bytes], int]:
    """Run `source` under a namespace wrapper (which stays outside the container, as a
    shim does) and move only the wrapped program into `cgroup`. Returns (wrapper, pid)."""
    proc, child = namespaced.start(wrapper, source, name)
    (tree.hierarchy.fs_path(cgroup) / "cgroup.procs").write_text(str(child))
    return proc, child


def _gone(pid: int, timeout_s: float = 30.0) -> bool:
    """Whether `pid` exits (or is a zombie) within `timeout_s`: waits for the event, the
    bound only stops a hung test."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.01)
    return False


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


NEEDS_UTIL_LINUX = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("unshare", "nsenter", "setpriv")),
    reason="needs util-linux unshare, nsenter and setpriv",
)


@NEEDS_UTIL_LINUX
def test_pid_namespace_init_is_main_and_exec_d_process_is_not(
    tree: ScratchTree, namespaced: NamespaceWrappers, watch: Callable[..., Collector]
) -> None:
    container = _container(tree)
    col = watch()
    # The container's init: pid 1 of a new pid namespace, parent outside the cgroup.
    _, init_pid = _start_in_namespace(
        namespaced,
        tree,
        container,
        ["unshare", "--pid", "--kill-child"],
        SLEEPER_SOURCE,
        "app-init",
    )
    with open(f"/proc/{init_pid}/status", encoding="ascii") as f:
        assert any(line.split()[-1] == "1" for line in f if line.startswith("NSpid:"))
    # `kubectl exec`: a process entering the container's pid namespace from outside.
    ns = f"--pid=/proc/{init_pid}/ns/pid"
    exec_proc, exec_pid = _start_in_namespace(
        namespaced, tree, container, ["nsenter", ns, "--"], HOG_SOURCE, "exec-hog"
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
        namespaced, tree, container, ["unshare", "--pid", "--kill-child"], HOG_SOURCE, "init-hog"
    )
    assert init_proc.stdin is not None
    init_proc.stdin.write(b"go\n")
    init_proc.stdin.flush()
    kills = col.wait_for(2)
    assert [(k.pid, k.command, k.main_process) for k in kills[1:]] == [(hog_init, "init-hog", True)]


@NEEDS_UTIL_LINUX
@pytest.mark.parametrize(
    "wrapper",
    [["unshare", "--pid", "--kill-child"], ["unshare", "--pid", "--fork"]],
    ids=["kill-child", "fork-only"],  # the group kill alone must do it too
)
def test_teardown_kills_the_wrapped_program_before_it_reached_the_container(
    namespaced: NamespaceWrappers, wrapper: list[str]
) -> None:
    """A test that stops between starting a wrapper and moving its program into the
    container (a timeout, a failed write) must not leave the program running: it is in
    none of the test's cgroups, so only the wrappers' teardown can reach it."""
    proc, program = namespaced.start(wrapper, SLEEPER_SOURCE, "stray-init")
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"  # running, past any write to its pipes
    namespaced.close()
    assert _gone(program), f"the wrapped program {program} outlived its teardown"
