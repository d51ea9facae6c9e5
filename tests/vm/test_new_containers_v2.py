"""Lane 2: `oomguard run` steers a restarted container at once on cgroup v2, kill mode too.

The agent runs in this process in the VM against the test API server over real HTTP on
127.0.0.1, with a reconcile interval of 300 s: after the pass at start (counted), only the
new-container path can act. A governed pod asks for `oomguard.io/oom-kill: "process"`;
the pass at start sets its running container's memory.oom.group to 0 (the kubelet-like 1
was set up by the test). Then the container restarts the way runc does it on cgroup v2:
the old cgroup goes; a new one is made with the kubelet's memory.oom.group=1; the
runtime's parent puts its init in it (`cgroup.events` goes `populated 1`, which the
steering waits for with inotify); the init writes the kubelet's oom_score_adj to itself;
the runtime writes the cgroup's settings again once its init is set up (memory.oom.group=1
among them); the init execs the entrypoint, which forks its workers. The pod's status
never names the new container ID, so no pass could find it.

What a user would notice is asserted: the entrypoint and its workers hold the policy's
value, the new cgroup's memory.oom.group is 0, and a real OOM kill in the restarted
container takes only the victim while its siblings live on. A pod that never asked for
a kill mode keeps the kubelet's memory.oom.group=1 on its new cgroup. The VM is
emulated (10-30x slower than the host): waits are generous, nothing is timed
(bench/new_container_steer.py times the path on lane 1).
"""

from __future__ import annotations

import dataclasses
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oomguard.agent import Agent
from oomguard.cgroups.oom_group import OOM_GROUP_FILE, read_oom_group, write_oom_group
from oomguard.cgroups.scratch import MIB, ScratchTree, remove_tree
from oomguard.k8s.client import KubeApi
from oomguard.proc.handle import read_cgroup_procs
from oomguard.settings import load_settings
from oomguard.steer.new_containers import NewContainerSteering
from tests.cluster.apiserver import ApiServer
from tests.cluster.runc import Runc, missing_tools
from tests.cluster.test_agent import (
    KUBELET_VALUE,
    NODE,
    PassCounter,
    RunningAgent,
    app_pod,
    get_adj,
    wait_for,
)

pytestmark = pytest.mark.vm

WAIT_S = 180.0
LIMIT = 64 * MIB
SACRIFICED = 1000  # what oomguard.io/sacrifice gives app_pod's containers (kubelet: 999)
WORKERS = 3
KUBELET_OOM_GROUP = 1  # what the kubelet asks runc to write on cgroup v2

# The container's init as runc runs it: started outside the cgroup, the runtime's parent
# puts it in (the test's write to cgroup.procs), then "go": the init's write of the
# kubelet's value to itself, the runtime's write of the cgroup's settings (the kubelet's
# memory.oom.group), the exec of the entrypoint. Reads stdin unbuffered: the next line
# is the entrypoint's.
RUNC_INIT = r"""
import os, sys
value, oom_group, entrypoint, workers = sys.argv[1:5]
os.write(1, b"ready\n")
line = b""
while not line.endswith(b"\n"):
    line += os.read(0, 1)
with open("/proc/self/oom_score_adj", "w") as f:
    f.write(value)
with open(oom_group, "w") as f:
    f.write("1")
os.execv(sys.executable, [sys.executable, "-c", entrypoint, workers])
"""

# A multi-process server: forks its workers (sleeping) and one worker that grows until
# the kernel kills it once it reads a line; says their PIDs, then reaps and says who died.
ENTRYPOINT = r"""
import os, sys, time
workers = []
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        while True:
            time.sleep(3600)
    workers.append(pid)
hog = os.fork()
if hog == 0:
    sys.stdin.readline()
    hoard = []
    while True:
        chunk = bytearray(1 << 20)
        for i in range(0, len(chunk), 4096):
            chunk[i] = 1
        hoard.append(chunk)
print("started", hog, *workers, flush=True)
while True:
    pid, status = os.wait()
    print("died", pid, os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0, flush=True)
"""


class Restarted:
    """A restarted container: its cgroup, its init (then entrypoint) and the PIDs the
    entrypoint forked."""

    def __init__(self, tree: ScratchTree, cgroup: str, init: subprocess.Popen[bytes]) -> None:
        self.tree = tree
        self.cgroup = cgroup
        self.directory = tree.hierarchy.fs_path(cgroup)
        self.init = init
        self.hog = 0
        self.workers: list[int] = []

    def started(self) -> None:
        """Waits for the entrypoint to say what it forked."""
        assert self.init.stdout is not None
        words = self.init.stdout.readline().decode().split()
        assert words[:1] == ["started"], words
        self.hog, *self.workers = (int(w) for w in words[1:])

    @property
    def oom_group(self) -> int | None:
        return read_oom_group(self.directory)

    def memory_events(self) -> dict[str, int]:
        text = (self.directory / "memory.events").read_text()
        return {k: int(v) for k, v in (line.split() for line in text.splitlines())}

    def oom(self) -> tuple[int, int]:
        """Lets the hog grow into the limit; the first death the entrypoint saw."""
        assert self.init.stdin is not None and self.init.stdout is not None
        self.init.stdin.write(b"grow\n")
        self.init.stdin.flush()
        words = self.init.stdout.readline().decode().split()
        assert words[:1] == ["died"], words
        return int(words[1]), int(words[2])


class Node:
    """Pods in the test API server and their containers' cgroups in the scratch tree."""

    def __init__(self, apiserver: ApiServer, tree: ScratchTree) -> None:
        self.apiserver = apiserver
        self.tree = tree
        self.procs: list[subprocess.Popen[bytes]] = []

    def pod(self, name: str, annotations: dict[str, str]) -> tuple[str, str, str]:
        """A Running pod with two running containers, each with a process at the
        kubelet's value and the kubelet's memory.oom.group. Returns (UID, the app
        container's cgroup, the sidecar's)."""
        uid, app, sidecar = str(uuid.uuid4()), secrets.token_hex(32), secrets.token_hex(32)
        pod = app_pod(uid, app)
        pod["metadata"]["name"] = name
        pod["metadata"]["annotations"] = annotations
        pod["status"]["containerStatuses"][1]["containerID"] = f"containerd://{sidecar}"
        self.apiserver.apply(pod)
        cgroups = []
        for cid in (app, sidecar):
            cgroup = self.tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=LIMIT)
            write_oom_group(self.tree.hierarchy.fs_path(cgroup), KUBELET_OOM_GROUP)
            proc = self.tree.start_sleeper(cgroup, "server")
            (Path("/proc") / str(proc.pid) / "oom_score_adj").write_text(str(KUBELET_VALUE))
            cgroups.append(cgroup)
        return uid, cgroups[0], cgroups[1]

    def restart(self, uid: str, old: str) -> Restarted:
        """The container of cgroup `old` restarts (see the module docstring); returns
        once the init was told to go on, in its new cgroup."""
        remove_tree(self.tree.hierarchy.fs_path(old))  # its processes die, its cgroup goes
        relative = f"kubepods/burstable/pod{uid}/{secrets.token_hex(32)}"
        directory = self.tree.top / relative
        init = subprocess.Popen(
            [
                sys.executable,
                "-c",
                RUNC_INIT,
                str(KUBELET_VALUE),
                str(directory / OOM_GROUP_FILE),
                ENTRYPOINT,
                str(WORKERS),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.procs.append(init)
        assert init.stdin is not None and init.stdout is not None
        assert init.stdout.readline() == b"ready\n"  # its interpreter is up
        # The runtime: the cgroup with the kubelet's settings, its init put in at once.
        cgroup = self.tree.make(relative, limit_bytes=LIMIT)
        write_oom_group(directory, KUBELET_OOM_GROUP)
        (directory / "cgroup.procs").write_text(str(init.pid))
        init.stdin.write(b"go\n")
        init.stdin.flush()
        return Restarted(self.tree, cgroup, init)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=30)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


@pytest.fixture
def apiserver() -> Iterator[ApiServer]:
    server = ApiServer(host="127.0.0.1", port=0, bookmark_interval_s=0.5)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def node(apiserver: ApiServer, tree: ScratchTree) -> Iterator[Node]:
    n = Node(apiserver, tree)
    try:
        yield n
    finally:
        n.close()


def agent_with_long_passes(apiserver: ApiServer, tree: ScratchTree, tmp_path: Path) -> Any:
    """`oomguard run` in this process; a pass at start, the next one 300 s later."""
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    settings = load_settings(
        node_name=NODE,
        kubeconfig=str(kubeconfig),
        cgroup_root=str(tree.top),
        state_dir=tmp_path / "state",
        metrics_address="127.0.0.1:0",
        reconcile_interval_s=300,
        policy_file=tmp_path / "no-policy.yaml",  # absent: the default policy
    )
    return RunningAgent(Agent(settings, tree.hierarchy, KubeApi.from_kubeconfig(kubeconfig)))


def test_a_restarted_container_gets_the_policy_value_and_its_kill_mode_without_a_pass(
    apiserver: ApiServer, node: Node, tree: ScratchTree, tmp_path: Path
) -> None:
    apiserver.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    sacrifice = {"oomguard.io/sacrifice": "true"}
    db, db_app, _ = node.pod("db-0", {**sacrifice, "oomguard.io/oom-kill": "process"})
    web, web_app, _ = node.pod("web-0", sacrifice)  # never asked for a kill mode
    running = agent_with_long_passes(apiserver, tree, tmp_path)
    passes = PassCounter(running.agent)
    with running as agent:
        wait_for(lambda: agent.ready()[0] and passes.passes == 1, WAIT_S)
        # The pass at start: db's running container in "process" mode, web's as it was.
        assert read_oom_group(tree.hierarchy.fs_path(db_app)) == 0
        assert read_oom_group(tree.hierarchy.fs_path(web_app)) == KUBELET_OOM_GROUP

        restarted = node.restart(db, db_app)
        kept = node.restart(web, web_app)
        for container in (restarted, kept):
            container.started()  # the entrypoint has forked its workers
        steering = agent.new_containers
        assert isinstance(steering, NewContainerSteering)
        wait_for(lambda: steering.following == 0, WAIT_S)  # every window over
        for container in (restarted, kept):
            pids = [container.init.pid, container.hog, *container.workers]
            assert [get_adj(pid) for pid in pids] == [SACRIFICED] * (WORKERS + 2)
        assert restarted.oom_group == 0  # through the runtime's write of the kubelet's 1
        assert kept.oom_group == KUBELET_OOM_GROUP  # no request: the kubelet's value
        assert passes.passes == 1  # only the pass at start: the new path did it all
        counters = dataclasses.replace(steering.counters)

        # A real OOM kill in the restarted container: only the victim dies.
        assert restarted.oom() == (restarted.hog, signal.SIGKILL)
        alive = {restarted.init.pid, *restarted.workers}
        assert set(read_cgroup_procs(restarted.directory)) == alive
        events = restarted.memory_events()
        assert events["oom_kill"] >= 1 and events.get("oom_group_kill", 0) == 0
        assert restarted.init.poll() is None  # the server lives on, with its workers

    assert (counters.noticed, counters.followed) == (2, 2)  # both new cgroups, both steered
    # The inits at least; a worker forked before its init's write is written too.
    assert counters.written >= 2
    assert counters.kill_modes_written >= 1  # db's, after the runtime's write at least
    assert (counters.left_to_pass, counters.unknown_pod, counters.dropped) == (0, 0, 0)
    assert (counters.refused, counters.errors) == (0, 0)


# ------------------------------------------------------------------ with runc itself
# The same restart with the real runtime: runc makes the cgroup, puts its init in, the
# init writes the kubelet's oom_score_adj (`process.oomScoreAdj`), runc writes the
# kubelet's memory.oom.group=1 (`linux.resources.unified`, as the kubelet asks on
# cgroup v2) once its init is set up, and the init execs the entrypoint.

KUBELET_UNIFIED = {"memory.oom.group": str(KUBELET_OOM_GROUP)}


@pytest.fixture
def runc(tree: ScratchTree, tmp_path: Path) -> Iterator[Runc]:
    missing = missing_tools()
    if missing:  # lane 2 counts this skip as a failure: run_lane2 installs busybox-static
        pytest.skip(f"starting real containers needs {', '.join(missing)}")
    r = Runc(tree, tmp_path)
    try:
        yield r
    finally:
        r.close()


def runc_pod(apiserver: ApiServer, tree: ScratchTree, name: str, annotations: Any) -> Any:
    """A Running pod whose app container's ID is yet to be started by runc and whose
    sidecar runs (a live cgroup); returns the pod."""
    uid, app, sidecar = str(uuid.uuid4()), secrets.token_hex(32), secrets.token_hex(32)
    pod = app_pod(uid, app)
    pod["metadata"]["name"] = name
    pod["metadata"]["annotations"] = annotations
    pod["status"]["containerStatuses"][1]["containerID"] = f"containerd://{sidecar}"
    apiserver.apply(pod)
    tree.make(f"kubepods/burstable/pod{uid}/{sidecar}")
    return pod


def runs_sleep(pid: int) -> bool:
    return Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"


def test_a_container_runc_restarts_keeps_its_kill_mode_without_a_pass(
    apiserver: ApiServer, tree: ScratchTree, tmp_path: Path, runc: Runc
) -> None:
    apiserver.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    sacrifice = {"oomguard.io/sacrifice": "true"}
    pods = {
        "db": runc_pod(apiserver, tree, "db-0", {**sacrifice, "oomguard.io/oom-kill": "process"}),
        "web": runc_pod(apiserver, tree, "web-0", sacrifice),  # no kill mode asked for
    }

    def start(pod: Any, cid: str) -> Any:
        relative = f"kubepods/burstable/pod{pod['metadata']['uid']}/{cid}"
        return runc.run(cid, relative, KUBELET_VALUE, LIMIT, KUBELET_UNIFIED)

    def oom_group(container: Any) -> int | None:
        return read_oom_group(tree.hierarchy.fs_path(container.cgroup))

    def first_id(pod: Any) -> str:
        return str(pod["status"]["containerStatuses"][0]["containerID"]).split("//")[1]

    first = {name: start(pod, first_id(pod)) for name, pod in pods.items()}
    assert [oom_group(c) for c in first.values()] == [KUBELET_OOM_GROUP] * 2  # runc's write
    running = agent_with_long_passes(apiserver, tree, tmp_path)
    passes = PassCounter(running.agent)
    with running as agent:
        wait_for(lambda: agent.ready()[0] and passes.passes == 1, WAIT_S)
        assert (oom_group(first["db"]), oom_group(first["web"])) == (0, KUBELET_OOM_GROUP)
        # The app containers restart: runc removes the old one, starts a new one (the
        # pods' statuses keep naming the old IDs).
        restarted = {}
        for name, pod in pods.items():
            runc.delete(first[name].id)
            restarted[name] = start(pod, secrets.token_hex(32))
        for container in restarted.values():
            wait_for(lambda c=container: runs_sleep(c.pid), WAIT_S)
        steering = agent.new_containers
        assert isinstance(steering, NewContainerSteering)
        wait_for(lambda: steering.following == 0, WAIT_S)  # every window over
        assert [get_adj(c.pid) for c in restarted.values()] == [SACRIFICED] * 2
        assert oom_group(restarted["db"]) == 0  # through runc's write of the kubelet's 1
        assert oom_group(restarted["web"]) == KUBELET_OOM_GROUP
        assert passes.passes == 1  # only the pass at start: the new path did it all
        counters = dataclasses.replace(steering.counters)
    assert (counters.noticed, counters.followed) == (2, 2)
    assert counters.written >= 2 and counters.kill_modes_written >= 1
    assert (counters.left_to_pass, counters.unknown_pod, counters.dropped) == (0, 0, 0)
    assert (counters.refused, counters.errors) == (0, 0)
