"""`oomguard run` restarted after kills it did not see: each reported once, none twice.

The agent runs as a real process (as in test_agent_process.py) against the test API
server, and real OOM kills (lane 1: the host's cgroup v1) happen while it is stopped
(SIGTERM) or right before it is killed (kill -9). On restart it finds them from the cgroup
counters it saved (`oom-kill-counters.json`) and, where the kernel log is readable, from
the kmsg records it reads back; the two are joined into one record per kill, and the
event queue's memory of kill ids drops what was already submitted.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from oomguard.cgroups.hierarchy import MemoryHierarchy
from oomguard.cgroups.scratch import ScratchTree
from tests.cluster.apiserver import EVENTS, ApiServer
from tests.cluster.test_agent_process import (
    NS,
    AgentProcess,
    Pod,
    agent_argv,
    counts,
    event_writes,
    events_by_pod,
    free_port,
    past_every_kill,
    pending_kills,
    stop,
    wait_for,
)
from tests.system.conftest import lane1_hierarchy

pytestmark = pytest.mark.system

KILLS = "oomguard_oom_kills_total"
COUNTER_FILE = "oom-kill-counters.json"


@pytest.fixture
def hierarchy() -> MemoryHierarchy:
    return lane1_hierarchy()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


class Starter:
    """Starts `oomguard run` subprocesses on one state directory; kills them all at the end."""

    def __init__(self, kubeconfig: Path, tree: ScratchTree, state_dir: Path, logs: Path) -> None:
        self.kubeconfig, self.tree, self.state_dir, self.logs = kubeconfig, tree, state_dir, logs
        self.started: list[AgentProcess] = []

    def __call__(self, *, kmsg: bool = True) -> AgentProcess:
        port = free_port()
        argv = agent_argv(self.kubeconfig, self.tree, self.state_dir, port)
        if not kmsg:
            argv += ["--kmsg-path", ""]  # no kernel log at all: counters only
        agent = AgentProcess(argv, port, self.logs / f"agent-{len(self.started)}.log")
        self.started.append(agent)
        agent.wait_ready()
        if not kmsg:
            assert "kernel log is not read" in agent.log(), agent.log()
        return agent


@pytest.fixture
def start(
    kubeconfig: Path, tree: ScratchTree, state_dir: Path, tmp_path: Path
) -> Iterator[Starter]:
    starter = Starter(kubeconfig, tree, state_dir, tmp_path)
    try:
        yield starter
    finally:
        for agent in starter.started:
            agent.close()


def kills_by_pod(apiserver: ApiServer) -> dict[str, int]:
    """Kills per pod uid in this test's namespace, summed over its Events."""
    return {uid: sum(counts) for uid, counts in counts(apiserver).items()}


def kills_seen(agent: AgentProcess) -> float:
    """New kills this agent process reported for the test namespace (not those it found
    again and the event queue knew)."""
    return agent.metric(KILLS, f'namespace="{NS}"')


def found_again(agent: AgentProcess) -> int:
    """Records this agent made of kills it reported before (dropped by their kill id)."""
    return agent.log().count("oom kill already reported")


def the_event(apiserver: ApiServer, pod: Pod) -> dict[str, Any]:
    (event,) = events_by_pod(apiserver)[pod.uid]
    return event


def nothing_more_on_restart(
    apiserver: ApiServer,
    start: Starter,
    marker: Pod,
    pods: Sequence[Pod],
    *,
    kmsg: bool,
    expected: dict[str, int],
) -> None:
    """One more restart: it finds nothing new, and touches no Event of `pods`.

    Checked once the restarted agent has provably gone past every earlier kill (a later
    kill in `marker` reported, every count handed on: `past_every_kill`), so a kill it
    wrongly found again would have been reported by then."""
    writes = event_writes(apiserver)
    again = start(kmsg=kmsg)
    past_every_kill(apiserver, start.state_dir, marker, pods)
    stop(again)
    # Not even found again: the saved counters and kmsg position cover every kill. The
    # one kill it logged is the later one.
    logged = [line for line in again.log().splitlines() if "oom kill" in line]
    assert len(logged) == 1 and marker.cid in logged[0], again.log()
    assert kills_by_pod(apiserver) == {**expected, marker.uid: 1}
    assert event_writes(apiserver) == writes + 1  # the later kill's Event, nothing else


def test_kill_while_stopped_without_kernel_log_is_one_event_victim_unknown(
    apiserver: ApiServer, tree: ScratchTree, start: Starter, state_dir: Path
) -> None:
    before, cart = Pod(apiserver, tree, "before-1"), Pod(apiserver, tree, "cart-1")
    markers = [Pod(apiserver, tree, f"marker-{i}") for i in range(2)]
    before.oom_kill()  # before the agent was installed: history, never reported
    stop(start(kmsg=False))
    assert (state_dir / COUNTER_FILE).exists()
    cart.oom_kill("cart-worker")

    again = start(kmsg=False)
    wait_for(lambda: kills_by_pod(apiserver) == {cart.uid: 1}, 30, "one Event for cart-1")
    event = the_event(apiserver, cart)
    assert "victim process is unknown" in event["message"], event["message"]
    assert "cart-worker" not in event["message"]
    # Its own limit, told by the container's high-water mark (v1), not node pressure.
    assert event["reason"] == "OOMKilled", event
    assert "its memory limit (32.0 MiB) was reached" in event["message"], event["message"]
    past_every_kill(apiserver, state_dir, markers[0], [before, cart])
    expected = {cart.uid: 1, markers[0].uid: 1}
    assert kills_by_pod(apiserver) == expected  # no second record of cart's kill
    assert (kills_seen(again), found_again(again)) == (2, 0)
    stop(again)
    pods = [before, cart, markers[0]]
    nothing_more_on_restart(apiserver, start, markers[1], pods, kmsg=False, expected=expected)


def test_kill_while_stopped_with_kernel_log_is_one_event_with_the_victim(
    apiserver: ApiServer, tree: ScratchTree, start: Starter
) -> None:
    cart = Pod(apiserver, tree, "cart-1")
    markers = [Pod(apiserver, tree, f"marker-{i}") for i in range(2)]
    stop(start())
    pid = cart.oom_kill("cart-worker")

    again = start()
    wait_for(lambda: kills_by_pod(apiserver) == {cart.uid: 1}, 30, "one Event for cart-1")
    event = the_event(apiserver, cart)
    assert "cart-worker" in event["message"] and str(pid) in event["message"], event
    assert event["count"] == 1
    # Past the grace of cart's counter increase (handed on): it was the same kill.
    past_every_kill(apiserver, start.state_dir, markers[0], [cart])
    expected = {cart.uid: 1, markers[0].uid: 1}
    assert kills_by_pod(apiserver) == expected  # no second record of cart's kill
    assert (kills_seen(again), found_again(again)) == (2, 0)
    stop(again)
    pods = [cart, markers[0]]
    nothing_more_on_restart(apiserver, start, markers[1], pods, kmsg=True, expected=expected)


@pytest.mark.parametrize("kmsg", [True, False], ids=["kmsg", "counters-only"])
def test_kill_9_right_after_kills_reports_each_once(
    apiserver: ApiServer, tree: ScratchTree, start: Starter, state_dir: Path, kmsg: bool
) -> None:
    cart, shop = Pod(apiserver, tree, "cart-1"), Pod(apiserver, tree, "shop-1")
    markers = [Pod(apiserver, tree, f"marker-{i}") for i in range(2)]
    agent = start(kmsg=kmsg)
    cart.oom_kill()
    shop.oom_kill()
    cart.oom_kill()
    # Whatever the agent had done with them by now: seen or not, submitted or not,
    # its state written or not.
    agent.signal(signal.SIGKILL)
    assert agent.wait(10) == -signal.SIGKILL

    expected = {cart.uid: 2, shop.uid: 1}
    again = start(kmsg=kmsg)
    wait_for(lambda: kills_by_pod(apiserver) == expected, 30, f"kills {expected}")
    past_every_kill(apiserver, state_dir, markers[0], [cart, shop])
    expected[markers[0].uid] = 1
    assert kills_by_pod(apiserver) == expected
    assert pending_kills(state_dir) == 0
    stop(again)
    assert kills_by_pod(apiserver) == expected
    pods = [cart, shop, markers[0]]
    nothing_more_on_restart(apiserver, start, markers[1], pods, kmsg=kmsg, expected=expected)
    assert all(ev["involvedObject"]["namespace"] == NS for ev in apiserver.objects(EVENTS, NS))
