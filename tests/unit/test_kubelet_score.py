"""kubelet's own oom_score_adj tests, ported: same pods, same capacities, same answers.

The tables follow kubelet's `pkg/kubelet/qos/policy_test.go` (TestGetContainerOOMScoreAdjust,
TestGetContainerOOMScoreAdjustTieBreak, TestOOMScoreAdjTieBreakKillOrder) and
`pkg/apis/core/v1/helper/qos/qos_test.go` (TestComputePodQOS). Pods are written the
way the Go tests write them (requests / limits per container) and turned into the
module's model by `_pod`, so a reader can check each row against the original.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oomguard.k8s.pod_cache import project_pod
from oomguard.steer.admin import AdminPolicy
from oomguard.steer.decision import Outcome, PodProjection, decide
from oomguard.steer.kubelet_score import (
    BEST_EFFORT_OOM_SCORE_ADJ,
    BURSTABLE_MAX_OOM_SCORE_ADJ,
    BURSTABLE_MIN_OOM_SCORE_ADJ,
    GUARANTEED_OOM_SCORE_ADJ,
    OOM_SCORE_ADJ_TIE_BREAK_FLOOR_BYTES,
    ContainerKind,
    ContainerMemory,
    KubeletFeatures,
    PodMemory,
    QosClass,
    ResourceRequirements,
    is_node_critical,
    kubelet_oom_score_adj,
    qos_class,
)
from oomguard.steer.reconciler import kubelet_scores

MI = 1 << 20
GI = 1 << 30
TI = 1 << 40
G = 1_000_000_000  # the "G" suffix: decimal
STANDARD_MEMORY = 8_000_000_000  # policy_test.go standardMemoryAmount
SAMPLE_REQUEST = STANDARD_MEMORY // 8
SAMPLE_LIMIT = 1000 + STANDARD_MEMORY // 8
SAMPLE_POD_REQUEST = STANDARD_MEMORY // 4
SAMPLE_POD_LIMIT = 1000 + STANDARD_MEMORY // 4

PLR_OFF = KubeletFeatures(pod_level_resources=False)
TIE_BREAK = KubeletFeatures(oom_score_adj_tie_break=True)


@dataclass
class Spec:
    """A container as the Go tests write it: cpu in millicores, memory in bytes."""

    name: str
    requests: Mapping[str, int] = field(default_factory=dict)
    limits: Mapping[str, int] = field(default_factory=dict)
    kind: ContainerKind = ContainerKind.REGULAR
    extra_request_bytes: int = 0  # a DRA memory share the kubelet adds to the request
    enforced_limit_bytes: int | None = None  # cgroup limit, if not the spec limit


def _res(cpu_m: int | None = None, memory: int | None = None) -> dict[str, int]:
    amounts = {}
    if cpu_m is not None:
        amounts["cpu"] = cpu_m
    if memory is not None:
        amounts["memory"] = memory
    return amounts


def _pod(
    *specs: Spec,
    pod_requests: Mapping[str, int] | None = None,
    pod_limits: Mapping[str, int] | None = None,
    node_critical: bool = False,
    features: KubeletFeatures | None = None,
) -> PodMemory:
    """The module's model of a pod written like a Go test pod."""
    pod_resources = None
    if pod_requests is not None or pod_limits is not None:
        pod_resources = ResourceRequirements(pod_requests or {}, pod_limits or {})
    qos = qos_class(
        (ResourceRequirements(spec.requests, spec.limits) for spec in specs),
        pod_resources,
        features=features,
    )

    def memory(spec: Spec) -> ContainerMemory:
        limit = spec.limits.get("memory", 0)
        if spec.enforced_limit_bytes is not None:
            limit = spec.enforced_limit_bytes
        return ContainerMemory(
            spec.name,
            spec.kind,
            spec.requests.get("memory", 0) + spec.extra_request_bytes,
            limit,
        )

    pod_memory = None if pod_requests is None else pod_requests.get("memory")
    return PodMemory(
        qos_class=qos,
        containers=tuple(memory(s) for s in specs if s.kind is ContainerKind.REGULAR),
        init_containers=tuple(
            memory(s) for s in specs if s.kind in (ContainerKind.INIT, ContainerKind.SIDECAR)
        ),
        node_critical=node_critical,
        pod_memory_request_bytes=pod_memory,
    )


SAMPLE_INIT = Spec(
    "init-container", _res(memory=SAMPLE_REQUEST), _res(memory=SAMPLE_LIMIT), ContainerKind.INIT
)
SAMPLE_MAIN = Spec("main-1", _res(memory=SAMPLE_REQUEST), _res(memory=SAMPLE_LIMIT))


def _sidecar(name: str, request: int) -> Spec:
    return Spec(name, _res(memory=request), _res(memory=SAMPLE_LIMIT), ContainerKind.SIDECAR)


GUARANTEED_CONTAINER = Spec(
    "guaranteed-container", _res(5, SAMPLE_REQUEST), _res(5, SAMPLE_REQUEST)
)


@dataclass(frozen=True)
class OomCase:
    pod: PodMemory
    capacity: int
    expected: Mapping[str, tuple[int, int]]  # container -> (low, high), as in the Go table
    features: KubeletFeatures = field(default_factory=KubeletFeatures)


OOM_CASES: dict[str, OomCase] = {
    "cpu-limit": OomCase(
        _pod(Spec("cpu-limit", limits=_res(cpu_m=10_000))), 4_000_000_000, {"cpu-limit": (999, 999)}
    ),
    "memory-limit-cpu-request": OomCase(
        _pod(Spec("memory-limit-cpu-request", _res(cpu_m=0), _res(memory=10 * G))),
        8_000_000_000,
        {"memory-limit-cpu-request": (999, 999)},
    ),
    "zero-memory-limit": OomCase(
        _pod(Spec("zero-memory-limit", limits=_res(memory=0))),
        7_230_457_451,
        {"zero-memory-limit": (1000, 1000)},
    ),
    "no-request-limit": OomCase(
        _pod(Spec("no-request-limit")), 4_000_000_000, {"no-request-limit": (1000, 1000)}
    ),
    "equal-request-limit-cpu-memory": OomCase(
        _pod(Spec("equal", _res(5, 10 * G), _res(5, 10 * G))), 123_456_789, {"equal": (-997, -997)}
    ),
    "cpu-unlimited-memory-limited-with-requests": OomCase(
        _pod(Spec("c", _res(5, STANDARD_MEMORY // 2), _res(memory=10 * G))),
        STANDARD_MEMORY,
        {"c": (495, 505)},
    ),
    "request-no-limit": OomCase(
        _pod(Spec("request-no-limit", _res(5, STANDARD_MEMORY - 1))),
        STANDARD_MEMORY,
        {"request-no-limit": (3, 3)},
    ),
    # Priority alone (system-cluster-critical) is not node-critical: BestEffort stays 1000.
    "cluster-critical": OomCase(
        _pod(
            Spec("cluster-critical"),
            node_critical=is_node_critical(2_000_000_000, "system-cluster-critical", {}),
        ),
        4_000_000_000,
        {"cluster-critical": (1000, 1000)},
    ),
    "node-critical": OomCase(
        _pod(
            Spec("node-critical"),
            node_critical=is_node_critical(2_000_001_000, "system-node-critical", {}),
        ),
        4_000_000_000,
        {"node-critical": (-997, -997)},
    ),
    "burstable-unique-container-pod": OomCase(
        _pod(Spec("b", _res(memory=SAMPLE_REQUEST), _res(memory=SAMPLE_LIMIT))),
        STANDARD_MEMORY,
        {"b": (875, 880)},
    ),
    "burstable-mixed-unique-main-container-pod": OomCase(
        _pod(SAMPLE_INIT, SAMPLE_MAIN),
        STANDARD_MEMORY,
        {"init-container": (875, 880), "main-1": (875, 880)},
    ),
    "burstable-mixed-multi-container-small-sidecar-pod": OomCase(
        _pod(SAMPLE_INIT, _sidecar("sidecar-small", STANDARD_MEMORY // 20), SAMPLE_MAIN),
        STANDARD_MEMORY,
        {"init-container": (875, 880), "sidecar-small": (875, 875), "main-1": (875, 875)},
    ),
    "burstable-mixed-multi-container-sample-request-pod": OomCase(
        _pod(SAMPLE_INIT, _sidecar("sidecar", SAMPLE_REQUEST), SAMPLE_MAIN),
        STANDARD_MEMORY,
        {"init-container": (875, 880), "sidecar": (875, 875), "main-1": (875, 875)},
    ),
    "burstable-mixed-multi-container-big-sidecar-container-pod": OomCase(
        _pod(SAMPLE_INIT, _sidecar("sidecar-big", STANDARD_MEMORY // 2), SAMPLE_MAIN),
        STANDARD_MEMORY,
        {"init-container": (875, 880), "sidecar-big": (500, 500), "main-1": (875, 875)},
    ),
    "guaranteed-pod-resources-no-container-resources": OomCase(
        _pod(
            Spec("no-request-limit-1"),
            Spec("no-request-limit-2"),
            pod_requests=_res(5, SAMPLE_POD_REQUEST),
            pod_limits=_res(5, SAMPLE_POD_REQUEST),
        ),
        4_000_000_000,
        {"no-request-limit-1": (-997, -997), "no-request-limit-2": (-997, -997)},
    ),
    "guaranteed-pod-resources-equal-container-resources": OomCase(
        _pod(
            Spec("g1", _res(5, SAMPLE_REQUEST), _res(5, SAMPLE_REQUEST)),
            Spec("g2", _res(5, SAMPLE_REQUEST), _res(5, SAMPLE_REQUEST)),
            pod_requests=_res(5, SAMPLE_POD_REQUEST),
            pod_limits=_res(5, SAMPLE_POD_REQUEST),
        ),
        4_000_000_000,
        {"g1": (-997, -997), "g2": (-997, -997)},
    ),
    "guaranteed-pod-resources-unequal-container-requests": OomCase(
        _pod(
            Spec("burstable-container", _res(3, SAMPLE_REQUEST), _res(5, SAMPLE_LIMIT)),
            Spec("best-effort-container"),
            pod_requests=_res(5, SAMPLE_POD_REQUEST),
            pod_limits=_res(5, SAMPLE_POD_REQUEST),
        ),
        4_000_000_000,
        {"burstable-container": (-997, -997), "best-effort-container": (-997, -997)},
    ),
    "burstable-pod-resources-no-container-resources": OomCase(
        _pod(
            Spec("no-request-limit-1"),
            Spec("no-request-limit-2"),
            pod_requests=_res(5, SAMPLE_POD_REQUEST),
            pod_limits=_res(5, SAMPLE_POD_LIMIT),
        ),
        4_000_000_000,
        {"no-request-limit-1": (750, 750), "no-request-limit-2": (750, 750)},
    ),
    "burstable-pod-resources-equal-container-requests": OomCase(
        _pod(
            Spec("g1", _res(5, SAMPLE_REQUEST), _res(5, SAMPLE_REQUEST)),
            Spec("g2", _res(5, SAMPLE_REQUEST), _res(5, SAMPLE_REQUEST)),
            pod_requests=_res(5, SAMPLE_POD_REQUEST),
            pod_limits=_res(5, SAMPLE_POD_LIMIT),
        ),
        4_000_000_000,
        {"g1": (750, 750), "g2": (750, 750)},
    ),
    "burstable-pod-resources-unequal-container-requests": OomCase(
        _pod(
            Spec("burstable-container", _res(3, SAMPLE_REQUEST), _res(5, SAMPLE_REQUEST)),
            Spec("best-effort-container"),
            pod_requests=_res(5, SAMPLE_POD_REQUEST),
            pod_limits=_res(5, SAMPLE_POD_LIMIT),
        ),
        4_000_000_000,
        {"burstable-container": (625, 625), "best-effort-container": (875, 875)},
    ),
    "burstable-pod-resources-no-container-resources-with-sidecar": OomCase(
        _pod(
            Spec("no-request-limit-sidecar", kind=ContainerKind.SIDECAR),
            Spec("no-request-limit"),
            pod_requests=_res(5, SAMPLE_POD_REQUEST),
            pod_limits=_res(5, SAMPLE_POD_LIMIT),
        ),
        4_000_000_000,
        {"no-request-limit": (750, 750), "no-request-limit-sidecar": (750, 750)},
    ),
    "burstable-pod-resources-equal-container-requests-with-sidecar": OomCase(
        _pod(
            Spec(
                "burstable-sidecar",
                _res(5, SAMPLE_REQUEST),
                _res(5, SAMPLE_LIMIT),
                ContainerKind.SIDECAR,
            ),
            Spec("burstable-container", _res(5, SAMPLE_REQUEST), _res(5, SAMPLE_LIMIT)),
            pod_requests=_res(5, SAMPLE_POD_REQUEST),
            pod_limits=_res(5, SAMPLE_POD_LIMIT),
        ),
        4_000_000_000,
        {"burstable-container": (750, 750), "burstable-sidecar": (750, 750)},
    ),
    "burstable-pod-resources-unequal-container-requests-with-sidecar": OomCase(
        _pod(
            Spec(
                "burstable-sidecar",
                _res(5, 200_000_000),
                _res(5, SAMPLE_POD_LIMIT),
                ContainerKind.SIDECAR,
            ),
            Spec("burstable-container-1", _res(5, 1_000_000_000), _res(5, SAMPLE_POD_LIMIT)),
            Spec("burstable-container-2", _res(5, 500_000_000), _res(5, SAMPLE_POD_LIMIT)),
            pod_requests=_res(5, 2_000_000_000),
            pod_limits=_res(5, SAMPLE_POD_LIMIT),
        ),
        4_000_000_000,
        {
            "burstable-container-1": (725, 725),
            "burstable-container-2": (850, 850),
            "burstable-sidecar": (850, 850),
        },
    ),
    # DRA node-allocatable memory: the kubelet adds the container's share to its request.
    "burstable-pod-with-dra-disabled": OomCase(
        _pod(Spec("c1", _res(memory=500 * MI))), 4_000_000_000, {"c1": (869, 869)}
    ),
    "burstable-pod-with-dra-enabled": OomCase(
        _pod(Spec("c1", _res(memory=500 * MI), extra_request_bytes=500 * MI)),
        4_000_000_000,
        {"c1": (738, 738)},
    ),
    "burstable-pod-with-shared-dra-claim": OomCase(
        _pod(
            Spec("c1", _res(memory=500 * MI), extra_request_bytes=500 * MI),
            Spec("c2", _res(memory=500 * MI), extra_request_bytes=500 * MI),
        ),
        4_000_000_000,
        {"c1": (738, 738), "c2": (738, 738)},
    ),
    "burstable-pod-with-plr-and-dra-claim": OomCase(
        _pod(
            Spec("c1", _res(memory=GI), extra_request_bytes=2 * GI),
            pod_requests=_res(memory=5 * GI),
        ),
        8_000_000_000,
        {"c1": (329, 329)},
    ),
    "burstable-pod-with-plr-and-shared-dra-claim": OomCase(
        _pod(
            Spec("c1", _res(memory=GI), extra_request_bytes=GI),
            Spec("c2", _res(memory=GI), extra_request_bytes=GI),
            pod_requests=_res(memory=6 * GI),
        ),
        8_000_000_000,
        {"c1": (598, 598), "c2": (598, 598)},
    ),
    "burstable-pod-with-combined-dra-direct-and-overhead-device": OomCase(
        _pod(Spec("c1", _res(memory=500 * MI), extra_request_bytes=1000 * MI)),
        4_000_000_000,
        {"c1": (607, 607)},
    ),
    "burstable-pod-with-sidecar-and-dra-enabled": OomCase(
        _pod(
            Spec("s1", _res(memory=200 * MI), kind=ContainerKind.SIDECAR),
            Spec("c1", _res(memory=500 * MI), extra_request_bytes=500 * MI),
        ),
        4_000_000_000,
        {"c1": (738, 738), "s1": (738, 738)},
    ),
    # Not in kubelet's table: the same pod with PodLevelResources off is read container
    # by container (Burstable), and the pod-level request is not shared out.
    "pod-resources-ignored-without-the-feature": OomCase(
        _pod(
            Spec("burstable-container", _res(3, SAMPLE_REQUEST), _res(5, SAMPLE_LIMIT)),
            Spec("best-effort-container"),
            pod_requests=_res(5, SAMPLE_POD_REQUEST),
            pod_limits=_res(5, SAMPLE_POD_REQUEST),
            features=PLR_OFF,
        ),
        4_000_000_000,
        {"burstable-container": (750, 750), "best-effort-container": (999, 999)},
        PLR_OFF,
    ),
}


@pytest.mark.parametrize("case", OOM_CASES.values(), ids=OOM_CASES.keys())
def test_get_container_oom_score_adjust(case: OomCase) -> None:
    for name, (low, high) in case.expected.items():
        score = kubelet_oom_score_adj(case.pod, name, case.capacity, case.features)
        assert low <= score <= high, f"{name}: {score} not in {low}..{high}"


# ------------------------------------------- the same pods as the API delivers them
#
# Issue 14.6: the kubelet's value the reconciler works with came from the pod cache's
# projection, which dropped `spec.resources`: a Burstable pod whose memory request is
# set only at the pod level got 999 instead of the kubelet's 500, so raises the kubelet
# allows were refused and "restore" wrote a value the kubelet never set. These rows are
# kubelet's pod-level cases again, as pod JSON through project_pod and the reconciler's
# kubelet_scores (the path the agent runs).


def _quantities(amounts: Mapping[str, int]) -> dict[str, str]:
    return {k: f"{v}m" if k == "cpu" else str(v) for k, v in amounts.items()}


def _api_pod(
    *specs: Spec,
    pod_requests: Mapping[str, int] | None = None,
    pod_limits: Mapping[str, int] | None = None,
    where: str = "spec",
) -> dict[str, Any]:
    """A pod object as the watch delivers it, with status.qosClass as the API server
    sets it. `where` puts the pod-level request in the spec, or only in the status's
    allocatedResources (an in-place pod-level resize: the kubelet computes from that)."""

    def container(spec: Spec) -> dict[str, object]:
        body: dict[str, object] = {
            "name": spec.name,
            "resources": {
                "requests": _quantities(spec.requests),
                "limits": _quantities(spec.limits),
            },
        }
        if spec.kind is ContainerKind.SIDECAR:
            body["restartPolicy"] = "Always"
        return body

    pod_resources = None
    if pod_requests is not None or pod_limits is not None:
        pod_resources = ResourceRequirements(pod_requests or {}, pod_limits or {})
    qos = qos_class((ResourceRequirements(s.requests, s.limits) for s in specs), pod_resources)
    spec: dict[str, object] = {
        "nodeName": "node-1",
        "containers": [container(s) for s in specs if s.kind is ContainerKind.REGULAR],
        "initContainers": [container(s) for s in specs if s.kind is not ContainerKind.REGULAR],
    }
    statuses = [
        {"name": s.name, "containerID": f"containerd://{i:064x}", "state": {"running": {}}}
        for i, s in enumerate(specs)
    ]
    status: dict[str, object] = {
        "qosClass": qos.value,
        "containerStatuses": [
            item for item, s in zip(statuses, specs, strict=True) if s.kind is ContainerKind.REGULAR
        ],
        "initContainerStatuses": [
            item
            for item, s in zip(statuses, specs, strict=True)
            if s.kind is not ContainerKind.REGULAR
        ],
    }
    if pod_resources is not None:
        requests, limits = _quantities(pod_resources.requests), _quantities(pod_resources.limits)
        if where == "spec":
            spec["resources"] = {"requests": requests, "limits": limits}
        else:  # resized in place: the spec asks for more than was allocated so far
            spec["resources"] = {"requests": {**requests, "memory": str(7 * GI)}}
            status["allocatedResources"] = requests
    return {
        "metadata": {"uid": "u-1", "namespace": "team-a", "name": "p"},
        "spec": spec,
        "status": status,
    }


_TWO_PLAIN = (Spec("no-request-limit-1"), Spec("no-request-limit-2"))
_TWO_BURSTABLE = (
    Spec("burstable-container", _res(3, SAMPLE_REQUEST), _res(5, SAMPLE_REQUEST)),
    Spec("best-effort-container"),
)
_UNEQUAL_WITH_SIDECAR = (
    Spec(
        "burstable-sidecar", _res(5, 200_000_000), _res(5, SAMPLE_POD_LIMIT), ContainerKind.SIDECAR
    ),
    Spec("burstable-container-1", _res(5, 1_000_000_000), _res(5, SAMPLE_POD_LIMIT)),
    Spec("burstable-container-2", _res(5, 500_000_000), _res(5, SAMPLE_POD_LIMIT)),
)
# name -> (containers, pod requests, pod limits, capacity, expected per container)
API_POD_CASES: dict[
    str, tuple[tuple[Spec, ...], Mapping[str, int], Mapping[str, int], int, Mapping[str, int]]
] = {
    "guaranteed-pod-resources-no-container-resources": (
        _TWO_PLAIN,
        _res(5, SAMPLE_POD_REQUEST),
        _res(5, SAMPLE_POD_REQUEST),
        4_000_000_000,
        {"no-request-limit-1": -997, "no-request-limit-2": -997},
    ),
    "burstable-pod-resources-no-container-resources": (
        _TWO_PLAIN,
        _res(5, SAMPLE_POD_REQUEST),
        _res(5, SAMPLE_POD_LIMIT),
        4_000_000_000,
        {"no-request-limit-1": 750, "no-request-limit-2": 750},
    ),
    "burstable-pod-resources-unequal-container-requests": (
        _TWO_BURSTABLE,
        _res(5, SAMPLE_POD_REQUEST),
        _res(5, SAMPLE_POD_LIMIT),
        4_000_000_000,
        {"burstable-container": 625, "best-effort-container": 875},
    ),
    "burstable-pod-resources-no-container-resources-with-sidecar": (
        (Spec("no-request-limit-sidecar", kind=ContainerKind.SIDECAR), Spec("no-request-limit")),
        _res(5, SAMPLE_POD_REQUEST),
        _res(5, SAMPLE_POD_LIMIT),
        4_000_000_000,
        {"no-request-limit": 750, "no-request-limit-sidecar": 750},
    ),
    "burstable-pod-resources-unequal-container-requests-with-sidecar": (
        _UNEQUAL_WITH_SIDECAR,
        _res(5, 2_000_000_000),
        _res(5, SAMPLE_POD_LIMIT),
        4_000_000_000,
        {"burstable-container-1": 725, "burstable-container-2": 850, "burstable-sidecar": 850},
    ),
    # The case: memory requested only for the pod, half the node.
    "pod-level-memory-only-half-the-node": (
        (Spec("app", _res(cpu_m=100)),),
        _res(memory=4 * GI),
        _res(memory=6 * GI),
        8 * GI,
        {"app": 500},
    ),
}


@pytest.mark.parametrize("where", ["spec", "allocated"])
@pytest.mark.parametrize("case", API_POD_CASES.values(), ids=API_POD_CASES.keys())
def test_kubelet_value_of_a_pod_from_the_api(
    case: tuple[tuple[Spec, ...], Mapping[str, int], Mapping[str, int], int, Mapping[str, int]],
    where: str,
) -> None:
    specs, pod_requests, pod_limits, capacity, expected = case
    view = project_pod(
        _api_pod(*specs, pod_requests=pod_requests, pod_limits=pod_limits, where=where)
    )
    assert kubelet_scores(view, capacity) == expected


def test_a_raise_above_the_kubelets_value_is_applied_and_restore_puts_it_back() -> None:
    """What a user noticed in issue 14.6: asking for 600 (killed sooner than the kubelet's
    500) was refused as a lowering of 999, and removing the annotation "restored" 999."""
    api_pod = _api_pod(Spec("app", _res(cpu_m=100)), pod_requests=_res(memory=4 * GI))
    api_pod["metadata"]["annotations"] = {"oomguard.io/oom-score-adj": "600"}
    view = project_pod(api_pod)
    scores = kubelet_scores(view, 8 * GI)
    assert scores is not None
    projection = PodProjection(
        namespace=view.namespace,
        qos_class=QosClass(view.qos_class or ""),
        kubelet_scores=scores,
        annotations=view.annotations,
    )
    decision = decide(projection, "app", AdminPolicy())
    assert (decision.outcome, decision.desired) == (Outcome.APPLIED, 600)
    assert decision.kubelet_value == 500  # what "restore" writes when the annotation goes


def test_pod_without_pod_level_resources_is_read_per_container() -> None:
    view = project_pod(_api_pod(*_TWO_BURSTABLE))
    assert view.pod_memory_request_bytes is None
    # kubelet's "burstable-mixed" rows: each container by its own request.
    assert kubelet_scores(view, 4_000_000_000) == {
        "burstable-container": 750,
        "best-effort-container": 999,
    }


def _tie_pod(*specs: Spec, pod_requests: Mapping[str, int] | None = None) -> PodMemory:
    return _pod(*specs, pod_requests=pod_requests)


def _bounded(name: str, request: int, limit: int = 0) -> Spec:
    return Spec(name, _res(memory=request), _res(memory=limit) if limit else {})


def _pod_level_pod(limit: int) -> PodMemory:
    # Burstable by the container's cpu request; memory bounded only at the pod level,
    # whose limit the kubelet enforces on the container's cgroup.
    return _pod(
        Spec("c", _res(cpu_m=100), enforced_limit_bytes=limit),
        pod_requests=_res(memory=2 * GI),
        pod_limits=_res(memory=limit),
    )


# A 500Mi DRA claim shared by two containers: 250Mi each on the request, the full 500Mi
# on each cgroup limit.
SHARED_CLAIM_POD = _pod(
    Spec("c", _res(memory=500 * MI), extra_request_bytes=250 * MI, enforced_limit_bytes=1000 * MI),
    Spec("other", _res(memory=500 * MI), extra_request_bytes=250 * MI),
)
SIDECAR_POD = _pod(
    Spec("sidecar", _res(memory=50 * MI), kind=ContainerKind.SIDECAR),
    _bounded("small-bounded", 50 * MI, 50 * MI),
    _bounded("large-unbounded", 16 * GI),
)

# name: (capacity, pod, container, gate off, gate on)
TIE_BREAK_CASES: dict[str, tuple[int, PodMemory, str, int, int]] = {
    "16Gi node, 500Mi unlimited": (16 * GI, _tie_pod(_bounded("c", 500 * MI)), "c", 970, 970),
    "16Gi node, 500Mi request equals limit": (
        16 * GI,
        _tie_pod(_bounded("c", 500 * MI, 500 * MI)),
        "c",
        970,
        969,
    ),
    "1Ti node, 50Mi unlimited is below the floor": (
        TI,
        _tie_pod(_bounded("c", 50 * MI)),
        "c",
        999,
        999,
    ),
    "1Ti node, 500Mi unlimited": (TI, _tie_pod(_bounded("c", 500 * MI)), "c", 999, 998),
    "1Ti node, 4Gi unlimited hits the nudge cap": (
        TI,
        _tie_pod(_bounded("c", 4 * GI)),
        "c",
        997,
        993,
    ),
    "1Ti node, 16Gi unlimited": (TI, _tie_pod(_bounded("c", 16 * GI)), "c", 985, 981),
    "1Ti node, 500Mi request equals limit": (
        TI,
        _tie_pod(_bounded("c", 500 * MI, 500 * MI)),
        "c",
        999,
        993,
    ),
    "1Ti node, shared DRA memory claim loses the bonus": (TI, SHARED_CLAIM_POD, "c", 999, 997),
    "4Ti node, 500Mi unlimited": (4 * TI, _tie_pod(_bounded("c", 500 * MI)), "c", 999, 998),
    "4Ti node, 64Gi unlimited": (4 * TI, _tie_pod(_bounded("c", 64 * GI)), "c", 985, 979),
    "1Ti node, sidecar capped at the highest regular container": (
        TI,
        SIDECAR_POD,
        "sidecar",
        999,
        995,
    ),
    "1Ti node, pod-level limit above the container's share": (
        TI,
        _pod_level_pod(4 * GI),
        "c",
        999,
        995,
    ),
    "1Ti node, pod-level limit equal to the container's share": (
        TI,
        _pod_level_pod(2 * GI),
        "c",
        999,
        990,
    ),
}


@pytest.mark.parametrize("gate", [False, True], ids=["tieBreak=false", "tieBreak=true"])
@pytest.mark.parametrize(
    ("capacity", "pod", "container", "gate_off", "gate_on"),
    TIE_BREAK_CASES.values(),
    ids=TIE_BREAK_CASES.keys(),
)
def test_get_container_oom_score_adjust_tie_break(
    gate: bool, capacity: int, pod: PodMemory, container: str, gate_off: int, gate_on: int
) -> None:
    features = KubeletFeatures(oom_score_adj_tie_break=gate)
    expected = gate_on if gate else gate_off
    assert kubelet_oom_score_adj(pod, container, capacity, features) == expected


def _kernel_points(request: int, usage: int, capacity: int) -> float:
    """The kernel's badness: oom_score_adj plus usage in thousandths of memory."""
    pod = _tie_pod(_bounded("c", request))
    return kubelet_oom_score_adj(pod, "c", capacity, TIE_BREAK) + usage * 1000 / capacity


KILL_ORDER_REQUESTS = [
    16 * MI,
    50 * MI,
    100 * MI,
    250 * MI,
    500 * MI,
    GI,
    2 * GI,
    4 * GI,
    16 * GI,
    64 * GI,
    256 * GI,
]


@pytest.mark.parametrize(
    "capacity", [16 * GI, 256 * GI, TI, 4 * TI], ids=["16Gi", "256Gi", "1Ti", "4Ti"]
)
def test_tie_break_kills_over_request_before_at_request(capacity: int) -> None:
    # The tie-break shifts a container by at most max_nudge points, plus one of truncation.
    max_nudge = (capacity // 1000 // OOM_SCORE_ADJ_TIE_BREAK_FLOOR_BYTES).bit_length() - 1
    slack = (max(max_nudge, 0) + 1) * capacity // 1000
    for big in KILL_ORDER_REQUESTS:
        for small in KILL_ORDER_REQUESTS:
            if big <= small or big >= capacity:
                continue
            over = _kernel_points(big, big + slack + MI, capacity)
            at_request = _kernel_points(small, small, capacity)
            assert over > at_request, (big, small)


@pytest.mark.parametrize(
    ("big_request", "big_usage", "small_request"),
    [(16 * GI, 48 * GI, 500 * MI), (64 * GI, 84 * GI, 500 * MI), (100 * GI, 130 * GI, 50 * MI)],
    ids=["16Gi-over-32Gi", "64Gi-over-20Gi", "100Gi-over-30Gi"],
)
def test_tie_break_cases_from_kubernetes_142235(
    big_request: int, big_usage: int, small_request: int
) -> None:
    over = _kernel_points(big_request, big_usage, TI)
    assert over > _kernel_points(small_request, small_request, TI)


def test_tie_break_bounded_orchestrator_outlasts_executor() -> None:
    orchestrator_pod = _tie_pod(_bounded("c", 500 * MI, 500 * MI))
    orchestrator = (
        kubelet_oom_score_adj(orchestrator_pod, "c", TI, TIE_BREAK) + 200 * MI * 1000 / TI
    )
    worker = _kernel_points(500 * MI, 100 * MI, TI)
    assert orchestrator < worker


# --------------------------------------------------------------------------- QoS class

GUARANTEED_RES = ResourceRequirements(
    {"cpu": 100, "memory": 100 * MI, "ephemeral-storage": 10 * GI},  # storage never counts
    {"cpu": 100, "memory": 100 * MI},
)
BEST_EFFORT_RES = [
    ResourceRequirements(),
    ResourceRequirements({"cpu": 0, "memory": 0}),
    ResourceRequirements({"ephemeral-storage": 10 * GI}),
]
BURSTABLE_RES = [
    ResourceRequirements({"cpu": 100, "memory": 100 * MI}, {"cpu": 200, "memory": 200 * MI}),
    ResourceRequirements({"cpu": 100, "memory": 100 * MI}, {"cpu": 100, "memory": 200 * MI}),
    ResourceRequirements({"cpu": 100, "memory": 100 * MI}, {"cpu": 200, "memory": 100 * MI}),
    ResourceRequirements({"cpu": 100, "memory": 100 * MI}),
    ResourceRequirements({"cpu": 100, "memory": 100 * MI}, {"cpu": 100}),
]

QOS_CASES: dict[str, tuple[list[ResourceRequirements], ResourceRequirements | None, QosClass]] = {
    "guaranteed": ([GUARANTEED_RES], None, QosClass.GUARANTEED),
    **{
        f"best-effort-{i}": ([r], None, QosClass.BEST_EFFORT) for i, r in enumerate(BEST_EFFORT_RES)
    },
    **{f"burstable-{i}": ([r], None, QosClass.BURSTABLE) for i, r in enumerate(BURSTABLE_RES)},
    "2c-guaranteed": ([GUARANTEED_RES, GUARANTEED_RES], None, QosClass.GUARANTEED),
    "2c-best-effort": (BEST_EFFORT_RES[:2], None, QosClass.BEST_EFFORT),
    "2c-burstable": (BURSTABLE_RES[:2], None, QosClass.BURSTABLE),
    **{
        f"2c-mixed-burstable-{i}-{j}": ([a, b], None, QosClass.BURSTABLE)
        for i, a in enumerate([GUARANTEED_RES, BEST_EFFORT_RES[0], BURSTABLE_RES[0]])
        for j, b in enumerate([GUARANTEED_RES, BEST_EFFORT_RES[1], BURSTABLE_RES[1]])
        if i != j
    },
    "best-effort-hugepages": (
        [ResourceRequirements({"cpu": 0, "memory": 0, "hugepages-2Mi": GI}, {"hugepages-2Mi": GI})],
        None,
        QosClass.BEST_EFFORT,
    ),
    "burstable-cpu-guaranteed-memory": (
        [ResourceRequirements({"memory": 100 * MI}, {"memory": 100 * MI})],
        None,
        QosClass.BURSTABLE,
    ),
    # Pod-level resources decide alone when set.
    "guaranteed-with-pod-level-resources": (
        [ResourceRequirements()],
        ResourceRequirements({"cpu": 10, "memory": 100 * MI}, {"cpu": 10, "memory": 100 * MI}),
        QosClass.GUARANTEED,
    ),
    "guaranteed-with-pod-and-container-level-resources": (
        [ResourceRequirements({"cpu": 3, "memory": 10 * MI}, {"cpu": 5, "memory": 20 * MI})],
        ResourceRequirements({"cpu": 10, "memory": 100 * MI}, {"cpu": 10, "memory": 100 * MI}),
        QosClass.GUARANTEED,
    ),
    "burstable-with-pod-level-resources": (
        [ResourceRequirements()],
        ResourceRequirements({"cpu": 10, "memory": 10 * MI}, {"cpu": 20, "memory": 50 * MI}),
        QosClass.BURSTABLE,
    ),
    "burstable-with-pod-and-container-level-requests": (
        [ResourceRequirements({"cpu": 5, "memory": 10 * MI})],
        ResourceRequirements({"cpu": 10, "memory": 10 * MI}),
        QosClass.BURSTABLE,
    ),
}


@pytest.mark.parametrize(
    ("containers", "pod_resources", "expected"), QOS_CASES.values(), ids=QOS_CASES.keys()
)
def test_compute_pod_qos(
    containers: list[ResourceRequirements],
    pod_resources: ResourceRequirements | None,
    expected: QosClass,
) -> None:
    assert qos_class(containers, pod_resources) is expected
    # Whether the second container is an init container does not matter: both count.
    assert qos_class(list(reversed(containers)), pod_resources) is expected


@pytest.mark.parametrize(
    ("containers", "expected"),
    [(containers, expected) for containers, pod, expected in QOS_CASES.values() if pod is None],
)
def test_pod_resources_ignored_when_feature_off(
    containers: list[ResourceRequirements], expected: QosClass
) -> None:
    # kubelet's "-pod-no-plr" variant: a Guaranteed pod-level spec changes nothing.
    assert qos_class(containers, GUARANTEED_RES, features=PLR_OFF) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("Guaranteed", QosClass.GUARANTEED),
        ("BestEffort", QosClass.BEST_EFFORT),
        ("", QosClass.BURSTABLE),
        (None, QosClass.BURSTABLE),
        ("Platinum", QosClass.BURSTABLE),  # unknown: derive instead
    ],
    ids=["status-guaranteed", "status-besteffort", "empty", "absent", "unknown"],
)
def test_status_qos_class_wins(status: str | None, expected: QosClass) -> None:
    assert qos_class([BURSTABLE_RES[0]], status_qos_class=status) is expected


def test_no_containers_is_best_effort() -> None:
    assert qos_class([]) is QosClass.BEST_EFFORT


# ---------------------------------------------------------------------- node-critical

CRITICAL = 2_000_000_000


@pytest.mark.parametrize(
    ("priority", "priority_class", "annotations", "expected"),
    [
        (CRITICAL + 1000, "system-node-critical", {}, True),
        (CRITICAL, "system-node-critical", {}, True),
        (CRITICAL - 1, "system-node-critical", {}, False),
        (CRITICAL, "system-cluster-critical", {}, False),
        (None, "system-node-critical", {}, False),
        (None, "system-node-critical", {"kubernetes.io/config.source": "file"}, True),
        (None, "system-node-critical", {"kubernetes.io/config.source": "api"}, False),
        (None, "system-node-critical", {"kubernetes.io/config.mirror": "abc"}, True),
        (None, "", {"kubernetes.io/config.source": "file"}, False),
    ],
    ids=[
        "node-critical-priority",
        "exactly-system-critical",
        "below-system-critical",
        "cluster-critical-class",
        "no-priority",
        "static-pod",
        "api-pod",
        "mirror-pod",
        "static-pod-without-class",
    ],
)
def test_is_node_critical(
    priority: int | None, priority_class: str, annotations: dict[str, str], expected: bool
) -> None:
    assert is_node_critical(priority, priority_class, annotations) is expected


def test_node_critical_burstable_pod_gets_guaranteed_value() -> None:
    pod = _pod(Spec("c", _res(memory=GI)), node_critical=True)
    assert pod.qos_class is QosClass.BURSTABLE
    assert kubelet_oom_score_adj(pod, "c", 8 * GI) == GUARANTEED_OOM_SCORE_ADJ


# ---------------------------------------------------------------------- model checks


def test_unknown_container_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        kubelet_oom_score_adj(_pod(Spec("c")), "missing", GI)


@pytest.mark.parametrize("capacity", [0, -1], ids=["zero", "negative"])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        kubelet_oom_score_adj(_pod(Spec("c", _res(memory=1))), "c", capacity)


def test_model_rejects_impossible_pods() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PodMemory(QosClass.BURSTABLE, ())
    with pytest.raises(ValueError, match="negative"):
        ContainerMemory("c", request_bytes=-1)
    with pytest.raises(ValueError, match="wrong list"):
        PodMemory(QosClass.BURSTABLE, (ContainerMemory("s", ContainerKind.SIDECAR),))


def test_go_truncating_division() -> None:
    # 1000 * 1 / 3 truncates to 333, so the score is 667, never 666.
    pod = PodMemory(QosClass.BURSTABLE, (ContainerMemory("c", request_bytes=1),))
    assert kubelet_oom_score_adj(pod, "c", 3) == 667


# ------------------------------------------------------------------------- properties

requests = st.integers(min_value=0, max_value=4 * TI)
capacities = st.integers(min_value=1, max_value=8 * TI)


@given(request=requests, capacity=capacities, tie_break=st.booleans())
def test_burstable_stays_in_kubelet_band(request: int, capacity: int, tie_break: bool) -> None:
    pod = PodMemory(QosClass.BURSTABLE, (ContainerMemory("c", request_bytes=request),))
    score = kubelet_oom_score_adj(
        pod, "c", capacity, KubeletFeatures(oom_score_adj_tie_break=tie_break)
    )
    assert BURSTABLE_MIN_OOM_SCORE_ADJ <= score <= BURSTABLE_MAX_OOM_SCORE_ADJ


@given(small=requests, extra=requests, capacity=capacities)
def test_bigger_request_never_scores_higher(small: int, extra: int, capacity: int) -> None:
    def score(request: int) -> int:
        pod = PodMemory(QosClass.BURSTABLE, (ContainerMemory("c", request_bytes=request),))
        return kubelet_oom_score_adj(pod, "c", capacity)

    assert score(small + extra) <= score(small)


@given(sidecar=requests, regulars=st.lists(requests, min_size=1, max_size=4), capacity=capacities)
def test_sidecar_never_above_its_regular_containers(
    sidecar: int, regulars: list[int], capacity: int
) -> None:
    pod = PodMemory(
        QosClass.BURSTABLE,
        tuple(ContainerMemory(f"c{i}", request_bytes=r) for i, r in enumerate(regulars)),
        (ContainerMemory("s", ContainerKind.SIDECAR, sidecar),),
    )
    regular_scores = [kubelet_oom_score_adj(pod, f"c{i}", capacity) for i in range(len(regulars))]
    assert kubelet_oom_score_adj(pod, "s", capacity) <= max(regular_scores)


@given(
    qos=st.sampled_from([QosClass.GUARANTEED, QosClass.BEST_EFFORT]),
    request=requests,
    critical=st.booleans(),
)
def test_fixed_class_values(qos: QosClass, request: int, critical: bool) -> None:
    pod = PodMemory(qos, (ContainerMemory("c", request_bytes=request),), node_critical=critical)
    expected = (
        BEST_EFFORT_OOM_SCORE_ADJ
        if qos is QosClass.BEST_EFFORT and not critical
        else GUARANTEED_OOM_SCORE_ADJ
    )
    assert kubelet_oom_score_adj(pod, "c", GI) == expected
