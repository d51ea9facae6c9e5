"""What oom_score_adj each container should have: pod annotations, bounded by the admin.

Annotations are written by whoever can create a pod, so they are requests, not
orders: by default a pod may only ask to be killed *sooner* than the kubelet would
have it; asking to be killed later needs a namespace the admin trusts, and whatever
is granted stays inside the admin's bounds for the pod's QoS class (the systemd
`ManagedOOMPreference` rule: a preference counts only where its owner is trusted).
This module is pure: it reads the requests (`annotations`) and the bounds (`admin`)
handed to it and returns a `Decision`; the reconciler writes /proc, the pod cache
supplies the pod.

How a request becomes a value (for one container, `decide`)
-----------------------------------------------------------
1. The baseline is the kubelet's own value, or the admin's default for the pod's
   namespace when one matches (`defaults`, first match wins; the admin needs no
   trust from anyone, but the default is still bounded like a request).
2. protect maps to the policy's `protect` value for the pod's QoS class, sacrifice
   to its `sacrifice` value, oom-score-adj to its number. protect never raises the
   baseline and sacrifice never lowers it.
3. Asking for less than the baseline needs `trusted_namespaces` to match the
   namespace; otherwise the request is refused and the baseline stands.
4. The result is clamped into [lowest, highest] for the QoS class, but the clamp
   never pushes it past the baseline in the other direction (a pod that asked to be
   killed sooner is never made safer, and the reverse). -1000 only with
   `allow_never_kill`.
So `Decision.desired` is None (leave the kubelet's value), the baseline, or a value
inside the class's bounds; nothing else.

`decide_pod` also gives each container's kill mode (`kill_mode`, memory.oom.group),
from the same reading of the annotations. `PodProjection` and `Outcome`, which both
decisions share, live in `projection` and are named here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from oomguard.steer.admin import SAFEST_WITHOUT_NEVER_KILL, AdminPolicy, QosBounds
from oomguard.steer.annotations import (
    ANNOTATION_PREFIX,
    AnnotationReading,
    ScoreRequest,
    Word,
    read_annotations,
)
from oomguard.steer.kill_mode import KillModeDecision, kill_modes_from
from oomguard.steer.kubelet_score import OOM_SCORE_ADJ_MAX, OOM_SCORE_ADJ_MIN
from oomguard.steer.projection import Outcome, PodProjection

__all__ = [
    "Decision",
    "Outcome",
    "PodDecision",
    "PodProjection",
    "decide",
    "decide_pod",
]


@dataclass(frozen=True, slots=True)
class Decision:
    """The oom_score_adj one container should have, and why, in words."""

    container: str
    kubelet_value: int
    desired: int | None  # None: leave (or put back) the kubelet's value
    outcome: Outcome
    reason: str
    warnings: tuple[str, ...] = ()  # for a Warning Event: invalid, refused, bounded
    request_key: str | None = None  # the annotation (or default) that asked
    invalid_keys: tuple[str, ...] = ()

    @property
    def target(self) -> int:
        """The value every process of the container should end up with."""
        return self.kubelet_value if self.desired is None else self.desired


@dataclass(frozen=True, slots=True)
class PodDecision:
    """Decisions for every container, plus warnings about the pod as a whole."""

    decisions: tuple[Decision, ...]
    warnings: tuple[str, ...]  # unknown keys, score keys naming no container
    # Each container's kill mode, in the same order; its problems are its own
    # (`KillModeDecision.warning`), never in `warnings` or `all_warnings`.
    kill_modes: tuple[KillModeDecision, ...] = ()

    @property
    def all_warnings(self) -> tuple[str, ...]:
        """Every distinct warning, pod-wide first: one Warning Event's worth."""
        seen = dict.fromkeys(self.warnings)
        for decision in self.decisions:
            seen.update(dict.fromkeys(decision.warnings))
        return tuple(seen)


def _requested_value(request: ScoreRequest, bounds: QosBounds, baseline: int) -> int:
    """The value a request stands for; protect never raises, sacrifice never lowers."""
    if request.word is Word.PROTECT:
        return min(bounds.protect_value, baseline)
    if request.word is Word.SACRIFICE:
        return max(bounds.sacrifice_value, baseline)
    assert request.number is not None
    return request.number


def _bounded(value: int, baseline: int, bounds: QosBounds, allow_never_kill: bool) -> int:
    """Clamp into the class's bounds, never past the baseline the wrong way."""
    result = bounds.clamp(value)
    if value >= baseline:
        result = max(result, baseline)
    if value <= baseline:
        result = min(result, baseline)
    if result == OOM_SCORE_ADJ_MIN and not allow_never_kill:
        result = SAFEST_WITHOUT_NEVER_KILL
    return result


def _describe_request(request: ScoreRequest) -> str:
    if request.word is Word.OOM_SCORE_ADJ:
        return f"{request.key}={request.number}"
    return f"{request.key}=true" if request.key.startswith(ANNOTATION_PREFIX) else request.key


def _decide(
    pod: PodProjection, container: str, reading: AnnotationReading, policy: AdminPolicy
) -> Decision:
    if container not in pod.kubelet_scores:
        raise KeyError(f"no kubelet value for container {container!r}")
    kubelet = min(max(pod.kubelet_scores[container], OOM_SCORE_ADJ_MIN), OOM_SCORE_ADJ_MAX)
    qos = pod.qos_class
    bounds = policy.qos[qos]
    never_kill = policy.allow_never_kill
    namespace = pod.namespace
    own = reading.for_container(container)
    warnings = list(own.problems)

    def decision(
        desired: int | None, outcome: Outcome, reason: str, request_key: str | None = None
    ) -> Decision:
        return Decision(
            container=container,
            kubelet_value=kubelet,
            desired=desired,
            outcome=outcome,
            reason=reason,
            warnings=tuple(warnings),
            request_key=request_key,
            invalid_keys=own.invalid_keys,
        )

    rule = policy.default_for(namespace, pod.namespace_labels)
    baseline, baseline_words, fallback = kubelet, f"the kubelet's value {kubelet}", None
    if rule is not None:
        wanted = _requested_value(rule.score_request, bounds, kubelet)
        fallback = _bounded(wanted, kubelet, bounds, never_kill)
        baseline = fallback
        baseline_words = f"the policy's default for namespace {namespace} ({fallback})"

    request = own.request
    if request is None:
        if rule is None:
            return decision(
                None,
                Outcome.UNMANAGED,
                f"no oomguard request for container {container}; {baseline_words} stands",
            )
        return decision(
            fallback,
            Outcome.DEFAULTED,
            f"{baseline_words} applies to {qos} container {container} "
            f"(asked {rule.request}; kubelet's value {kubelet})",
            rule.score_request.key,
        )

    asked = _describe_request(request)
    wanted = _requested_value(request, bounds, baseline)
    if wanted < baseline and not policy.trusts(namespace, pod.namespace_labels):
        warnings.append(
            f"{asked} asks to lower container {container}'s oom_score_adj from {baseline} to "
            f"{wanted}, which needs the oomguard policy to trust namespace {namespace}; "
            f"{baseline_words} stays"
        )
        return decision(
            fallback,
            Outcome.REFUSED,
            f"{asked} refused: namespace {namespace} is not trusted to lower oom_score_adj; "
            f"{baseline_words} stays",
            request.key,
        )

    granted = _bounded(wanted, baseline, bounds, never_kill)
    outcome = Outcome.APPLIED
    if granted != wanted:
        outcome = Outcome.BOUNDED
        clamped = bounds.clamp(wanted)
        if granted == clamped:
            why = f"the policy allows {qos} pods {bounds.lowest}..{bounds.highest}"
        elif granted == baseline:
            why = (
                f"the policy's bounds for {qos} pods ({bounds.lowest}..{bounds.highest}) "
                f"would move it to the other side of {baseline_words}"
            )
        else:
            why = "-1000 (never kill) needs allow_never_kill in the policy"
        warnings.append(
            f"{asked} asks for {wanted} for container {container}, but {why}; applied {granted}"
        )
    return decision(
        granted,
        outcome,
        f"{asked} gives {qos} container {container} {granted} (kubelet's value {kubelet})",
        request.key,
    )


def decide(pod: PodProjection, container: str, policy: AdminPolicy) -> Decision:
    """The value one container should have; raises only if `container` has no kubelet value."""
    reading = read_annotations(pod.annotations, pod.kubelet_scores)
    return _decide(pod, container, reading, policy)


def decide_pod(pod: PodProjection, policy: AdminPolicy) -> PodDecision:
    """Decisions and kill modes for every container of the pod, reading its annotations once."""
    reading = read_annotations(pod.annotations, pod.kubelet_scores)
    decisions = tuple(_decide(pod, name, reading, policy) for name in pod.kubelet_scores)
    return PodDecision(decisions, reading.pod_problems, kill_modes_from(pod, reading, policy))
