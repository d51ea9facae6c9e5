"""The oom_score_adj the kubelet gives a container, computed the way the kubelet does.

oomguard must know this value for two reasons: a pod may only ask to be killed
*sooner* than the kubelet would have it (so the kubelet's value is the yardstick),
and removing an annotation must put back exactly what the kubelet set. Guessing
"Burstable is about 500" would silently move pods that nobody annotated, so this
module follows kubelet's `pkg/kubelet/qos/policy.go` (and `helpers.go`,
`pkg/apis/core/v1/helper/qos/qos.go`, `pkg/kubelet/types/pod_update.go`)
line by line, including:

- node-critical pods (priority >= 2000000000, or a static / mirror pod, *and*
  priorityClassName `system-node-critical`) get the Guaranteed value, whatever
  their QoS; `system-cluster-critical` alone does not;
- integer arithmetic with Go's truncating division, then the Burstable clamp to
  [3, 999] (1000 + guaranteed, and one below BestEffort);
- restartable init containers (sidecars) are never scored above the regular
  container with the smallest memory request;
- pod-level resources (PodLevelResources, beta and on by default since 1.34): the
  pod's memory request not claimed by any container is shared equally among all
  containers (regular and init) before the formula;
- the KubeletOOMScoreAdjTieBreak nudge (alpha, off by default) when asked for.

Memory requests are the values the kubelet reads with `Quantity.Value()`: bytes,
rounded up to a whole byte, as *allocated* (after an in-place resize), and with any
DRA node-allocatable memory share already added (DRANodeAllocatableResources);
turning the pod object into these numbers is the pod cache's job. Python integers
do not overflow where Go's int64 would (requests above 9 PB): no real node has them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Kernel range of /proc/PID/oom_score_adj.
OOM_SCORE_ADJ_MIN = -1000  # "never kill" (OOM_SCORE_ADJ_MIN in the kernel)
OOM_SCORE_ADJ_MAX = 1000

# kubelet's named values (pkg/kubelet/qos/policy.go).
KUBELET_OOM_SCORE_ADJ = -999
KUBE_PROXY_OOM_SCORE_ADJ = -999
GUARANTEED_OOM_SCORE_ADJ = -997
BEST_EFFORT_OOM_SCORE_ADJ = 1000
# The Burstable band: a Guaranteed pod using all memory scores about 1000 - 997 = 3,
# so Burstable never goes below that; and it stays below BestEffort.
BURSTABLE_MIN_OOM_SCORE_ADJ = 1000 + GUARANTEED_OOM_SCORE_ADJ
BURSTABLE_MAX_OOM_SCORE_ADJ = BEST_EFFORT_OOM_SCORE_ADJ - 1

# The scale of the Burstable formula: oom_score_adj points per whole node.
_SCORE_SCALE = 1000

# KubeletOOMScoreAdjTieBreak: requests smaller than this are not told apart.
OOM_SCORE_ADJ_TIE_BREAK_FLOOR_BYTES = 64 * 1024 * 1024

# What makes a pod node-critical (pkg/apis/scheduling, pkg/kubelet/types).
SYSTEM_CRITICAL_PRIORITY = 2_000_000_000
SYSTEM_NODE_CRITICAL_PRIORITY_CLASS = "system-node-critical"
CONFIG_SOURCE_ANNOTATION = "kubernetes.io/config.source"
CONFIG_MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
API_SERVER_SOURCE = "api"

# The only resources that decide a QoS class.
CPU = "cpu"
MEMORY = "memory"
QOS_RESOURCES = (CPU, MEMORY)


class QosClass(enum.StrEnum):
    """A pod's QoS class, spelled as in the Kubernetes API (`status.qosClass`)."""

    GUARANTEED = "Guaranteed"
    BURSTABLE = "Burstable"
    BEST_EFFORT = "BestEffort"


# Safest first: the order the kubelet keeps and oomguard's policy preserves.
QOS_ORDER = (QosClass.GUARANTEED, QosClass.BURSTABLE, QosClass.BEST_EFFORT)


class ContainerKind(enum.StrEnum):
    """Where a container sits in the pod spec; sidecars are scored differently."""

    REGULAR = "regular"  # spec.containers
    INIT = "init"  # spec.initContainers without restartPolicy: Always
    SIDECAR = "sidecar"  # spec.initContainers with restartPolicy: Always
    EPHEMERAL = "ephemeral"  # spec.ephemeralContainers (debug containers)


@dataclass(frozen=True, slots=True)
class ContainerMemory:
    """The memory numbers of one container that its oom_score_adj depends on."""

    name: str
    kind: ContainerKind = ContainerKind.REGULAR
    request_bytes: int = 0
    # The limit enforced on the container's cgroup (its own limit, else the pod-level
    # one, plus DRA memory); 0 when unlimited. Only the tie-break reads it.
    limit_bytes: int = 0

    def __post_init__(self) -> None:
        if self.request_bytes < 0 or self.limit_bytes < 0:
            raise ValueError(f"container {self.name!r}: memory amounts cannot be negative")


@dataclass(frozen=True, slots=True)
class KubeletFeatures:
    """The kubelet feature gates that change the score, at their current defaults."""

    pod_level_resources: bool = True  # beta, on by default since 1.34
    oom_score_adj_tie_break: bool = False  # alpha


@dataclass(frozen=True, slots=True)
class PodMemory:
    """What the kubelet's oom_score_adj rule needs to know about a pod.

    `containers`, `init_containers` and `ephemeral_containers` keep the pod spec's
    order: a sidecar's place among the init containers changes the pod's aggregate
    request, which pod-level resources divide up.
    """

    qos_class: QosClass
    containers: tuple[ContainerMemory, ...]
    init_containers: tuple[ContainerMemory, ...] = ()
    ephemeral_containers: tuple[ContainerMemory, ...] = ()
    node_critical: bool = False
    # spec.resources.requests.memory (pod-level resources); None when not set.
    pod_memory_request_bytes: int | None = None

    def __post_init__(self) -> None:
        if not self.containers:
            raise ValueError("a pod has at least one regular container")
        if self.pod_memory_request_bytes is not None and self.pod_memory_request_bytes < 0:
            raise ValueError("the pod-level memory request cannot be negative")
        for kinds, group in (
            ({ContainerKind.REGULAR}, self.containers),
            ({ContainerKind.INIT, ContainerKind.SIDECAR}, self.init_containers),
            ({ContainerKind.EPHEMERAL}, self.ephemeral_containers),
        ):
            for container in group:
                if container.kind not in kinds:
                    raise ValueError(
                        f"container {container.name!r} ({container.kind}) is in the wrong list"
                    )

    def container(self, name: str) -> ContainerMemory:
        """The named container, wherever it sits in the spec."""
        for container in (*self.containers, *self.init_containers, *self.ephemeral_containers):
            if container.name == name:
                return container
        raise KeyError(f"the pod has no container named {name!r}")


@dataclass(frozen=True, slots=True)
class ResourceRequirements:
    """A container's (or the pod's) requests and limits, as whole numbers.

    Amounts are integers in one unit per resource (millicores for cpu, bytes for
    memory); only cpu and memory decide QoS, but any other resource present still
    counts as "has requests or limits", as in the kubelet.
    """

    requests: Mapping[str, int] = field(default_factory=dict)
    limits: Mapping[str, int] = field(default_factory=dict)


def _go_div(numerator: int, denominator: int) -> int:
    """Integer division truncating toward zero, as Go's `/` on int64 does."""
    quotient = abs(numerator) // abs(denominator)
    return quotient if (numerator >= 0) == (denominator > 0) else -quotient


def _log2_floor(value: int) -> int:
    """floor(log2(value)), or 0 below 1, as kubelet's log2Floor."""
    return value.bit_length() - 1 if value >= 1 else 0


def _resource_qos(resources: ResourceRequirements) -> QosClass:
    """The QoS one set of requirements stands for (kubelet's resourceQOS)."""
    if not resources.requests and not resources.limits:
        return QosClass.BEST_EFFORT
    qos: QosClass | None = None
    for name in QOS_RESOURCES:
        request = resources.requests.get(name, 0)
        limit = resources.limits.get(name, 0)
        if request != limit:
            return QosClass.BURSTABLE
        best_effort = request == 0
        resource_qos = QosClass.BEST_EFFORT if best_effort else QosClass.GUARANTEED
        if qos is None:
            qos = resource_qos
        elif qos is not resource_qos:
            return QosClass.BURSTABLE
    return qos if qos is not None else QosClass.BEST_EFFORT


def qos_class(
    containers: Iterable[ResourceRequirements],
    pod_resources: ResourceRequirements | None = None,
    *,
    status_qos_class: str | None = None,
    features: KubeletFeatures | None = None,
) -> QosClass:
    """A pod's QoS class: `status.qosClass` when the API server set it, else derived.

    `containers` are the regular and init containers (ephemeral ones never count).
    The status wins because the kubelet itself trusts it (GetPodQOS) and it does not
    change when an in-place resize changes requests.
    """
    if status_qos_class:
        try:
            return QosClass(status_qos_class)
        except ValueError:
            pass  # not a class this version knows: derive it instead
    active = features if features is not None else KubeletFeatures()
    if active.pod_level_resources and pod_resources is not None:
        return _resource_qos(pod_resources)
    pod_qos: QosClass | None = None
    for resources in containers:
        container_qos = _resource_qos(resources)
        if container_qos is QosClass.BURSTABLE:
            return container_qos
        if pod_qos is None:
            pod_qos = container_qos
        elif pod_qos is not container_qos:
            return QosClass.BURSTABLE
    return pod_qos if pod_qos is not None else QosClass.BEST_EFFORT


def is_node_critical(
    priority: int | None, priority_class_name: str, annotations: Mapping[str, str]
) -> bool:
    """Whether the kubelet treats the pod as node-critical (IsNodeCriticalPod).

    Static and mirror pods count as critical without a resolved priority, but only
    the `system-node-critical` class makes a pod *node*-critical.
    """
    source = annotations.get(CONFIG_SOURCE_ANNOTATION)
    static = source is not None and source != API_SERVER_SOURCE
    mirror = CONFIG_MIRROR_ANNOTATION in annotations
    critical = static or mirror or (priority is not None and priority >= SYSTEM_CRITICAL_PRIORITY)
    return critical and priority_class_name == SYSTEM_NODE_CRITICAL_PRIORITY_CLASS


def _aggregate_container_request(pod: PodMemory) -> int:
    """The pod's memory request as the scheduler sums it, sidecars included.

    Regular containers and sidecars run together (a sum); each plain init container
    runs alone beside the sidecars started before it (a max over those moments).
    """
    total = sum(container.request_bytes for container in pod.containers)
    sidecars = 0
    init_peak = 0
    for container in pod.init_containers:
        if container.kind is ContainerKind.SIDECAR:
            total += container.request_bytes
            sidecars += container.request_bytes
            moment = sidecars
        else:
            moment = container.request_bytes + sidecars
        init_peak = max(init_peak, moment)
    return max(total, init_peak)


def _remaining_pod_request_per_container(pod: PodMemory) -> int:
    """The pod-level memory request no container claims, shared per container."""
    if not pod.pod_memory_request_bytes:
        return 0
    remaining = pod.pod_memory_request_bytes - _aggregate_container_request(pod)
    return _go_div(remaining, len(pod.containers) + len(pod.init_containers))


def _linear_score(request_bytes: int, memory_capacity_bytes: int) -> int:
    return _SCORE_SCALE - _go_div(_SCORE_SCALE * request_bytes, memory_capacity_bytes)


def _tie_break(linear: int, request_bytes: int, limit_bytes: int, capacity_bytes: int) -> int:
    """KubeletOOMScoreAdjTieBreak: a few points that separate equal linear scores.

    One point per doubling of the request below one adj point's worth of memory,
    capped, and a bonus for containers that can never exceed their request.
    """
    per_point = _go_div(capacity_bytes, _SCORE_SCALE)
    max_nudge = _log2_floor(_go_div(per_point, OOM_SCORE_ADJ_TIE_BREAK_FLOOR_BYTES))
    nudge = min(_log2_floor(_go_div(request_bytes, OOM_SCORE_ADJ_TIE_BREAK_FLOOR_BYTES)), max_nudge)
    score = linear - nudge
    if 0 < limit_bytes <= request_bytes:
        score -= max_nudge + 1
    return score


def kubelet_oom_score_adj(
    pod: PodMemory,
    container_name: str,
    memory_capacity_bytes: int,
    features: KubeletFeatures | None = None,
) -> int:
    """The oom_score_adj the kubelet gives every process of `container_name`.

    `memory_capacity_bytes` is the node's memory capacity as cAdvisor reports it to
    the kubelet (MemTotal), not allocatable.
    """
    if memory_capacity_bytes <= 0:
        raise ValueError("the node's memory capacity must be positive")
    active = features if features is not None else KubeletFeatures()
    container = pod.container(container_name)

    if pod.node_critical or pod.qos_class is QosClass.GUARANTEED:
        return GUARANTEED_OOM_SCORE_ADJ
    if pod.qos_class is QosClass.BEST_EFFORT:
        return BEST_EFFORT_OOM_SCORE_ADJ

    remaining = 0
    if active.pod_level_resources and pod.pod_memory_request_bytes is not None:
        remaining = _remaining_pod_request_per_container(pod)
    request = container.request_bytes + remaining
    score = _linear_score(request, memory_capacity_bytes)
    if active.oom_score_adj_tie_break:
        score = _tie_break(score, request, container.limit_bytes, memory_capacity_bytes)

    if container.kind is ContainerKind.SIDECAR:
        # A sidecar serves the regular containers: never kill it before all of them.
        if active.oom_score_adj_tie_break:
            regular_ceiling = max(
                _tie_break(
                    _linear_score(regular.request_bytes + remaining, memory_capacity_bytes),
                    regular.request_bytes + remaining,
                    regular.limit_bytes,
                    memory_capacity_bytes,
                )
                for regular in pod.containers
            )
        else:
            smallest = min(regular.request_bytes for regular in pod.containers)
            regular_ceiling = _linear_score(smallest + remaining, memory_capacity_bytes)
        score = min(score, regular_ceiling)

    if score < BURSTABLE_MIN_OOM_SCORE_ADJ:
        return BURSTABLE_MIN_OOM_SCORE_ADJ
    if score == BEST_EFFORT_OOM_SCORE_ADJ:
        return BURSTABLE_MAX_OOM_SCORE_ADJ
    return score
