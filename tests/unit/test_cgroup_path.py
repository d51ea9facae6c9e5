"""Cgroup paths as kubelets, runtimes and kernels really print them.

Paths come from kubelet's cgroup manager tests, cadvisor's containerd/crio factory
tests, the Datadog agent's cgroup reader and pid-mapper fixtures, StackRox
collector's container-id tests, and this project's own test host (TESTING.md).
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oomguard.cgroups.path import (
    MAX_PATH_CHARS,
    ProcCgroup,
    container_id_from_runtime_uri,
    memory_cgroup,
    parse_cgroup_path,
    parse_proc_cgroup,
)
from oomguard.records import CgroupIdentity, CgroupKind

HEX64 = re.compile(r"[0-9a-f]{64}")

# Real ids and pod UIDs, each from the fixture its test row cites.
DD_UID = "15513b48-e7a5-48fc-b9e3-92f713f36504"
DD_ID = "a51a9f7d073f848e7fc59e56e8f11524f330a2175a4ed26327da2dfe0d28015f"
CADVISOR_STATIC_UID = "d76e26fba3bf2bfd215eb29011d55250"
CADVISOR_CTRD_ID = "40af7cdcbe507acad47a5a62025743ad3ddc6ab93b77b21363aa1c1d641047c9"
CRIO_UID = "068e8fa0-9213-11e7-a01f-507b9d4141fa"
CRIO_ID = "81e5c2990803c383229c9680ce964738d5e566d97f5bd436ac34808d2ec75d5f"
BE_UID = "b3922967-14e1-4867-9388-461bac94b37e"
BE_ID = "2327a2aec169e25cf05f2a901486b7463fdb513ae097fc0ae6a3ca94381ddc40"
STATIC_UID = "c704ef4c297ab11032b83ce52cbfc87b"
STATIC_ID = "2327a2aec169e25cf05f2a901486b7463fdb513ae097fc0ae6a3ca94381ddc42"
GUAR_UID = "48d25824-cbe2-4fdc-9928-5bb49e05473d"
GUAR_ID = "c40dff48f1d53c3f07a50aa12bb9ae0e58c0927dc6b1d77e3f166784722642ad"
DOCKER_UID = "ce705797-e47e-11e9-bd71-42010a000002"
DOCKER_ID = "6525e65814a99d431b6978e8f8c895013176c6c58173b56639d4b020c14e6022"
KIND_UID = "6eab3b7b-f0a6-4bb8-bff2-d5bc9017c04b"
KIND_ID = "5ebf11e02dbde102cda4b76bc0e3849a65f9edac7a12bdabfd34db01b9556101"
PLAIN_DOCKER_ID = "951e643e3c241b225b6284ef2b79a37c13fc64cbf65b5d46bda95fcb98fe63a4"


def _u(uid: str) -> str:
    """The systemd driver's spelling of a pod UID."""
    return uid.replace("-", "_")


def ident(path: str, kind: CgroupKind, **fields: str | None) -> CgroupIdentity:
    return CgroupIdentity(path=path, kind=kind, **fields)


def container(
    path: str,
    *,
    qos: str | None,
    pod_uid: str | None,
    container_id: str,
    runtime: str | None,
    pod_path: str | None,
    kubepods_path: str | None,
    container_path: str | None = None,
) -> CgroupIdentity:
    return ident(
        path,
        CgroupKind.CONTAINER,
        qos=qos,
        pod_uid=pod_uid,
        container_id=container_id,
        runtime=runtime,
        container_path=container_path or path,
        pod_path=pod_path,
        kubepods_path=kubepods_path,
    )


# --- systemd driver -----------------------------------------------------------------

_BE_POD = f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{_u(BE_UID)}.slice"
_STATIC_POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice"
_GUAR_POD = f"/kubepods.slice/kubepods-pod{_u(GUAR_UID)}.slice"
_DOCKER_POD = (
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{_u(DOCKER_UID)}.slice"
)

SYSTEMD_CASES = [
    pytest.param(
        f"{_BE_POD}/crio-{BE_ID}.scope",
        container(
            f"{_BE_POD}/crio-{BE_ID}.scope",
            qos="besteffort",
            pod_uid=BE_UID,
            container_id=BE_ID,
            runtime="cri-o",
            pod_path=_BE_POD,
            kubepods_path="/kubepods.slice",
        ),
        id="systemd-besteffort-crio (datadog readerv1_test)",
    ),
    pytest.param(
        f"{_STATIC_POD}/cri-containerd-{STATIC_ID}.scope",
        container(
            f"{_STATIC_POD}/cri-containerd-{STATIC_ID}.scope",
            qos="burstable",
            pod_uid=STATIC_UID,
            container_id=STATIC_ID,
            runtime="containerd",
            pod_path=_STATIC_POD,
            kubepods_path="/kubepods.slice",
        ),
        id="systemd-burstable-containerd-static-pod (datadog readerv1_test)",
    ),
    pytest.param(
        f"{_GUAR_POD}/cri-containerd-{GUAR_ID}.scope",
        container(
            f"{_GUAR_POD}/cri-containerd-{GUAR_ID}.scope",
            qos="guaranteed",
            pod_uid=GUAR_UID,
            container_id=GUAR_ID,
            runtime="containerd",
            pod_path=_GUAR_POD,
            kubepods_path="/kubepods.slice",
        ),
        id="systemd-guaranteed-containerd (datadog containerutils)",
    ),
    pytest.param(
        f"{_DOCKER_POD}/docker-{DOCKER_ID}.scope",
        container(
            f"{_DOCKER_POD}/docker-{DOCKER_ID}.scope",
            qos="burstable",
            pod_uid=DOCKER_UID,
            container_id=DOCKER_ID,
            runtime="docker",
            pod_path=_DOCKER_POD,
            kubepods_path="/kubepods.slice",
        ),
        id="systemd-burstable-docker (stackrox collector)",
    ),
    pytest.param(
        f"{_BE_POD}/crio-{BE_ID}.scope/container",
        container(
            f"{_BE_POD}/crio-{BE_ID}.scope/container",
            container_path=f"{_BE_POD}/crio-{BE_ID}.scope",
            qos="besteffort",
            pod_uid=BE_UID,
            container_id=BE_ID,
            runtime="cri-o",
            pod_path=_BE_POD,
            kubepods_path="/kubepods.slice",
        ),
        id="systemd-crio-crun-subgroup (nested in the container)",
    ),
    pytest.param(
        f"{_GUAR_POD}/cri-containerd-{GUAR_ID}.scope/init.scope/deeper",
        container(
            f"{_GUAR_POD}/cri-containerd-{GUAR_ID}.scope/init.scope/deeper",
            container_path=f"{_GUAR_POD}/cri-containerd-{GUAR_ID}.scope",
            qos="guaranteed",
            pod_uid=GUAR_UID,
            container_id=GUAR_ID,
            runtime="containerd",
            pod_path=_GUAR_POD,
            kubepods_path="/kubepods.slice",
        ),
        id="systemd-nested-two-deep",
    ),
    pytest.param(
        f"{_BE_POD}/crio-conmon-{BE_ID}.scope",
        ident(
            f"{_BE_POD}/crio-conmon-{BE_ID}.scope",
            CgroupKind.OTHER,
            qos="besteffort",
            pod_uid=BE_UID,
            unit=f"crio-conmon-{BE_ID}.scope",
            pod_path=_BE_POD,
            kubepods_path="/kubepods.slice",
        ),
        id="systemd-crio-conmon-is-not-a-container",
    ),
    pytest.param(
        "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{_u(KIND_UID)}.slice/cri-containerd-{KIND_ID}.scope",
        container(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
            f"kubelet-kubepods-besteffort-pod{_u(KIND_UID)}.slice/cri-containerd-{KIND_ID}.scope",
            qos="besteffort",
            pod_uid=KIND_UID,
            container_id=KIND_ID,
            runtime="containerd",
            pod_path="/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
            f"kubelet-kubepods-besteffort-pod{_u(KIND_UID)}.slice",
            kubepods_path="/kubelet.slice/kubelet-kubepods.slice",
        ),
        id="systemd-custom-cgroup-root-kind",
    ),
    pytest.param(
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{_u(BE_UID)}.slice:"
        f"crio:{BE_ID}",
        container(
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{_u(BE_UID)}"
            f".slice:crio:{BE_ID}",
            qos="besteffort",
            pod_uid=BE_UID,
            container_id=BE_ID,
            runtime="cri-o",
            pod_path=None,
            kubepods_path="/kubepods.slice",
        ),
        id="systemd-cgroupspath-as-one-name-under-its-qos-level",
    ),
]

# --- cgroupfs driver ----------------------------------------------------------------

_DD_POD = f"/kubepods/burstable/pod{DD_UID}"
_STATIC_FS_POD = f"/kubepods/besteffort/pod{CADVISOR_STATIC_UID}"
_CRIO_FS_POD = f"/kubepods/pod{CRIO_UID}"

CGROUPFS_CASES = [
    pytest.param(
        f"{_DD_POD}/{DD_ID}",
        container(
            f"{_DD_POD}/{DD_ID}",
            qos="burstable",
            pod_uid=DD_UID,
            container_id=DD_ID,
            runtime=None,
            pod_path=_DD_POD,
            kubepods_path="/kubepods",
        ),
        id="cgroupfs-burstable-bare-id (datadog pid_mapper_test)",
    ),
    pytest.param(
        f"{_STATIC_FS_POD}/{CADVISOR_CTRD_ID}",
        container(
            f"{_STATIC_FS_POD}/{CADVISOR_CTRD_ID}",
            qos="besteffort",
            pod_uid=CADVISOR_STATIC_UID,
            container_id=CADVISOR_CTRD_ID,
            runtime=None,
            pod_path=_STATIC_FS_POD,
            kubepods_path="/kubepods",
        ),
        id="cgroupfs-besteffort-static-pod (cadvisor containerd factory_test)",
    ),
    pytest.param(
        f"{_CRIO_FS_POD}/crio-{CRIO_ID}",
        container(
            f"{_CRIO_FS_POD}/crio-{CRIO_ID}",
            qos="guaranteed",
            pod_uid=CRIO_UID,
            container_id=CRIO_ID,
            runtime="cri-o",
            pod_path=_CRIO_FS_POD,
            kubepods_path="/kubepods",
        ),
        id="cgroupfs-guaranteed-crio (cadvisor crio factory_test)",
    ),
    pytest.param(
        f"{_CRIO_FS_POD}/crio-{CRIO_ID}.scope",
        container(
            f"{_CRIO_FS_POD}/crio-{CRIO_ID}.scope",
            qos="guaranteed",
            pod_uid=CRIO_UID,
            container_id=CRIO_ID,
            runtime="cri-o",
            pod_path=_CRIO_FS_POD,
            kubepods_path="/kubepods",
        ),
        id="cgroupfs-guaranteed-crio-scope (cadvisor crio factory_test)",
    ),
    pytest.param(
        f"{_CRIO_FS_POD}/crio-conmon-{CRIO_ID}",
        ident(
            f"{_CRIO_FS_POD}/crio-conmon-{CRIO_ID}",
            CgroupKind.OTHER,
            qos="guaranteed",
            pod_uid=CRIO_UID,
            unit=f"crio-conmon-{CRIO_ID}",
            pod_path=_CRIO_FS_POD,
            kubepods_path="/kubepods",
        ),
        id="cgroupfs-crio-conmon-is-not-a-container (cadvisor crio factory_test)",
    ),
    pytest.param(
        f"{_DD_POD}/cri-containerd-{DD_ID}",
        container(
            f"{_DD_POD}/cri-containerd-{DD_ID}",
            qos="burstable",
            pod_uid=DD_UID,
            container_id=DD_ID,
            runtime="containerd",
            pod_path=_DD_POD,
            kubepods_path="/kubepods",
        ),
        id="cgroupfs-cri-containerd-prefix",
    ),
    pytest.param(
        f"{_DD_POD}/{DD_ID}/nested/deeper",
        container(
            f"{_DD_POD}/{DD_ID}/nested/deeper",
            container_path=f"{_DD_POD}/{DD_ID}",
            qos="burstable",
            pod_uid=DD_UID,
            container_id=DD_ID,
            runtime=None,
            pod_path=_DD_POD,
            kubepods_path="/kubepods",
        ),
        id="cgroupfs-nested-in-container",
    ),
    pytest.param(
        f"/kubepods/kubepods-besteffort/kubepods-besteffort-pod{_u(BE_UID)}/{BE_ID}",
        container(
            f"/kubepods/kubepods-besteffort/kubepods-besteffort-pod{_u(BE_UID)}/{BE_ID}",
            qos="besteffort",
            pod_uid=BE_UID,
            container_id=BE_ID,
            runtime=None,
            pod_path=f"/kubepods/kubepods-besteffort/kubepods-besteffort-pod{_u(BE_UID)}",
            kubepods_path="/kubepods",
        ),
        id="mixed-names-without-slice-suffix (datadog readerv1_test)",
    ),
]

# --- the levels above a container ---------------------------------------------------

LEVEL_CASES = [
    pytest.param(
        "/kubepods",
        ident("/kubepods", CgroupKind.KUBEPODS, kubepods_path="/kubepods"),
        id="kubepods-cgroupfs",
    ),
    pytest.param(
        "/kubepods.slice",
        ident("/kubepods.slice", CgroupKind.KUBEPODS, kubepods_path="/kubepods.slice"),
        id="kubepods-systemd",
    ),
    pytest.param(
        "/kubepods/burstable",
        ident("/kubepods/burstable", CgroupKind.QOS, qos="burstable", kubepods_path="/kubepods"),
        id="qos-cgroupfs",
    ),
    pytest.param(
        "/kubepods.slice/kubepods-besteffort.slice",
        ident(
            "/kubepods.slice/kubepods-besteffort.slice",
            CgroupKind.QOS,
            qos="besteffort",
            kubepods_path="/kubepods.slice",
        ),
        id="qos-systemd",
    ),
    pytest.param(
        _DD_POD,
        ident(
            _DD_POD,
            CgroupKind.POD,
            qos="burstable",
            pod_uid=DD_UID,
            pod_path=_DD_POD,
            kubepods_path="/kubepods",
        ),
        id="pod-cgroupfs-burstable",
    ),
    pytest.param(
        _CRIO_FS_POD,
        ident(
            _CRIO_FS_POD,
            CgroupKind.POD,
            qos="guaranteed",
            pod_uid=CRIO_UID,
            pod_path=_CRIO_FS_POD,
            kubepods_path="/kubepods",
        ),
        id="pod-cgroupfs-guaranteed",
    ),
    pytest.param(
        _GUAR_POD,
        ident(
            _GUAR_POD,
            CgroupKind.POD,
            qos="guaranteed",
            pod_uid=GUAR_UID,
            pod_path=_GUAR_POD,
            kubepods_path="/kubepods.slice",
        ),
        id="pod-systemd-guaranteed",
    ),
    pytest.param(
        _STATIC_POD,
        ident(
            _STATIC_POD,
            CgroupKind.POD,
            qos="burstable",
            pod_uid=STATIC_UID,
            pod_path=_STATIC_POD,
            kubepods_path="/kubepods.slice",
        ),
        id="pod-systemd-static-config-hash",
    ),
]

KUBERNETES_CASES = SYSTEMD_CASES + CGROUPFS_CASES + LEVEL_CASES


@pytest.mark.parametrize(("path", "expected"), KUBERNETES_CASES)
def test_kubernetes_paths(path: str, expected: CgroupIdentity) -> None:
    assert parse_cgroup_path(path) == expected


PREFIXES = [
    pytest.param("/process_api/0f5e6d7c8b9a01234567890abcdef012/oomlab-5671", id="test-host"),
    pytest.param(f"/docker/{PLAIN_DOCKER_ID}/kubelet", id="kind-on-cgroupfs-docker"),
    pytest.param(
        "/machine.slice/libpod-cbdfa0f1f08763b1963c30d98e11e1f052cb67f1e9b7c0ab8a6ca6c70cbcad69"
        ".scope/container",
        id="kind-on-podman",
    ),
    pytest.param("/kubepods", id="docker-desktop-kubepods-twice"),
    pytest.param("/../../..", id="cgroup-namespace"),
]


def _with_prefix(expected: CgroupIdentity, prefix: str) -> CgroupIdentity:
    return dataclasses.replace(
        expected,
        **{
            name: None if value is None else prefix + value
            for name, value in {
                "path": expected.path,
                "container_path": expected.container_path,
                "pod_path": expected.pod_path,
                "kubepods_path": expected.kubepods_path,
            }.items()
        },
    )


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(("path", "expected"), KUBERNETES_CASES)
def test_any_prefix_before_kubepods(prefix: str, path: str, expected: CgroupIdentity) -> None:
    assert parse_cgroup_path(prefix + path) == _with_prefix(expected, prefix)


@pytest.mark.parametrize(("path", "expected"), KUBERNETES_CASES)
def test_trailing_slash_keeps_the_levels(path: str, expected: CgroupIdentity) -> None:
    assert parse_cgroup_path(path + "/") == dataclasses.replace(expected, path=path + "/")


REAL_NESTED_CASES = [
    pytest.param(
        "/docker/88ea268ece65a02d68b169fd74bcbcb427eb7f28900db0e3b906fb2eeb7341df/kubelet/"
        "kubepods/burstable/poda5ea884f-9e60-4912-bd62-fef9a31db47a/"
        "a51a9f7d073f848e7fc59e56e8f11524f330a2175a4ed26327da2dfe0d28015e",
        "a5ea884f-9e60-4912-bd62-fef9a31db47a",
        "a51a9f7d073f848e7fc59e56e8f11524f330a2175a4ed26327da2dfe0d28015e",
        id="docker-in-docker (datadog pid_mapper_test)",
    ),
    pytest.param(
        "/mesos/3b1cf944-1d97-40a6-ac73-b156ac2f2bfe/mesos/077d75a1-d7b6-4e55-8114-13f925fe4f49/"
        "kubepods/besteffort/pod8e18d5f1-1421-42b7-8151-fb1c3be4bd4d/"
        "e73c55f3e7f5b6a9cfc32a89bf13e44d348bcc4fa7b079f804d61fb1532ddbe5",
        "8e18d5f1-1421-42b7-8151-fb1c3be4bd4d",
        "e73c55f3e7f5b6a9cfc32a89bf13e44d348bcc4fa7b079f804d61fb1532ddbe5",
        id="mesos (stackrox collector)",
    ),
    pytest.param(
        "/kubepods/kubepods/besteffort/pod690705f9-df6e-11e9-8dc5-025000000001/"
        "c3bfd81b7da0be97190a74a7d459f4dfa18f57c88765cde2613af112020a1c4b",
        "690705f9-df6e-11e9-8dc5-025000000001",
        "c3bfd81b7da0be97190a74a7d459f4dfa18f57c88765cde2613af112020a1c4b",
        id="docker-desktop-kubepods-twice (stackrox collector)",
    ),
    pytest.param(
        "/libpod_parent/libpod-6dc3fdffbf66b1239d55e98da9aaa759ea51ed35d04eb09d19ebd78963aa26c2/"
        "kubepods.slice/kubepods-burstable.slice/"
        "kubepods-burstable-poda2acd1bccd50fd7790183537181f658e.slice/"
        "docker-1575e8b4a92a9c340a657f3df4ddc0f6a6305c200879f3898b26368ad019b503.scope",
        "a2acd1bccd50fd7790183537181f658e",
        "1575e8b4a92a9c340a657f3df4ddc0f6a6305c200879f3898b26368ad019b503",
        id="libpod-parent (datadog readerv1_test)",
    ),
    pytest.param(
        "/kuberuntime.slice/containerd.service/"
        "kubepods-burstable-pod5be537b8_3a4e_4607_af71_31598b3a4fd3.slice:cri-containerd:"
        "1c8f503430973935b7d8a80c4f58c0946b052a021e6855b358e5ec38601af120",
        "5be537b8-3a4e-4607-af71-31598b3a4fd3",
        "1c8f503430973935b7d8a80c4f58c0946b052a021e6855b358e5ec38601af120",
        id="systemd-cgroupspath-as-one-name (datadog pid_mapper_test)",
    ),
]


@pytest.mark.parametrize(("path", "pod_uid", "container_id"), REAL_NESTED_CASES)
def test_real_paths_under_other_hierarchies(path: str, pod_uid: str, container_id: str) -> None:
    got = parse_cgroup_path(path)
    assert got.kind is CgroupKind.CONTAINER
    assert (got.pod_uid, got.container_id) == (pod_uid, container_id)


def test_cgroupspath_as_one_name_has_no_pod_level() -> None:
    path = (
        "/kuberuntime.slice/containerd.service/"
        f"kubepods-besteffort-pod{_u(BE_UID)}.slice:crio:{BE_ID}"
    )
    assert parse_cgroup_path(path) == container(
        path,
        qos="besteffort",
        pod_uid=BE_UID,
        container_id=BE_ID,
        runtime="cri-o",
        pod_path=None,
        kubepods_path=None,
    )


# --- seen from inside a private cgroup namespace ------------------------------------

_NS_DD = (
    f"kubepods-burstable.slice/kubepods-burstable-pod562c01d6_6aba_49fe_ae52_61c40c04eca4.slice"
    f"/docker-{DD_ID}.scope"
)

NAMESPACE_CASES = [
    pytest.param(
        f"/../../../{_NS_DD}",
        container(
            f"/../../../{_NS_DD}",
            qos="burstable",
            pod_uid="562c01d6-6aba-49fe-ae52-61c40c04eca4",
            container_id=DD_ID,
            runtime="docker",
            pod_path="/../../../kubepods-burstable.slice/"
            "kubepods-burstable-pod562c01d6_6aba_49fe_ae52_61c40c04eca4.slice",
            kubepods_path=None,
        ),
        id="systemd-other-pod (datadog pid_mapper_test, kernel spelling)",
    ),
    pytest.param(
        f"../../../{_NS_DD}",
        container(
            f"../../../{_NS_DD}",
            qos="burstable",
            pod_uid="562c01d6-6aba-49fe-ae52-61c40c04eca4",
            container_id=DD_ID,
            runtime="docker",
            pod_path="../../../kubepods-burstable.slice/"
            "kubepods-burstable-pod562c01d6_6aba_49fe_ae52_61c40c04eca4.slice",
            kubepods_path=None,
        ),
        id="systemd-other-pod (datadog pid_mapper_test, verbatim without slash)",
    ),
    pytest.param(
        f"/../../kubepods-pod{_u(GUAR_UID)}.slice/cri-containerd-{GUAR_ID}.scope",
        container(
            f"/../../kubepods-pod{_u(GUAR_UID)}.slice/cri-containerd-{GUAR_ID}.scope",
            qos="guaranteed",
            pod_uid=GUAR_UID,
            container_id=GUAR_ID,
            runtime="containerd",
            pod_path=f"/../../kubepods-pod{_u(GUAR_UID)}.slice",
            kubepods_path=None,
        ),
        id="systemd-guaranteed-pod",
    ),
    pytest.param(
        f"/../cri-containerd-{GUAR_ID}.scope",
        container(
            f"/../cri-containerd-{GUAR_ID}.scope",
            qos=None,
            pod_uid=None,
            container_id=GUAR_ID,
            runtime="containerd",
            pod_path=None,
            kubepods_path=None,
        ),
        id="systemd-sibling-container-same-pod",
    ),
    pytest.param(
        f"/../../pod{DD_UID}/{DD_ID}",
        container(
            f"/../../pod{DD_UID}/{DD_ID}",
            qos=None,
            pod_uid=DD_UID,
            container_id=DD_ID,
            runtime=None,
            pod_path=f"/../../pod{DD_UID}",
            kubepods_path=None,
        ),
        id="cgroupfs-other-pod-qos-hidden",
    ),
    pytest.param(
        f"/../../../besteffort/pod{DD_UID}/{DD_ID}",
        container(
            f"/../../../besteffort/pod{DD_UID}/{DD_ID}",
            qos="besteffort",
            pod_uid=DD_UID,
            container_id=DD_ID,
            runtime=None,
            pod_path=f"/../../../besteffort/pod{DD_UID}",
            kubepods_path=None,
        ),
        id="cgroupfs-other-qos",
    ),
    pytest.param(
        "/../../../kubepods-besteffort.slice",
        ident("/../../../kubepods-besteffort.slice", CgroupKind.QOS, qos="besteffort"),
        id="systemd-qos-level",
    ),
    pytest.param(
        "/../../../../system.slice/containerd.service",
        ident(
            "/../../../../system.slice/containerd.service",
            CgroupKind.SYSTEMD_UNIT,
            unit="containerd.service",
            container_path="/../../../../system.slice/containerd.service",
        ),
        id="host-service",
    ),
    pytest.param("/../..", ident("/../..", CgroupKind.OTHER), id="an-ancestor-out-of-view"),
    pytest.param(
        f"/../crio-conmon-{BE_ID}.scope",
        ident(
            f"/../crio-conmon-{BE_ID}.scope",
            CgroupKind.SYSTEMD_UNIT,
            unit=f"crio-conmon-{BE_ID}.scope",
            container_path=f"/../crio-conmon-{BE_ID}.scope",
        ),
        id="conmon-with-its-pod-out-of-view-is-a-plain-unit",
    ),
    # Read under "besteffort" as its QoS level the name does not fit; read by itself
    # (a systemd name spells its own ancestry) it does, and that is the only reading.
    pytest.param(
        f"/../besteffort/kubepods-burstable-pod{_u(BE_UID)}.slice:crio:{BE_ID}",
        container(
            f"/../besteffort/kubepods-burstable-pod{_u(BE_UID)}.slice:crio:{BE_ID}",
            qos="burstable",
            pod_uid=BE_UID,
            container_id=BE_ID,
            runtime="cri-o",
            pod_path=None,
            kubepods_path=None,
        ),
        id="one-name-of-another-class-than-the-cgroupfs-qos-above",
    ),
]


@pytest.mark.parametrize(("path", "expected"), NAMESPACE_CASES)
def test_cgroup_namespace_view(path: str, expected: CgroupIdentity) -> None:
    assert parse_cgroup_path(path) == expected


# --- off Kubernetes -----------------------------------------------------------------

OFF_KUBERNETES_CASES = [
    pytest.param(
        "/system.slice/nginx.service",
        ident(
            "/system.slice/nginx.service",
            CgroupKind.SYSTEMD_UNIT,
            unit="nginx.service",
            container_path="/system.slice/nginx.service",
        ),
        id="service",
    ),
    pytest.param(
        "/user.slice/user-1000.slice/session-3.scope",
        ident(
            "/user.slice/user-1000.slice/session-3.scope",
            CgroupKind.SYSTEMD_UNIT,
            unit="session-3.scope",
            container_path="/user.slice/user-1000.slice/session-3.scope",
        ),
        id="login-session-scope",
    ),
    pytest.param(
        "/user.slice/user-1000.slice/user@1000.service/apps.slice/apps-org.gnome.Terminal.slice/"
        "vte-spawn-f9176c6a-2a34-4ce2-86af-60d16888ed8e.scope",
        ident(
            "/user.slice/user-1000.slice/user@1000.service/apps.slice/apps-org.gnome.Terminal"
            ".slice/vte-spawn-f9176c6a-2a34-4ce2-86af-60d16888ed8e.scope",
            CgroupKind.SYSTEMD_UNIT,
            unit="vte-spawn-f9176c6a-2a34-4ce2-86af-60d16888ed8e.scope",
            container_path="/user.slice/user-1000.slice/user@1000.service/apps.slice/"
            "apps-org.gnome.Terminal.slice/vte-spawn-f9176c6a-2a34-4ce2-86af-60d16888ed8e.scope",
        ),
        id="user-manager-app-scope (datadog containerutils)",
    ),
    pytest.param(
        "/user.slice/user-1000.slice",
        ident("/user.slice/user-1000.slice", CgroupKind.SYSTEMD_UNIT, unit="user-1000.slice"),
        id="slice-owns-nothing",
    ),
    pytest.param(
        "/system.slice/system-systemd\\x2dcoredump.slice",
        ident(
            "/system.slice/system-systemd\\x2dcoredump.slice",
            CgroupKind.SYSTEMD_UNIT,
            unit="system-systemd\\x2dcoredump.slice",
        ),
        id="escaped-slice (cadvisor crio factory_test)",
    ),
    pytest.param(
        "/system.slice/run-containerd-io.containerd.runtime.v1.linux-k8s.io-"
        "14ae50f1d3ada102aec3ab00168fdafb2dc0986d79ca9e8d5b75581fa89e9fea-rootfs.mount",
        ident(
            "/system.slice/run-containerd-io.containerd.runtime.v1.linux-k8s.io-"
            "14ae50f1d3ada102aec3ab00168fdafb2dc0986d79ca9e8d5b75581fa89e9fea-rootfs.mount",
            CgroupKind.SYSTEMD_UNIT,
            unit="run-containerd-io.containerd.runtime.v1.linux-k8s.io-"
            "14ae50f1d3ada102aec3ab00168fdafb2dc0986d79ca9e8d5b75581fa89e9fea-rootfs.mount",
            container_path="/system.slice/run-containerd-io.containerd.runtime.v1.linux-k8s.io-"
            "14ae50f1d3ada102aec3ab00168fdafb2dc0986d79ca9e8d5b75581fa89e9fea-rootfs.mount",
        ),
        id="mount-unit-is-no-container (cadvisor containerd factory_test)",
    ),
    pytest.param(
        "/machine.slice/libpod-e9cf81e3b1d172752567c8fe6ac48c1c751b9237ab47bf55cbfd5a971a4a9519"
        ".scope/container",
        ident(
            "/machine.slice/libpod-e9cf81e3b1d172752567c8fe6ac48c1c751b9237ab47bf55cbfd5a971a4a9519"
            ".scope/container",
            CgroupKind.SYSTEMD_UNIT,
            unit="libpod-e9cf81e3b1d172752567c8fe6ac48c1c751b9237ab47bf55cbfd5a971a4a9519.scope",
            container_path="/machine.slice/"
            "libpod-e9cf81e3b1d172752567c8fe6ac48c1c751b9237ab47bf55cbfd5a971a4a9519.scope",
        ),
        id="podman-is-a-unit (stackrox collector)",
    ),
    pytest.param(
        f"/docker/{PLAIN_DOCKER_ID}",
        ident(
            f"/docker/{PLAIN_DOCKER_ID}",
            CgroupKind.DOCKER,
            container_id=PLAIN_DOCKER_ID,
            runtime="docker",
            container_path=f"/docker/{PLAIN_DOCKER_ID}",
        ),
        id="docker-cgroupfs (stackrox collector)",
    ),
    pytest.param(
        f"/system.slice/docker-{PLAIN_DOCKER_ID}.scope",
        ident(
            f"/system.slice/docker-{PLAIN_DOCKER_ID}.scope",
            CgroupKind.DOCKER,
            container_id=PLAIN_DOCKER_ID,
            runtime="docker",
            container_path=f"/system.slice/docker-{PLAIN_DOCKER_ID}.scope",
        ),
        id="docker-systemd",
    ),
    pytest.param(
        f"/docker/{PLAIN_DOCKER_ID}/system.slice/sshd.service",
        ident(
            f"/docker/{PLAIN_DOCKER_ID}/system.slice/sshd.service",
            CgroupKind.DOCKER,
            container_id=PLAIN_DOCKER_ID,
            runtime="docker",
            container_path=f"/docker/{PLAIN_DOCKER_ID}",
        ),
        id="docker-nested-systemd-inside",
    ),
    pytest.param("/", ident("/", CgroupKind.ROOT), id="root"),
    pytest.param(
        "/process_api/a1135aa7de6c4b0b9a2ff3d33f7d9e7c/oomlab-5671/a-hog-alone",
        ident(
            "/process_api/a1135aa7de6c4b0b9a2ff3d33f7d9e7c/oomlab-5671/a-hog-alone",
            CgroupKind.OTHER,
        ),
        id="test-host-scratch-cgroup (TESTING.md)",
    ),
    pytest.param(
        "/ecs/8474ac4cec7a4f488834b00591271ec3/8474ac4cec7a4f488834b00591271ec3-3054012820",
        ident(
            "/ecs/8474ac4cec7a4f488834b00591271ec3/8474ac4cec7a4f488834b00591271ec3-3054012820",
            CgroupKind.OTHER,
        ),
        id="ecs-fargate (datadog pid_mapper_test)",
    ),
]


@pytest.mark.parametrize(("path", "expected"), OFF_KUBERNETES_CASES)
def test_off_kubernetes(path: str, expected: CgroupIdentity) -> None:
    assert parse_cgroup_path(path) == expected


# --- hostile input: the honest answer is "not a container" --------------------------

HOSTILE_CASES = [
    pytest.param("", id="empty"),
    pytest.param("/..", id="only-up"),
    pytest.param(f"/kubepods/burstable/../besteffort/pod{DD_UID}/{DD_ID}", id="dotdot-inside"),
    pytest.param(f"/kubepods/./burstable/pod{DD_UID}/{DD_ID}", id="dot-inside"),
    pytest.param(f"/kubepods/burstable/pod{DD_UID}/{DD_ID}\0", id="nul-byte"),
    pytest.param(f"/kubepods/burstable/pod{DD_UID}/{DD_ID}\n", id="trailing-newline"),
    pytest.param(f"/kubepods /burstable/pod{DD_UID}/{DD_ID}", id="space-in-level-name"),
    pytest.param(f"/kubepods/burstable/podXYZ/{DD_ID}", id="pod-uid-not-hex"),
    pytest.param(f"/kubepods/burstable/pod{DD_UID[:-1]}/{DD_ID}", id="pod-uid-short"),
    pytest.param(f"/kubepods/burstable/pod{DD_UID.upper()}/{DD_ID}", id="pod-uid-uppercase"),
    pytest.param(f"/kubepods/burstable/pod{_u(DD_UID)}/{DD_ID}", id="cgroupfs-uid-underscored"),
    pytest.param(
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{DD_UID}.slice/"
        f"cri-containerd-{DD_ID}.scope",
        id="systemd-uid-with-dashes",
    ),
    pytest.param(f"/kubepods/burstable/pod{DD_UID}/{DD_ID[:-1]}", id="id-63-hex"),
    pytest.param(f"/kubepods/burstable/pod{DD_UID}/{DD_ID}0", id="id-65-hex"),
    pytest.param(f"/kubepods/burstable/pod{DD_UID}/{DD_ID.upper()}", id="id-uppercase"),
    pytest.param(
        f"/kubepods/pod{CRIO_UID}/crio-990803c383229c9680ce964738d5e566d97f5bd436ac34808d2ec75",
        id="crio-short-id (cadvisor crio factory_test)",
    ),
    pytest.param(
        f"/kubepods/pod{CRIO_UID}/crio-{CRIO_ID}.mount",
        id="crio-mount (cadvisor crio factory_test)",
    ),
    pytest.param(
        f"/kubepods/pod{CRIO_UID}/no-crio-conmon-{CRIO_ID}",
        id="not-conmon (cadvisor crio factory_test)",
    ),
    pytest.param(f"/kubepods/burstable/pod{DD_UID}/{DD_ID}.scope", id="bare-id-as-scope"),
    pytest.param(f"/kubepods/burstable/pod{DD_UID}/containerd-{DD_ID}", id="unknown-runtime"),
    pytest.param(f"/kubepods/burstable/pod{DD_UID}/not-a-container", id="junk-under-pod"),
    pytest.param("/kubepods/guaranteed", id="no-guaranteed-qos-level"),
    pytest.param("/kubepods/burstable/besteffort", id="qos-under-qos"),
    pytest.param(f"/kubepods/{DD_ID}", id="container-without-pod"),
    pytest.param(f"/kubepods.slice/pod{DD_UID}/{DD_ID}", id="cgroupfs-pod-under-systemd-root"),
    pytest.param(
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{_u(BE_UID)}.slice/"
        f"crio-{BE_ID}.scope",
        id="systemd-pod-under-the-wrong-qos",
    ),
    pytest.param(
        f"/kubepods.slice/kubepods-burstable-pod{_u(BE_UID)}.slice/crio-{BE_ID}.scope",
        id="systemd-burstable-pod-without-qos-level",
    ),
    pytest.param(
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-pod{_u(BE_UID)}.slice/"
        f"crio-{BE_ID}.scope",
        id="systemd-guaranteed-pod-under-a-qos-level",
    ),
    pytest.param(
        f"/kubepods/besteffort/pod{DD_UID}/{DD_ID}/kubepods/burstable/pod{CRIO_UID}/{CRIO_ID}",
        id="kubepods-twice-both-fit",
    ),
    pytest.param(
        f"/kubepods.slice/burstable/pod{DD_UID}/{DD_ID}", id="cgroupfs-qos-under-systemd-root"
    ),
    pytest.param(
        f"/kubelet.slice/kubelet-kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{_u(BE_UID)}.slice/crio-{BE_ID}.scope",
        id="systemd-qos-under-another-cgroup-root",
    ),
    pytest.param(
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{_u(BE_UID)}.slice:"
        f"crio:{BE_ID}",
        id="systemd-cgroupspath-as-one-name-under-the-wrong-qos",
    ),
    pytest.param(f"/../besteffort/{DD_ID}", id="namespace-qos-then-container-without-pod"),
    pytest.param(
        f"/../besteffort/kubepods-burstable-pod{_u(BE_UID)}.slice/junk",
        id="namespace-pod-of-another-class-than-the-qos-above-then-junk",
    ),
    pytest.param(f"/kubepods/burstable/pod{DD_UID}/\uff43{DD_ID[1:]}", id="unicode-lookalike"),
    pytest.param(f"/kubepods/burstable/pod{DD_UID}/{DD_ID[:-1]}\u0663", id="unicode-digit"),
    pytest.param("/ñ.service", id="unicode-unit"),
    pytest.param("/" + "a" * (MAX_PATH_CHARS + 1), id="huge"),
    pytest.param(f"{_DD_POD}/{DD_ID}" + "/x" * MAX_PATH_CHARS, id="huge-nesting"),
    pytest.param("/docker/not-an-id", id="docker-without-id"),
]


@pytest.mark.parametrize("path", HOSTILE_CASES)
def test_hostile_input_is_not_a_container(path: str) -> None:
    got = parse_cgroup_path(path)
    assert got.kind is CgroupKind.OTHER
    assert got.container_id is None
    assert got.path == path


def test_missing_leading_slash_reads_as_relative_to_the_root() -> None:
    # Tools print cgroup paths both ways; the levels keep the caller's spelling.
    got = parse_cgroup_path(f"kubepods/burstable/pod{DD_UID}/{DD_ID}")
    assert got == container(
        f"kubepods/burstable/pod{DD_UID}/{DD_ID}",
        qos="burstable",
        pod_uid=DD_UID,
        container_id=DD_ID,
        runtime=None,
        pod_path=f"kubepods/burstable/pod{DD_UID}",
        kubepods_path="kubepods",
    )


def test_double_slashes_do_not_hide_a_container() -> None:
    got = parse_cgroup_path(f"//kubepods//burstable/pod{DD_UID}///{DD_ID}")
    assert (got.kind, got.container_id, got.pod_path) == (
        CgroupKind.CONTAINER,
        DD_ID,
        f"/kubepods/burstable/pod{DD_UID}",
    )


def test_non_string_input_does_not_raise() -> None:
    assert parse_cgroup_path(None).kind is CgroupKind.OTHER  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------


def _check_invariants(path: str) -> None:
    got = parse_cgroup_path(path)
    assert got.path == path
    if got.kind is CgroupKind.CONTAINER:
        assert got.container_id is not None
        assert HEX64.fullmatch(got.container_id)
        assert got.container_path is not None
    # Every level is an ancestor-or-self of the path, spelled with the same prefix.
    parts = [part for part in path.split("/") if part]
    lead = "/" if path.startswith("/") else ""
    for level in (got.container_path, got.pod_path, got.kubepods_path):
        if level is not None:
            level_parts = level[len(lead) :].split("/")
            assert level.startswith(lead)
            assert parts[: len(level_parts)] == level_parts


@given(st.text())
def test_arbitrary_text_never_raises(path: str) -> None:
    _check_invariants(path)


_PIECES = [
    "kubepods",
    "kubepods.slice",
    "kubepods-burstable.slice",
    "kubepods-besteffort.slice",
    "burstable",
    "besteffort",
    f"pod{DD_UID}",
    f"pod{STATIC_UID}",
    f"kubepods-burstable-pod{_u(DD_UID)}.slice",
    f"kubepods-pod{_u(DD_UID)}.slice",
    DD_ID,
    f"cri-containerd-{DD_ID}.scope",
    f"crio-conmon-{DD_ID}.scope",
    f"kubepods-burstable-pod{_u(DD_UID)}.slice:crio:{DD_ID}",
    "docker",
    f"docker-{DD_ID}.scope",
    "system.slice",
    "x.service",
    "..",
    ".",
    "",
    "\0",
    "ñ",
]


@given(st.lists(st.sampled_from(_PIECES), max_size=10), st.booleans())
def test_shuffled_real_names_never_raise(pieces: list[str], lead: bool) -> None:
    _check_invariants(("/" if lead else "") + "/".join(pieces))


_UIDS = st.uuids().map(str) | st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
_IDS = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
_PREFIX_NAMES = st.lists(
    st.from_regex(r"[a-z0-9_]{1,12}", fullmatch=True).filter(
        lambda name: name not in ("kubepods", "burstable", "besteffort", "docker")
    ),
    max_size=3,
)


@given(
    systemd=st.booleans(),
    qos=st.sampled_from(["guaranteed", "burstable", "besteffort"]),
    uid=_UIDS,
    container_id=_IDS,
    runtime=st.sampled_from(["cri-containerd", "crio", "docker", None]),
    prefix=_PREFIX_NAMES,
    nested=st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), max_size=2),
)
def test_built_paths_round_trip(
    systemd: bool,
    qos: str,
    uid: str,
    container_id: str,
    runtime: str | None,
    prefix: list[str],
    nested: list[str],
) -> None:
    if systemd:
        kubepods = ["kubepods.slice"]
        qos_level = [] if qos == "guaranteed" else [f"kubepods-{qos}.slice"]
        stem = "kubepods" if qos == "guaranteed" else f"kubepods-{qos}"
        pod = f"{stem}-pod{_u(uid)}.slice"
        leaf = f"{runtime or 'cri-containerd'}-{container_id}.scope"
    else:
        kubepods = ["kubepods"]
        qos_level = [] if qos == "guaranteed" else [qos]
        pod = f"pod{uid}"
        leaf = container_id if runtime is None else f"{runtime}-{container_id}"
    names = [*prefix, *kubepods, *qos_level, pod, leaf]
    path = "/" + "/".join([*names, *nested])
    got = parse_cgroup_path(path)
    assert got.kind is CgroupKind.CONTAINER
    assert (got.qos, got.pod_uid, got.container_id) == (qos, uid, container_id)
    assert got.container_path == "/" + "/".join(names)
    assert got.pod_path == "/" + "/".join(names[:-1])
    assert got.kubepods_path == "/" + "/".join([*prefix, *kubepods])


# --- /proc/PID/cgroup ---------------------------------------------------------------

_DD_V1_PROC = f"""12:rdma:/
11:memory:/kubepods/burstable/pod{DD_UID}/{DD_ID}
10:hugetlb:/kubepods/burstable/pod{DD_UID}/{DD_ID}
5:cpu,cpuacct:/kubepods/burstable/pod{DD_UID}/{DD_ID}
1:name=systemd:/kubepods/burstable/pod{DD_UID}/{DD_ID}
0::/system.slice/containerd.service"""

_COLONS = (
    "/kuberuntime.slice/containerd.service/kubepods-burstable-pod5be537b8_3a4e_4607_af71_"
    "31598b3a4fd3.slice:cri-containerd:1c8f503430973935b7d8a80c4f58c0946b052a021e6855b358e5ec"
    "38601af120"
)

PROC_CASES = [
    pytest.param(
        _DD_V1_PROC,
        ProcCgroup(
            memory_v1=f"/kubepods/burstable/pod{DD_UID}/{DD_ID}",
            unified="/system.slice/containerd.service",
        ),
        id="v1-kubernetes (datadog pid_mapper_test)",
    ),
    pytest.param(
        f"9:perf_event:/x\n8:memory:{_COLONS}\n1:name=systemd:/y\n0::/\n",
        ProcCgroup(memory_v1=_COLONS, unified="/"),
        id="v1-path-with-colons (datadog pid_mapper_test)",
    ),
    pytest.param(
        "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n"
        "4:memory:/process_api/0f5e6d7c8b9a01234567890abcdef012\n3:cpuset:/\n2:cpuacct:/\n"
        "1:cpu:/\n0::/\n",
        ProcCgroup(memory_v1="/process_api/0f5e6d7c8b9a01234567890abcdef012", unified="/"),
        id="this-test-host-hybrid (TESTING.md)",
    ),
    pytest.param(
        "4:cpu,memory:/kubepods/besteffort/podabc\n",
        ProcCgroup(memory_v1="/kubepods/besteffort/podabc", unified=None),
        id="v1-co-mounted-memory",
    ),
    pytest.param(
        f"0::/kubepods/burstable/pod{DD_UID}/{DD_ID}\n",
        ProcCgroup(memory_v1=None, unified=f"/kubepods/burstable/pod{DD_UID}/{DD_ID}"),
        id="v2 (datadog pid_mapper_test)",
    ),
    pytest.param(
        f"0::/../../../{_NS_DD}\n",
        ProcCgroup(memory_v1=None, unified=f"/../../../{_NS_DD}"),
        id="v2-namespace-view",
    ),
    pytest.param(
        "0::/system.slice/gone.service (deleted)\n",
        ProcCgroup(memory_v1=None, unified="/system.slice/gone.service"),
        id="v2-removed-cgroup",
    ),
    pytest.param("", ProcCgroup(memory_v1=None, unified=None), id="empty"),
    pytest.param("garbage\n\n::\n", ProcCgroup(memory_v1=None, unified=None), id="garbage"),
    pytest.param("x:memory:/a\n", ProcCgroup(memory_v1=None, unified=None), id="bad-hierarchy"),
    pytest.param("3:memory:\n0::\n", ProcCgroup(memory_v1=None, unified=None), id="empty-paths"),
    pytest.param(
        "3:memoryless:/a\n3:name=memory2:/b\n",
        ProcCgroup(memory_v1=None, unified=None),
        id="controller-names-that-only-contain-memory",
    ),
]


@pytest.mark.parametrize(("text", "expected"), PROC_CASES)
def test_parse_proc_cgroup(text: str, expected: ProcCgroup) -> None:
    assert parse_proc_cgroup(text) == expected


@given(st.text())
def test_proc_cgroup_never_raises(text: str) -> None:
    parse_proc_cgroup(text)


# --- status.containerStatuses[].containerID -----------------------------------------

URI_CASES = [
    pytest.param(f"containerd://{DD_ID}", ("containerd", DD_ID), id="containerd"),
    pytest.param(f"cri-o://{CRIO_ID}", ("cri-o", CRIO_ID), id="cri-o"),
    pytest.param(f"docker://{DOCKER_ID}", ("docker", DOCKER_ID), id="docker"),
    pytest.param("", (None, None), id="empty (container not started)"),
    pytest.param("containerd://", (None, None), id="no-id"),
    pytest.param(f"containerd://{DD_ID[:12]}", (None, None), id="short-id"),
    pytest.param(f"containerd:/{DD_ID}", (None, None), id="one-slash"),
    pytest.param(f"rkt://{DD_ID}", (None, None), id="unknown-runtime"),
    pytest.param(f"containerd://{DD_ID}\n", (None, None), id="trailing-newline"),
    pytest.param(f"containerd://{DD_ID}/x", (None, None), id="trailing-junk"),
    pytest.param(f"containerd://{DD_ID.upper()}", (None, None), id="uppercase"),
    pytest.param(DD_ID, (None, None), id="bare-id"),
]


@pytest.mark.parametrize(("uri", "expected"), URI_CASES)
def test_container_id_from_runtime_uri(uri: str, expected: tuple[str | None, str | None]) -> None:
    assert container_id_from_runtime_uri(uri) == expected


@given(st.text())
def test_runtime_uri_never_raises(uri: str) -> None:
    runtime, container_id = container_id_from_runtime_uri(uri)
    assert (runtime is None) == (container_id is None)


def test_uri_id_matches_the_cgroup_id() -> None:
    _, from_status = container_id_from_runtime_uri(f"cri-o://{BE_ID}")
    assert parse_cgroup_path(f"{_BE_POD}/crio-{BE_ID}.scope").container_id == from_status


@pytest.mark.parametrize(
    ("text", "v1", "expected"),
    [
        ("12:pids:/x\n4:memory:/a/b\n1:name=systemd:/y\n0::/z\n", True, "/a/b"),
        ("1:name=systemd:/p:memory:/q\n4:memory:/real\n", True, "/real"),
        ("4:cpu,memory:/combined\n", True, "/combined"),
        ("4:memory:/last", True, "/last"),
        ("1:name=systemd:/only\n", True, None),
        ("0::/kubepods/x\n", False, "/kubepods/x"),
        ("0::/gone (deleted)\n", False, "/gone"),
        ("", False, None),
    ],
)
def test_memory_cgroup_picks_the_version_s_line(text: str, v1: bool, expected: str | None) -> None:
    assert memory_cgroup(text, v1) == expected
