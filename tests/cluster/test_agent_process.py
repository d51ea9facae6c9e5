"""`oomguard run` as a real process: kill -9, restarts, RBAC, a one-minute outage, SIGTERM.

Each test starts the agent exactly as the DaemonSet does (`python -m oomguard.cli run`
with the public flags) against the test API server over real HTTP, and causes real OOM
kills (lane 1: the host's cgroup v1) in kubepods-shaped cgroups below a scratch tree.
The agent is stopped by signals, never from inside, so what is checked is what a node
would see: what reaches the API, what the state directory holds, the exit code, the log.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from oomguard.cgroups.counters import read_counters
from oomguard.cgroups.hierarchy import MemoryHierarchy
from oomguard.cgroups.scratch import MIB, ScratchTree
from oomguard.k8s.rbac import RBAC as AGENT_RBAC
from tests.cluster.apiserver import EVENTS, ApiServer
from tests.system.conftest import lane1_hierarchy

pytestmark = pytest.mark.system

NODE = "node-a"
NS = "shop"
COUNTER_FILE = "oom-kill-counters.json"
REPO = Path(__file__).resolve().parents[2]
# The least the agent needs, as declared (oomguard/k8s/rbac.py; the chart's ClusterRole
# is compared with it): (verb, resource) pairs, as the test API server authorizes them.
RBAC = frozenset(
    (verb, resource) for (_group, resource), verbs in AGENT_RBAC.items() for verb in verbs
)
T = TypeVar("T")


# ----- helpers ------------------------------------------------------------------------


def wait_for(predicate: Callable[[], T], timeout_s: float = 30.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_container_pod(
    name: str,
    uid: str,
    container_id: str,
    *,
    node: str = NODE,
    namespace: str = NS,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A running Burstable pod with one container "app" (32 Mi limit), as the API has it."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "app", "image": "app", "resources": {"limits": {"memory": "32Mi"}}}
            ],
        },
        "status": {
            "phase": "Running",
            "qosClass": "Burstable",
            "containerStatuses": [
                {
                    "name": "app",
                    "containerID": f"containerd://{container_id}",
                    "state": {"running": {}},
                }
            ],
        },
    }


class Pod:
    """A pod on the test server and its one container's kubepods-shaped cgroup."""

    def __init__(self, apiserver: ApiServer, tree: ScratchTree, name: str) -> None:
        self.name = name
        self.uid = str(uuid.uuid4())
        self.cid = secrets.token_hex(32)
        apiserver.apply(one_container_pod(name, self.uid, self.cid))
        self.cgroup = tree.make(
            f"kubepods/burstable/pod{self.uid}/{self.cid}", limit_bytes=32 * MIB
        )
        self._tree = tree

    def oom_kill(self, process_name: str = "worker") -> int:
        """One real OOM kill in the container; returns the victim's pid once it is dead."""
        hog = self._tree.start_hog(self.cgroup, process_name)
        assert hog.wait(timeout=30) == -signal.SIGKILL
        return hog.pid

    def oom_kill_counter(self) -> int:
        """The kernel's count of kills in the container's cgroup."""
        hierarchy = self._tree.hierarchy
        found = read_counters(hierarchy.version, hierarchy.fs_path(self.cgroup))
        assert found is not None, f"{self.cgroup} is gone"
        return found.oom_kill


def events_by_pod(apiserver: ApiServer) -> dict[str, list[dict[str, Any]]]:
    """The Events on the server, by involved pod uid."""
    found: dict[str, list[dict[str, Any]]] = {}
    for ev in apiserver.objects(EVENTS, NS):
        found.setdefault(ev["involvedObject"].get("uid", ""), []).append(ev)
    return found


def counts(apiserver: ApiServer) -> dict[str, list[int]]:
    return {uid: sorted(e["count"] for e in evs) for uid, evs in events_by_pod(apiserver).items()}


def event_writes(apiserver: ApiServer) -> int:
    """Event create and patch requests that reached the server (answered or not)."""
    return len(apiserver.requests("create", "events")) + len(apiserver.requests("patch", "events"))


class AgentProcess:
    """One `oomguard run` subprocess; its stderr goes to a file (never a full pipe)."""

    def __init__(self, argv: list[str], port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self._log_file = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("OOMGUARD_") and k != "NODE_NAME"
        }
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def healthy(self) -> bool:
        return self.alive() and self.get("/healthz")[0] == 200

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"the agent exited ({self.proc.returncode}):\n{self.log()}")
            try:
                return self.get("/readyz")[0] == 200
            except OSError:
                return False  # not listening yet

        wait_for(ready, timeout_s, "/readyz")

    def metric(self, name: str, label: str = "") -> float:
        """The sum of the series of one metric (those whose labels contain `label`)."""
        total = 0.0
        for line in self.get("/metrics")[1].splitlines():
            if (line.startswith(name + " ") or line.startswith(name + "{")) and label in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout=timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log_file.close()


AgentFactory = Callable[..., AgentProcess]


@pytest.fixture
def hierarchy() -> MemoryHierarchy:
    return lane1_hierarchy()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def agent_argv(kubeconfig: Path, tree: ScratchTree, state_dir: Path, port: int) -> list[str]:
    """`oomguard run` as the DaemonSet runs it, on this test's cgroups and API server."""
    return [
        sys.executable,
        "-m",
        "oomguard.cli",
        "run",
        "--node-name",
        NODE,
        "--kubeconfig",
        str(kubeconfig),
        "--cgroup-root",
        str(tree.top),
        "--state-dir",
        str(state_dir),
        "--metrics-address",
        f"127.0.0.1:{port}",
    ]


@pytest.fixture
def start_agent(
    kubeconfig: Path, tree: ScratchTree, state_dir: Path, tmp_path: Path
) -> Iterator[AgentFactory]:
    """Start `oomguard run` subprocesses; every one is killed after the test, failed or not.

    Depends on `tree`, so it is torn down first: no agent outlives the cgroups it watches.
    """
    started: list[AgentProcess] = []

    def start(*, ready: bool = True, policy_file: Path | None = None) -> AgentProcess:
        port = free_port()
        argv = agent_argv(kubeconfig, tree, state_dir, port)
        if policy_file is not None:
            argv += ["--policy-file", str(policy_file)]
        agent = AgentProcess(argv, port, tmp_path / f"agent-{len(started)}.log")
        started.append(agent)
        if ready:
            agent.wait_ready()
        return agent

    try:
        yield start
    finally:
        for agent in started:
            agent.close()


def pending_kills(state_dir: Path) -> int:
    """Undelivered kills for this test's pods persisted in the state directory.

    Only the test namespace counts: other work on this host (benchmarks, other tests)
    makes OOM kills too, and a rate-limited kernel report of one of those can reach the
    agent as a node-level kill (see the note in test_a_minute_long_outage...).
    """
    try:
        state = json.loads((state_dir / "events" / "event-queue.json").read_text())
    except (FileNotFoundError, ValueError):
        return 0
    return sum(int(p["count"]) for p in state["pending"] if p["ref"].startswith(f"{NS}/"))


def handed_on(state_dir: Path) -> dict[str, int]:
    """Per cgroup, the `oom_kill` count up to which the agent has handed every kill on
    (oom-kill-counters.json, see oomguard/state/counter_snapshot.py)."""
    try:
        state = json.loads((state_dir / COUNTER_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(cgroup): int(n) for cgroup, n in state.get("oom_kill", {}).items()}


def past_every_kill(
    apiserver: ApiServer, state_dir: Path, marker: Pod, pods: Iterable[Pod]
) -> None:
    """Wait for proof that the running agent is done with every kill so far, so that a
    duplicate of one would be on the server by now (a quiet pause proves nothing: a late
    duplicate comes after any pause one picks).

    - A later kill, in a pod of its own (`marker`), has its Event: the kernel log is
      read in order, so every record before it (also those read back at a restart)
      was taken, and the queue delivered past them.
    - Every pod's `oom_kill` count is handed on in the agent's state: no counter
      increase still waits out the grace for its report (which, unpaired, would become
      a second record of the same kill).
    - Nothing is pending in the event queue: no delivery is left to retry.
    """
    marker.oom_kill("marker")
    wait_for(lambda: counts(apiserver).get(marker.uid) == [1], 30, "the later kill's Event")
    every = [*pods, marker]
    wait_for(
        lambda: all(handed_on(state_dir).get(p.cgroup, 0) == p.oom_kill_counter() for p in every),
        30,
        "every kill counted by the kernel handed on",
    )
    wait_for(lambda: pending_kills(state_dir) == 0, 30, "nothing left to deliver")


def stop(agent: AgentProcess) -> None:
    agent.signal(signal.SIGTERM)
    assert agent.wait(20) == 0, agent.log()


# ----- tests --------------------------------------------------------------------------


def test_kill_9_with_undelivered_events_delivers_them_after_restart_once(
    apiserver: ApiServer, tree: ScratchTree, start_agent: AgentFactory, state_dir: Path
) -> None:
    cart, shop = Pod(apiserver, tree, "cart-1"), Pod(apiserver, tree, "shop-1")
    marker = Pod(apiserver, tree, "marker-1")
    agent = start_agent()
    apiserver.begin_outage()
    cart.oom_kill()
    cart.oom_kill()
    shop.oom_kill()
    # Safe on disk: all three kills are in the persisted queue, none delivered.
    wait_for(lambda: pending_kills(state_dir) == 3, 30, "3 kills persisted")
    assert agent.metric("oomguard_oom_kills_total", f'namespace="{NS}"') == 3
    agent.signal(signal.SIGKILL)
    assert agent.wait(10) == -signal.SIGKILL
    apiserver.end_outage()
    assert apiserver.objects(EVENTS, NS) == []

    again = start_agent()
    expected = {cart.uid: [2], shop.uid: [1]}
    wait_for(lambda: counts(apiserver) == expected, 30, f"Events {expected}")
    past_every_kill(apiserver, state_dir, marker, [cart, shop])
    # No duplicate Event, no second patch of a count; only the later kill is new.
    expected[marker.uid] = [1]
    assert counts(apiserver) == expected
    # The restarted agent read nothing back from kmsg as new: it counted the later kill.
    assert again.metric("oomguard_oom_kills_total", f'namespace="{NS}"') == 1
    stop(again)
    assert counts(apiserver) == expected


def test_restart_after_reported_kills_resends_nothing(
    apiserver: ApiServer, tree: ScratchTree, start_agent: AgentFactory, state_dir: Path
) -> None:
    cart, marker = Pod(apiserver, tree, "cart-1"), Pod(apiserver, tree, "marker-1")
    agent = start_agent()
    pid = cart.oom_kill("cart-worker")
    wait_for(lambda: counts(apiserver) == {cart.uid: [1]}, 30, "the Event")
    (event,) = apiserver.objects(EVENTS, NS)
    assert "cart-worker" in event["message"] and str(pid) in event["message"]
    stop(agent)
    writes = event_writes(apiserver)

    again = start_agent()
    past_every_kill(apiserver, state_dir, marker, [cart])
    stop(again)
    after = events_by_pod(apiserver)
    assert after[cart.uid] == [event]  # same count, same resourceVersion: not touched
    # Only the later kill's Event was written: not even a create that met a 409.
    assert event_writes(apiserver) == writes + 1


def test_documented_rbac_is_enough_for_the_full_path(
    apiserver: ApiServer, tree: ScratchTree, start_agent: AgentFactory, tmp_path: Path
) -> None:
    apiserver.allow(RBAC)
    cart = Pod(apiserver, tree, "cart-1")
    # A policy with a namespace selector: the agent then reads namespace labels too.
    policy = tmp_path / "policy.yaml"
    policy.write_text("trusted_namespaces: {selector: {matchLabels: {tier: critical}}}\n")
    apiserver.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    agent = start_agent(policy_file=policy)
    cart.oom_kill()
    cart.oom_kill()
    wait_for(lambda: counts(apiserver) == {cart.uid: [2]}, 30, "one Event, count 2")
    wait_for(lambda: apiserver.requests("watch", "namespaces"), 30, "namespace labels watched")
    stop(agent)
    assert "forbidden" not in agent.log().lower()
    # Enough (nothing was refused) and each grant used: exactly what the agent needs.
    assert {(r.verb, r.resource) for r in apiserver.requests()} == RBAC


def test_without_create_events_the_agent_says_so_and_stays_alive(
    apiserver: ApiServer, tree: ScratchTree, start_agent: AgentFactory
) -> None:
    apiserver.allow(RBAC - {("create", "events")})
    cart = Pod(apiserver, tree, "cart-1")
    agent = start_agent()  # ready: listing and watching pods is allowed
    cart.oom_kill()

    def refused() -> bool:
        return any(
            "forbidden" in line and 'cannot create resource "events"' in line
            for line in agent.log().splitlines()
        )

    wait_for(refused, 30, "a log line naming the forbidden verb")
    # Counted at the end of the main loop's turn that logged it: a moment later.
    wait_for(lambda: agent.metric("oomguard_events_failed_total") >= 1, 10, "the failure counted")
    # Still at work after the refusal: a later kill is seen (not merely a process
    # that has not exited yet).
    cart.oom_kill()
    wait_for(
        lambda: agent.metric("oomguard_oom_kills_total", f'namespace="{NS}"') == 2,
        30,
        "the later kill counted",
    )
    assert agent.healthy()
    assert agent.get("/readyz")[0] == 200
    assert "Traceback" not in agent.log()
    assert apiserver.objects(EVENTS, NS) == []
    stop(agent)


def test_a_minute_long_outage_with_kills_during_it_loses_nothing(
    apiserver: ApiServer, tree: ScratchTree, start_agent: AgentFactory, state_dir: Path
) -> None:
    # Checks look only at this test's namespace: under a kill storm elsewhere on the host
    # the kernel rate-limits its report headers, and the engine currently turns such a
    # bare "Memory cgroup out of memory: Killed process" line (the victim already a
    # zombie, whose /proc/PID/cgroup reads "/") into a system OOM on the Node.
    pods = [Pod(apiserver, tree, f"app-{i}") for i in range(3)]
    marker = Pod(apiserver, tree, "marker-1")
    agent = start_agent()
    outage_s, kill_at = 60.0, (5.0, 25.0, 45.0)
    apiserver.begin_outage()
    began = time.monotonic()
    killed = 0
    while (elapsed := time.monotonic() - began) < outage_s:
        if killed < len(kill_at) and elapsed >= kill_at[killed]:
            pods[killed].oom_kill()
            killed += 1
        assert agent.healthy(), agent.log()  # up the whole time
        time.sleep(0.5)
    assert killed == 3
    assert pending_kills(state_dir) == 3
    assert apiserver.objects(EVENTS, NS) == []
    apiserver.end_outage()

    expected = {p.uid: [1] for p in pods}
    # The sender's backoff is capped at 60 s (+1 s jitter): the next try comes within it.
    wait_for(lambda: counts(apiserver) == expected, 75, f"Events {expected}")
    past_every_kill(apiserver, state_dir, marker, pods)
    expected[marker.uid] = [1]
    assert counts(apiserver) == expected
    assert agent.metric("oomguard_oom_kills_total", f'namespace="{NS}"') == 4
    stop(agent)


def test_sigterm_flushes_a_kill_made_just_before_it(
    apiserver: ApiServer, tree: ScratchTree, start_agent: AgentFactory, state_dir: Path
) -> None:
    cart = Pod(apiserver, tree, "cart-1")
    agent = start_agent()
    # The first try answers 503, so the flush on SIGTERM must retry to get it through.
    apiserver.fail_next(1, 503, verb="create", resource="events")
    cart.oom_kill()
    agent.signal(signal.SIGTERM)
    assert agent.wait(20) == 0, agent.log()
    assert counts(apiserver) == {cart.uid: [1]}, agent.log()
    assert pending_kills(state_dir) == 0


def test_an_api_answering_in_5_s_delays_only_the_events(
    apiserver: ApiServer, tree: ScratchTree, start_agent: AgentFactory
) -> None:
    """Detection and the record do not wait for the API: every kill is counted and
    logged (with its victim and time) while the Event writes are still in flight, and
    the Events catch up with exact counts."""
    cart, shop = Pod(apiserver, tree, "cart-1"), Pod(apiserver, tree, "shop-1")
    agent = start_agent()
    apiserver.slow_down(5.0, resource="events")

    def logged() -> list[dict[str, Any]]:
        prefix = "oom kill: "
        return [
            json.loads(line.split(prefix, 1)[1])
            for line in agent.log().splitlines()
            if prefix in line and line.split(prefix, 1)[1].startswith("{")
        ]

    victims = [cart.oom_kill("cart-worker")]
    wait_for(lambda: len(logged()) == 1, 30, "the first record logged")
    # Positive evidence that the record did not wait: its Event is still in flight.
    assert apiserver.objects(EVENTS, NS) == []
    victims += [cart.oom_kill("cart-worker"), shop.oom_kill()]
    reaped = time.time()
    records = wait_for(lambda: len(logged()) == 3 and logged(), 30, "3 records logged")
    assert agent.metric("oomguard_oom_kills_total", f'namespace="{NS}"') == 3
    assert sorted(r["pid"] for r in records) == sorted(victims)
    for record in records:
        stamped = datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()
        assert stamped <= reaped  # the kill's time, not the delivery's
    expected = {cart.uid: [2], shop.uid: [1]}
    wait_for(lambda: counts(apiserver) == expected, 60, f"Events {expected}")
    apiserver.slow_down(0.0, resource="events")
    stop(agent)
    assert counts(apiserver) == expected
