"""How an OOM kill should take each container (memory.oom.group): annotations, within policy.

On cgroup v2 the kubelet sets memory.oom.group=1 on every container (unless the whole
node opts out with the kubelet's `singleProcessOOMKill`), so one OOM kill takes every
process of the container. A multi-process server (postgres backends, web workers, a CI
runner's jobs) may rather lose only the process the kernel picks; others want the
whole container gone. Kubernetes has no per-pod choice; this module makes it one, as a
request within the admin's rules. It is pure: `apply` writes the file.

How a request becomes a mode (for one container, `decide_kill_modes`)
---------------------------------------------------------------------
1. The baseline is the admin's default for the pod's namespace (`oom_kill.defaults`,
   first match wins), else none: memory.oom.group stays as the kubelet set it.
2. The request is `oomguard.io/oom-kill.<container>` if it is valid, else the pod's
   `oomguard.io/oom-kill` (an invalid value is ignored as if not written).
3. It is granted if the policy lets the namespace choose that mode (`oom_kill.process`,
   `oom_kill.container`; a rule left out lets every namespace). Otherwise it is refused
   and the baseline stands.
4. A default is the admin's own choice: it is never refused, whatever the rules say.
Unlike oom_score_adj nothing is bounded or trusted here: the mode only decides how the
pod's own processes die, never whether another pod's are killed instead.

Every problem with an `oom-kill` key (an invalid value, a key naming no container, a
refusal) is in that container's `KillModeDecision.warning`, and never among the
oom_score_adj warnings, so one bad key raises one Warning Event. Problems of the pod
form concern every container and read the same for each.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from oomguard.steer.admin import AdminPolicy, KillModeDefault, KillModeRules
from oomguard.steer.annotations import AnnotationReading, KillModeAsk, read_annotations
from oomguard.steer.projection import Outcome, PodProjection


class KillMode(enum.StrEnum):
    """What one OOM kill takes of a container; the values are the annotation's."""

    CONTAINER = "container"  # memory.oom.group = 1: every process of the container dies
    PROCESS = "process"  # memory.oom.group = 0: only the victim the kernel picks

    @property
    def oom_group(self) -> int:
        """The memory.oom.group value that gives this mode."""
        return 1 if self is KillMode.CONTAINER else 0

    @classmethod
    def of_oom_group(cls, value: int) -> KillMode:
        """The mode a memory.oom.group value gives (any non-zero value is a group kill)."""
        return cls.CONTAINER if value else cls.PROCESS


@dataclass(frozen=True, slots=True)
class KillModeDecision:
    """The kill mode one container should have, what asked for it, and what went wrong."""

    container: str
    mode: KillMode | None  # None: leave memory.oom.group as the kubelet set it
    outcome: Outcome  # UNMANAGED, DEFAULTED, APPLIED or REFUSED
    # What asked, for messages: "oomguard.io/oom-kill.db=process", "the policy's
    # default for namespace ci", or "" (unmanaged).
    source: str
    warning: str | None = None  # for OOMKillModeRefused: why a request was invalid or refused


@dataclass(frozen=True, slots=True)
class _Baseline:
    """What a container gets when it asks for nothing, or is refused."""

    mode: KillMode | None
    source: str
    words: str  # how a refusal says what stays


def _baseline(namespace: str, rule: KillModeDefault | None) -> _Baseline:
    if rule is None:
        return _Baseline(None, "", "memory.oom.group stays as the kubelet set it")
    source = f"the policy's default for namespace {namespace}"
    return _Baseline(KillMode(rule.mode), source, f"{source} ({rule.mode}) stays")


def _decide(
    container: str,
    ask: KillModeAsk,
    rules: KillModeRules,
    baseline: _Baseline,
    namespace: str,
    labels: Mapping[str, str],
) -> KillModeDecision:
    problems = list(ask.problems)

    def decision(mode: KillMode | None, outcome: Outcome, source: str) -> KillModeDecision:
        return KillModeDecision(container, mode, outcome, source, "; ".join(problems) or None)

    request = ask.request
    if request is None:
        outcome = Outcome.UNMANAGED if baseline.mode is None else Outcome.DEFAULTED
        return decision(baseline.mode, outcome, baseline.source)
    asked = f"{request.key}={request.mode}"
    if rules.allows(request.mode, namespace, labels):
        return decision(KillMode(request.mode), Outcome.APPLIED, asked)
    problems.append(
        f"{asked} refused: the oomguard policy does not let namespace {namespace} choose "
        f"kill mode {request.mode} for container {container}; {baseline.words}"
    )
    return decision(baseline.mode, Outcome.REFUSED, asked)


def kill_modes_from(
    pod: PodProjection, reading: AnnotationReading, policy: AdminPolicy
) -> tuple[KillModeDecision, ...]:
    """`decide_kill_modes` for annotations already read (`decision.decide_pod` reads once)."""
    rules = policy.oom_kill
    labels = pod.namespace_labels
    baseline = _baseline(pod.namespace, rules.default_for(pod.namespace, labels))
    return tuple(
        _decide(name, reading.kill_mode_for(name), rules, baseline, pod.namespace, labels)
        for name in pod.kubelet_scores
    )


def decide_kill_modes(pod: PodProjection, policy: AdminPolicy) -> tuple[KillModeDecision, ...]:
    """One per container in pod.kubelet_scores, in that order."""
    return kill_modes_from(pod, read_annotations(pod.annotations, pod.kubelet_scores), policy)
