"""Which limit ran out: from the kernel's oom-kill line, and from cgroup counters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oomguard.cgroups.classify import (
    LIMIT_REACHED_MARGIN_BYTES,
    LimitEvidence,
    classify_counters,
    classify_kernel,
    limit_reached_while_down,
    peak_reached_limit,
)
from oomguard.cgroups.path import parse_cgroup_path
from oomguard.records import Constraint

MEMCG = "CONSTRAINT_MEMCG"
NONE = "CONSTRAINT_NONE"

UID = "15513b48-e7a5-48fc-b9e3-92f713f36504"
CID = "a51a9f7d073f848e7fc59e56e8f11524f330a2175a4ed26327da2dfe0d28015f"
SIBLING = "2327a2aec169e25cf05f2a901486b7463fdb513ae097fc0ae6a3ca94381ddc40"
SD_UID = UID.replace("-", "_")

# The test host nests everything under its own cgroup (TESTING.md).
HOST = "/process_api/a1135aa7de6c4b0b9a2ff3d33f7d9e7c/oomlab-5671"

FS_KUBEPODS = f"{HOST}/kubepods"
FS_QOS = f"{FS_KUBEPODS}/burstable"
FS_POD = f"{FS_QOS}/pod{UID}"
FS_CTR = f"{FS_POD}/{CID}"

SD_KUBEPODS = "/kubepods.slice"
SD_QOS = f"{SD_KUBEPODS}/kubepods-besteffort.slice"
SD_POD = f"{SD_QOS}/kubepods-besteffort-pod{SD_UID}.slice"
SD_CTR = f"{SD_POD}/crio-{CID}.scope"

G_POD = f"/kubepods.slice/kubepods-pod{SD_UID}.slice"
G_CTR = f"{G_POD}/cri-containerd-{CID}.scope"

NS_QOS = "/../../../kubepods-burstable.slice"
NS_POD = f"{NS_QOS}/kubepods-burstable-pod{SD_UID}.slice"
NS_CTR = f"{NS_POD}/cri-containerd-{CID}.scope"

DOCKER = f"/system.slice/docker-{CID}.scope"
HOG = f"{HOST}/a-hog-alone"

KERNEL_CASES = [
    # The kernel's line from this test host, verbatim memcgs (TESTING.md).
    pytest.param(MEMCG, HOG, HOG, Constraint.CONTAINER, id="test-host-own-limit"),
    # Kubernetes, cgroupfs driver, under the test host's prefix.
    pytest.param(MEMCG, FS_CTR, FS_CTR, Constraint.CONTAINER, id="fs-container-own-limit"),
    pytest.param(
        MEMCG, FS_CTR, f"{FS_CTR}/sub", Constraint.CONTAINER, id="fs-task-nested-in-container"
    ),
    pytest.param(MEMCG, FS_POD, FS_CTR, Constraint.POD, id="fs-pod-limit"),
    pytest.param(MEMCG, FS_QOS, FS_CTR, Constraint.NODE_ALLOCATABLE, id="fs-qos-limit"),
    pytest.param(MEMCG, FS_KUBEPODS, FS_CTR, Constraint.NODE_ALLOCATABLE, id="fs-kubepods-limit"),
    pytest.param(MEMCG, HOST, FS_CTR, Constraint.OTHER, id="fs-ancestor-above-kubepods"),
    # Kubernetes, systemd driver.
    pytest.param(MEMCG, SD_CTR, SD_CTR, Constraint.CONTAINER, id="sd-container-own-limit"),
    pytest.param(MEMCG, SD_CTR, f"{SD_CTR}/container", Constraint.CONTAINER, id="sd-crun-subgroup"),
    pytest.param(MEMCG, SD_POD, SD_CTR, Constraint.POD, id="sd-pod-limit"),
    pytest.param(MEMCG, SD_QOS, SD_CTR, Constraint.NODE_ALLOCATABLE, id="sd-qos-limit"),
    pytest.param(MEMCG, SD_KUBEPODS, SD_CTR, Constraint.NODE_ALLOCATABLE, id="sd-kubepods-limit"),
    pytest.param(MEMCG, G_POD, G_CTR, Constraint.POD, id="guaranteed-pod-limit"),
    pytest.param(
        MEMCG, "/kubepods.slice", G_CTR, Constraint.NODE_ALLOCATABLE, id="guaranteed-kubepods"
    ),
    pytest.param(
        MEMCG, SD_POD, f"{SD_POD}/crio-conmon-{CID}.scope", Constraint.POD, id="conmon-pod-limit"
    ),
    # Seen from inside a cgroup namespace: the kubepods level is out of view.
    pytest.param(MEMCG, NS_QOS, NS_CTR, Constraint.NODE_ALLOCATABLE, id="ns-qos-limit"),
    pytest.param(MEMCG, NS_POD, NS_CTR, Constraint.POD, id="ns-pod-limit"),
    pytest.param(MEMCG, "/../../..", NS_CTR, Constraint.OTHER, id="ns-unnamed-ancestor"),
    # Off Kubernetes.
    pytest.param(
        MEMCG,
        "/system.slice/nginx.service",
        "/system.slice/nginx.service",
        Constraint.CONTAINER,
        id="service-own-limit",
    ),
    pytest.param(MEMCG, DOCKER, DOCKER, Constraint.CONTAINER, id="docker-own-limit"),
    pytest.param(MEMCG, DOCKER, f"{DOCKER}/init.scope", Constraint.CONTAINER, id="docker-nested"),
    pytest.param(
        MEMCG,
        "/user.slice/user-1000.slice",
        "/user.slice/user-1000.slice/session-3.scope",
        Constraint.OTHER,
        id="user-slice-limit",
    ),
    # Global OOM: "global_oom" and no oom_memcg since 4.19.
    pytest.param(NONE, None, FS_CTR, Constraint.SYSTEM, id="global"),
    pytest.param(NONE, FS_CTR, FS_CTR, Constraint.SYSTEM, id="global-despite-a-memcg"),
    pytest.param(MEMCG, None, FS_CTR, Constraint.SYSTEM, id="memcg-word-without-memcg"),
    pytest.param(MEMCG, "/", FS_CTR, Constraint.SYSTEM, id="root-has-no-limit"),
    pytest.param(None, None, None, Constraint.SYSTEM, id="nothing-known"),
    # Not a memory limit at all.
    pytest.param("CONSTRAINT_CPUSET", None, FS_CTR, Constraint.OTHER, id="cpuset"),
    pytest.param("CONSTRAINT_MEMORY_POLICY", None, FS_CTR, Constraint.OTHER, id="mempolicy"),
    pytest.param("CONSTRAINT_FUTURE", FS_CTR, FS_CTR, Constraint.OTHER, id="unknown-word"),
    # Before 4.19: "Task in X killed as a result of limit of Y", no constraint word.
    pytest.param(None, FS_CTR, FS_CTR, Constraint.CONTAINER, id="pre-4.19-container"),
    pytest.param(None, FS_POD, FS_CTR, Constraint.POD, id="pre-4.19-pod"),
    pytest.param("", FS_KUBEPODS, FS_CTR, Constraint.NODE_ALLOCATABLE, id="pre-4.19-kubepods"),
    pytest.param(None, "/", FS_CTR, Constraint.SYSTEM, id="pre-4.19-root"),
    # The victim's cgroup unknown or not under the limited one: the kernel only
    # kills inside the limited subtree, so the limited cgroup's own kind answers.
    pytest.param(MEMCG, FS_CTR, None, Constraint.CONTAINER, id="no-task-container"),
    pytest.param(MEMCG, SD_POD, None, Constraint.POD, id="no-task-pod"),
    pytest.param(MEMCG, SD_QOS, None, Constraint.NODE_ALLOCATABLE, id="no-task-qos"),
    pytest.param(MEMCG, DOCKER, None, Constraint.CONTAINER, id="no-task-docker"),
    pytest.param(MEMCG, HOST, None, Constraint.OTHER, id="no-task-unknown-cgroup"),
    pytest.param(MEMCG, FS_POD, SD_CTR, Constraint.POD, id="task-elsewhere-pod"),
    # Spelling differences that name the same cgroups.
    pytest.param(MEMCG, FS_POD + "/", FS_CTR, Constraint.POD, id="trailing-slash"),
    pytest.param("memcg", FS_POD, FS_CTR, Constraint.POD, id="word-without-prefix"),
    pytest.param(f" {MEMCG} ", FS_CTR, FS_CTR, Constraint.CONTAINER, id="word-with-spaces"),
]


@pytest.mark.parametrize(("constraint", "oom_memcg", "task_memcg", "expected"), KERNEL_CASES)
def test_classify_kernel(
    constraint: str | None, oom_memcg: str | None, task_memcg: str | None, expected: Constraint
) -> None:
    assert classify_kernel(constraint, oom_memcg, task_memcg) is expected


COUNTER_CASES = [
    pytest.param(FS_CTR, [FS_CTR], Constraint.CONTAINER, id="own-cgroup"),
    pytest.param(f"{FS_CTR}/sub", [FS_CTR], Constraint.CONTAINER, id="own-container-nested"),
    pytest.param(FS_POD, [FS_CTR], Constraint.CONTAINER, id="counted-at-pod-hit-in-container"),
    pytest.param(FS_CTR, [FS_POD], Constraint.POD, id="pod"),
    pytest.param(FS_CTR, [FS_QOS], Constraint.NODE_ALLOCATABLE, id="qos"),
    pytest.param(FS_CTR, [FS_KUBEPODS], Constraint.NODE_ALLOCATABLE, id="kubepods"),
    pytest.param(SD_CTR, [SD_POD], Constraint.POD, id="sd-pod"),
    pytest.param(SD_CTR, [SD_QOS], Constraint.NODE_ALLOCATABLE, id="sd-qos"),
    pytest.param(G_CTR, ["/kubepods.slice/"], Constraint.NODE_ALLOCATABLE, id="sd-guaranteed"),
    pytest.param(NS_CTR, [NS_QOS], Constraint.NODE_ALLOCATABLE, id="ns-qos"),
    pytest.param(FS_CTR, [HOST], Constraint.OTHER, id="ancestor-above-kubepods"),
    pytest.param(FS_CTR, [], Constraint.SYSTEM, id="nothing"),
    pytest.param(FS_CTR, [f"{FS_POD}/{SIBLING}"], Constraint.SYSTEM, id="only-a-sibling"),
    pytest.param(FS_CTR, ["/"], Constraint.SYSTEM, id="root-has-no-limit"),
    pytest.param(FS_CTR, [FS_POD, FS_CTR], Constraint.CONTAINER, id="deepest-wins"),
    pytest.param(FS_CTR, [FS_KUBEPODS, FS_POD], Constraint.POD, id="pod-over-kubepods"),
    pytest.param(HOG, [HOG], Constraint.CONTAINER, id="plain-host-own"),
    pytest.param(HOG, [HOST], Constraint.OTHER, id="plain-host-ancestor"),
    pytest.param(DOCKER, [DOCKER], Constraint.CONTAINER, id="docker-own"),
]


@pytest.mark.parametrize(("task", "hits", "expected"), COUNTER_CASES)
def test_classify_counters(task: str, hits: list[str], expected: Constraint) -> None:
    assert classify_counters(parse_cgroup_path(task), hits) is expected


@pytest.mark.parametrize(
    "cases", [pytest.param(KERNEL_CASES, id="kernel"), pytest.param(COUNTER_CASES, id="counters")]
)
def test_every_constraint_has_a_row(cases: Sequence[Any]) -> None:
    assert {case.values[-1] for case in cases} == set(Constraint)


_PATHISH = st.one_of(
    st.none(),
    st.text(),
    st.sampled_from([FS_CTR, FS_POD, FS_KUBEPODS, SD_CTR, NS_CTR, "/", "", "/..", HOG]),
)


@given(
    st.one_of(st.none(), st.text(), st.sampled_from([MEMCG, NONE, "CONSTRAINT_CPUSET"])),
    _PATHISH,
    _PATHISH,
)
def test_classify_kernel_never_raises(
    constraint: str | None, oom_memcg: str | None, task_memcg: str | None
) -> None:
    assert classify_kernel(constraint, oom_memcg, task_memcg) in set(Constraint)


@given(st.text(), st.lists(st.text()))
def test_classify_counters_never_raises(task: str, hits: list[str]) -> None:
    assert classify_counters(parse_cgroup_path(task), hits) in set(Constraint)


# ----- whose limit a kill counted while the agent was down hit ----------------------------

MIB = 1024 * 1024
LIMIT = 32 * MIB
PAGE = 4096


@pytest.mark.parametrize(
    ("peak", "limit", "reached"),
    [
        # Measured on the test host (v1, 6.18): every limit kill left the peak at the limit.
        pytest.param(LIMIT, LIMIT, True, id="limit-kill-measured"),
        pytest.param(LIMIT - 3 * PAGE, LIMIT, True, id="pod-kill-container-3-pages-short"),
        pytest.param(LIMIT - LIMIT_REACHED_MARGIN_BYTES, LIMIT, True, id="at-the-margin"),
        pytest.param(LIMIT - LIMIT_REACHED_MARGIN_BYTES - 1, LIMIT, False, id="below-margin"),
        pytest.param(25_001_984, LIMIT, False, id="no-kill-measured-20-of-32-mib"),
        pytest.param(LIMIT + MIB, LIMIT, True, id="limit-lowered-since"),
        pytest.param(LIMIT, None, False, id="no-limit"),
        pytest.param(None, LIMIT, False, id="no-peak"),
    ],
)
def test_peak_reached_limit(peak: int | None, limit: int | None, reached: bool) -> None:
    assert peak_reached_limit(peak, limit) is reached


def at_limit(cgroup: str) -> LimitEvidence:
    return LimitEvidence(cgroup, None, LIMIT, LIMIT)


def below(cgroup: str) -> LimitEvidence:
    return LimitEvidence(cgroup, None, 20 * MIB, LIMIT)


def unlimited(cgroup: str) -> LimitEvidence:
    return LimitEvidence(cgroup, None, 40 * MIB, None)


WHILE_DOWN_CASES = [
    # cgroup v1 (or no `oom` counts kept): the high-water marks.
    pytest.param(
        [at_limit(FS_CTR), unlimited(FS_POD), unlimited(FS_QOS)], FS_CTR, id="v1-container"
    ),
    pytest.param([unlimited(FS_CTR), at_limit(FS_POD), unlimited(FS_QOS)], FS_POD, id="v1-pod"),
    pytest.param([below(FS_CTR), at_limit(FS_POD)], FS_POD, id="v1-container-below-pod-at"),
    # A single-container pod whose container and pod limits are equal: both peaks sit
    # at the limit, and the lower one is named (the same Event reason either way).
    pytest.param([at_limit(FS_CTR), at_limit(FS_POD)], FS_CTR, id="v1-equal-limits-lowest"),
    pytest.param(
        [unlimited(FS_CTR), unlimited(FS_POD), at_limit(FS_KUBEPODS)],
        FS_KUBEPODS,
        id="v1-node-allocatable",
    ),
    pytest.param([below(FS_CTR), unlimited(FS_POD)], None, id="v1-nothing-reached"),
    pytest.param([], None, id="no-line"),
    # cgroup v2 with the counts of the previous run: exact, the peaks are not asked.
    pytest.param(
        [LimitEvidence(FS_CTR, True), LimitEvidence(FS_POD, False)], FS_CTR, id="v2-container"
    ),
    pytest.param([LimitEvidence(FS_CTR, False), LimitEvidence(FS_POD, True)], FS_POD, id="v2-pod"),
    pytest.param(
        [LimitEvidence(FS_CTR, True), LimitEvidence(FS_POD, True)],
        FS_CTR,
        id="v2-hierarchical-counts-lowest",
    ),
    pytest.param(
        [LimitEvidence(FS_CTR, False, LIMIT, LIMIT), LimitEvidence(FS_POD, False)],
        None,
        id="v2-node-oom-in-a-full-container",
    ),
    # A count unknown for one level (unreadable): its peak stands in for it alone.
    pytest.param(
        [LimitEvidence(FS_CTR, False, LIMIT, LIMIT), at_limit(FS_POD)], FS_POD, id="mixed"
    ),
]


@pytest.mark.parametrize(("line", "expected"), WHILE_DOWN_CASES)
def test_limit_reached_while_down(line: list[LimitEvidence], expected: str | None) -> None:
    assert limit_reached_while_down(line) == expected


@pytest.mark.parametrize(
    ("line", "constraint"),
    [
        ([at_limit(FS_CTR), unlimited(FS_POD)], Constraint.CONTAINER),
        ([unlimited(FS_CTR), at_limit(FS_POD)], Constraint.POD),
        ([unlimited(FS_CTR), unlimited(FS_POD), at_limit(FS_QOS)], Constraint.NODE_ALLOCATABLE),
        ([below(FS_CTR), unlimited(FS_POD)], Constraint.SYSTEM),
    ],
)
def test_what_a_kill_while_down_is_called(
    line: list[LimitEvidence], constraint: Constraint
) -> None:
    hit = limit_reached_while_down(line)
    hits = [] if hit is None else [hit]
    assert classify_counters(parse_cgroup_path(FS_CTR), hits) is constraint
