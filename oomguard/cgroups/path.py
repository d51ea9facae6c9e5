"""Turn a cgroup path into the workload that owns it, without touching the system.

The kernel names an OOM victim only by its cgroup path; everything a user wants to
see (pod, container, QoS class) has to be read back out of the names the kubelet and
the container runtime chose. Those names differ by cgroup driver, runtime, kubelet
`--cgroup-root`, and by where the reader sits (a private cgroup namespace shows other
cgroups as `/../..`-relative). The parser therefore reads each level by its own
shape, checks that the levels fit together the way the kubelet builds them, and
answers OTHER rather than guessing when they do not: a wrong pod in an Event is
worse than no pod.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from oomguard.records import CgroupIdentity, CgroupKind

# Longer than any path the kernel prints (PATH_MAX is 4096): such input is not a
# cgroup path, and refusing it early keeps hostile input cheap.
MAX_PATH_CHARS = 65536

# Real paths hold one or two kubelet-made starting points (two: Docker Desktop's
# "/kubepods/kubepods", a kubelet inside a pod); more is junk. Bounds the work
# hostile input can cause.
MAX_KUBERNETES_ANCHORS = 8

_QOS_GUARANTEED = "guaranteed"

# The runtime prefix in a cgroup name -> the runtime as a pod's containerID URI names it.
_RUNTIME_BY_PREFIX = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}
_RUNTIME_BY_SCHEME = {"containerd": "containerd", "cri-o": "cri-o", "docker": "docker"}

# One systemd slice-name component of a custom kubelet --cgroup-root, e.g. the
# "kubelet-" in kind's "kubelet-kubepods.slice". Dashes separate components in
# systemd names, so a component never holds one; backslash appears in \x2d escapes.
_SLICE_PART = r"[A-Za-z0-9_.:@\\]+-"

_UID_DASHED = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UID_UNDERSCORED = r"[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}"
_CONFIG_HASH = r"[0-9a-f]{32}"
_CONTAINER_ID = r"[0-9a-f]{64}"

_KUBEPODS_CGROUPFS = re.compile(
    r"""
    kubepods            # cgroupfs driver: the node-allocatable root is a bare name
    """,
    re.VERBOSE,
)

_KUBEPODS_SYSTEMD = re.compile(
    rf"""
    (?P<stem>
        (?:{_SLICE_PART})*?   # parent slices of a custom --cgroup-root ("kubelet-" in kind)
        kubepods
    )
    \.slice               # systemd driver: every level above the container is a slice
    """,
    re.VERBOSE,
)

_QOS_CGROUPFS = re.compile(
    r"""
    (?P<qos>burstable|besteffort)   # cgroupfs driver; Guaranteed pods have no QoS level
    """,
    re.VERBOSE,
)

_QOS_SYSTEMD = re.compile(
    rf"""
    (?P<stem>
        (?:{_SLICE_PART})*?              # parent slices of a custom --cgroup-root
        kubepods-
        (?P<qos>burstable|besteffort)    # Guaranteed pods have no QoS level
    )
    (?:\.slice)?          # optional: some agents' fixtures show these names bare
    """,
    re.VERBOSE,
)

_POD_CGROUPFS = re.compile(
    rf"""
    pod
    (?P<uid>
        {_UID_DASHED}     # a UID the API server assigned
      | {_CONFIG_HASH}    # a static pod: the kubelet's hash of its manifest
    )
    """,
    re.VERBOSE,
)

# Shared by the pod slice and the "slice:runtime:id" container name below.
_POD_SYSTEMD_STEM = rf"""
    (?P<stem>
        (?:{_SLICE_PART})*?              # parent slices of a custom --cgroup-root
        kubepods
        (?:-(?P<qos>burstable|besteffort))?   # absent: a Guaranteed pod
        -pod
        (?P<uid>
            {_UID_UNDERSCORED}   # systemd reserves "-", so the kubelet writes "_"
          | {_CONFIG_HASH}       # a static pod: the kubelet's hash of its manifest
        )
    )
"""

_POD_SYSTEMD = re.compile(
    rf"""
    {_POD_SYSTEMD_STEM}
    (?:\.slice)?          # optional: some agents' fixtures show these names bare
    """,
    re.VERBOSE,
)

_CONTAINER = re.compile(
    rf"""
    (?:
        (?P<prefix>cri-containerd|crio|docker)   # the runtime that made the cgroup
        -
        (?P<id>{_CONTAINER_ID})
        (?:\.scope)?          # systemd driver: a transient scope unit
      |
        (?P<bare_id>{_CONTAINER_ID})   # cgroupfs driver: the id alone, runtime unsaid
    )
    """,
    re.VERBOSE,
)

_CONMON = re.compile(
    rf"""
    crio-conmon-          # CRI-O's per-container monitor process, not the container
    (?P<id>{_CONTAINER_ID})
    (?:\.scope)?
    """,
    re.VERBOSE,
)

# Seen in the wild when the runtime's cgroup driver does not match the kubelet's: the
# systemd "slice:prefix:name" cgroupsPath is used verbatim as one cgroupfs name.
_CONTAINER_IN_POD_NAME = re.compile(
    rf"""
    {_POD_SYSTEMD_STEM}
    \.slice
    :
    (?P<prefix>cri-containerd|crio|docker)   # the runtime that made the cgroup
    :
    (?P<id>{_CONTAINER_ID})
    """,
    re.VERBOSE,
)

_DOCKER_CGROUPFS_PARENT = re.compile(
    r"""
    docker                # dockerd's cgroupfs driver: /docker/<id>
    """,
    re.VERBOSE,
)

_DOCKER_ID = re.compile(
    rf"""
    {_CONTAINER_ID}       # dockerd names the container's cgroup by its full id
    """,
    re.VERBOSE,
)

_DOCKER_SCOPE = re.compile(
    rf"""
    docker-
    (?P<id>{_CONTAINER_ID})
    \.scope               # dockerd's systemd driver: /system.slice/docker-<id>.scope
    """,
    re.VERBOSE,
)

_SYSTEMD_UNIT = re.compile(
    r"""
    [A-Za-z0-9:_.\\@-]{1,250}   # systemd's unit-name alphabet ("\x2d" escapes, "@" instances)
    \.
    (?P<type>service|scope|slice|socket|mount|swap)   # the unit types that own cgroups
    """,
    re.VERBOSE,
)

_URI = re.compile(
    rf"""
    (?P<scheme>containerd|cri-o|docker)   # how status.containerStatuses names the runtime
    ://
    (?P<id>{_CONTAINER_ID})
    """,
    re.VERBOSE,
)

_PROC_CGROUP_LINE = re.compile(
    r"""
    (?P<hierarchy>[0-9]+)     # hierarchy ID; 0 is the cgroup v2 unified hierarchy
    :
    (?P<controllers>[^:]*)    # v1: comma-separated controllers; v2: empty
    :
    (?P<path>.+)              # the rest, colons included (a cgroup name may hold them)
    """,
    re.VERBOSE,
)

# cgroup v2 marks a process whose cgroup was removed (it can only be a zombie).
_DELETED_SUFFIX = " (deleted)"


@dataclass(frozen=True)
class ProcCgroup:
    """The two lines of /proc/PID/cgroup that say where a process's memory is charged.

    On cgroup v1 only the memory controller's line matters (other controllers may sit
    elsewhere); on v2 or a hybrid host the unified line does.
    """

    memory_v1: str | None
    unified: str | None


def parse_proc_cgroup(text: str) -> ProcCgroup:
    """Read /proc/PID/cgroup leniently: a process may vanish or the file be torn."""
    memory_v1: str | None = None
    unified: str | None = None
    if not isinstance(text, str):
        return ProcCgroup(memory_v1=None, unified=None)
    for line in text.split("\n"):
        match = _PROC_CGROUP_LINE.fullmatch(line)
        if match is None:
            continue
        path = match["path"]
        if match["hierarchy"] == "0" and match["controllers"] == "":
            if unified is None:
                if path.endswith(_DELETED_SUFFIX):
                    path = path[: -len(_DELETED_SUFFIX)]
                unified = path or None
        elif "memory" in match["controllers"].split(",") and memory_v1 is None:
            memory_v1 = path
    return ProcCgroup(memory_v1=memory_v1, unified=unified)


def memory_cgroup(proc_cgroup: str, v1: bool) -> str | None:
    """The memory cgroup in a /proc/PID/cgroup text (v1: the memory line; v2: "0::").

    A fast path for the usual shapes (the reconciler calls it once per process per
    pass), and the full parser for anything else.
    """
    if v1:
        at = proc_cgroup.find(":memory:")
        if at > 0:
            line_start = proc_cgroup.rfind("\n", 0, at) + 1
            if proc_cgroup[line_start:at].isdigit():
                end = proc_cgroup.find("\n", at)
                return proc_cgroup[at + 8 : end if end >= 0 else None] or None
        return parse_proc_cgroup(proc_cgroup).memory_v1
    if proc_cgroup.startswith("0::"):
        end = proc_cgroup.find("\n")
        path = proc_cgroup[3 : end if end >= 0 else None]
        if path and not path.endswith(")"):  # not " (deleted)"
            return path
    return parse_proc_cgroup(proc_cgroup).unified


def container_id_from_runtime_uri(uri: str) -> tuple[str | None, str | None]:
    """Split a pod status containerID so it can be matched against cgroup names."""
    if not isinstance(uri, str):
        return None, None
    match = _URI.fullmatch(uri)
    if match is None:
        return None, None
    return _RUNTIME_BY_SCHEME[match["scheme"]], match["id"]


def parse_cgroup_path(path: str) -> CgroupIdentity:
    """Say whose cgroup `path` is; never raises, answers OTHER when unsure."""
    if not isinstance(path, str):
        return CgroupIdentity(path=repr(path), kind=CgroupKind.OTHER)
    other = CgroupIdentity(path=path, kind=CgroupKind.OTHER)
    if not path or len(path) > MAX_PATH_CHARS or "\0" in path:
        return other
    view = _View.split(path)
    if view is None:
        return other
    if not view.names:
        return CgroupIdentity(path=path, kind=CgroupKind.ROOT) if not view.ups else other

    anchors = view.kubernetes_anchors()
    if len(anchors) > MAX_KUBERNETES_ANCHORS:
        return other
    # Past a namespace's "/../.." any level may come first, even one that does not
    # name itself (a cgroupfs "pod<uid>", a container id).
    starts = [0, *anchors] if view.ups and 0 not in anchors else anchors
    found = [ident for ident in map(view.walk_kubernetes, starts) if ident]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        # Kubernetes inside a Kubernetes container (kubelet-in-pod, kind on a node):
        # the outer container and the inner one both fit, and which one the reader
        # means depends on which node it runs on.
        return other
    if anchors:
        # Kubelet-made names that do not fit together: calling "crio-<id>.scope"
        # a plain systemd unit would hide that something is off.
        return other
    return view.off_kubernetes() or other


@dataclass(frozen=True)
class _View:
    """A path cut into names, remembering how to rebuild the path up to any of them."""

    path: str
    lead: str  # "/" as the kernel prints; "" when the input had no leading slash
    ups: tuple[str, ...]  # leading ".." names: seen from inside a cgroup namespace
    names: tuple[str, ...]

    @classmethod
    def split(cls, path: str) -> _View | None:
        parts = [part for part in path.split("/") if part]
        ups = 0
        while ups < len(parts) and parts[ups] == "..":
            ups += 1
        names = tuple(parts[ups:])
        if any(name in (".", "..") for name in names):
            return None  # the kernel never prints these past a namespace's "/../.."
        lead = "/" if path.startswith("/") else ""
        return cls(path=path, lead=lead, ups=tuple(parts[:ups]), names=names)

    def upto(self, index: int) -> str:
        return self.lead + "/".join(self.ups + self.names[: index + 1])

    def kubernetes_anchors(self) -> list[int]:
        """Where a kubelet-made hierarchy may start.

        A kubepods level always starts one. Systemd names carry their ancestry
        ("kubepods-burstable-pod<uid>.slice"), so one may also start the visible
        part when its parents are hidden.
        """
        anchors: list[int] = []
        previous_is_level = False
        for index, name in enumerate(self.names):
            is_kubepods = _is_kubepods(name)
            if is_kubepods or (_starts_by_itself(name) and not previous_is_level):
                anchors.append(index)
            previous_is_level = is_kubepods or bool(_QOS_SYSTEMD.fullmatch(name))
        return anchors

    def walk_kubernetes(self, start: int) -> CgroupIdentity | None:
        """Read kubepods -> QoS -> pod -> container from `start`, or None if they don't fit.

        Each level must be the child the kubelet would create under the previous
        one; after the container level anything goes (processes may sit in nested
        cgroups of their container).
        """
        in_namespace_view = bool(self.ups) and start == 0
        walk = _read_kubepods(start, self.name_at(start), in_namespace_view)
        if walk is None:
            return None
        walk = _read_qos(walk, self.name_at(walk.next), in_namespace_view)
        name = self.name_at(walk.next)
        if name is None:
            return self._above_pods(walk)
        if (match := _CONTAINER_IN_POD_NAME.fullmatch(name)) is not None:
            return self._container_in_pod_name(walk, match)
        # Past a namespace's "/../.." the first name in view may be a container of
        # the reader's own pod, whose pod level is hidden.
        may_lack_pod = in_namespace_view and walk.next == start
        walk = _read_pod(walk, name, in_namespace_view, may_lack_pod)
        if walk is None:
            return None
        name = self.name_at(walk.next)
        if name is None:
            return self._pod(walk)
        return self._container(walk, name)

    def name_at(self, index: int) -> str | None:
        return self.names[index] if index < len(self.names) else None

    def _above_pods(self, walk: _Walk) -> CgroupIdentity | None:
        """A walk that ends above the pods: the QoS or the kubepods level itself."""
        kubepods_path = self._path_at(walk.kubepods_at)
        if walk.qos_level:
            return self._identity(CgroupKind.QOS, qos=walk.qos, kubepods_path=kubepods_path)
        if kubepods_path is not None:
            return self._identity(CgroupKind.KUBEPODS, kubepods_path=kubepods_path)
        return None

    def _container_in_pod_name(self, walk: _Walk, match: re.Match[str]) -> CgroupIdentity | None:
        """A "slice:runtime:id" name: pod and container in one level, no pod level of its own."""
        qos = _systemd_pod_qos(walk, match)
        if qos is None:
            return None
        return self._identity(
            CgroupKind.CONTAINER,
            qos=qos,
            pod_uid=match["uid"].replace("_", "-"),
            container_id=match["id"],
            runtime=_RUNTIME_BY_PREFIX[match["prefix"]],
            container_path=self.upto(walk.next),
            kubepods_path=self._path_at(walk.kubepods_at),
        )

    def _pod(self, walk: _Walk) -> CgroupIdentity | None:
        """A walk that ends at the pod level: the pod's own cgroup."""
        if walk.pod_uid is None:
            return None
        return self._identity(CgroupKind.POD, **self._levels(walk))

    def _container(self, walk: _Walk, name: str) -> CgroupIdentity | None:
        """The container level under the pod (what nests below it does not matter)."""
        if _CONMON.fullmatch(name) is not None:
            if walk.pod_uid is None:
                return None
            # conmon shares the pod's cgroup budget but is no container of the pod:
            # name the unit so a reader sees what was killed, and leave the id unset
            # so nobody blames the container it watches.
            return self._identity(CgroupKind.OTHER, unit=name, **self._levels(walk))
        if (match := _CONTAINER.fullmatch(name)) is None:
            return None
        prefix = match["prefix"]
        return self._identity(
            CgroupKind.CONTAINER,
            container_id=match["id"] or match["bare_id"],
            runtime=_RUNTIME_BY_PREFIX[prefix] if prefix else None,
            container_path=self.upto(walk.next),
            **self._levels(walk),
        )

    def _levels(self, walk: _Walk) -> dict[str, str | None]:
        return {
            "qos": walk.qos,
            "pod_uid": walk.pod_uid,
            "pod_path": self._path_at(walk.pod_at),
            "kubepods_path": self._path_at(walk.kubepods_at),
        }

    def _path_at(self, index: int | None) -> str | None:
        return None if index is None else self.upto(index)

    def off_kubernetes(self) -> CgroupIdentity | None:
        """Name a plain docker container or systemd unit, for `oomguard watch` on any host."""
        for index, name in enumerate(self.names):
            scope = _DOCKER_SCOPE.fullmatch(name)
            next_name = self.names[index + 1] if index + 1 < len(self.names) else ""
            if scope is not None or (
                _DOCKER_CGROUPFS_PARENT.fullmatch(name) and _DOCKER_ID.fullmatch(next_name)
            ):
                at = index if scope is not None else index + 1
                return self._identity(
                    CgroupKind.DOCKER,
                    container_id=scope["id"] if scope is not None else next_name,
                    runtime="docker",
                    container_path=self.upto(at),
                )
        for index in range(len(self.names) - 1, -1, -1):
            unit = _SYSTEMD_UNIT.fullmatch(self.names[index])
            if unit is not None:
                # A service or scope is the workload's own box, like a container;
                # a slice only groups others.
                owns = unit["type"] != "slice"
                return self._identity(
                    CgroupKind.SYSTEMD_UNIT,
                    unit=self.names[index],
                    container_path=self.upto(index) if owns else None,
                )
        return None

    def _identity(self, kind: CgroupKind, **fields: str | None) -> CgroupIdentity:
        return CgroupIdentity(path=self.path, kind=kind, **fields)


class _Walk(NamedTuple):
    """How far a walk down the kubelet's levels has read, and what the next must fit."""

    next: int  # the index of the next name to read
    # The systemd name of the last level read ("kubepods-burstable"): a systemd
    # child's name is its parent's plus "-<its own part>". None: no such level in view.
    stem: str | None = None
    stem_is_cgroupfs: bool = False  # that level's name came from the cgroupfs driver
    kubepods_at: int | None = None
    qos: str | None = None
    qos_level: bool = False  # a QoS level was read (Guaranteed pods have none)
    pod_uid: str | None = None
    pod_at: int | None = None


def _read_kubepods(at: int, name: str | None, in_namespace_view: bool) -> _Walk | None:
    """Start a walk at `name`: past it if it is a kubepods level, else at it, or None.

    Without a kubepods level a walk may only start where a systemd name spells its
    own ancestry, or where a namespace's "/../.." hides the levels above.
    """
    if name is not None and _KUBEPODS_CGROUPFS.fullmatch(name):
        return _Walk(next=at + 1, stem="kubepods", stem_is_cgroupfs=True, kubepods_at=at)
    if name is not None and (match := _KUBEPODS_SYSTEMD.fullmatch(name)):
        return _Walk(next=at + 1, stem=match["stem"], kubepods_at=at)
    if in_namespace_view or _starts_by_itself(name):
        return _Walk(next=at)
    return None


def _read_qos(walk: _Walk, name: str | None, in_namespace_view: bool) -> _Walk:
    """`walk` past `name` if it is the QoS level the kubelet makes under the last level.

    Guaranteed pods have none, so any other name leaves the walk where it was.
    """
    if name is None:
        return walk
    if (match := _QOS_SYSTEMD.fullmatch(name)) and _extends(walk.stem, match["stem"]):
        return walk._replace(
            next=walk.next + 1,
            stem=match["stem"],
            stem_is_cgroupfs=False,
            qos=match["qos"],
            qos_level=True,
        )
    if (match := _QOS_CGROUPFS.fullmatch(name)) and _cgroupfs_child_fits(walk, in_namespace_view):
        qos = match["qos"]
        stem = None if walk.stem is None else f"{walk.stem}-{qos}"
        return walk._replace(next=walk.next + 1, stem=stem, qos=qos, qos_level=True)
    return walk


def _read_pod(walk: _Walk, name: str, in_namespace_view: bool, may_lack_pod: bool) -> _Walk | None:
    """`walk` past the pod level `name`, or None if `name` is no pod that fits there.

    Only where `may_lack_pod` does a name that is no pod leave the walk as it was.
    """
    if (match := _POD_SYSTEMD.fullmatch(name)) is not None:
        qos = _systemd_pod_qos(walk, match)
        if qos is None:
            return None
        uid = match["uid"].replace("_", "-")
        return walk._replace(next=walk.next + 1, qos=qos, pod_uid=uid, pod_at=walk.next)
    if (match := _POD_CGROUPFS.fullmatch(name)) is not None:
        if not _cgroupfs_child_fits(walk, in_namespace_view):
            return None
        # A pod straight under a kubepods level in view is Guaranteed; with the
        # kubepods level hidden, a missing QoS level says nothing.
        guaranteed = not walk.qos_level and walk.kubepods_at is not None
        qos = _QOS_GUARANTEED if guaranteed else walk.qos
        return walk._replace(next=walk.next + 1, qos=qos, pod_uid=match["uid"], pod_at=walk.next)
    return walk if may_lack_pod else None


def _systemd_pod_qos(walk: _Walk, match: re.Match[str]) -> str | None:
    """The QoS class a systemd pod name spells, or None if the levels above disagree."""
    qos = match["qos"] or _QOS_GUARANTEED
    if not _extends(walk.stem, match["stem"]) or (walk.qos_level and qos != walk.qos):
        return None
    return qos


def _cgroupfs_child_fits(walk: _Walk, in_namespace_view: bool) -> bool:
    """Whether a cgroupfs name ("burstable", "pod<uid>") may be the walk's next level.

    Only a cgroupfs parent has such children; with no parent in view, only a
    namespace's "/../.." may be hiding one.
    """
    if walk.stem is None:
        return in_namespace_view
    return walk.stem_is_cgroupfs


def _is_kubepods(name: str) -> bool:
    return bool(_KUBEPODS_CGROUPFS.fullmatch(name) or _KUBEPODS_SYSTEMD.fullmatch(name))


def _starts_by_itself(name: str | None) -> bool:
    return name is not None and bool(
        _QOS_SYSTEMD.fullmatch(name)
        or _POD_SYSTEMD.fullmatch(name)
        or _CONTAINER_IN_POD_NAME.fullmatch(name)
    )


def _extends(parent_stem: str | None, child_stem: str) -> bool:
    """Whether a systemd child name is its parent's name plus one more part.

    Systemd nests slices by name, so "kubepods-besteffort-pod<uid>" under
    "kubepods-burstable", or a Burstable pod straight under kubepods, was not made
    by a kubelet. With no parent in view there is nothing to check.
    """
    return parent_stem is None or child_stem.rpartition("-")[0] == parent_stem
