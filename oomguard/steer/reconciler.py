"""Keep every process of every governed container at the oom_score_adj the policy wants.

One `Reconciler.pass_once(pods)` looks at this node's pods, asks the policy
(`policy.decide_pod`) what each container should have, and brings the processes in
line:

- A container is *governed* when the policy names a value for it (an annotation or an
  admin default). Containers the policy leaves alone are never looked at, so an
  unannotated pod's processes keep exactly what the kubelet gave them.
- Container cgroups are found by container ID in an index of the cgroup tree below
  `cgroup_root` (built with `parse_cgroup_path`, kept between passes, rebuilt only
  when a running container's ID is not in it). A container's processes are those in
  its cgroup and in every cgroup nested below it.
- Each process is pinned with a `ProcHandle` (an open /proc/PID directory) and its
  cgroup is read again *through that handle* before anything is written: a PID that
  exited and was reused by another process since `cgroup.procs` was read then either
  fails (gone) or is seen to live elsewhere, and is skipped. Only values that differ
  are written.
- When a container stops being governed (its annotation was removed), the processes
  that still carry the value oomguard wrote get the kubelet's value back, once; then
  the container is forgotten and left alone again.
- With a `state_dir`, which containers were set to what survives an agent restart
  (`score_state`): an annotation removed while the agent was down is restored on the
  first pass, and a pod deleted meanwhile is forgotten. The same file tells
  `oomguard top` what each governed container should have. It is written only when
  that changes.
- A write the kernel refuses (EACCES: lowering oom_score_adj needs CAP_SYS_RESOURCE)
  is counted, logged once and reported once on the pod as a Warning Event; it never
  stops the pass, and never affects another pod.
- Dry run: everything is computed and counted (`written` then means "would write"),
  nothing is written, and no "applied" Event is sent.

Events go through `on_event(pod, type, reason, message)`; this module never talks to
the API itself:
    Normal  OOMScoreAdjApplied  the values applied to the pod changed (including the
                                kubelet's value put back after an annotation went away)
    Warning OOMScoreAdjInvalid  an annotation is invalid (ignored; says what applies)
    Warning OOMScoreAdjRefused  the policy refused or bounded a request, or the kernel
                                refused a write (the agent lacks CAP_SYS_RESOURCE)
Each Warning is sent once per distinct message per pod; a Normal one only when the
pod's applied values change, not on every pass.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.cgroups.path import memory_cgroup, parse_cgroup_path
from oomguard.k8s.pod_cache import ContainerKind as PodContainerKind
from oomguard.k8s.pod_cache import ContainerView, PodView, normalize_pod_key
from oomguard.metrics import Metrics, ScoreAdjustmentResult
from oomguard.proc.handle import ProcHandle, read_cgroup_procs
from oomguard.say_once import SaidOnce
from oomguard.state.files import StateWrites
from oomguard.steer.admin import AdminPolicy
from oomguard.steer.decision import Decision, Outcome, PodProjection, decide_pod
from oomguard.steer.kubelet_score import (
    ContainerKind,
    ContainerMemory,
    PodMemory,
    QosClass,
    is_node_critical,
    kubelet_oom_score_adj,
)
from oomguard.steer.score_state import AppliedValue, ScoreState, ScoreStateFile, WantedValue

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"
REASON_APPLIED = "OOMScoreAdjApplied"
REASON_REFUSED = "OOMScoreAdjRefused"
REASON_INVALID = "OOMScoreAdjInvalid"

# A running container whose cgroup was not found triggers a rescan of the tree at
# once the first time, then at most this often (it may simply not exist yet).
DEFAULT_RESCAN_INTERVAL_S = 10.0
# Distinct Warning messages remembered per pod (so each is sent once).
_MAX_MESSAGES_PER_POD = 64
_CONTAINER_ID_CHARS = 64

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


# ---------------------------------------------------------------------------- reports


@dataclass(frozen=True, slots=True)
class ContainerResult:
    """What one pass did for one governed (or restored) container."""

    namespace: str
    pod: str
    pod_uid: str
    container: str
    kubelet_value: int
    desired: int  # the value its processes should have (the kubelet's when restoring)
    outcome: str  # the policy's Outcome, or "restore"
    cgroups: int  # cgroup directories found (0: not on this node yet, or gone)
    processes: int = 0
    written: int = 0  # in a dry run: would be written
    refused: int = 0
    container_id: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"


@dataclass(slots=True)
class PassReport:
    """Counts for one pass over the node's pods."""

    dry_run: bool
    processes_seen: int = 0
    already_right: int = 0
    written: int = 0  # in a dry run: would be written
    gone: int = 0  # exited (or moved to another cgroup) between listing and writing
    refused: int = 0  # EACCES from the kernel (no CAP_SYS_RESOURCE to lower)
    errors: int = 0  # any other failure reading or writing a process
    pods_governed: int = 0
    containers_missing: int = 0  # governed containers whose cgroup was not found
    index_rescans: int = 0
    duration_s: float = 0.0
    containers: dict[str, ContainerResult] = field(default_factory=dict)

    @property
    def desired(self) -> dict[str, int]:
        """namespace/pod/container -> the value its processes should have."""
        return {key: result.desired for key, result in self.containers.items()}


# ---------------------------------------------------------------------------- helpers


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


def _looks_like_container_dir(name: str) -> bool:
    """Cheap pre-filter before the full parser: the name holds a 64-hex container ID."""
    if name.endswith(".scope"):
        name = name[: -len(".scope")]
    return len(name) >= _CONTAINER_ID_CHARS and all(
        c in "0123456789abcdef" for c in name[-_CONTAINER_ID_CHARS:]
    )


@dataclass(slots=True)
class _Indexed:
    cgroup: str  # the kernel's name for it (as /proc/PID/cgroup prints it)
    directory: str  # where it is in the file system
    pod_key: str  # normalize_pod_key of the pod UID (or config hash) in the path


@dataclass(slots=True)
class _PodState:
    announced: tuple[tuple[str, int], ...] = ()  # (container, value) last announced
    messages: SaidOnce[tuple[str, str]] = field(  # Warnings sent
        default_factory=lambda: SaidOnce(_MAX_MESSAGES_PER_POD)
    )


@dataclass(slots=True)
class _Tally:
    processes: int = 0
    written: int = 0
    refused: int = 0
    errors: int = 0
    refused_lowering: bool = False


# ---------------------------------------------------------------------------- reconciler


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
        self.rescan_interval_s = rescan_interval_s
        self._proc_root = proc_root
        self._clock = clock
        self._v1 = hierarchy.version is CgroupVersion.V1
        self._index: dict[str, _Indexed] = {}
        self._indexed_at: float | None = None
        self._known_missing: set[str] = set()
        # (pod UID, container name) -> the value oomguard set on its processes.
        self._applied: dict[tuple[str, str], AppliedValue] = {}
        self._pods: dict[str, _PodState] = {}
        self._logged: SaidOnce[str] = SaidOnce(1024)
        self._state_file: ScoreStateFile | None = None
        self._saved_signature: object = None  # what _save_state last saw saved
        if state_dir is not None:
            self._state_file = ScoreStateFile(Path(state_dir), boot_id, state_writes)
            loaded = self._state_file.load()
            if loaded is not None:
                self._applied.update(loaded.applied)

    # -- the cgroup index -------------------------------------------------------------

    def rescan(self) -> int:
        """Rebuild the container-ID -> cgroup index; returns how many containers it holds."""
        index: dict[str, _Indexed] = {}
        root = str(self.cgroup_root)
        stack = [root]
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as entries:
                    subdirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in subdirs:
                if _looks_like_container_dir(entry.name):
                    try:
                        cgroup = self.hierarchy.cgroup_of(entry.path)
                    except ValueError:
                        continue
                    ident = parse_cgroup_path(cgroup)
                    if (
                        ident.is_container
                        and ident.container_id
                        and ident.container_path == cgroup
                        and ident.pod_uid
                    ):
                        index[ident.container_id] = _Indexed(
                            cgroup, entry.path, normalize_pod_key(ident.pod_uid)
                        )
                        continue  # nested cgroups are walked on each pass instead
                stack.append(entry.path)
        self._index = index
        self._indexed_at = self._clock()
        return len(index)

    def _find(self, container_id: str, report: PassReport) -> _Indexed | None:
        hit = self._index.get(container_id)
        if hit is not None:
            if os.path.isdir(hit.directory):
                return hit
            del self._index[container_id]
        now = self._clock()
        fresh = container_id not in self._known_missing
        stale = self._indexed_at is None or now - self._indexed_at >= self.rescan_interval_s
        if (fresh and report.index_rescans == 0) or stale:
            self.rescan()
            report.index_rescans += 1
        hit = self._index.get(container_id)
        if hit is None:
            self._known_missing.add(container_id)
        else:
            self._known_missing.discard(container_id)
        return hit

    # -- the pass ---------------------------------------------------------------------

    def pass_once(self, pods: Iterable[PodView]) -> PassReport:
        """One reconcile pass over this node's pods (all of them: the ones missing from
        `pods` are forgotten)."""
        started = time.perf_counter()
        report = PassReport(dry_run=self.dry_run)
        policy = self._policy_in_force(report)
        seen: set[str] = set()
        for pod in pods:
            seen.add(pod.uid)
            try:
                self._pod(pod, policy, report)
            except Exception:  # one odd pod must never stop the others
                report.errors += 1
                log.exception("reconciling pod %s/%s failed", pod.namespace, pod.name)
        for uid in [uid for uid in self._pods if uid not in seen]:
            del self._pods[uid]
        for key in [key for key in self._applied if key[0] not in seen]:
            del self._applied[key]
        if len(self._known_missing) > 4096:
            self._known_missing.clear()
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

    def _pod(self, pod: PodView, policy: AdminPolicy, report: PassReport) -> None:
        scores = kubelet_scores(pod, self.node_memory_bytes)
        if scores is None:
            return
        labels: Mapping[str, str] = {}
        if self._namespace_labels is not None and policy.uses_namespace_selector:
            labels = self._namespace_labels(pod.namespace)  # read only when a rule uses them
        projection = PodProjection(
            namespace=pod.namespace,
            qos_class=QosClass(pod.qos_class or ""),
            kubelet_scores=scores,
            annotations=pod.annotations,
            namespace_labels=labels,
        )
        pod_decision = decide_pod(projection, policy)
        governed = [d for d in pod_decision.decisions if d.desired is not None]
        restoring = [
            d
            for d in pod_decision.decisions
            if d.desired is None and (pod.uid, d.container) in self._applied
        ]
        warnings = pod_decision.all_warnings
        if not governed and not restoring and not warnings:
            self._pods.pop(pod.uid, None)
            return
        state = self._pods.setdefault(pod.uid, _PodState())
        if warnings:
            self._policy_warning(pod, state, pod_decision.decisions, warnings)
        if not governed and not restoring:
            return
        if governed:
            report.pods_governed += 1

        pod_keys = {normalize_pod_key(pod.uid)}
        if pod.config_hash:
            pod_keys.add(normalize_pod_key(pod.config_hash))
        announce: list[tuple[str, int]] = []
        restored: list[Decision] = []
        for decision in (*governed, *restoring):
            view = pod.container(decision.container)
            if view is None or not view.container_id:
                if decision.desired is not None:
                    report.containers_missing += 1
                continue
            found = self._find(view.container_id, report) if view.running else None
            if found is None and not view.running:
                found = self._index.get(view.container_id)
            if found is None or found.pod_key not in pod_keys:
                if decision.desired is not None:
                    report.containers_missing += 1
                elif found is None:
                    # Its processes are gone with the cgroup: nothing left to restore.
                    self._applied.pop((pod.uid, decision.container), None)
                continue
            key = (pod.uid, decision.container)
            if decision.desired is not None:
                target = decision.desired
                only_from: int | None = None
            else:
                target = decision.kubelet_value
                only_from = self._applied[key].value
            cgroups, tally = self._container(found, target, only_from, report)
            report.containers[f"{pod.namespace}/{pod.name}/{decision.container}"] = ContainerResult(
                namespace=pod.namespace,
                pod=pod.name,
                pod_uid=pod.uid,
                container=decision.container,
                kubelet_value=decision.kubelet_value,
                desired=target,
                outcome=decision.outcome.value if only_from is None else "restore",
                cgroups=cgroups,
                processes=tally.processes,
                written=tally.written,
                refused=tally.refused,
                container_id=view.container_id,
            )
            if tally.refused:
                self._kernel_refusal(pod, state, decision.container, target, tally)
            if self.dry_run:
                continue
            if only_from is None:
                # Replaced only on change: an unchanged entry stays the same object,
                # which keeps the state file's change check cheap.
                was = self._applied.get(key)
                if (
                    was is None
                    or was.value != target
                    or was.kubelet_value != decision.kubelet_value
                ):
                    self._applied[key] = AppliedValue(
                        pod.uid, decision.container, target, decision.kubelet_value
                    )
                if not tally.refused:
                    announce.append((decision.container, target))
            elif not tally.refused and not tally.errors:
                del self._applied[key]
                restored.append(decision)

        if self.dry_run:
            return
        signature = tuple(sorted(announce))
        if signature != state.announced or restored:
            state.announced = signature
            parts = [d.reason for d in governed if (d.container, d.desired) in announce]
            parts += [
                f"container {d.container} is back at the kubelet's value {d.kubelet_value} "
                "(no oomguard request any more)"
                for d in restored
            ]
            if parts:
                self._emit(pod, NORMAL, REASON_APPLIED, "oom_score_adj: " + "; ".join(parts))

    def _container(
        self, found: _Indexed, target: int, only_from: int | None, report: PassReport
    ) -> tuple[int, _Tally]:
        """Bring every process of one container (nested cgroups included) to `target`.

        With `only_from`, only processes whose value is exactly that are changed (a
        restore touches only what oomguard set).
        """
        tally = _Tally()
        directories = [found.directory]
        stack = [found.directory]
        while stack:
            try:
                with os.scandir(stack.pop()) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            directories.append(entry.path)
                            stack.append(entry.path)
            except (FileNotFoundError, NotADirectoryError):
                continue
        prefix = found.cgroup
        prefix_slash = prefix + "/"
        v1 = self._v1
        write = not self.dry_run
        for directory in directories:
            for pid in read_cgroup_procs(directory):
                tally.processes += 1
                report.processes_seen += 1
                handle = ProcHandle.open(pid, self._proc_root)
                if handle is None:
                    report.gone += 1
                    continue
                try:
                    # The value first: most passes find it right, and a value that is
                    # right needs no proof of whose process this is. Before any write,
                    # the cgroup is read again through the pinned directory.
                    current = handle.oom_score_adj()
                    if current is None:
                        report.gone += 1
                        continue
                    if current == target or (only_from is not None and current != only_from):
                        report.already_right += 1
                        continue
                    text = handle.cgroup()
                    path = None if text is None else memory_cgroup(text, v1)
                    if path is None or (path != prefix and not path.startswith(prefix_slash)):
                        report.gone += 1  # exited, or the PID now names a stranger
                        continue
                    if not write:
                        report.written += 1
                        tally.written += 1
                        continue
                    try:
                        if handle.set_oom_score_adj(target):
                            report.written += 1
                            tally.written += 1
                            self._count(ScoreAdjustmentResult.APPLIED)
                        else:
                            report.gone += 1
                    except PermissionError:
                        report.refused += 1
                        tally.refused += 1
                        tally.refused_lowering = tally.refused_lowering or target < current
                        self._count(ScoreAdjustmentResult.ERROR)
                except OSError as exc:
                    report.errors += 1
                    tally.errors += 1
                    self._count(ScoreAdjustmentResult.ERROR)
                    self._log_once(
                        f"oom_score_adj of pid {pid} in {prefix} could not be set to "
                        f"{target}: {errno.errorcode.get(exc.errno or 0, '')} {exc.strerror}",
                        key=f"oserror:{prefix}:{exc.errno}",
                    )
                finally:
                    handle.close()
        return len(directories), tally

    # -- the state file ---------------------------------------------------------------

    def _save_state(self, report: PassReport) -> None:
        """Persist what was set and what is wanted, if that changed (never raises).

        Every pass compares plain tuples with the last state saved (tens of
        microseconds for hundreds of containers); only a change builds and writes it.
        """
        state_file = self._state_file
        assert state_file is not None
        try:
            wanted = {
                r.container_id: (r.namespace, r.pod, r.pod_uid, r.container, r.desired, r.outcome)
                for r in report.containers.values()
                # A restore that is done leaves the container ungoverned: nothing wanted.
                if r.container_id
                and (r.outcome != "restore" or (r.pod_uid, r.container) in self._applied)
            }
            signature = (self.dry_run, dict(self._applied), wanted)
            if signature == self._saved_signature:
                return
            state = ScoreState(
                boot_id=state_file.boot_id,
                dry_run=self.dry_run,
                applied=signature[1],
                wanted={cid: WantedValue(cid, *fields) for cid, fields in wanted.items()},
            )
            state_file.save(state)
            if state_file.saved == state:  # else the write failed: try again next pass
                self._saved_signature = signature
        except Exception:  # the state is a convenience; the pass itself is done
            log.exception("could not save the reconciler's state")

    # -- reporting --------------------------------------------------------------------

    def _count(self, result: ScoreAdjustmentResult) -> None:
        if self._metrics is not None:
            self._metrics.score_adjustment(result)

    def _log_once(self, message: str, *, key: str | None = None) -> None:
        marker = key or message
        if self._logged.first(marker):
            log.warning("%s", message)

    def _emit(self, pod: PodView, type_: str, reason: str, message: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(pod, type_, reason, message)
        except Exception:  # a failing sink must not stop the pass
            log.exception("could not emit %s Event on pod %s/%s", reason, pod.namespace, pod.name)

    def _warn_once(self, pod: PodView, state: _PodState, reason: str, message: str) -> bool:
        if not state.messages.first((reason, message)):
            return False
        self._emit(pod, WARNING, reason, message)
        return True

    def _policy_warning(
        self,
        pod: PodView,
        state: _PodState,
        decisions: Iterable[Decision],
        warnings: tuple[str, ...],
    ) -> None:
        decisions = tuple(decisions)
        refused = any(d.outcome in (Outcome.REFUSED, Outcome.BOUNDED) for d in decisions)
        reason = REASON_REFUSED if refused else REASON_INVALID
        applied = ", ".join(
            f"{d.container}={d.target}" + (" (the kubelet's value)" if d.desired is None else "")
            for d in decisions
        )
        message = "; ".join(warnings) + f". Applied: {applied}."
        if self._warn_once(pod, state, reason, message):
            log.warning("pod %s/%s: %s", pod.namespace, pod.name, message)
            if any(d.outcome is Outcome.REFUSED for d in decisions):
                self._count(ScoreAdjustmentResult.REFUSED)

    def _kernel_refusal(
        self, pod: PodView, state: _PodState, container: str, target: int, tally: _Tally
    ) -> None:
        if tally.refused_lowering:
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
        if self._warn_once(pod, state, REASON_REFUSED, message):
            log.error("pod %s/%s: %s", pod.namespace, pod.name, message)
