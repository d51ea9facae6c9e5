"""Which warning rule each cgroup gets on a Kubernetes node (`oomguard run`).

The warning thread asks `WarningRulesFromPods(identity)` when it first sees a cgroup and
again every few seconds; the answer comes from what is already in memory: the admin
policy in force, the pod cache (annotations, container names) and the namespace-label
watch. It makes no API call (the label watch's first list, when a selector starts it,
is waited for at most 2 s once), so a slow control plane cannot delay a warning.

- Container and pod-level cgroups: `warn.policy.choose_rule` with the pod's
  annotations (the container form for a container, the pod form for the pod level).
  A pod or container not cached yet (it started a moment ago) gets the policy's
  default rule, marked unsure so the warning thread asks again within a second; a
  namespace chosen by a label selector whose labels are not known yet is left
  unwatched until they are (fail safe: the admin narrowed the scope).
- The node-allocatable cgroup and the QoS levels: `warn.policy.node_rule`.
- Anything else below the root (off Kubernetes shapes): not watched by `run`.

A refused `oomguard.io/warn-at` is said once per pod and message: the warning thread
only records it (`take_problems`); the main loop posts the `OOMWarnAtRefused` Event,
so no API call is ever made from the warning thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from oomguard.k8s.pod_cache import PodCache, PodView
from oomguard.records import CgroupIdentity, CgroupKind
from oomguard.say_once import SaidOnce
from oomguard.steer.admin import NO_LABELS, AdminPolicy, WarningRules
from oomguard.warn.policy import choose_rule, node_rule
from oomguard.warn.rule import WarnRule
from oomguard.warn.watcher import RuleAnswer

WARN_AT_REFUSED_REASON = "OOMWarnAtRefused"
MAX_PROBLEMS_REMEMBERED = 4096
MAX_PROBLEMS_PENDING = 256


class WarningRulesFromPods:
    """`rule_for` of the warning thread, from the policy, the pod cache and labels."""

    def __init__(
        self,
        cache: PodCache,
        policy: Callable[[], AdminPolicy],
        namespace_labels: Callable[[str], Mapping[str, str]],
    ) -> None:
        self._cache = cache
        self._policy = policy
        self._labels = namespace_labels
        self._lock = threading.Lock()
        self._said: SaidOnce[tuple[str, str]] = SaidOnce(MAX_PROBLEMS_REMEMBERED)
        self._problems: list[tuple[PodView, str]] = []

    def __call__(self, identity: CgroupIdentity) -> RuleAnswer:
        rules = self._policy().warnings
        if identity.kind in (CgroupKind.KUBEPODS, CgroupKind.QOS):
            return RuleAnswer(node_rule(rules))
        if identity.kind not in (CgroupKind.CONTAINER, CgroupKind.POD) or not rules.enabled:
            return RuleAnswer(None)
        pod: PodView | None = None
        container: str | None = None
        unsure = False
        if identity.kind is CgroupKind.CONTAINER and identity.container_id:
            hit = self._cache.lookup_container(identity.container_id)
            if hit is not None:
                pod, view = hit
                container = view.name
        if pod is None and identity.pod_uid:
            pod = self._cache.lookup_pod(identity.pod_uid)
        if pod is None:
            # Started a moment ago: the default until the cache has it, unless only a
            # selector could say whether its namespace is watched.
            default = None if rules.namespaces is not None else _default(rules)
            return RuleAnswer(default, unsure=True)
        if identity.kind is CgroupKind.CONTAINER and container is None:
            unsure = True  # the container's name is not in the pod's status yet
        labels = self._labels(pod.namespace) if _needs_labels(rules, pod.namespace) else {}
        if labels is NO_LABELS:
            unsure = True
        choice = choose_rule(
            rules,
            namespace=pod.namespace,
            labels=labels,
            annotations=pod.annotations,
            container=container if identity.kind is CgroupKind.CONTAINER else None,
        )
        if choice.problem is not None:
            self._problem(pod, choice.problem)
        return RuleAnswer(choice.rule, unsure=unsure)

    def take_problems(self) -> list[tuple[PodView, str]]:
        """Refusals to say (each pod and message once), for the main loop to post."""
        with self._lock:
            problems, self._problems = self._problems, []
        return problems

    def _problem(self, pod: PodView, message: str) -> None:
        with self._lock:
            if len(self._problems) < MAX_PROBLEMS_PENDING and self._said.first((pod.uid, message)):
                self._problems.append((pod, message))


def _default(rules: WarningRules) -> WarnRule | None:
    return choose_rule(rules, namespace="", labels={}, annotations={}, container=None).rule


def _needs_labels(rules: WarningRules, namespace: str) -> bool:
    """Labels are read only where a selector decides (names alone need none)."""
    chosen = rules.namespaces
    return chosen is not None and namespace not in chosen.names and chosen.selector is not None
