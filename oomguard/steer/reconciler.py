"""Keep every process of every governed container at the oom_score_adj the policy wants,
and every container cgroup at the kill mode it asks for.

One `Reconciler.pass_once(pods)` looks at this node's pods and, for each one:

1. asks the policy what each container should have (`plan.decide`, which calls
   `decision.decide_pod` with the kubelet's values);
2. finds the cgroups of the containers that need anything (`cgroup_index`: kept
   between passes, rebuilt only when a running container's ID is not in it) and plans
   the writes (`plan.plan_pod`): a governed container's processes get the policy's
   value; a container that stopped being governed gets the kubelet's value back, on
   the processes that still carry oomguard's, once;
3. writes, race-safe through pinned /proc directories (`apply.ScoreWriter`);
4. settles (`plan.settle_pod`): what oomguard now has applied, what it forgets, and
   the Events to send.

Before the processes, the pod's kill modes go through the same steps, one file per
container cgroup (cgroup v2's memory.oom.group; on v1 nothing is looked at):
`kill_steering.KillModeSteering` plans (`kill_plan`), writes (`apply.KillModeWriter`)
and settles them, and remembers what it set.

The rules live in `plan` and `kill_plan` (pure, table-tested) and the writes in
`apply`; this module holds what lasts between passes: what oomguard applied and which
kill modes it set, with the value found before (`score_state` keeps both across
restarts with a `state_dir`, written only when it changes, and tells `oomguard top`
what each governed container should have), and what each pod was told.

Events go through `on_event(pod, type, reason, message)`; this module never talks to
the API itself:
    Normal  OOMScoreAdjApplied  the values applied to the pod changed (including the
                                kubelet's value put back after an annotation went away)
    Warning OOMScoreAdjInvalid  an annotation is invalid (ignored; says what applies)
    Warning OOMScoreAdjRefused  the policy refused or bounded a request, or the kernel
                                refused a write (the agent lacks CAP_SYS_RESOURCE)
    Normal  OOMKillModeApplied  the kill modes in force in the pod changed (including a
                                memory.oom.group put back after an annotation went away)
    Warning OOMKillModeRefused  an oom-kill value is invalid, the policy does not let
                                the namespace choose that mode, or the write failed (a
                                read-only cgroup mount: the chart needs
                                cgroup.readOnly: false)
    Warning OOMKillModeUnsupported  the pod asks for a kill mode on cgroup v1
Each Warning is sent once per distinct message per pod; a Normal one only when the
pod's applied values change, not on every pass. A dry run computes and counts
everything (`written` then means "would write"), writes nothing and sends no "applied"
Event.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.k8s.pod_cache import PodView
from oomguard.metrics import KillModeResult, Metrics, ScoreAdjustmentResult
from oomguard.state.files import StateWrites
from oomguard.steer.admin import AdminPolicy
from oomguard.steer.apply import ScoreWriter
from oomguard.steer.cgroup_index import DEFAULT_RESCAN_INTERVAL_S, CgroupIndex
from oomguard.steer.decision import PodDecision
from oomguard.steer.kill_plan import (
    REASON_KILL_MODE_APPLIED,
    REASON_KILL_MODE_REFUSED,
    REASON_KILL_MODE_UNSUPPORTED,
)
from oomguard.steer.kill_steering import KillModeSteering
from oomguard.steer.pass_report import ContainerResult, PassReport
from oomguard.steer.plan import (
    NORMAL,
    REASON_APPLIED,
    REASON_INVALID,
    REASON_REFUSED,
    WARNING,
    AppliedKey,
    ContainerTally,
    PodEvent,
    PodNotes,
    PodPlan,
    StateSignature,
    decide,
    kubelet_scores,
    plan_pod,
    score_state,
    settle_pod,
    state_signature,
)
from oomguard.steer.score_state import AppliedKillMode, AppliedValue, ScoreStateFile

__all__ = [
    "DEFAULT_RESCAN_INTERVAL_S",
    "NORMAL",
    "REASON_APPLIED",
    "REASON_INVALID",
    "REASON_KILL_MODE_APPLIED",
    "REASON_KILL_MODE_REFUSED",
    "REASON_KILL_MODE_UNSUPPORTED",
    "REASON_REFUSED",
    "WARNING",
    "ContainerResult",
    "EventSink",
    "PassReport",
    "PolicyProvider",
    "Reconciler",
    "kubelet_scores",
    "read_mem_total_bytes",
]

log = logging.getLogger(__name__)

EventSink = Callable[[PodView, str, str, str], None]


class PolicyProvider(Protocol):
    """Anything with the admin policy in force (`policy_file.PolicySource`)."""

    def current(self) -> AdminPolicy: ...


def read_mem_total_bytes(path: str = "/proc/meminfo") -> int:
    """The node's memory capacity as cAdvisor reports it to the kubelet (MemTotal)."""
    with open(path, encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                fields = line.split()
                return int(fields[1]) * 1024
    raise ValueError(f"{path} has no MemTotal line")


@dataclass(frozen=True, slots=True)
class _Decided:
    pod: PodView
    policy: AdminPolicy
    labels: Mapping[str, str] | None  # None: the policy does not look at them
    decision: PodDecision | None


@dataclass(frozen=True, slots=True)
class _Labels:
    """One namespace's labels, already asked, as `decide` asks for them."""

    labels: Mapping[str, str]

    def __call__(self, namespace: str) -> Mapping[str, str]:
        return self.labels


class Reconciler:
    """Applies the policy's oom_score_adj to governed containers' processes.

    Not thread-safe: call `pass_once` from one thread (the agent's reconcile loop).
    """

    def __init__(
        self,
        hierarchy: MemoryHierarchy,
        cgroup_root: str | os.PathLike[str],
        *,
        node_memory_bytes: int | None = None,
        dry_run: bool = False,
        policy_source: PolicyProvider,
        on_event: EventSink | None = None,
        metrics: Metrics | None = None,
        namespace_labels: Callable[[str], Mapping[str, str]] | None = None,
        rescan_interval_s: float = DEFAULT_RESCAN_INTERVAL_S,
        proc_root: str = "/proc",
        clock: Callable[[], float] = time.monotonic,
        state_dir: str | os.PathLike[str] | None = None,
        boot_id: str | None = None,
        state_writes: StateWrites | None = None,
    ) -> None:
        self.hierarchy = hierarchy
        self.cgroup_root = Path(cgroup_root)
        self.node_memory_bytes = (
            node_memory_bytes if node_memory_bytes is not None else read_mem_total_bytes()
        )
        if self.node_memory_bytes <= 0:
            raise ValueError("node_memory_bytes must be positive")
        self.dry_run = dry_run
        self.policy_source = policy_source
        # The policy the last pass used (the defaults before the first one).
        self._last_policy = AdminPolicy()
        self._policy_failing = False  # said once until a pass gets a policy again
        self._on_event = on_event
        self._metrics = metrics
        self._namespace_labels = namespace_labels
        self._index = CgroupIndex(
            hierarchy, self.cgroup_root, rescan_interval_s=rescan_interval_s, clock=clock
        )
        v1 = hierarchy.version is CgroupVersion.V1
        self._writer = ScoreWriter(v1=v1, dry_run=dry_run, proc_root=proc_root, metrics=metrics)
        self._kill_modes = KillModeSteering(v1=v1, dry_run=dry_run, metrics=metrics)
        # (pod UID, container name) -> the value oomguard set on its processes.
        self._applied: dict[AppliedKey, AppliedValue] = {}
        self._pods: dict[str, PodNotes] = {}
        # pod UID -> the last decision and what it was made from (`_decide`).
        self._decisions: dict[str, _Decided] = {}
        self._ask_labels = False  # this pass's policy selects namespaces by label
        # Whether that policy (the same object until the file changes) does: asked once
        # per policy, as walking its rules costs more than the rest of an idle pass.
        self._selector_policy: AdminPolicy | None = None
        self._policy_selects = False
        # Pods whose kept decision asks for nothing: see `_quiet_pod`.
        self._quiet: set[str] = set()
        self._state_file: ScoreStateFile | None = None
        self._saved_signature: StateSignature | None = None  # what was last saved
        if state_dir is not None:
            self._state_file = ScoreStateFile(Path(state_dir), boot_id, state_writes)
            loaded = self._state_file.load()
            if loaded is not None:
                self._applied.update(loaded.applied)
                self._kill_modes.resume(loaded.kill_modes)

    @property
    def rescan_interval_s(self) -> float:
        return self._index.rescan_interval_s

    def kill_mode_remembered(self, pod_uid: str, container: str) -> bool:
        """Whether oomguard set this container's kill mode before and remembers the value
        it found (so a new cgroup of it may be given the mode at once). Thread-safe."""
        return (pod_uid, container) in self._kill_modes

    def kill_mode_written(self, value: AppliedKillMode) -> None:
        """Another thread wrote a container's memory.oom.group (`value.before`: what it
        found there, after the runtime had set the kubelet's value: a new cgroup holds
        the kernel's 0 until then). Thread-safe; the next pass takes it over, so that a
        later removal of the annotation puts `before` back. Without this, a container
        whose first write was not the reconciler's would keep the mode after removal."""
        self._kill_modes.written_elsewhere(value)

    def rescan(self) -> int:
        """Rebuild the container-ID -> cgroup index; returns how many containers it holds."""
        return self._index.rescan()

    # -- the pass ---------------------------------------------------------------------

    def pass_once(self, pods: Iterable[PodView]) -> PassReport:
        """One reconcile pass over this node's pods (all of them: the ones missing from
        `pods` are forgotten)."""
        started = time.perf_counter()
        report = PassReport(dry_run=self.dry_run)
        policy = self._policy_in_force(report)
        seen: set[str] = set()
        self._index.begin_pass()
        self._kill_modes.begin_pass()
        # Asked once a pass, not per pod: it walks the policy's rules.
        if policy is not self._selector_policy:  # kept until the file changes
            self._selector_policy = policy
            self._policy_selects = policy.uses_namespace_selector
        self._ask_labels = self._namespace_labels is not None and self._policy_selects
        for pod in pods:
            seen.add(pod.uid)
            try:
                self._pod(pod, policy, report)
            except Exception:  # one odd pod must never stop the others
                report.errors += 1
                log.exception("reconciling pod %s/%s failed", pod.namespace, pod.name)
        for uid in [uid for uid in self._pods if uid not in seen]:
            del self._pods[uid]
        for uid in [uid for uid in self._decisions if uid not in seen]:
            del self._decisions[uid]
        self._quiet &= seen
        for key in [key for key in self._applied if key[0] not in seen]:
            del self._applied[key]
        self._kill_modes.forget_pods_except(seen)
        report.index_rescans = self._index.pass_rescans
        self._index.end_pass()
        if self._state_file is not None:
            self._save_state(report)
        report.duration_s = time.perf_counter() - started
        return report

    def _policy_in_force(self, report: PassReport) -> AdminPolicy:
        """The provider's policy; if asking fails, the one the last pass used.

        `PolicySource.current()` turns any bad file into a kept policy and never raises;
        this is the last resort for any provider, so that nothing about the policy can
        stop the pass (the agent's main loop): logged once until a pass succeeds.
        """
        try:
            policy = self.policy_source.current()
        except Exception:
            report.errors += 1
            if not self._policy_failing:
                log.exception("the admin policy could not be read; the last one used stays")
            self._policy_failing = True
            return self._last_policy
        self._policy_failing = False
        self._last_policy = policy
        return policy

    def _decide(self, pod: PodView, policy: AdminPolicy) -> PodDecision | None:
        """`plan.decide`, made again only when what it depends on changed.

        The decision is a pure function of the pod, the policy and (when the policy
        selects namespaces by label) the namespace's labels; the node's memory is
        fixed. The pod cache replaces a PodView on every change and the policy source
        keeps one AdminPolicy until the file changes, so identity says "unchanged".
        Deciding is most of a pass's CPU (kubelet scores, annotation parsing, the
        policy's rules for every container), and a pass runs every few seconds over
        every pod of the node while almost none of them changed.
        """
        labels: Mapping[str, str] | None = None
        if self._ask_labels:
            assert self._namespace_labels is not None
            labels = self._namespace_labels(pod.namespace)
        memo = self._decisions.get(pod.uid)
        if memo is not None and memo.pod is pod and memo.policy is policy and memo.labels == labels:
            return memo.decision
        decision = decide(
            pod, policy, self.node_memory_bytes, None if labels is None else _Labels(labels)
        )
        self._decisions[pod.uid] = _Decided(pod, policy, labels, decision)
        self._quiet.discard(pod.uid)
        return decision

    def _quiet_pod(self, pod: PodView, decided: PodDecision) -> bool:
        """Whether planning this pod again would find nothing to do, without planning.

        A pod is quiet once its plan found nothing (no governed container, no kill mode
        asked for, no warning: the kept decision says so and stays the same) and
        oomguard had set nothing on it to put back. Only the second part can change
        while the decision stays: a value or kill mode remembered for one of its
        containers (the new-container steering hands kill modes over), so that is
        looked up; the rest of the plan is skipped. Most pods of a node are quiet."""
        if pod.uid not in self._quiet:
            return False
        uid = pod.uid
        return not any((uid, d.container) in self._applied for d in decided.decisions) and not any(
            (uid, d.container) in self._kill_modes for d in decided.kill_modes
        )

    def _pod(self, pod: PodView, policy: AdminPolicy, report: PassReport) -> None:
        """Plan, write, settle: one pod's kill modes, then its processes."""
        decided = self._decide(pod, policy)
        if decided is None or self._quiet_pod(pod, decided):
            return
        notes = self._pods.get(pod.uid)
        said = notes.said if notes else ()
        locate = self._index.locate
        plan = plan_pod(pod, decided, self._applied, locate, said)
        kill = self._kill_modes.plan(pod, decided.kill_modes, locate, said)
        if not plan.keep_notes and not kill.keep_notes:
            self._pods.pop(pod.uid, None)
            self._quiet.add(pod.uid)
            return
        self._quiet.discard(pod.uid)
        if notes is None:
            notes = self._pods[pod.uid] = PodNotes()
        self._send(pod, notes, self._kill_modes.apply(pod, kill, notes, report))
        if plan.events:
            self._send(pod, notes, plan.events)
        report.pods_governed += bool(plan.governed)
        report.containers_missing += plan.missing
        for key in plan.forget:
            self._applied.pop(key, None)
        tallies: list[ContainerTally] = []
        try:
            for work in plan.work:
                tallies.append(self._writer.apply(work, report))
        finally:  # also after a failure: what was written before it is remembered
            self._settle(pod, plan, tallies, notes, report)

    def _settle(
        self,
        pod: PodView,
        plan: PodPlan,
        tallies: list[ContainerTally],
        notes: PodNotes,
        report: PassReport,
    ) -> None:
        settled = settle_pod(pod, plan, tallies, self._applied, notes, dry_run=self.dry_run)
        for result in settled.results:
            report.containers[result.key] = result
        for value in settled.remember:
            self._applied[(value.pod_uid, value.container)] = value
        for key in settled.forget:
            del self._applied[key]
        notes.announced = settled.announced
        if settled.events:
            self._send(pod, notes, settled.events)

    # -- the state file ---------------------------------------------------------------

    def _save_state(self, report: PassReport) -> None:
        """Persist what was set and what is wanted, if that changed (never raises).

        Every pass compares plain tuples with the last state saved (tens of
        microseconds for hundreds of containers); only a change builds and writes it.
        """
        state_file = self._state_file
        assert state_file is not None
        try:
            signature = state_signature(
                self.dry_run,
                self._applied,
                report.containers.values(),
                self._kill_modes.remembered,
            )
            if signature == self._saved_signature:
                return
            state = score_state(signature, state_file.boot_id)
            state_file.save(state)
            if state_file.saved == state:  # else the write failed: try again next pass
                self._saved_signature = signature
        except Exception:  # the state is a convenience; the pass itself is done
            log.exception("could not save the reconciler's state")

    # -- reporting --------------------------------------------------------------------

    def _send(self, pod: PodView, notes: PodNotes, events: Iterable[PodEvent]) -> None:
        """Send a pod's Events; a Warning only the first time its message comes up."""
        for event in events:
            if event.type == WARNING and not notes.said.first((event.reason, event.message)):
                continue
            self._emit(pod, event.type, event.reason, event.message)
            if event.log_level:
                log.log(event.log_level, "pod %s/%s: %s", pod.namespace, pod.name, event.message)
            if self._metrics is None:
                continue
            if event.policy_refused:
                self._metrics.score_adjustment(ScoreAdjustmentResult.REFUSED)
            if event.kill_result:
                self._metrics.kill_mode_change(KillModeResult(event.kill_result))

    def _emit(self, pod: PodView, type_: str, reason: str, message: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(pod, type_, reason, message)
        except Exception:  # a failing sink must not stop the pass
            log.exception("could not emit %s Event on pod %s/%s", reason, pod.namespace, pod.name)
