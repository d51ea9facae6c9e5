"""The rules for a new container cgroup's first processes, one row each, without root.

`new_container_plan` decides which containers a new cgroup can be, what its processes
get from which value the runtime gave them, which kill mode its memory.oom.group gets,
how often it is looked at and when the runtime is done with it. The node: a Burstable
pod on a 1000 MiB node; a container requesting 100 MiB gets 900 from the kubelet, one
requesting nothing 999.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import pytest

from oomguard.k8s.pod_cache import ContainerKind, ContainerView, PodView
from oomguard.steer.admin import AdminPolicy, load_policy
from oomguard.steer.kill_mode import KillMode
from oomguard.steer.new_container_plan import (
    POLL_STEPS,
    WINDOW_S,
    NewContainerPlan,
    ProcessSeen,
    candidates,
    plan_new_container,
    poll_interval_s,
    runtime_done,
)
from oomguard.steer.plan import decide

MIB = 1 << 20
NODE_MEMORY = 1000 * MIB
UID = "6f1e0c7a-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
NEW = "c3" * 32  # the new cgroup's container ID
OLD_APP, SIDE, INIT = "a1" * 32, "b2" * 32, "d4" * 32
OPEN = load_policy("{}")
TRUST = load_policy("trusted_namespaces: {names: [default]}\n")


def container(
    name: str,
    container_id: str | None,
    *,
    request: int | None = None,
    kind: ContainerKind = ContainerKind.CONTAINER,
    running: bool = False,
) -> ContainerView:
    return ContainerView(
        name=name,
        kind=kind,
        restart_policy=None,
        memory_request_bytes=request,
        memory_limit_bytes=None,
        container_id=container_id,
        runtime="containerd",
        past_container_ids=(),
        running=running,
        restart_count=1,
    )


def pod(annotations: Mapping[str, str], *containers: ContainerView) -> PodView:
    return PodView(
        uid=UID,
        namespace="default",
        name="db-0",
        node_name="node-1",
        annotations=MappingProxyType(dict(annotations)),
        qos_class="Burstable",
        priority=0,
        priority_class_name=None,
        config_hash=None,
        phase="Running",
        containers=containers,
        resource_version="1",
    )


APP_RESTARTING = container("app", OLD_APP)  # its old cgroup is gone: it may be the new one
SIDE_RUNNING = container("side", SIDE, running=True)
INIT_DONE = container("init", INIT, kind=ContainerKind.INIT)


def plan(
    p: PodView,
    live: frozenset[str] = frozenset(),
    policy: AdminPolicy = OPEN,
    remembered: frozenset[str] | None = None,
) -> NewContainerPlan:
    decided = decide(p, policy, NODE_MEMORY)
    assert decided is not None
    return plan_new_container(p, decided, NEW, live | {NEW}, remembered)


# ---------------------------------------------------------------------------- candidates


@pytest.mark.parametrize(
    ("containers", "live", "expected"),
    [
        pytest.param((APP_RESTARTING, SIDE_RUNNING), {SIDE}, ("app",), id="sidecar-live"),
        pytest.param(
            (APP_RESTARTING, SIDE_RUNNING), set(), ("app", "side"), id="sidecar-cgroup-gone-too"
        ),
        pytest.param((container("app", None), SIDE_RUNNING), {SIDE}, ("app",), id="waiting-no-id"),
        pytest.param((INIT_DONE, APP_RESTARTING), set(), ("init", "app"), id="init-done-counts"),
        pytest.param(
            (container("app", NEW), container("side", None)), set(), ("app",), id="status-names-it"
        ),
        pytest.param((SIDE_RUNNING,), {SIDE}, (), id="nothing-can-be-it"),
    ],
)
def test_candidates(
    containers: tuple[ContainerView, ...], live: set[str], expected: tuple[str, ...]
) -> None:
    assert candidates(pod({}, *containers), NEW, live | {NEW}) == expected


# ---------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("annotations", "containers", "live", "targets", "left"),
    [
        pytest.param(
            {"oomguard.io/sacrifice": "true"},
            (APP_RESTARTING, container("side", SIDE)),
            set(),
            {999: 1000},
            0,
            id="pod-wide-request-all-agree",
        ),
        pytest.param(
            {"oomguard.io/sacrifice.app": "true"},
            (APP_RESTARTING, container("side", SIDE)),
            set(),
            {},
            1,
            id="candidates-disagree-left-to-pass",
        ),
        pytest.param(
            {"oomguard.io/sacrifice.app": "true"},
            (APP_RESTARTING, SIDE_RUNNING),
            {SIDE},
            {999: 1000},
            0,
            id="other-candidate-live-app-decides",
        ),
        pytest.param(
            {"oomguard.io/oom-score-adj.app": "950"},
            (container("app", OLD_APP, request=100 * MIB), container("side", SIDE)),
            set(),
            {900: 950},
            0,
            id="kubelet-value-tells-the-groups-apart",
        ),
        pytest.param(
            {"oomguard.io/oom-score-adj.app": "999", "oomguard.io/sacrifice.side": "true"},
            (container("app", OLD_APP, request=100 * MIB), container("side", SIDE)),
            set(),
            {},
            1,
            id="a-target-that-is-another-kubelet-value-is-dropped",
        ),
        pytest.param(
            {"oomguard.io/oom-score-adj": "999"},
            (APP_RESTARTING,),
            set(),
            {},
            0,
            id="target-is-the-kubelet-value-nothing-to-do",
        ),
        pytest.param({}, (APP_RESTARTING,), set(), {}, 0, id="ungoverned"),
    ],
)
def test_targets(
    annotations: dict[str, str],
    containers: tuple[ContainerView, ...],
    live: set[str],
    targets: dict[int, int],
    left: int,
) -> None:
    got = plan(pod(annotations, *containers), frozenset(live))
    assert dict(got.targets) == targets
    assert len(got.left) == left
    assert got.steers == bool(targets)


def test_a_request_the_policy_refuses_is_not_steered() -> None:
    """protect without trust: the baseline (the kubelet's value) stands, nothing to do."""
    untrusted = plan(pod({"oomguard.io/protect": "true"}, APP_RESTARTING), policy=OPEN)
    trusted = plan(
        pod({"oomguard.io/protect": "true"}, container("app", OLD_APP, request=100 * MIB)),
        policy=TRUST,
    )
    assert dict(untrusted.targets) == {}
    assert list(trusted.targets) == [900] and trusted.targets[900] < 900


# ---------------------------------------------------------------------------- kill modes


@pytest.mark.parametrize(
    ("annotations", "containers", "remembered", "mode", "by_value"),
    [
        pytest.param(
            {"oomguard.io/oom-kill": "process"},
            (APP_RESTARTING, container("side", SIDE)),
            {"app", "side"},
            KillMode.PROCESS,
            {999: KillMode.PROCESS},
            id="all-agree-and-set-before",
        ),
        pytest.param(
            {"oomguard.io/oom-kill": "process"},
            (APP_RESTARTING,),
            set(),
            None,
            {},
            id="first-start-is-the-pass-s",
        ),
        pytest.param(
            {"oomguard.io/oom-kill.app": "process"},
            (APP_RESTARTING, container("side", SIDE)),
            {"app"},
            None,
            {},
            id="candidates-disagree",
        ),
        pytest.param(
            {"oomguard.io/oom-kill.app": "process"},
            (container("app", OLD_APP, request=100 * MIB), container("side", SIDE)),
            {"app"},
            None,
            {900: KillMode.PROCESS},
            id="the-group-decides-once-its-value-is-seen",
        ),
        pytest.param(
            {"oomguard.io/oom-kill": "container"},
            (APP_RESTARTING, SIDE_RUNNING),
            {"app"},
            KillMode.CONTAINER,
            {999: KillMode.CONTAINER},
            id="container-mode",
        ),
    ],
)
def test_kill_modes(
    annotations: dict[str, str],
    containers: tuple[ContainerView, ...],
    remembered: set[str],
    mode: KillMode | None,
    by_value: dict[int, KillMode],
) -> None:
    live = frozenset({SIDE}) if SIDE_RUNNING in containers else frozenset()
    got = plan(pod(annotations, *containers), live, remembered=frozenset(remembered))
    assert got.kill_mode is mode
    assert dict(got.kill_modes) == by_value
    assert got.steers == bool(mode or by_value)
    assert got.targets == {}


def test_kill_modes_are_not_steered_without_a_memory_to_ask() -> None:
    """cgroup v1 (no memory.oom.group): None, and nothing to follow for them."""
    got = plan(pod({"oomguard.io/oom-kill": "process"}, APP_RESTARTING), remembered=None)
    assert got.kill_mode is None and got.kill_modes == {} and not got.steers


def test_a_group_kill_mode_is_not_keyed_by_a_value_oomguard_writes() -> None:
    """side's processes get 999 from oomguard: a process at 999 may be side's, not app's."""
    got = plan(
        pod(
            {"oomguard.io/oom-kill.app": "process", "oomguard.io/oom-score-adj.side": "999"},
            container("app", OLD_APP),
            container("side", SIDE, request=100 * MIB),
        ),
        remembered=frozenset({"app"}),
    )
    assert dict(got.targets) == {900: 999}
    assert dict(got.kill_modes) == {}


# ---------------------------------------------------------------------------- timing


@pytest.mark.parametrize(
    ("elapsed", "interval"),
    [(0.0, 0.002), (0.099, 0.002), (0.1, 0.01), (0.499, 0.01), (0.5, 0.05), (1.99, 0.05)],
)
def test_poll_interval(elapsed: float, interval: float) -> None:
    assert poll_interval_s(elapsed) == interval


def test_the_window_is_bounded() -> None:
    assert poll_interval_s(WINDOW_S) is None
    looks, t = 0, 0.0
    while (step := poll_interval_s(t)) is not None:
        looks, t = looks + 1, t + step
    assert looks <= 150
    assert POLL_STEPS[-1][0] == WINDOW_S


RUNC_INIT = "runc init"
ENTRYPOINT = "postgres -D /var/lib/postgresql/data"
TARGETS = {999: 1000}


@pytest.mark.parametrize(
    ("seen", "first", "done"),
    [
        pytest.param([], RUNC_INIT, False, id="no-process"),
        pytest.param([ProcessSeen(-998, RUNC_INIT)], RUNC_INIT, False, id="runtime-not-written"),
        pytest.param([ProcessSeen(999, RUNC_INIT)], RUNC_INIT, False, id="runtime-wrote-kubelet"),
        pytest.param(
            [ProcessSeen(1000, RUNC_INIT)], RUNC_INIT, False, id="steered-but-not-exec-d-yet"
        ),
        pytest.param([ProcessSeen(1000, ENTRYPOINT)], RUNC_INIT, True, id="exec-d-and-steered"),
        pytest.param(
            [ProcessSeen(1000, ENTRYPOINT), ProcessSeen(999, RUNC_INIT)],
            RUNC_INIT,
            False,
            id="a-runtime-stage-still-at-the-kubelet-value",
        ),
        pytest.param([ProcessSeen(-998, "/pause")], RUNC_INIT, True, id="sandbox-left-alone"),
        pytest.param([ProcessSeen(1000, ENTRYPOINT)], "", False, id="first-command-unknown"),
        pytest.param([ProcessSeen(1000, "")], RUNC_INIT, False, id="command-unreadable"),
        pytest.param(
            [ProcessSeen(1000, ENTRYPOINT)], ENTRYPOINT, False, id="first-seen-already-exec-d"
        ),
    ],
)
def test_runtime_done(seen: list[ProcessSeen], first: str, done: bool) -> None:
    assert runtime_done(seen, first, TARGETS) is done
