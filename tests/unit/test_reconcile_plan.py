"""The reconciler's rules, one row each, without root (like kubelet's qos/policy_test.go).

`plan` decides what a pass does for a pod; these tables feed it a pod, what oomguard
applied before, where the containers' cgroups are and what the writes did, and check
the writes, the memory and the Events that come out. The last part runs a real
`Reconciler` over a fake node (cgroup directories and /proc files in a temporary
directory, no process and no privilege) for the rules that span passes.

The node: a Burstable pod whose containers request 100 MiB on a 1000 MiB node, so the
kubelet gives every container 900.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

import oomguard.steer.apply as apply_module
from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.cgroups.oom_group import OOM_GROUP_FILE
from oomguard.k8s.pod_cache import ContainerKind, ContainerView, PodView, normalize_pod_key
from oomguard.metrics import Metrics
from oomguard.steer.admin import AdminPolicy, load_policy
from oomguard.steer.cgroup_index import ContainerCgroup
from oomguard.steer.decision import PodDecision
from oomguard.steer.kill_plan import (
    REASON_KILL_MODE_APPLIED,
    REASON_KILL_MODE_REFUSED,
    REASON_KILL_MODE_UNSUPPORTED,
    UNSUPPORTED_MESSAGE,
    KillPlan,
    KillTally,
    KillWork,
    plan_kill_modes,
    settle_kill_modes,
    written_elsewhere,
)
from oomguard.steer.kill_plan import needs_write as kill_needs_write
from oomguard.steer.pass_report import ContainerResult
from oomguard.steer.plan import (
    NORMAL,
    REASON_APPLIED,
    REASON_INVALID,
    REASON_REFUSED,
    RESTORE,
    WARNING,
    ContainerTally,
    ContainerWork,
    Locate,
    PodEvent,
    PodNotes,
    PodPlan,
    decide,
    in_container,
    kernel_refusal,
    needs_write,
    plan_pod,
    settle_pod,
    state_signature,
)
from oomguard.steer.reconciler import Reconciler
from oomguard.steer.score_state import (
    STATE_FILE,
    AppliedKillMode,
    AppliedValue,
    ScoreState,
    ScoreStateFile,
)

MIB = 1 << 20
NODE_MEMORY = 1000 * MIB
KUBELET = 900
UID = "6f1e0c7a-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
OTHER_UID = "0d9f1e2c-3b4a-4c5d-8e6f-7a8b9c0d1e2f"
APP, SIDE = "a1" * 32, "b2" * 32
STATIC_HASH = "3b1f0c9e2d7a4e6f8a5b1c0d9e8f7a6b"  # a static pod's cgroup is named after it
BOOT = "8c2e6f0b-1d3a-4a5e-9b7c-2f4d6e8a0b1c"

OPEN = load_policy("{}")
TRUST_DB = load_policy("trusted_namespaces: {names: [db]}\n")
SACRIFICE = {"oomguard.io/sacrifice": "true"}
SACRIFICE_APP = {"oomguard.io/sacrifice.app": "true"}
ADJ_950 = {"oomguard.io/oom-score-adj": "950"}
INVALID = {"oomguard.io/oom-score-adj": "1e3"}
PROTECT = {"oomguard.io/protect": "true"}
LOWER_TO_0 = {"oomguard.io/oom-score-adj": "0"}  # bounded to 3 for Burstable pods

SACRIFICE_REASON = (
    "oomguard.io/sacrifice=true gives Burstable container app 1000 (kubelet's value 900)"
)
RESTORED_APP = "container app is back at the kubelet's value 900 (no oomguard request any more)"
INVALID_MESSAGE = (
    'oomguard.io/oom-score-adj: "1e3" is not a whole number from -1000 to 1000 (an '
    "optional '-' and ASCII digits only); ignored. Applied: app=900 (the kubelet's value)."
)
REFUSED_LOWERING = (
    "oomguard could not set oom_score_adj 3 on container app: the kernel refused (EACCES) "
    "because the oomguard agent lacks CAP_SYS_RESOURCE, which lowering oom_score_adj "
    "requires; the processes keep their current value. Give the agent CAP_SYS_RESOURCE."
)
REFUSED_RAISING = (
    "oomguard could not set oom_score_adj 1000 on container app: permission denied "
    "writing /proc/PID/oom_score_adj (the agent needs CAP_DAC_OVERRIDE to write other "
    "users' processes); the processes keep their current value."
)


# ---------------------------------------------------------------------------- builders


def container(name: str, container_id: str | None, running: bool = True) -> ContainerView:
    return ContainerView(
        name=name,
        kind=ContainerKind.CONTAINER,
        restart_policy=None,
        memory_request_bytes=100 * MIB,
        memory_limit_bytes=None,
        container_id=container_id,
        runtime="containerd",
        past_container_ids=(),
        running=running,
        restart_count=0,
    )


def pod(
    annotations: Mapping[str, str] | None = None,
    containers: Mapping[str, str | None] | None = None,
    *,
    uid: str = UID,
    namespace: str = "default",
    running: bool = True,
    qos: str | None = "Burstable",
    config_hash: str | None = None,
) -> PodView:
    ids = {"app": APP} if containers is None else containers
    return PodView(
        uid=uid,
        namespace=namespace,
        name="web-0",
        node_name="node-1",
        annotations=MappingProxyType(dict(annotations or {})),
        qos_class=qos,
        priority=0,
        priority_class_name=None,
        config_hash=config_hash,
        phase="Running",
        containers=tuple(container(n, i, running) for n, i in ids.items()),
        resource_version="1",
    )


def cgroup(container_id: str, uid: str = UID) -> ContainerCgroup:
    path = f"/kubepods/burstable/pod{uid}/{container_id}"
    return ContainerCgroup(path, "/cgroup" + path, normalize_pod_key(uid))


def node(cgroups: Mapping[str, ContainerCgroup]) -> tuple[Locate, list[tuple[str, bool]]]:
    """A lookup over the node's cgroups, and what it was asked: (container ID, running)."""
    asked: list[tuple[str, bool]] = []

    def locate(container_id: str, running: bool) -> ContainerCgroup | None:
        asked.append((container_id, running))
        return cgroups.get(container_id)

    return locate, asked


def applied(*entries: tuple[str, int], uid: str = UID) -> dict[tuple[str, str], AppliedValue]:
    return {(uid, name): AppliedValue(uid, name, value, KUBELET) for name, value in entries}


def decided(p: PodView, policy: AdminPolicy = OPEN) -> PodDecision:
    result = decide(p, policy, NODE_MEMORY)
    assert result is not None
    return result


def work_of(plan: PodPlan) -> list[tuple[str, int, int | None]]:
    return [(w.decision.container, w.target, w.only_from) for w in plan.work]


# ---------------------------------------------------------------------------- step 1


def test_no_qos_class_leaves_the_pod_alone() -> None:
    """Without status.qosClass the kubelet's values are unknown: nothing is decided."""
    assert decide(pod(SACRIFICE, qos=None), OPEN, NODE_MEMORY) is None


def test_namespace_labels_are_asked_only_when_a_rule_selects_by_label() -> None:
    asked: list[str] = []

    def labels(namespace: str) -> Mapping[str, str]:
        asked.append(namespace)
        return {"team": "db"}

    decide(pod(PROTECT), OPEN, NODE_MEMORY, labels)
    assert asked == []
    by_label = load_policy("trusted_namespaces: {selector: {matchLabels: {team: db}}}\n")
    result = decide(pod(PROTECT), by_label, NODE_MEMORY, labels)
    assert asked == ["default"]
    assert result is not None and result.decisions[0].desired == 3  # trusted by its label


# ---------------------------------------------------------------------------- step 2


@dataclasses.dataclass(frozen=True)
class PlanRow:
    name: str
    pod: PodView
    applied: Mapping[tuple[str, str], AppliedValue]
    cgroups: Mapping[str, ContainerCgroup]
    work: list[tuple[str, int, int | None]]  # (container, target, only_from)
    missing: int = 0
    forget: tuple[tuple[str, str], ...] = ()
    keep_notes: bool = True
    asked: tuple[str, ...] | None = None  # the container IDs looked for, if checked
    policy: AdminPolicy = OPEN


PLAN_ROWS = [
    PlanRow(
        "governed: its processes get the policy's value",
        pod(SACRIFICE),
        {},
        {APP: cgroup(APP)},
        [("app", 1000, None)],
        asked=(APP,),
    ),
    PlanRow(
        "only the governed container is looked at",
        pod(SACRIFICE_APP, {"app": APP, "side": SIDE}),
        {},
        {APP: cgroup(APP), SIDE: cgroup(SIDE)},
        [("app", 1000, None)],
        asked=(APP,),
    ),
    PlanRow(
        "ungoverned and never set: the pod is left alone and forgotten",
        pod(),
        {},
        {APP: cgroup(APP)},
        [],
        keep_notes=False,
        asked=(),
    ),
    PlanRow(
        "annotation removed: restore, only from oomguard's value",
        pod(),
        applied(("app", 1000)),
        {APP: cgroup(APP)},
        [("app", KUBELET, 1000)],
    ),
    PlanRow(
        "governed containers are looked for before restored ones",
        pod(SACRIFICE_APP, {"side": SIDE, "app": APP}),
        applied(("side", 950)),
        {APP: cgroup(APP), SIDE: cgroup(SIDE)},
        [("app", 1000, None), ("side", KUBELET, 950)],
        asked=(APP, SIDE),
    ),
    PlanRow(
        "restore with the cgroup gone: nothing left to restore, forgotten",
        pod(),
        applied(("app", 1000)),
        {},
        [],
        forget=((UID, "app"),),
    ),
    PlanRow(
        "restore without a container ID: kept for a later pass",
        pod(containers={"app": None}),
        applied(("app", 1000)),
        {},
        [],
        asked=(),
    ),
    PlanRow(
        "restore with the cgroup under another pod: left, not forgotten",
        pod(),
        applied(("app", 1000)),
        {APP: cgroup(APP, OTHER_UID)},
        [],
    ),
    PlanRow(
        "governed, cgroup not on the node yet: missing",
        pod(SACRIFICE),
        {},
        {},
        [],
        missing=1,
    ),
    PlanRow(
        "governed, no container ID yet: missing, nothing looked for",
        pod(SACRIFICE, {"app": None}),
        {},
        {},
        [],
        missing=1,
        asked=(),
    ),
    PlanRow(
        "governed, the cgroup found is another pod's: missing",
        pod(SACRIFICE),
        {},
        {APP: cgroup(APP, OTHER_UID)},
        [],
        missing=1,
    ),
    PlanRow(
        "static pod: its cgroup is under its config hash, not its UID",
        pod(SACRIFICE, config_hash=STATIC_HASH),
        {},
        {APP: cgroup(APP, STATIC_HASH)},
        [("app", 1000, None)],
    ),
    PlanRow(
        "bounded request: the bound is the target",
        pod(LOWER_TO_0, namespace="db"),
        {},
        {APP: cgroup(APP)},
        [("app", 3, None)],
        policy=TRUST_DB,
    ),
    PlanRow(
        "refused request: the kubelet's value stands, nothing to write",
        pod(PROTECT),
        {},
        {APP: cgroup(APP)},
        [],
        asked=(),
    ),
]


@pytest.mark.parametrize("row", PLAN_ROWS, ids=[r.name for r in PLAN_ROWS])
def test_plan(row: PlanRow) -> None:
    locate, asked = node(row.cgroups)
    plan = plan_pod(row.pod, decided(row.pod, row.policy), row.applied, locate)
    assert work_of(plan) == row.work
    assert plan.missing == row.missing
    assert plan.forget == row.forget
    assert plan.keep_notes is row.keep_notes
    if row.asked is not None:
        assert tuple(cid for cid, _ in asked) == row.asked


@pytest.mark.parametrize("running", [True, False])
def test_the_lookup_knows_whether_the_container_runs(running: bool) -> None:
    """A stopped container's cgroup is not worth a rescan (`CgroupIndex.locate`)."""
    p = pod(SACRIFICE, running=running)
    locate, asked = node({APP: cgroup(APP)})
    assert work_of(plan_pod(p, decided(p), {}, locate)) == [("app", 1000, None)]
    assert asked == [(APP, running)]


def test_the_work_carries_where_and_which_container() -> None:
    p = pod(SACRIFICE)
    locate, _ = node({APP: cgroup(APP)})
    [work] = plan_pod(p, decided(p), {}, locate).work
    assert (work.container_id, work.cgroup) == (APP, cgroup(APP))


@dataclasses.dataclass(frozen=True)
class WarningRow:
    name: str
    pod: PodView
    reason: str | None  # None: no Warning
    policy_refused: bool = False
    said: bool = False  # the same message was sent before
    policy: AdminPolicy = OPEN


WARNING_ROWS = [
    WarningRow("invalid annotation", pod(INVALID), REASON_INVALID),
    WarningRow("untrusted protect", pod(PROTECT), REASON_REFUSED, policy_refused=True),
    WarningRow("bounded", pod(LOWER_TO_0, namespace="db"), REASON_REFUSED, policy=TRUST_DB),
    WarningRow("said before: not again", pod(INVALID), None, said=True),
    WarningRow("nothing wrong", pod(SACRIFICE), None),
]


@pytest.mark.parametrize("row", WARNING_ROWS, ids=[r.name for r in WARNING_ROWS])
def test_policy_warnings(row: WarningRow) -> None:
    decision = decided(row.pod, row.policy)
    locate, _ = node({APP: cgroup(APP)})
    first = plan_pod(row.pod, decision, {}, locate)
    said = {(e.reason, e.message) for e in first.events} if row.said else set()
    plan = plan_pod(row.pod, decision, {}, locate, said)
    assert plan.keep_notes  # the pod is remembered: what it was told counts
    if row.reason is None:
        assert plan.events == ()
        return
    [event] = plan.events
    assert (event.type, event.reason, event.policy_refused) == (
        WARNING,
        row.reason,
        row.policy_refused,
    )
    assert event.message.endswith(".") and ". Applied: app=" in event.message


def test_the_invalid_annotation_warning_says_what_applies() -> None:
    p = pod(INVALID)
    [event] = plan_pod(p, decided(p), {}, node({})[0]).events
    assert event.message == INVALID_MESSAGE


# ---------------------------------------------------------------------------- the writes


@pytest.mark.parametrize(
    ("current", "target", "only_from", "write"),
    [
        (900, 1000, None, True),  # governed: anything else gets the target
        (500, 1000, None, True),
        (1000, 1000, None, False),  # already right
        (1000, 900, 1000, True),  # restore: carries oomguard's value
        (500, 900, 1000, False),  # restore: someone else's choice since, not undone
        (900, 900, 1000, False),  # restore: already at the kubelet's
        (900, 900, 900, False),
    ],
)
def test_which_processes_are_written(
    current: int, target: int, only_from: int | None, write: bool
) -> None:
    p = pod(SACRIFICE)
    work = ContainerWork(decided(p).decisions[0], APP, cgroup(APP), target, only_from)
    assert needs_write(current, work) is write


@pytest.mark.parametrize(
    ("memory_cgroup", "inside"),
    [
        (f"/kubepods/burstable/pod{UID}/{APP}", True),
        (f"/kubepods/burstable/pod{UID}/{APP}/worker/deeper", True),  # nested
        (f"/kubepods/burstable/pod{UID}/{APP}0", False),  # a sibling with a longer name
        (f"/kubepods/burstable/pod{UID}", False),  # the pod, not the container
        ("/system.slice/sshd.service", False),  # the PID was reused by a stranger
        (None, False),  # exited
    ],
)
def test_a_write_needs_the_process_in_the_container(
    memory_cgroup: str | None, inside: bool
) -> None:
    p = pod(SACRIFICE)
    work = ContainerWork(decided(p).decisions[0], APP, cgroup(APP), 1000)
    assert in_container(memory_cgroup, work) is inside


# ---------------------------------------------------------------------------- step 3


def tally(
    processes: int = 1,
    written: int = 0,
    refused: int = 0,
    errors: int = 0,
    lowering: bool = False,
) -> ContainerTally:
    return ContainerTally(1, processes, written, refused, errors, lowering)


@dataclasses.dataclass(frozen=True)
class SettleRow:
    name: str
    pod: PodView
    applied: Mapping[tuple[str, str], AppliedValue]
    tallies: Sequence[ContainerTally]
    remember: tuple[tuple[str, int], ...] = ()  # (container, value) set in `applied`
    forget: tuple[str, ...] = ()
    events: tuple[tuple[str, str, str], ...] = ()  # (type, reason, message)
    announced: tuple[tuple[str, int], ...] = ()
    before: tuple[tuple[str, int], ...] = ()  # PodNotes.announced from the last pass
    dry_run: bool = False
    policy: AdminPolicy = OPEN
    cgroups: tuple[str, ...] = (APP, SIDE)


SETTLE_ROWS = [
    SettleRow(
        "written: remembered and announced",
        pod(SACRIFICE),
        {},
        [tally(written=1)],
        remember=(("app", 1000),),
        events=((NORMAL, REASON_APPLIED, "oom_score_adj: " + SACRIFICE_REASON),),
        announced=(("app", 1000),),
    ),
    SettleRow(
        "already right, already announced: nothing new",
        pod(SACRIFICE),
        applied(("app", 1000)),
        [tally()],
        announced=(("app", 1000),),
        before=(("app", 1000),),
    ),
    SettleRow(
        "no process yet: announced all the same (the value is in place for the next)",
        pod(SACRIFICE),
        {},
        [tally(processes=0)],
        remember=(("app", 1000),),
        events=((NORMAL, REASON_APPLIED, "oom_score_adj: " + SACRIFICE_REASON),),
        announced=(("app", 1000),),
    ),
    SettleRow(
        "the value changed: remembered anew and announced again",
        pod(ADJ_950),
        applied(("app", 1000)),
        [tally(written=1)],
        remember=(("app", 950),),
        events=(
            (
                NORMAL,
                REASON_APPLIED,
                "oom_score_adj: oomguard.io/oom-score-adj=950 gives Burstable container app "
                "950 (kubelet's value 900)",
            ),
        ),
        announced=(("app", 950),),
        before=(("app", 1000),),
    ),
    SettleRow(
        "the announcement lists only the containers applied",
        pod(
            {"oomguard.io/sacrifice.app": "true", "oomguard.io/sacrifice.side": "true"},
            {"app": APP, "side": SIDE},
        ),
        {},
        [tally(written=1), tally(refused=1)],
        remember=(("app", 1000), ("side", 1000)),
        events=(
            (WARNING, REASON_REFUSED, REFUSED_RAISING.replace("container app", "container side")),
            (
                NORMAL,
                REASON_APPLIED,
                "oom_score_adj: " + SACRIFICE_REASON.replace("sacrifice", "sacrifice.app"),
            ),
        ),
        announced=(("app", 1000),),
    ),
    SettleRow(
        "restore done: forgotten, and said so",
        pod(),
        applied(("app", 1000)),
        [tally(written=2)],
        forget=("app",),
        events=((NORMAL, REASON_APPLIED, "oom_score_adj: " + RESTORED_APP),),
    ),
    SettleRow(
        "restore with nothing to write is done all the same",
        pod(),
        applied(("app", 1000)),
        [tally(processes=3)],
        forget=("app",),
        events=((NORMAL, REASON_APPLIED, "oom_score_adj: " + RESTORED_APP),),
    ),
    SettleRow(
        "restore refused: kept for the next pass, Warning",
        pod(),
        applied(("app", 1000)),
        [tally(refused=1, lowering=True)],
        events=(
            (
                WARNING,
                REASON_REFUSED,
                REFUSED_LOWERING.replace("oom_score_adj 3 ", "oom_score_adj 900 "),
            ),
        ),
        before=(("app", 1000),),
    ),
    SettleRow(
        "restore with an error: kept for the next pass, nothing said",
        pod(),
        applied(("app", 1000)),
        [tally(errors=1)],
        before=(("app", 1000),),
    ),
    SettleRow(
        "kernel refused a lowering: the CAP_SYS_RESOURCE Warning, not announced",
        pod(LOWER_TO_0, namespace="db"),
        {},
        [tally(refused=2, lowering=True)],
        remember=(("app", 3),),
        events=((WARNING, REASON_REFUSED, REFUSED_LOWERING),),
        policy=TRUST_DB,
    ),
    SettleRow(
        "kernel refused a raise: the CAP_DAC_OVERRIDE Warning",
        pod(SACRIFICE),
        {},
        [tally(refused=1)],
        remember=(("app", 1000),),
        events=((WARNING, REASON_REFUSED, REFUSED_RAISING),),
    ),
    SettleRow(
        "no longer applied anywhere: the empty set is remembered, nothing said",
        pod(SACRIFICE),
        applied(("app", 1000)),
        [tally(refused=1)],
        events=((WARNING, REASON_REFUSED, REFUSED_RAISING),),
        before=(("app", 1000),),
    ),
    SettleRow(
        "the writes stopped at a failure: what was done is remembered, not announced",
        pod(
            {"oomguard.io/sacrifice.app": "true", "oomguard.io/sacrifice.side": "true"},
            {"app": APP, "side": SIDE},
        ),
        applied(("side", 950)),
        [tally(written=1)],  # none for side: its writes raised
        remember=(("app", 1000),),
    ),
    SettleRow(
        "a restore done before a failure is forgotten, its announcement lost with the pass",
        pod(containers={"app": APP, "side": SIDE}),
        applied(("app", 950), ("side", 950)),
        [tally(written=1)],  # none for side: its writes raised
        forget=("app",),
        before=(("app", 950), ("side", 950)),
        announced=(("app", 950), ("side", 950)),
    ),
    SettleRow(
        "dry run: nothing remembered, nothing announced",
        pod(SACRIFICE),
        {},
        [tally(written=1)],
        dry_run=True,
    ),
    SettleRow(
        "dry run with a restore: nothing forgotten, nothing announced",
        pod(),
        applied(("app", 1000)),
        [tally(written=1)],
        dry_run=True,
        before=(("app", 1000),),
        announced=(("app", 1000),),
    ),
]


@pytest.mark.parametrize("row", SETTLE_ROWS, ids=[r.name for r in SETTLE_ROWS])
def test_settle(row: SettleRow) -> None:
    locate, _ = node({cid: cgroup(cid) for cid in row.cgroups})
    plan = plan_pod(row.pod, decided(row.pod, row.policy), row.applied, locate)
    assert len(plan.work) >= len(row.tallies)
    notes = PodNotes(announced=row.before)
    settled = settle_pod(row.pod, plan, row.tallies, row.applied, notes, dry_run=row.dry_run)
    assert [(v.container, v.value) for v in settled.remember] == list(row.remember)
    assert all(v.pod_uid == UID and v.kubelet_value == KUBELET for v in settled.remember)
    assert settled.forget == tuple((UID, name) for name in row.forget)
    assert [(e.type, e.reason, e.message) for e in settled.events] == list(row.events)
    assert settled.announced == row.announced
    assert notes.announced == row.before  # only read


def test_an_unchanged_value_is_not_remembered_again() -> None:
    """The same object stays in the memory: the state file's change check stays cheap."""
    p = pod(SACRIFICE)
    before = applied(("app", 1000))
    plan = plan_pod(p, decided(p), before, node({APP: cgroup(APP)})[0])
    settled = settle_pod(p, plan, [tally()], before, PodNotes(), dry_run=False)
    assert settled.remember == ()


def test_a_changed_kubelet_value_is_remembered() -> None:
    p = pod(SACRIFICE)
    before = {(UID, "app"): AppliedValue(UID, "app", 1000, 500)}
    plan = plan_pod(p, decided(p), before, node({APP: cgroup(APP)})[0])
    settled = settle_pod(p, plan, [tally()], before, PodNotes(), dry_run=False)
    assert settled.remember == (AppliedValue(UID, "app", 1000, KUBELET),)


def test_a_kernel_refusal_said_before_is_not_said_again() -> None:
    p = pod(SACRIFICE)
    plan = plan_pod(p, decided(p), {}, node({APP: cgroup(APP)})[0])
    notes = PodNotes()
    assert notes.said.first((REASON_REFUSED, REFUSED_RAISING))
    settled = settle_pod(p, plan, [tally(refused=1)], {}, notes, dry_run=False)
    assert settled.events == ()


def test_the_kernel_refusal_messages() -> None:
    assert kernel_refusal("app", 3, lowering=True) == PodEvent(
        WARNING, REASON_REFUSED, REFUSED_LOWERING, log_level=40
    )
    assert kernel_refusal("app", 1000, lowering=False).message == REFUSED_RAISING


def test_results_say_what_each_container_should_have() -> None:
    p = pod({"oomguard.io/sacrifice.app": "true"}, {"app": APP, "side": SIDE})
    before = applied(("side", 950))
    plan = plan_pod(p, decided(p), before, node({APP: cgroup(APP), SIDE: cgroup(SIDE)})[0])
    tallies = [ContainerTally(3, 5, 4, 1, 0), ContainerTally(1, 2, 1, 0, 0)]
    settled = settle_pod(p, plan, tallies, before, PodNotes(), dry_run=False)
    assert settled.results == (
        ContainerResult("default", "web-0", UID, "app", KUBELET, 1000, "applied", 3, 5, 4, 1, APP),
        ContainerResult(
            "default", "web-0", UID, "side", KUBELET, KUBELET, RESTORE, 1, 2, 1, 0, SIDE
        ),
    )


# ---------------------------------------------------------------------------- the state file


def result(container_id: str, outcome: str = "applied", name: str = "app") -> ContainerResult:
    return ContainerResult(
        "default", "web-0", UID, name, KUBELET, 1000, outcome, 1, container_id=container_id
    )


@pytest.mark.parametrize(
    ("results", "memory", "wanted"),
    [
        ([result(APP)], applied(("app", 1000)), [APP]),
        ([result(APP, RESTORE)], applied(("app", 1000)), [APP]),  # restore not done yet
        ([result(APP, RESTORE)], {}, []),  # restore done: nothing wanted any more
        ([result("")], {}, []),  # no container ID: nothing `top` could match
    ],
)
def test_what_the_state_file_says(
    results: list[ContainerResult], memory: dict[tuple[str, str], AppliedValue], wanted: list[str]
) -> None:
    dry_run, saved_applied, saved_wanted, kill_modes = state_signature(False, memory, results)
    assert not dry_run and saved_applied == memory
    assert list(saved_wanted) == wanted
    assert kill_modes == {}


# ---------------------------------------------------------------------------- across passes


class FakeNode:
    """Cgroup directories and /proc files in a temporary directory: what the reconciler
    reads and writes, with no process behind them (`oom_score_adj` is a plain file)."""

    def __init__(self, root: Path, version: CgroupVersion = CgroupVersion.V1) -> None:
        self.mount = root / "memory"
        self.proc = root / "proc"
        self.proc.mkdir(parents=True)
        (self.mount / "kubepods").mkdir(parents=True)
        self.hierarchy = MemoryHierarchy(version, self.mount)
        self._next_pid = 100

    def container(self, container_id: str, uid: str = UID, values: Iterable[int] = ()) -> list[int]:
        """A container cgroup with processes at `values`; their PIDs."""
        cg = f"/kubepods/burstable/pod{uid}/{container_id}"
        directory = self.hierarchy.fs_path(cg)
        directory.mkdir(parents=True)
        v2 = self.hierarchy.version is CgroupVersion.V2
        if v2:
            (directory / OOM_GROUP_FILE).write_text("1\n")  # as the kubelet sets it on v2
        pids = []
        for value in values:
            self._next_pid += 1
            pid = self._next_pid
            (self.proc / str(pid)).mkdir()
            (self.proc / str(pid) / "cgroup").write_text(f"0::{cg}\n" if v2 else f"4:memory:{cg}\n")
            self.set(pid, value)
            pids.append(pid)
        (directory / "cgroup.procs").write_text("".join(f"{pid}\n" for pid in pids))
        return pids

    def set(self, pid: int, value: int) -> None:
        (self.proc / str(pid) / "oom_score_adj").write_text(str(value))

    def value(self, pid: int) -> int:
        """The value in the file. The reconciler writes over it without truncating (as
        /proc allows): a test that lowers a value keeps to values of the same width."""
        return int((self.proc / str(pid) / "oom_score_adj").read_text())

    def reconciler(
        self,
        state_dir: Path | None = None,
        *,
        dry_run: bool = False,
        policy: AdminPolicy = OPEN,
        metrics: Metrics | None = None,
    ) -> tuple[Reconciler, list[tuple[str, str, str]]]:
        events: list[tuple[str, str, str]] = []

        class Policy:
            def current(self) -> AdminPolicy:
                return policy

        r = Reconciler(
            self.hierarchy,
            self.mount / "kubepods",
            node_memory_bytes=NODE_MEMORY,
            dry_run=dry_run,
            policy_source=Policy(),
            on_event=lambda _pod, type_, reason, message: events.append((type_, reason, message)),
            metrics=metrics,
            proc_root=str(self.proc),
            state_dir=state_dir,
            boot_id=BOOT,
        )
        return r, events

    def oom_group_file(self, container_id: str, uid: str = UID) -> Path:
        cg = f"/kubepods/burstable/pod{uid}/{container_id}"
        return self.hierarchy.fs_path(cg) / OOM_GROUP_FILE

    def oom_group(self, container_id: str, uid: str = UID) -> int:
        return int(self.oom_group_file(container_id, uid).read_text())


@pytest.fixture
def fake(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path / "node")


def saved(state_dir: Path) -> dict[str, Any]:
    state = ScoreStateFile(state_dir, BOOT).load()
    assert state is not None
    return {"applied": sorted(state.applied), "wanted": sorted(state.wanted), "dry": state.dry_run}


def test_announced_once_while_nothing_changes(fake: FakeNode) -> None:
    pids = fake.container(APP, values=[KUBELET, KUBELET])
    r, events = fake.reconciler()
    first = r.pass_once([pod(SACRIFICE)])
    assert (first.written, first.pods_governed) == (2, 1)
    assert [fake.value(pid) for pid in pids] == [1000, 1000]
    for _ in range(3):
        again = r.pass_once([pod(SACRIFICE)])
        assert (again.written, again.already_right) == (0, 2)
    assert events == [(NORMAL, REASON_APPLIED, "oom_score_adj: " + SACRIFICE_REASON)]


def test_a_warning_is_sent_once_per_distinct_message(fake: FakeNode) -> None:
    fake.container(APP, values=[KUBELET])
    r, events = fake.reconciler()
    for _ in range(3):
        r.pass_once([pod(INVALID)])
    other = {"oomguard.io/oom-score-adj": "lots"}
    r.pass_once([pod(other)])
    r.pass_once([pod(other)])
    assert [(e[0], e[1]) for e in events] == [(WARNING, REASON_INVALID)] * 2
    assert events[0][2] == INVALID_MESSAGE and '"lots"' in events[1][2]


def test_a_pod_that_needs_nothing_is_told_again_after(fake: FakeNode) -> None:
    """A pod with nothing to say or do is forgotten: the same invalid value later is news."""
    fake.container(APP, values=[KUBELET])
    r, events = fake.reconciler()
    r.pass_once([pod(INVALID)])
    r.pass_once([pod()])
    r.pass_once([pod(INVALID)])
    assert [e[1] for e in events] == [REASON_INVALID, REASON_INVALID]


def test_restore_then_forgotten(fake: FakeNode, tmp_path: Path) -> None:
    pids = fake.container(APP, values=[KUBELET, KUBELET, KUBELET])
    r, events = fake.reconciler(tmp_path)
    r.pass_once([pod(ADJ_950)])
    assert [fake.value(pid) for pid in pids] == [950, 950, 950]
    fake.set(pids[2], 500)  # someone else's choice since

    report = r.pass_once([pod()])
    assert [fake.value(pid) for pid in pids] == [KUBELET, KUBELET, 500]
    assert report.containers["default/web-0/app"].outcome == RESTORE
    assert events[-1] == (NORMAL, REASON_APPLIED, "oom_score_adj: " + RESTORED_APP)
    assert saved(tmp_path) == {"applied": [], "wanted": [], "dry": False}

    fake.set(pids[0], 950)  # ungoverned again: left exactly as it is
    assert r.pass_once([pod()]).processes_seen == 0
    assert fake.value(pids[0]) == 950 and len(events) == 2


def test_a_deleted_pod_is_forgotten(fake: FakeNode, tmp_path: Path) -> None:
    fake.container(APP, values=[KUBELET])
    r, _ = fake.reconciler(tmp_path)
    r.pass_once([pod(SACRIFICE)])
    assert saved(tmp_path)["applied"] == [(UID, "app")]
    r.pass_once([])
    assert saved(tmp_path) == {"applied": [], "wanted": [], "dry": False}


def test_a_pod_deleted_while_the_agent_was_down_is_forgotten(
    fake: FakeNode, tmp_path: Path
) -> None:
    ScoreStateFile(tmp_path, BOOT).save(
        ScoreState(BOOT, False, applied(("app", 1000), uid=OTHER_UID))
    )
    r, events = fake.reconciler(tmp_path)
    r.pass_once([pod()])
    assert saved(tmp_path)["applied"] == [] and events == []


def test_a_missing_container_is_counted_and_looked_for_again(fake: FakeNode) -> None:
    r, _ = fake.reconciler()
    report = r.pass_once([pod(SACRIFICE)])
    assert (report.containers_missing, report.index_rescans) == (1, 1)
    pids = fake.container(APP, values=[KUBELET])
    assert r.pass_once([pod(SACRIFICE)]).containers_missing == 1  # not rescanned yet
    r.rescan()
    report = r.pass_once([pod(SACRIFICE)])
    assert (report.containers_missing, report.written) == (0, 1)
    assert fake.value(pids[0]) == 1000


def test_a_dry_run_writes_nothing_says_nothing_remembers_nothing(
    fake: FakeNode, tmp_path: Path
) -> None:
    pids = fake.container(APP, values=[KUBELET])
    r, events = fake.reconciler(tmp_path, dry_run=True)
    for _ in range(2):
        report = r.pass_once([pod(SACRIFICE)])
        assert report.dry_run and report.written == 1  # would write
    assert fake.value(pids[0]) == KUBELET and events == []
    assert saved(tmp_path) == {"applied": [], "wanted": [APP], "dry": True}
    assert (tmp_path / STATE_FILE).exists()


def test_a_failure_mid_pod_keeps_what_was_written_before_it(fake: FakeNode, tmp_path: Path) -> None:
    """The pod stops at the failure (counted as an error, the next pod goes on); the
    container written before it is remembered, the announcement waits for a whole pass."""
    two = {"app": APP, "side": SIDE}
    both = {"oomguard.io/sacrifice.app": "true", "oomguard.io/sacrifice.side": "true"}
    [app] = fake.container(APP, values=[KUBELET])
    fake.container(SIDE)
    procs = fake.hierarchy.fs_path(f"/kubepods/burstable/pod{UID}/{SIDE}") / "cgroup.procs"
    procs.unlink()
    procs.mkdir()  # reading it fails (EISDIR): not "gone", an error
    r, events = fake.reconciler(tmp_path)
    report = r.pass_once([pod(both, two)])
    assert report.errors == 1 and fake.value(app) == 1000
    assert list(report.containers) == ["default/web-0/app"]
    assert saved(tmp_path)["applied"] == [(UID, "app")] and events == []

    procs.rmdir()
    procs.write_text("")
    report = r.pass_once([pod(both, two)])
    assert report.errors == 0 and report.already_right == 1
    assert [e[1] for e in events] == [REASON_APPLIED]
    assert saved(tmp_path)["applied"] == [(UID, "app"), (UID, "side")]


# ---------------------------------------------------------------------------- kill modes
# memory.oom.group of each container cgroup (cgroup v2): `kill_plan`'s rules, then
# across passes on a fake v2 node whose container cgroups start at the kubelet's 1.

PROCESS = {"oomguard.io/oom-kill": "process"}
PROCESS_APP = {"oomguard.io/oom-kill.app": "process"}
CONTAINER_MODE = {"oomguard.io/oom-kill": "container"}
INVALID_MODE = {"oomguard.io/oom-kill": "Process"}
CI_DEFAULT = load_policy("oom_kill: {defaults: [{namespaces: {names: [ci]}, mode: process}]}\n")
PROCESS_ONLY_IN_CI = load_policy("oom_kill: {process: {names: [ci]}}\n")

APP_TO_PROCESS = (
    "memory.oom.group: container app -> process (only the process the kernel picks dies; "
    "oomguard.io/oom-kill=process)"
)
APP_BACK = (
    'memory.oom.group: container app is back at 1 ("container": all its processes die '
    "together), the value before oomguard changed it (no oomguard.io/oom-kill request any "
    "more)"
)
READ_ONLY = (
    'oomguard could not set memory.oom.group of container app to 0 ("process": only the '
    "process the kernel picks dies): the oomguard agent's cgroup mount is read-only "
    "(EROFS); kill modes need it writable: install the chart with cgroup.readOnly: false. "
    'It keeps memory.oom.group=1 ("container": all its processes die together).'
)


def kill_set(
    *entries: tuple[str, int, int], uid: str = UID
) -> dict[tuple[str, str], AppliedKillMode]:
    """What oomguard remembers having set: (container, value written, value before)."""
    return {(uid, c): AppliedKillMode(uid, c, value, before) for c, value, before in entries}


def kill_work_of(plan: KillPlan) -> list[tuple[str, int, int | None]]:
    return [(w.decision.container, w.target, w.only_from) for w in plan.work]


@dataclasses.dataclass(frozen=True)
class KillPlanRow:
    name: str
    pod: PodView
    work: list[tuple[str, int, int | None]]  # (container, target, only_from)
    remembered: Mapping[tuple[str, str], AppliedKillMode] = dataclasses.field(default_factory=dict)
    cgroups: Mapping[str, ContainerCgroup] = dataclasses.field(
        default_factory=lambda: {APP: cgroup(APP)}
    )
    events: tuple[str, ...] = ()  # reasons
    forget: tuple[tuple[str, str], ...] = ()
    keep_notes: bool = True
    asked: tuple[str, ...] | None = None
    policy: AdminPolicy = OPEN
    v1: bool = False


KILL_PLAN_ROWS = [
    KillPlanRow('"process": the container cgroup gets 0', pod(PROCESS), [("app", 0, None)]),
    KillPlanRow('"container": 1', pod(CONTAINER_MODE), [("app", 1, None)]),
    KillPlanRow(
        "only the container that asks is looked at",
        pod(PROCESS_APP, {"app": APP, "side": SIDE}),
        [("app", 0, None)],
        cgroups={APP: cgroup(APP), SIDE: cgroup(SIDE)},
        asked=(APP,),
    ),
    KillPlanRow(
        "unannotated, no default: left as the kubelet set it, nothing looked at",
        pod(),
        [],
        keep_notes=False,
        asked=(),
    ),
    KillPlanRow(
        "the namespace's default applies to a container that asks for nothing",
        pod(namespace="ci"),
        [("app", 0, None)],
        policy=CI_DEFAULT,
    ),
    KillPlanRow(
        "annotation removed: the value found before, only over oomguard's",
        pod(),
        [("app", 1, 0)],
        remembered=kill_set(("app", 0, 1)),
    ),
    KillPlanRow(
        "annotation removed, the cgroup gone: forgotten",
        pod(),
        [],
        remembered=kill_set(("app", 0, 1)),
        cgroups={},
        forget=((UID, "app"),),
    ),
    KillPlanRow(
        "annotation removed, no container ID yet: kept for a later pass",
        pod(containers={"app": None}),
        [],
        remembered=kill_set(("app", 0, 1)),
        asked=(),
    ),
    KillPlanRow(
        "the cgroup found is another pod's: not touched, not forgotten",
        pod(PROCESS),
        [],
        cgroups={APP: cgroup(APP, OTHER_UID)},
    ),
    KillPlanRow(
        "static pod: its cgroup is under its config hash",
        pod(PROCESS, config_hash=STATIC_HASH),
        [("app", 0, None)],
        cgroups={APP: cgroup(APP, STATIC_HASH)},
    ),
    KillPlanRow(
        "a mode the namespace may not choose: refused, left as the kubelet set it",
        pod(PROCESS),
        [],
        events=(REASON_KILL_MODE_REFUSED,),
        asked=(),
        policy=PROCESS_ONLY_IN_CI,
    ),
    KillPlanRow(
        "refused after it was applied: put back",
        pod(PROCESS),
        [("app", 1, 0)],
        remembered=kill_set(("app", 0, 1)),
        events=(REASON_KILL_MODE_REFUSED,),
        policy=PROCESS_ONLY_IN_CI,
    ),
    KillPlanRow(
        "invalid value: refused, nothing written",
        pod(INVALID_MODE),
        [],
        events=(REASON_KILL_MODE_REFUSED,),
        asked=(),
    ),
    KillPlanRow(
        "cgroup v1: nothing looked at, the Unsupported Warning",
        pod(PROCESS),
        [],
        events=(REASON_KILL_MODE_UNSUPPORTED,),
        asked=(),
        v1=True,
    ),
    KillPlanRow(
        "cgroup v1, only the namespace's default: the pod asked nothing, nothing said",
        pod(namespace="ci"),
        [],
        asked=(),
        policy=CI_DEFAULT,
        v1=True,
    ),
    KillPlanRow(
        "cgroup v1, an invalid value: both Warnings",
        pod(INVALID_MODE),
        [],
        events=(REASON_KILL_MODE_REFUSED, REASON_KILL_MODE_UNSUPPORTED),
        v1=True,
    ),
]


@pytest.mark.parametrize("row", KILL_PLAN_ROWS, ids=[r.name for r in KILL_PLAN_ROWS])
def test_kill_plan(row: KillPlanRow) -> None:
    locate, asked = node(row.cgroups)
    decision = decided(row.pod, row.policy)
    plan = plan_kill_modes(row.pod, decision.kill_modes, row.remembered, locate, v1=row.v1)
    assert kill_work_of(plan) == row.work
    assert tuple(e.reason for e in plan.events) == row.events
    assert all(e.type == WARNING for e in plan.events)
    assert plan.forget == row.forget
    assert plan.keep_notes is row.keep_notes
    if row.asked is not None:
        assert tuple(cid for cid, _ in asked) == row.asked


def test_kill_mode_warnings_are_not_score_warnings() -> None:
    """One bad oom-kill key is one Warning: OOMKillModeRefused, never OOMScoreAdj*."""
    p = pod(INVALID_MODE)
    locate, _ = node({APP: cgroup(APP)})
    assert plan_pod(p, decided(p), {}, locate).events == ()
    [event] = plan_kill_modes(p, decided(p).kill_modes, {}, locate).events
    assert (event.reason, event.kill_result) == (REASON_KILL_MODE_REFUSED, "refused")
    assert '"Process"' in event.message and event.message.endswith(".")


def test_kill_mode_warnings_said_before_are_not_said_again() -> None:
    p = pod(PROCESS)
    locate, _ = node({APP: cgroup(APP)})
    kill_modes = decided(p, PROCESS_ONLY_IN_CI).kill_modes
    [event] = plan_kill_modes(p, kill_modes, {}, locate).events
    again = plan_kill_modes(p, kill_modes, {}, locate, {(event.reason, event.message)})
    assert again.events == () and again.keep_notes  # kept: the pod was told
    [v1] = plan_kill_modes(p, decided(p).kill_modes, {}, locate, v1=True).events
    assert (v1.reason, v1.message, v1.kill_result) == (
        REASON_KILL_MODE_UNSUPPORTED,
        UNSUPPORTED_MESSAGE,
        "unsupported",
    )


@pytest.mark.parametrize(
    ("current", "target", "only_from", "write"),
    [
        (1, 0, None, True),  # the kubelet's 1, "process" asked
        (0, 0, None, False),  # already right
        (0, 1, None, True),  # "container" on a singleProcessOOMKill node
        (0, 1, 0, True),  # restore over oomguard's value
        (1, 1, 0, False),  # restore: already back (someone else's change is not undone)
        (1, 0, 1, True),
    ],
)
def test_which_kill_mode_files_are_written(
    current: int, target: int, only_from: int | None, write: bool
) -> None:
    p = pod(PROCESS)
    work = KillWork(decided(p).kill_modes[0], APP, cgroup(APP), target, only_from)
    assert kill_needs_write(current, work) is write


def ktally(found: int | None = 1, written: bool = False, error: int | None = None) -> KillTally:
    return KillTally(found, written, error, os.strerror(error) if error else "")


@dataclasses.dataclass(frozen=True)
class KillSettleRow:
    name: str
    pod: PodView
    tallies: Sequence[KillTally]
    remembered: Mapping[tuple[str, str], AppliedKillMode] = dataclasses.field(default_factory=dict)
    remember: tuple[tuple[str, int, int], ...] = ()  # (container, value, before)
    forget: tuple[str, ...] = ()
    events: tuple[tuple[str, str, str], ...] = ()  # (type, reason, message)
    announced: tuple[tuple[str, int], ...] = ()
    before: tuple[tuple[str, int], ...] = ()  # PodNotes.kill_announced from the last pass
    dry_run: bool = False
    policy: AdminPolicy = OPEN


KILL_SETTLE_ROWS = [
    KillSettleRow(
        "written: the value found is remembered, and announced",
        pod(PROCESS),
        [ktally(found=1, written=True)],
        remember=(("app", 0, 1),),
        events=((NORMAL, REASON_KILL_MODE_APPLIED, APP_TO_PROCESS),),
        announced=(("app", 0),),
    ),
    KillSettleRow(
        "already right: nothing to put back later, announced all the same",
        pod(PROCESS),
        [ktally(found=0)],
        events=((NORMAL, REASON_KILL_MODE_APPLIED, APP_TO_PROCESS),),
        announced=(("app", 0),),
    ),
    KillSettleRow(
        "already announced: nothing new",
        pod(PROCESS),
        [ktally(found=0)],
        remembered=kill_set(("app", 0, 1)),
        announced=(("app", 0),),
        before=(("app", 0),),
    ),
    KillSettleRow(
        "a restart's new cgroup is written again; the first value found stays remembered",
        pod(PROCESS),
        [ktally(found=1, written=True)],
        remembered=kill_set(("app", 0, 1)),
        announced=(("app", 0),),
        before=(("app", 0),),
    ),
    KillSettleRow(
        "the mode changed: remembered anew, keeping the value found before the first write",
        pod(CONTAINER_MODE),
        [ktally(found=0, written=True)],
        remembered=kill_set(("app", 0, 1)),
        remember=(("app", 1, 1),),
        events=(
            (
                NORMAL,
                REASON_KILL_MODE_APPLIED,
                "memory.oom.group: container app -> container (all its processes die "
                "together; oomguard.io/oom-kill=container)",
            ),
        ),
        announced=(("app", 1),),
        before=(("app", 0),),
    ),
    KillSettleRow(
        "the namespace's default says where it came from",
        pod(namespace="ci"),
        [ktally(found=1, written=True)],
        remember=(("app", 0, 1),),
        events=(
            (
                NORMAL,
                REASON_KILL_MODE_APPLIED,
                "memory.oom.group: container app -> process (only the process the kernel "
                "picks dies; the policy's default for namespace ci)",
            ),
        ),
        announced=(("app", 0),),
        policy=CI_DEFAULT,
    ),
    KillSettleRow(
        "a read-only cgroup mount: the Warning names the chart's setting; nothing in force",
        pod(PROCESS),
        [ktally(found=1, error=errno.EROFS)],
        events=((WARNING, REASON_KILL_MODE_REFUSED, READ_ONLY),),
    ),
    KillSettleRow(
        "permission denied: says so",
        pod(PROCESS),
        [ktally(found=1, error=errno.EACCES)],
        events=(
            (
                WARNING,
                REASON_KILL_MODE_REFUSED,
                READ_ONLY.replace(
                    "the oomguard agent's cgroup mount is read-only (EROFS); kill modes need "
                    "it writable: install the chart with cgroup.readOnly: false",
                    "permission denied (EACCES) writing memory.oom.group; the agent needs "
                    "root with write access to the cgroup file system",
                ),
            ),
        ),
    ),
    KillSettleRow(
        "an unreadable file: keeps its current value",
        pod(PROCESS),
        [ktally(found=None, error=errno.EIO)],
        events=(
            (
                WARNING,
                REASON_KILL_MODE_REFUSED,
                'oomguard could not set memory.oom.group of container app to 0 ("process": '
                "only the process the kernel picks dies): EIO Input/output error. It keeps "
                "its current value.",
            ),
        ),
    ),
    KillSettleRow(
        "the cgroup went before the read: not in force, nothing said",
        pod(PROCESS),
        [ktally(found=None)],
        before=(("app", 0),),
    ),
    KillSettleRow(
        "restore done: forgotten, and said so",
        pod(),
        [ktally(found=0, written=True)],
        remembered=kill_set(("app", 0, 1)),
        forget=("app",),
        events=((NORMAL, REASON_KILL_MODE_APPLIED, APP_BACK),),
        before=(("app", 0),),
    ),
    KillSettleRow(
        "restore with the cgroup gone meanwhile: forgotten, nothing said",
        pod(),
        [ktally(found=None)],
        remembered=kill_set(("app", 0, 1)),
        forget=("app",),
    ),
    KillSettleRow(
        "restore refused by the kernel: kept for the next pass, Warning",
        pod(),
        [ktally(found=0, error=errno.EROFS)],
        remembered=kill_set(("app", 0, 1)),
        events=(
            (
                WARNING,
                REASON_KILL_MODE_REFUSED,
                READ_ONLY.replace("could not set", "could not put back")
                .replace(
                    'to 0 ("process": only the process the kernel picks dies)',
                    'to 1 ("container": all its processes die together)',
                )
                .replace(
                    'memory.oom.group=1 ("container": all its processes die together)',
                    'memory.oom.group=0 ("process": only the process the kernel picks dies)',
                ),
            ),
        ),
    ),
    KillSettleRow(
        "dry run: nothing remembered, nothing announced",
        pod(PROCESS),
        [ktally(found=1, written=True)],
        dry_run=True,
    ),
    KillSettleRow(
        "dry run with a restore: nothing forgotten",
        pod(),
        [ktally(found=0, written=True)],
        remembered=kill_set(("app", 0, 1)),
        before=(("app", 0),),
        announced=(("app", 0),),
        dry_run=True,
    ),
]


@pytest.mark.parametrize("row", KILL_SETTLE_ROWS, ids=[r.name for r in KILL_SETTLE_ROWS])
def test_kill_settle(row: KillSettleRow) -> None:
    locate, _ = node({APP: cgroup(APP)})
    kill_modes = decided(row.pod, row.policy).kill_modes
    plan = plan_kill_modes(row.pod, kill_modes, row.remembered, locate)
    assert len(plan.work) == len(row.tallies)
    notes = PodNotes(kill_announced=row.before)
    settled = settle_kill_modes(
        row.pod, plan, row.tallies, row.remembered, notes, dry_run=row.dry_run
    )
    assert [(k.container, k.oom_group, k.before) for k in settled.remember] == list(row.remember)
    assert all(k.pod_uid == UID for k in settled.remember)
    assert settled.forget == tuple((UID, name) for name in row.forget)
    assert [(e.type, e.reason, e.message) for e in settled.events] == list(row.events)
    assert settled.announced == row.announced
    assert notes.kill_announced == row.before  # only read


def test_a_kill_mode_tally_for_every_piece_of_work() -> None:
    """The writer never raises: a pod's kill modes are settled whole or not at all."""
    p = pod({"oomguard.io/oom-kill": "process"}, {"app": APP, "side": SIDE})
    plan = plan_kill_modes(
        p, decided(p).kill_modes, {}, node({APP: cgroup(APP), SIDE: cgroup(SIDE)})[0]
    )
    with pytest.raises(ValueError, match="one tally"):
        settle_kill_modes(p, plan, [ktally(found=1, written=True)], {}, PodNotes(), dry_run=False)


# -- across passes, on a fake v2 node


@pytest.fixture
def fake_v2(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path / "node", CgroupVersion.V2)


def kill_metric(metrics: Metrics, result: str) -> float | None:
    return metrics.registry.get_sample_value("oomguard_kill_mode_changes_total", {"result": result})


def test_kill_mode_applied_announced_once_and_restored(fake_v2: FakeNode, tmp_path: Path) -> None:
    fake_v2.container(APP, values=[KUBELET])
    metrics = Metrics(process_metrics=False)
    r, events = fake_v2.reconciler(tmp_path, metrics=metrics)
    for _ in range(3):
        r.pass_once([pod(PROCESS)])
    assert fake_v2.oom_group(APP) == 0
    assert events == [(NORMAL, REASON_KILL_MODE_APPLIED, APP_TO_PROCESS)]
    assert ScoreStateFile(tmp_path, BOOT).load() == ScoreState(
        BOOT, False, kill_modes=kill_set(("app", 0, 1))
    )
    assert kill_metric(metrics, "applied") == 1

    report = r.pass_once([pod()])
    assert fake_v2.oom_group(APP) == 1 and report.kill_modes_written == 1
    assert events[1:] == [(NORMAL, REASON_KILL_MODE_APPLIED, APP_BACK)]
    assert kill_metric(metrics, "restored") == 1
    assert ScoreStateFile(tmp_path, BOOT).load() == ScoreState(BOOT, False)
    fake_v2.oom_group_file(APP).write_text("0\n")  # ungoverned again: left as it is
    r.pass_once([pod()])
    assert fake_v2.oom_group(APP) == 0 and len(events) == 2


def test_kill_mode_and_score_together(fake_v2: FakeNode) -> None:
    [pid] = fake_v2.container(APP, values=[KUBELET])
    r, events = fake_v2.reconciler()
    r.pass_once([pod({**PROCESS, **SACRIFICE})])
    assert (fake_v2.oom_group(APP), fake_v2.value(pid)) == (0, 1000)
    assert [e[1] for e in events] == [REASON_KILL_MODE_APPLIED, REASON_APPLIED]


def test_a_restarted_container_gets_its_mode_again(fake_v2: FakeNode) -> None:
    """A restart is a new container ID and a new cgroup at the kubelet's 1."""
    fake_v2.container(APP)
    r, events = fake_v2.reconciler()
    r.pass_once([pod(PROCESS)])
    fake_v2.container(SIDE)  # the new cgroup of container "app"
    report = r.pass_once([pod(PROCESS, {"app": SIDE})])
    assert fake_v2.oom_group(SIDE) == 0 and report.kill_modes_written == 1
    assert [e[1] for e in events] == [REASON_KILL_MODE_APPLIED]  # nothing new to say
    r.pass_once([pod(containers={"app": SIDE})])
    assert fake_v2.oom_group(SIDE) == 1  # the value found before the first write


def test_an_agent_restart_still_restores(fake_v2: FakeNode, tmp_path: Path) -> None:
    fake_v2.container(APP)
    first, _ = fake_v2.reconciler(tmp_path)
    first.pass_once([pod(PROCESS)])
    second, events = fake_v2.reconciler(tmp_path)  # the annotation went meanwhile
    second.pass_once([pod()])
    assert fake_v2.oom_group(APP) == 1
    assert events == [(NORMAL, REASON_KILL_MODE_APPLIED, APP_BACK)]


def test_a_deleted_pods_kill_modes_are_forgotten(fake_v2: FakeNode, tmp_path: Path) -> None:
    fake_v2.container(APP)
    r, _ = fake_v2.reconciler(tmp_path)
    r.pass_once([pod(PROCESS)])
    r.pass_once([])
    state = ScoreStateFile(tmp_path, BOOT).load()
    assert state is not None and state.kill_modes == {}


def test_a_kill_mode_dry_run_writes_nothing(fake_v2: FakeNode, tmp_path: Path) -> None:
    fake_v2.container(APP)
    metrics = Metrics(process_metrics=False)
    r, events = fake_v2.reconciler(tmp_path, dry_run=True, metrics=metrics)
    for _ in range(2):
        assert r.pass_once([pod(PROCESS)]).kill_modes_written == 1  # would write
    assert fake_v2.oom_group(APP) == 1 and events == []
    assert kill_metric(metrics, "applied") == 0
    state = ScoreStateFile(tmp_path, BOOT).load()
    assert state is not None and state.kill_modes == {}


def test_a_read_only_mount_is_said_once_counted_and_logged_once(
    fake_v2: FakeNode, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_v2.container(APP)
    fake_v2.container(SIDE, uid=OTHER_UID)

    def read_only(_directory: object, _value: int) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(apply_module, "write_oom_group", read_only)
    metrics = Metrics(process_metrics=False)
    r, events = fake_v2.reconciler(metrics=metrics)
    pods = [pod(PROCESS), pod(PROCESS, {"app": SIDE}, uid=OTHER_UID)]
    with caplog.at_level(logging.WARNING, logger="oomguard.steer.apply"):
        for _ in range(3):
            report = r.pass_once(pods)
            assert report.kill_mode_errors == 2
    assert fake_v2.oom_group(APP) == 1
    assert events == [(WARNING, REASON_KILL_MODE_REFUSED, READ_ONLY)] * 2  # one per pod
    assert kill_metric(metrics, "error") == 6  # every attempt
    assert kill_metric(metrics, "refused") == 0  # the policy refused nothing
    [record] = caplog.records
    assert "read-only" in record.getMessage() and "cgroup.readOnly: false" in record.getMessage()


def test_cgroup_v1_says_unsupported_once_per_pod(fake: FakeNode) -> None:
    fake.container(APP, values=[KUBELET])
    metrics = Metrics(process_metrics=False)
    r, events = fake.reconciler(metrics=metrics)
    for _ in range(3):
        report = r.pass_once([pod(PROCESS)])
        assert report.kill_modes_written == 0
    assert events == [(WARNING, REASON_KILL_MODE_UNSUPPORTED, UNSUPPORTED_MESSAGE)]
    assert kill_metric(metrics, "unsupported") == 1
    assert not list(fake.mount.rglob(OOM_GROUP_FILE))  # nothing written


def test_a_refused_mode_is_counted_once(fake_v2: FakeNode) -> None:
    fake_v2.container(APP)
    metrics = Metrics(process_metrics=False)
    r, events = fake_v2.reconciler(metrics=metrics, policy=PROCESS_ONLY_IN_CI)
    for _ in range(3):
        r.pass_once([pod(PROCESS)])
    assert fake_v2.oom_group(APP) == 1
    [(type_, reason, message)] = events
    assert (type_, reason) == (WARNING, REASON_KILL_MODE_REFUSED)
    assert "does not let namespace default choose kill mode process" in message
    assert kill_metric(metrics, "refused") == 1


def test_a_kill_mode_written_by_another_thread_is_restored_all_the_same(
    fake_v2: FakeNode,
) -> None:
    """The new-container steering may write a new cgroup's file before any pass: what
    it hands over is remembered, so removing the annotation still puts it back."""
    fake_v2.container(APP)
    r, events = fake_v2.reconciler()
    fake_v2.oom_group_file(APP).write_text("0\n")  # written by the other thread
    assert not r.kill_mode_remembered(UID, "app")
    r.kill_mode_written(AppliedKillMode(UID, "app", 0, 1))
    assert r.pass_once([pod(PROCESS)]).kill_modes_written == 0
    assert r.kill_mode_remembered(UID, "app")
    r.pass_once([pod()])
    assert fake_v2.oom_group(APP) == 1
    assert events == [
        (NORMAL, REASON_KILL_MODE_APPLIED, APP_TO_PROCESS),
        (NORMAL, REASON_KILL_MODE_APPLIED, APP_BACK),
    ]


@pytest.mark.parametrize(
    ("was", "written", "kept"),
    [
        (None, (0, 1), (0, 1)),
        ((0, 1), (0, 0), (0, 1)),  # a restart's new cgroup: the first value found stays
        ((1, 0), (0, 1), (0, 0)),
    ],
)
def test_what_is_remembered_of_a_write_elsewhere(
    was: tuple[int, int] | None, written: tuple[int, int], kept: tuple[int, int]
) -> None:
    before = None if was is None else AppliedKillMode(UID, "app", *was)
    result = written_elsewhere(before, AppliedKillMode(UID, "app", *written))
    assert (result.oom_group, result.before) == kept
