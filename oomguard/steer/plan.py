"""What a reconcile pass should do for one pod, decided without touching the node.

The rules of the reconciler live here, as pure functions, so that each has a row in a
table test (`tests/unit/test_reconcile_plan.py`) that needs no root; the reconciler
reads the node, writes /proc (`apply`) and sends what these functions return.

A pod goes through three steps:

1. `decide`: the kubelet's value for each container and the policy's `decide_pod`.
2. `plan_pod`, given what oomguard applied before and where each container's cgroup
   is (a lookup, asked only about the containers that need something): the
   containers whose processes get a value (`ContainerWork`; a *restore* gives the
   kubelet's value back, only to the processes still at oomguard's), the ones to
   forget, the policy's Warning. The writes then follow `needs_write` process by
   process.
3. `settle_pod`, given what the writes did (`ContainerTally`): what to remember as
   applied, what to forget, the kernel's refusals and the "applied" announcement.

The rules:

- Governed (the policy names a value): every process not at it gets it. Containers
  the policy leaves alone are never looked at.
- Restore (no longer governed, but oomguard applied a value): only processes still at
  oomguard's value get the kubelet's back; when that went without refusal or error the
  container is forgotten and a Normal Event says it is back at the kubelet's value. A
  container whose cgroup is gone is forgotten at once (its processes are gone too).
- Announce: a Normal `OOMScoreAdjApplied` when the set of (container, value) applied
  without refusal changes, or something was restored; not on every pass.
- Warnings (`OOMScoreAdjInvalid`, `OOMScoreAdjRefused`): once per distinct message per
  pod (`PodNotes.said`); the kernel's EACCES says CAP_SYS_RESOURCE when the refused
  write lowered the value, CAP_DAC_OVERRIDE otherwise.
- Dry run: the same work and counts, but nothing remembered as applied and no Normal
  Event.
- A pod that needs nothing (no value, nothing to restore, nothing to warn about) is
  forgotten: its notes of what was announced and said go.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from oomguard.k8s.pod_cache import ContainerKind as PodContainerKind
from oomguard.k8s.pod_cache import ContainerView, PodView, normalize_pod_key
from oomguard.say_once import SaidOnce
from oomguard.steer.admin import AdminPolicy
from oomguard.steer.cgroup_index import ContainerCgroup
from oomguard.steer.decision import Decision, Outcome, PodDecision, PodProjection, decide_pod
from oomguard.steer.kubelet_score import (
    ContainerKind,
    ContainerMemory,
    PodMemory,
    QosClass,
    is_node_critical,
    kubelet_oom_score_adj,
)
from oomguard.steer.pass_report import ContainerResult
from oomguard.steer.score_state import AppliedKillMode, AppliedValue, ScoreState, WantedValue

NORMAL = "Normal"
WARNING = "Warning"
REASON_APPLIED = "OOMScoreAdjApplied"
REASON_REFUSED = "OOMScoreAdjRefused"
REASON_INVALID = "OOMScoreAdjInvalid"
RESTORE = "restore"  # ContainerResult.outcome of a container given the kubelet's value back

# Distinct Warning messages remembered per pod (so each is sent once).
MAX_MESSAGES_PER_POD = 64

AppliedKey = tuple[str, str]  # (pod UID, container name)
Applied = Mapping[AppliedKey, AppliedValue]
NamespaceLabels = Callable[[str], Mapping[str, str]]
# (container ID, running) -> its cgroup on this node, or None (`CgroupIndex.locate`)
Locate = Callable[[str, bool], ContainerCgroup | None]


# ---------------------------------------------------------------------------- step 1


_KIND_MAP = {
    PodContainerKind.CONTAINER: ContainerKind.REGULAR,
    PodContainerKind.INIT: ContainerKind.INIT,
    PodContainerKind.EPHEMERAL: ContainerKind.EPHEMERAL,
}


def _memory(container: ContainerView) -> ContainerMemory:
    kind = ContainerKind.SIDECAR if container.is_sidecar else _KIND_MAP[container.kind]
    return ContainerMemory(
        name=container.name,
        kind=kind,
        request_bytes=max(container.memory_request_bytes or 0, 0),
        limit_bytes=max(container.memory_limit_bytes or 0, 0),
    )


def kubelet_scores(pod: PodView, node_memory_bytes: int) -> dict[str, int] | None:
    """The kubelet's oom_score_adj for each container; None when it cannot be known.

    Needs `status.qosClass` (PodView carries no cpu amounts to derive it from; the API
    server sets it at creation, from the pod-level resources when the pod has them).
    The pod-level memory request goes in as well: the kubelet shares what no container
    claims among all of them (a Burstable pod with only a pod-level request of half the
    node gets 500, not 999), and a value computed without it would refuse raises the
    kubelet allows and "restore" a value the kubelet never set.
    """
    try:
        qos = QosClass(pod.qos_class or "")
    except ValueError:
        return None
    memories = [_memory(c) for c in pod.containers if c.name]
    regular = tuple(m for m in memories if m.kind is ContainerKind.REGULAR)
    if not regular:
        return None
    memory = PodMemory(
        qos_class=qos,
        containers=regular,
        init_containers=tuple(
            m for m in memories if m.kind in (ContainerKind.INIT, ContainerKind.SIDECAR)
        ),
        ephemeral_containers=tuple(m for m in memories if m.kind is ContainerKind.EPHEMERAL),
        node_critical=is_node_critical(
            pod.priority, pod.priority_class_name or "", pod.annotations
        ),
        pod_memory_request_bytes=(
            None if pod.pod_memory_request_bytes is None else max(pod.pod_memory_request_bytes, 0)
        ),
    )
    return {m.name: kubelet_oom_score_adj(memory, m.name, node_memory_bytes) for m in memories}


def decide(
    pod: PodView,
    policy: AdminPolicy,
    node_memory_bytes: int,
    namespace_labels: NamespaceLabels | None = None,
) -> PodDecision | None:
    """The policy's decision for every container; None when the kubelet's values
    cannot be known (then the pod is left exactly as it is).

    `namespace_labels` is asked only when a rule of the policy selects namespaces by
    label (it is a lookup in the agent's namespace cache).
    """
    scores = kubelet_scores(pod, node_memory_bytes)
    if scores is None:
        return None
    labels: Mapping[str, str] = {}
    if namespace_labels is not None and policy.uses_namespace_selector:
        labels = namespace_labels(pod.namespace)
    projection = PodProjection(
        namespace=pod.namespace,
        qos_class=QosClass(pod.qos_class or ""),
        kubelet_scores=scores,
        annotations=pod.annotations,
        namespace_labels=labels,
    )
    return decide_pod(projection, policy)


# ---------------------------------------------------------------------------- step 2


# The plan's values are made for every pod on every pass: plain slotted dataclasses,
# not frozen ones (which cost four times as much to make); nothing changes them.


@dataclass(slots=True)
class PodEvent:
    """A Kubernetes Event to send on the pod (and how to log it when it is sent)."""

    type: str
    reason: str
    message: str
    log_level: int = 0  # 0: not logged
    policy_refused: bool = False  # counts as a refusal by the policy in the metrics
    kill_result: str = ""  # counted in oomguard_kill_mode_changes_total when sent


@dataclass(slots=True)
class PodNotes:
    """What the reconciler remembers having told one pod, between passes."""

    announced: tuple[tuple[str, int], ...] = ()  # (container, value) last announced
    kill_announced: tuple[tuple[str, int], ...] = ()  # (container, memory.oom.group) the same
    said: SaidOnce[tuple[str, str]] = field(  # (reason, message) of the Warnings sent
        default_factory=lambda: SaidOnce(MAX_MESSAGES_PER_POD)
    )


@dataclass(slots=True)
class ContainerWork:
    """Bring every process of one container (nested cgroups included) to `target`.

    With `only_from` (a restore), only processes whose value is exactly that change:
    a restore touches only what oomguard set.
    """

    decision: Decision
    container_id: str
    cgroup: ContainerCgroup
    target: int
    only_from: int | None = None


@dataclass(slots=True)
class PodPlan:
    """What to do for one pod before any process is looked at."""

    keep_notes: bool  # False: the pod needs nothing; forget what it was told
    governed: tuple[Decision, ...] = ()
    work: tuple[ContainerWork, ...] = ()
    missing: int = 0  # governed containers whose cgroup is not (yet) on this node
    forget: tuple[AppliedKey, ...] = ()  # restores with nothing left to restore
    events: tuple[PodEvent, ...] = ()  # the policy's Warning, to send before writing


def policy_warning(decisions: Sequence[Decision], warnings: Iterable[str]) -> PodEvent:
    """One Warning for everything the policy found wrong, saying what applies instead."""
    refused = any(d.outcome in (Outcome.REFUSED, Outcome.BOUNDED) for d in decisions)
    applied = ", ".join(
        f"{d.container}={d.target}" + (" (the kubelet's value)" if d.desired is None else "")
        for d in decisions
    )
    return PodEvent(
        WARNING,
        REASON_REFUSED if refused else REASON_INVALID,
        "; ".join(warnings) + f". Applied: {applied}.",
        log_level=logging.WARNING,
        policy_refused=any(d.outcome is Outcome.REFUSED for d in decisions),
    )


def plan_pod(
    pod: PodView,
    pod_decision: PodDecision,
    applied: Applied,
    locate: Locate,
    said: Container[tuple[str, str]] = (),
) -> PodPlan:
    """What to write for one pod, given what oomguard applied before (`applied`),
    where each container's cgroup is (`locate`, asked only for the containers that
    need something, governed ones first) and the Warnings already said (`said`)."""
    uid = pod.uid
    governed = [d for d in pod_decision.decisions if d.desired is not None]
    restoring = [
        d for d in pod_decision.decisions if d.desired is None and (uid, d.container) in applied
    ]
    warnings = pod_decision.all_warnings
    if not governed and not restoring and not warnings:
        return PodPlan(keep_notes=False)
    events: tuple[PodEvent, ...] = ()
    if warnings:
        event = policy_warning(pod_decision.decisions, warnings)
        if (event.reason, event.message) not in said:
            events = (event,)
    if not governed and not restoring:
        return PodPlan(keep_notes=True, events=events)
    work, missing, forget = _locate_work(pod, (*governed, *restoring), applied, locate)
    return PodPlan(True, tuple(governed), work, missing, forget, events)


def _locate_work(
    pod: PodView, decisions: Iterable[Decision], applied: Applied, locate: Locate
) -> tuple[tuple[ContainerWork, ...], int, tuple[AppliedKey, ...]]:
    """The work for the containers found; how many governed ones were not; the restores
    whose cgroup is gone (and their processes with it: nothing left to restore)."""
    uid = pod.uid
    keys = pod_keys(pod)
    work: list[ContainerWork] = []
    missing = 0
    forget: list[AppliedKey] = []
    for decision in decisions:
        container_id, cgroup, gone = locate_container(pod, keys, decision.container, locate)
        if container_id and cgroup is not None:
            work.append(_work(uid, decision, container_id, cgroup, applied))
        elif decision.desired is not None:
            missing += 1
        elif gone:
            forget.append((uid, decision.container))
    return tuple(work), missing, tuple(forget)


def pod_keys(pod: PodView) -> set[str]:
    """What the pod's cgroup directory may be named after: its UID, or (a static pod)
    its config hash."""
    keys = {normalize_pod_key(pod.uid)}
    if pod.config_hash:
        keys.add(normalize_pod_key(pod.config_hash))
    return keys


def locate_container(
    pod: PodView, keys: Container[str], name: str, locate: Locate
) -> tuple[str | None, ContainerCgroup | None, bool]:
    """Container `name`'s ID and cgroup (None when not found), and whether it is gone:
    it has an ID but no cgroup on this node (not just one under another pod's
    directory, a reused ID or a stale status: that is "not found", not "gone")."""
    view = pod.container(name)
    container_id = view.container_id if view is not None else None
    if view is None or not container_id:
        return container_id, None, False
    cgroup = locate(container_id, view.running)
    if cgroup is None:
        return container_id, None, True
    if cgroup.pod_key not in keys:
        return container_id, None, False
    return container_id, cgroup, False


def _work(
    pod_uid: str,
    decision: Decision,
    container_id: str,
    cgroup: ContainerCgroup,
    applied: Applied,
) -> ContainerWork:
    if decision.desired is not None:
        return ContainerWork(decision, container_id, cgroup, decision.desired)
    only_from = applied[(pod_uid, decision.container)].value
    return ContainerWork(decision, container_id, cgroup, decision.kubelet_value, only_from)


def needs_write(current: int, work: ContainerWork) -> bool:
    """Whether a process at `current` gets `work.target` (a restore: only from oomguard's)."""
    if current == work.target:
        return False
    return work.only_from is None or current == work.only_from


def in_container(cgroup: str | None, work: ContainerWork) -> bool:
    """Whether a process whose memory cgroup is `cgroup` lives in the container (its
    cgroup or one nested below): checked before each write, a PID reused by another
    process since `cgroup.procs` was read fails it."""
    prefix = work.cgroup.cgroup
    return cgroup is not None and (cgroup == prefix or cgroup.startswith(prefix + "/"))


# ---------------------------------------------------------------------------- step 3


@dataclass(slots=True)
class ContainerTally:
    """What the writes did in one container (`apply` counts, `settle_pod` reads)."""

    cgroups: int = 0  # cgroup directories found
    processes: int = 0
    written: int = 0  # in a dry run: would be written
    refused: int = 0  # EACCES from the kernel
    errors: int = 0
    refused_lowering: bool = False  # a refused write would have lowered the value


@dataclass(slots=True)
class PodSettlement:
    """What to remember, forget and say once one pod's writes are done."""

    results: tuple[ContainerResult, ...] = ()
    remember: tuple[AppliedValue, ...] = ()  # new or changed: set in the applied memory
    forget: tuple[AppliedKey, ...] = ()  # restores done
    events: tuple[PodEvent, ...] = ()  # the kernel's refusals, then the announcement
    announced: tuple[tuple[str, int], ...] = ()  # for PodNotes.announced


def kernel_refusal(container: str, target: int, lowering: bool) -> PodEvent:
    """The Warning for writes the kernel refused (EACCES), saying which capability."""
    if lowering:
        message = (
            f"oomguard could not set oom_score_adj {target} on container {container}: "
            "the kernel refused (EACCES) because the oomguard agent lacks "
            "CAP_SYS_RESOURCE, which lowering oom_score_adj requires; the processes "
            "keep their current value. Give the agent CAP_SYS_RESOURCE."
        )
    else:
        message = (
            f"oomguard could not set oom_score_adj {target} on container {container}: "
            "permission denied writing /proc/PID/oom_score_adj (the agent needs "
            "CAP_DAC_OVERRIDE to write other users' processes); the processes keep "
            "their current value."
        )
    return PodEvent(WARNING, REASON_REFUSED, message, log_level=logging.ERROR)


def restored_message(decision: Decision) -> str:
    return (
        f"container {decision.container} is back at the kubelet's value "
        f"{decision.kubelet_value} (no oomguard request any more)"
    )


def _result(pod: PodView, work: ContainerWork, tally: ContainerTally) -> ContainerResult:
    decision = work.decision
    return ContainerResult(
        namespace=pod.namespace,
        pod=pod.name,
        pod_uid=pod.uid,
        container=decision.container,
        kubelet_value=decision.kubelet_value,
        desired=work.target,
        outcome=decision.outcome.value if work.only_from is None else RESTORE,
        cgroups=tally.cgroups,
        processes=tally.processes,
        written=tally.written,
        refused=tally.refused,
        container_id=work.container_id,
    )


def settle_pod(
    pod: PodView,
    plan: PodPlan,
    tallies: Sequence[ContainerTally],
    applied: Applied,
    notes: PodNotes,
    *,
    dry_run: bool,
) -> PodSettlement:
    """After the writes (`tallies`, one per `plan.work`): what oomguard now has applied,
    what it forgets, and the Events to send. `notes` is only read.

    Fewer tallies than work: the writes stopped at a failure. What was done is settled
    all the same, but the pod's announcement waits for a pass that gets through it.
    """
    if len(tallies) > len(plan.work):
        raise ValueError("more tallies than work")
    complete = len(tallies) == len(plan.work)
    done = list(zip(plan.work[: len(tallies)], tallies, strict=True))
    results = tuple([_result(pod, work, tally) for work, tally in done])
    events = _kernel_refusals(done, notes.said)
    if dry_run:  # nothing was written: nothing to remember, forget or announce
        return PodSettlement(results, events=tuple(events), announced=notes.announced)
    # Governed and written without refusal; restores done without refusal or error.
    now = [
        (w.decision.container, w.target) for w, t in done if w.only_from is None and not t.refused
    ]
    restored = [
        w.decision for w, t in done if w.only_from is not None and not t.refused and not t.errors
    ]
    announced = tuple(sorted(now)) if complete else notes.announced
    if complete and (announced != notes.announced or restored):
        parts = [d.reason for d in plan.governed if (d.container, d.desired) in now]
        parts += [restored_message(d) for d in restored]
        if parts:
            events.append(PodEvent(NORMAL, REASON_APPLIED, "oom_score_adj: " + "; ".join(parts)))
    return PodSettlement(
        results,
        _remember(pod.uid, done, applied),
        tuple([(pod.uid, d.container) for d in restored]),
        tuple(events),
        announced,
    )


def _kernel_refusals(
    done: Iterable[tuple[ContainerWork, ContainerTally]], said: Container[tuple[str, str]]
) -> list[PodEvent]:
    events: list[PodEvent] = []
    for work, tally in done:
        if tally.refused:
            event = kernel_refusal(work.decision.container, work.target, tally.refused_lowering)
            if (event.reason, event.message) not in said and event not in events:
                events.append(event)
    return events


def _remember(
    uid: str, done: Iterable[tuple[ContainerWork, ContainerTally]], applied: Applied
) -> tuple[AppliedValue, ...]:
    """The governed containers whose applied value is new or changed, refused or not
    (the next pass tries again). Only on change: an unchanged entry stays the same
    object, which keeps the state file's change check cheap."""
    remember = []
    for work, _ in done:
        decision = work.decision
        was = applied.get((uid, decision.container))
        if work.only_from is None and (
            was is None or was.value != work.target or was.kubelet_value != decision.kubelet_value
        ):
            remember.append(
                AppliedValue(uid, decision.container, work.target, decision.kubelet_value)
            )
    return tuple(remember)


# ---------------------------------------------------------------------------- the state file


StateSignature = tuple[
    bool,
    dict[AppliedKey, AppliedValue],
    dict[str, tuple[str, str, str, str, int, str]],
    dict[AppliedKey, AppliedKillMode],
]


def state_signature(
    dry_run: bool,
    applied: Applied,
    results: Iterable[ContainerResult],
    kill_modes: Mapping[AppliedKey, AppliedKillMode] | None = None,
) -> StateSignature:
    """What the state file should say, as plain tuples (cheap to compare every pass):
    what oomguard applied, per container ID the value wanted for it, and the kill
    modes it set. A restore that is done leaves the container ungoverned: nothing
    wanted."""
    wanted = {
        r.container_id: (r.namespace, r.pod, r.pod_uid, r.container, r.desired, r.outcome)
        for r in results
        if r.container_id and (r.outcome != RESTORE or (r.pod_uid, r.container) in applied)
    }
    return (dry_run, dict(applied), wanted, dict(kill_modes or {}))


def score_state(signature: StateSignature, boot_id: str | None) -> ScoreState:
    """The state file's contents for a signature."""
    dry_run, applied, wanted, kill_modes = signature
    return ScoreState(
        boot_id=boot_id,
        dry_run=dry_run,
        applied=applied,
        wanted={cid: WantedValue(cid, *fields) for cid, fields in wanted.items()},
        kill_modes=kill_modes,
    )
