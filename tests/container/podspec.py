"""The rendered DaemonSet's pod, turned into `podman run` flags by code, not by hand.

Lane 3 runs the image with exactly the privileges, user, volumes, arguments and
environment that `helm template` renders for the agent, so the lane breaks when the
chart changes. Every field of the pod spec, the container and its securityContext is
either translated (the runtime-relevant ones, as the kubelet would hand them to a CRI
runtime) or named here as having no meaning on one host (scheduling, image pulling);
anything else raises `NotUnderstood`, which fails the lane loudly: a new field in the
chart must be taught to this module before the lane passes again.

What the lane substitutes on purpose, because this host is not a node (each is a
parameter of `HostSide`, never a silent default):

- the network: `--network=host`. The pod's own network namespace only matters for who
  can reach the metrics port; the agent must reach the test API server on 127.0.0.1,
  and loopback is the only place a test here may send traffic to;
- hostPath sources: the node's /var/lib/oomguard becomes a directory of the test
  (`HostSide.host_paths`); /sys/fs/cgroup and /dev/kmsg stay the host's own;
- ConfigMap volumes: a directory holding the rendered ConfigMap's data (as the kubelet
  writes it), emptyDir: a fresh directory;
- the ServiceAccount's credentials: the test API server speaks plain HTTP, which the
  in-cluster loader does not (it always builds an https:// URL), so the test gives the
  agent a kubeconfig instead (`--kubeconfig`, see the test);
- the container's cgroup: below the test's own memory cgroup (`--cgroup-parent`), so
  the test's limits still bound it, and runc with the cgroupfs manager (crun refuses
  this host's hybrid cgroup layout; TESTING.md, lane 3).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from kubernetes.utils.quantity import parse_quantity


class NotUnderstood(ValueError):
    """A field of the rendered manifest that the lane cannot turn into a runtime flag."""

    def __init__(self, where: str, value: object, why: str = "not understood") -> None:
        super().__init__(
            f"{where}: {why} ({value!r}); teach tests/container/podspec.py what it means "
            "for the container before the lane can run it"
        )


# Pod spec fields that decide where a pod runs or how its image is fetched: on one
# host with a locally built image they have nothing to translate.
SCHEDULING_ONLY = frozenset(
    {
        "nodeSelector",
        "affinity",
        "tolerations",
        "priorityClassName",
        "imagePullSecrets",
        "schedulerName",
    }
)

# The field paths of the downward API the lane can answer (fieldRef.fieldPath).
DOWNWARD_FIELDS = ("spec.nodeName", "metadata.name", "metadata.namespace")


@dataclass(frozen=True)
class HostSide:
    """What this host puts where a node and the API server would put theirs."""

    node_name: str
    pod_name: str
    namespace: str
    # hostPath path on a node -> the path used here (absent: the host's own path).
    host_paths: Mapping[str, Path]
    # ConfigMap name -> its data, from the same render.
    config_maps: Mapping[str, Mapping[str, str]]
    # Where ConfigMap and emptyDir volumes are made.
    scratch: Path
    # The memory cgroup (relative to the hierarchy) the container's cgroup goes below.
    cgroup_parent: str


@dataclass(frozen=True)
class HttpProbe:
    path: str
    port: int


@dataclass
class ContainerRun:
    """`podman run` for the agent's container: flags, then image, then the arguments."""

    flags: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    probes: dict[str, HttpProbe] = field(default_factory=dict)
    # mountPath -> (host source, read-only), in the manifest's order.
    mounts: dict[str, tuple[Path, bool]] = field(default_factory=dict)
    image: str = ""
    service_account: str | None = None

    def podman_args(
        self, image: str, args: list[str] | None = None, extra_flags: Sequence[str] = ()
    ) -> list[str]:
        """The `podman run` arguments after `run`: the manifest's flags, env and
        entrypoint, then `extra_flags` (a later --volume on the same path wins), the
        image, and the container's args (the manifest's unless given)."""
        out = list(self.flags)
        for name, value in self.env.items():
            out.append(f"--env={name}={value}")
        if self.entrypoint is not None:
            out.append("--entrypoint=" + json.dumps(self.entrypoint))
        return [*out, *extra_flags, image, *(self.args if args is None else args)]


def _check_keys(where: str, obj: Mapping[str, Any], known: set[str] | frozenset[str]) -> None:
    for key in obj:
        if key not in known:
            raise NotUnderstood(f"{where}.{key}", obj[key])


def pod_template(daemonset: Mapping[str, Any]) -> Mapping[str, Any]:
    if daemonset.get("kind") != "DaemonSet":
        raise NotUnderstood("kind", daemonset.get("kind"), "expected a DaemonSet")
    template: Mapping[str, Any] = daemonset["spec"]["template"]
    _check_keys("spec.template", template, {"metadata", "spec"})
    _check_keys("spec.template.metadata", template.get("metadata", {}), {"labels", "annotations"})
    return template


def to_podman(daemonset: Mapping[str, Any], host: HostSide) -> ContainerRun:
    """The DaemonSet's one container as `podman run` would run it on this host."""
    spec = pod_template(daemonset)["spec"]
    where = "spec.template.spec"
    _check_keys(
        where,
        spec,
        SCHEDULING_ONLY
        | {
            "serviceAccountName",
            "hostPID",
            "hostNetwork",
            "hostIPC",
            "terminationGracePeriodSeconds",
            "containers",
            "volumes",
            "securityContext",
        },
    )
    run = ContainerRun(service_account=spec.get("serviceAccountName"))
    # The lane's network: see the module docstring. hostNetwork true means the same.
    run.flags.append("--network=host")
    if spec.get("hostPID"):
        run.flags.append("--pid=host")
    if spec.get("hostIPC"):
        run.flags.append("--ipc=host")
    if "terminationGracePeriodSeconds" in spec:
        run.flags.append(f"--stop-timeout={int(spec['terminationGracePeriodSeconds'])}")
    run.flags.append(f"--cgroup-parent={host.cgroup_parent}")
    containers = spec.get("containers", [])
    if len(containers) != 1:
        raise NotUnderstood(f"{where}.containers", len(containers), "expected one container")
    container = containers[0]
    cwhere = f"{where}.containers[0]"
    _check_keys(
        cwhere,
        container,
        {
            "name",
            "image",
            "imagePullPolicy",
            "args",
            "command",
            "env",
            "ports",
            "startupProbe",
            "livenessProbe",
            "readinessProbe",
            "resources",
            "securityContext",
            "volumeMounts",
            "workingDir",
        },
    )
    run.image = str(container.get("image", ""))
    if "command" in container:
        run.entrypoint = [str(word) for word in container["command"]]
    run.args = [str(word) for word in container.get("args", [])]
    if "workingDir" in container:
        run.flags.append(f"--workdir={container['workingDir']}")
    run.env = _env(f"{cwhere}.env", container.get("env", []), host)
    run.ports = _ports(f"{cwhere}.ports", container.get("ports", []))
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in container:
            run.probes[kind] = _probe(f"{cwhere}.{kind}", container[kind], run.ports)
    run.flags += _resources(f"{cwhere}.resources", container.get("resources", {}))
    run.flags += _security(
        f"{where}.securityContext",
        spec.get("securityContext", {}),
        f"{cwhere}.securityContext",
        container.get("securityContext", {}),
    )
    volumes = _volumes(f"{where}.volumes", spec.get("volumes", []), host)
    for index, mount in enumerate(container.get("volumeMounts", [])):
        mwhere = f"{cwhere}.volumeMounts[{index}]"
        _check_keys(mwhere, mount, {"name", "mountPath", "readOnly", "mountPropagation"})
        if mount.get("mountPropagation", "None") != "None":
            raise NotUnderstood(f"{mwhere}.mountPropagation", mount["mountPropagation"])
        if mount["name"] not in volumes:
            raise NotUnderstood(f"{mwhere}.name", mount["name"], "no such volume")
        source = volumes[mount["name"]]
        read_only = bool(mount.get("readOnly", False))
        run.mounts[mount["mountPath"]] = (source, read_only)
        # A bind mount, as the kubelet asks of the runtime for a hostPath (rbind: the
        # submounts of /sys/fs/cgroup come along; `ro` applies to the top one only,
        # exactly as on a node).
        options = "ro" if read_only else "rw"
        run.flags.append(f"--volume={source}:{mount['mountPath']}:{options}")
    return run


def _env(where: str, env: list[Mapping[str, Any]], host: HostSide) -> dict[str, str]:
    found: dict[str, str] = {}
    answers = {
        "spec.nodeName": host.node_name,
        "metadata.name": host.pod_name,
        "metadata.namespace": host.namespace,
    }
    for index, item in enumerate(env):
        iwhere = f"{where}[{index}]"
        _check_keys(iwhere, item, {"name", "value", "valueFrom"})
        if "valueFrom" in item:
            source = item["valueFrom"]
            _check_keys(f"{iwhere}.valueFrom", source, {"fieldRef"})
            ref = source["fieldRef"]
            _check_keys(f"{iwhere}.valueFrom.fieldRef", ref, {"fieldPath", "apiVersion"})
            if ref["fieldPath"] not in answers:
                raise NotUnderstood(f"{iwhere}.valueFrom.fieldRef.fieldPath", ref["fieldPath"])
            found[item["name"]] = answers[ref["fieldPath"]]
        else:
            found[item["name"]] = str(item.get("value", ""))
    return found


def _ports(where: str, ports: list[Mapping[str, Any]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for index, port in enumerate(ports):
        _check_keys(f"{where}[{index}]", port, {"name", "containerPort", "protocol"})
        if port.get("protocol", "TCP") != "TCP":
            raise NotUnderstood(f"{where}[{index}].protocol", port["protocol"])
        found[str(port.get("name", port["containerPort"]))] = int(port["containerPort"])
    return found


def _probe(where: str, probe: Mapping[str, Any], ports: Mapping[str, int]) -> HttpProbe:
    timing = {
        "initialDelaySeconds",
        "periodSeconds",
        "timeoutSeconds",
        "failureThreshold",
        "successThreshold",
    }
    _check_keys(where, probe, {"httpGet"} | timing)
    if "httpGet" not in probe:
        raise NotUnderstood(where, probe, "only httpGet probes are understood")
    get = probe["httpGet"]
    _check_keys(f"{where}.httpGet", get, {"path", "port", "scheme"})
    if get.get("scheme", "HTTP") != "HTTP":
        raise NotUnderstood(f"{where}.httpGet.scheme", get["scheme"])
    port = get["port"]
    if isinstance(port, str):
        if port not in ports:
            raise NotUnderstood(f"{where}.httpGet.port", port, "no container port of that name")
        port = ports[port]
    return HttpProbe(path=str(get.get("path", "/")), port=int(port))


def _resources(where: str, resources: Mapping[str, Any]) -> list[str]:
    """Limits as the kubelet sets them on the container's cgroup (v1: no swap)."""
    _check_keys(where, resources, {"limits", "requests"})
    flags: list[str] = []
    limits = resources.get("limits", {})
    requests = resources.get("requests", {})
    _check_keys(f"{where}.limits", limits, {"memory", "cpu"})
    _check_keys(f"{where}.requests", requests, {"memory", "cpu"})
    if "memory" in limits:
        limit = int(parse_quantity(limits["memory"]))
        flags += [f"--memory={limit}", f"--memory-swap={limit}"]
    if "cpu" in limits:
        flags.append(f"--cpus={parse_quantity(limits['cpu'])}")
    if "cpu" in requests:
        # The kubelet's MilliCPUToShares: 1024 shares per CPU, at least 2.
        shares = max(2, int(Decimal(parse_quantity(requests["cpu"])) * 1024))
        flags.append(f"--cpu-shares={shares}")
    # requests.memory only places the pod (no cgroup setting on v1): nothing to run.
    return flags


def _security(
    pod_where: str, pod: Mapping[str, Any], where: str, container: Mapping[str, Any]
) -> list[str]:
    """The securityContext as runc gets it from a CRI runtime (container over pod)."""
    _check_keys(pod_where, pod, {"runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile"})
    _check_keys(
        where,
        container,
        {
            "privileged",
            "allowPrivilegeEscalation",
            "runAsUser",
            "runAsGroup",
            "runAsNonRoot",
            "readOnlyRootFilesystem",
            "capabilities",
            "seccompProfile",
        },
    )
    merged = {**pod, **container}
    flags: list[str] = []
    if merged.get("privileged", False):
        flags.append("--privileged")
    if merged.get("allowPrivilegeEscalation", True) is False:
        flags.append("--security-opt=no-new-privileges")
    if "runAsUser" in merged or "runAsGroup" in merged:
        if "runAsUser" not in merged:
            raise NotUnderstood(f"{where}.runAsGroup", merged["runAsGroup"], "without runAsUser")
        user = str(int(merged["runAsUser"]))
        group = f":{int(merged['runAsGroup'])}" if "runAsGroup" in merged else ""
        flags.append(f"--user={user}{group}")
    if merged.get("runAsNonRoot") and int(merged.get("runAsUser", -1)) == 0:
        raise NotUnderstood(f"{where}.runAsNonRoot", True, "the kubelet refuses it with user 0")
    if merged.get("readOnlyRootFilesystem", False):
        # Only the root filesystem: podman's extra tmpfs on /tmp, /run, /var/tmp is not
        # what the kubelet does (the chart mounts its own /tmp).
        flags += ["--read-only", "--read-only-tmpfs=false"]
    capabilities = merged.get("capabilities", {})
    _check_keys(f"{where}.capabilities", capabilities, {"add", "drop"})
    for cap in capabilities.get("drop", []):
        flags.append("--cap-drop=all" if cap == "ALL" else f"--cap-drop=CAP_{cap}")
    for cap in capabilities.get("add", []):
        flags.append(f"--cap-add=CAP_{cap}")
    seccomp = merged.get("seccompProfile", {"type": "RuntimeDefault"})
    _check_keys(f"{where}.seccompProfile", seccomp, {"type"})
    if seccomp["type"] == "Unconfined":
        flags.append("--security-opt=seccomp=unconfined")
    elif seccomp["type"] != "RuntimeDefault":
        raise NotUnderstood(f"{where}.seccompProfile.type", seccomp["type"])
    # RuntimeDefault: podman's default profile (containers-common), applied unasked, as
    # containerd applies its own.
    return flags


def _volumes(where: str, volumes: list[Mapping[str, Any]], host: HostSide) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for index, volume in enumerate(volumes):
        vwhere = f"{where}[{index}]"
        _check_keys(vwhere, volume, {"name", "hostPath", "configMap", "emptyDir"})
        name = volume["name"]
        if "hostPath" in volume:
            found[name] = _host_path(f"{vwhere}.hostPath", volume["hostPath"], host)
        elif "configMap" in volume:
            found[name] = _config_map(f"{vwhere}.configMap", volume["configMap"], name, host)
        elif "emptyDir" in volume:
            source = volume["emptyDir"]
            _check_keys(f"{vwhere}.emptyDir", source, {"sizeLimit", "medium"})
            if source.get("medium", "") != "":
                raise NotUnderstood(f"{vwhere}.emptyDir.medium", source["medium"])
            # On the node's disk, like the kubelet's; sizeLimit is enforced by eviction,
            # which has no counterpart here.
            directory = host.scratch / "empty-dir" / name
            directory.mkdir(parents=True)
            found[name] = directory
        else:
            raise NotUnderstood(vwhere, volume, "no volume source the lane understands")
    return found


def _host_path(where: str, source: Mapping[str, Any], host: HostSide) -> Path:
    _check_keys(where, source, {"path", "type"})
    node_path = str(source["path"])
    path = Path(host.host_paths.get(node_path, node_path))
    kind = source.get("type", "")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    elif kind == "Directory":
        if mode is None or not stat.S_ISDIR(mode):
            raise NotUnderstood(where, node_path, f"{path} is not a directory here")
    elif kind == "CharDevice":
        if mode is None or not stat.S_ISCHR(mode):
            raise NotUnderstood(where, node_path, f"{path} is not a character device here")
    elif kind == "File":
        if mode is None or not stat.S_ISREG(mode):
            raise NotUnderstood(where, node_path, f"{path} is not a file here")
    elif kind != "":
        raise NotUnderstood(f"{where}.type", kind)
    return path


def _config_map(where: str, source: Mapping[str, Any], volume: str, host: HostSide) -> Path:
    _check_keys(where, source, {"name"})
    name = source["name"]
    if name not in host.config_maps:
        raise NotUnderstood(f"{where}.name", name, "no ConfigMap of that name in the render")
    directory = host.scratch / "config-map" / volume
    directory.mkdir(parents=True)
    for key, value in host.config_maps[name].items():
        (directory / key).write_text(value)
    return directory
