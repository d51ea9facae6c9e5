"""This node's pods, kept current from the API, so a kill can be put on the right pod.

The kernel names a victim only by cgroup, and the cgroup names only a pod UID (or, for a
static pod, its config hash) and a container ID. Asking the API at kill time would be
slow and would fail exactly when it matters (an outage, a storm of kills), so the agent
keeps a small projection of every pod on its node and looks kills up locally.

The list -> watch loop is `list_watch.ListWatch` (shared with the namespace labels): one
list, then a watch that follows resourceVersion with bookmarks and a server-side
timeout, resuming from the last version after a watch ends, drops or meets a restarted
API server; a 410 in either form relists; errors and outages back off with jittered
exponential waits, or for as long as the server said (Retry-After), so a fleet of agents
does not stampede a recovering apiserver.

Only projections are kept (ECOSYSTEM.md: raw JSON plus a small projection is what keeps
the agent near 85 MiB instead of 107+ with typed models), and a projection keeps only what
the agent reads: the annotations it acts on (`oomguard.io/...` and the kubelet's
`kubernetes.io/config.*`), bounded in number and length, and identity strings no longer
than the API allows. A pod with a megabyte of other annotations costs the cache what a
plain pod costs, and a pod whose object no real API server would send (a 10 kB uid) is
skipped as malformed.

Static pods, and what the kubelet guarantees about their mirror pods
--------------------------------------------------------------------
A static pod's cgroup is named after its config hash (the kubelet uses the hash as the
static pod's UID), not after the UID of the mirror pod the API shows. So a kill in
`pod<hash>` is found through the mirror pod's hash. Annotations are user input
(anyone who can create a pod writes them), so the hash is taken only from a pod that
carries what the kubelet and the API server control:

- the `kubernetes.io/config.mirror` annotation, set by the kubelet when it creates the
  mirror (pkg/kubelet/pod/mirror_client.go, CreateMirrorPod: the value is the static
  pod's hash), and equal to `kubernetes.io/config.hash` when that is present too;
- exactly one ownerReference, a controller of kind `Node` (apiVersion v1) naming the
  pod's own node: the kubelet sets it on every mirror pod it creates (KEP-1314,
  "MirrorPodNodeRestriction"), and the NodeRestriction admission plugin
  (plugin/pkg/admission/noderestriction, admitPodCreate) lets a node create only pods
  that have the mirror annotation, are bound to itself and have this single owner.
- The mirror annotation can never be added, changed or removed by an update
  (pkg/apis/core/validation, ValidatePodSpecificAnnotationUpdates: "may not add
  mirror pod annotation"), so a running pod cannot turn into a mirror later.

What the API does *not* guarantee: a user allowed to create pods can create one with
the mirror annotation and a Node ownerReference at create time (the garbage collector
deletes it when the reference's uid is not the Node's, and the kubelet deletes mirror
pods that match no static pod, but only on its next housekeeping). So, in addition:
a pod UID always wins over a hash (a key that is some pod's UID is never looked up as a
hash), and a hash claimed by two live pods names neither: the kill goes on the Node
with the reason, rather than on whichever pod wrote last.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from oomguard.k8s.client import ApiStatusError, KubeApi
from oomguard.k8s.list_watch import ListWatch, ListWatchSettings, StreamEndedEarly

log = logging.getLogger(__name__)

PODS_PATH = "/api/v1/pods"
CONFIG_HASH_ANNOTATION = "kubernetes.io/config.hash"
CONFIG_MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
CONFIG_SOURCE_ANNOTATION = "kubernetes.io/config.source"

# The annotations the agent acts on: the policy's (all of `oomguard.io/`, so unknown
# words still get their warning) and the kubelet's (node-critical, static pods).
KEPT_ANNOTATION_PREFIX = "oomguard.io/"
KEPT_KUBELET_ANNOTATIONS = frozenset(
    {CONFIG_HASH_ANNOTATION, CONFIG_MIRROR_ANNOTATION, CONFIG_SOURCE_ANNOTATION}
)
# Per pod: at most this many kept annotations (sorted by key, the rest dropped) ...
MAX_KEPT_ANNOTATIONS = 32
# ... and values cut to this length plus a marker that no valid value contains, so a
# cut value stays invalid (never cut into a valid one) and is reported as such.
MAX_ANNOTATION_VALUE_CHARS = 256
CUT_MARKER = "\u2026"
# Longer keys are not valid annotation keys (prefix <= 253, name <= 63).
_MAX_ANNOTATION_KEY_CHARS = 317
# Identity strings beyond what the API validates (DNS subdomain names, UUIDs) make a
# pod malformed rather than a memory cost.
_MAX_NAME_CHARS = 253
_MAX_UID_CHARS = 128
_MAX_CONTAINER_ID_CHARS = 128
# Short enumerations and opaque versions (qosClass, phase, resourceVersion).
_MAX_SHORT_CHARS = 64


# ---------------------------------------------------------------------------------------
# Quantities

_QUANTITY = re.compile(
    r"""
    (?P<number> [+-]? (?: \d+ (?: \. \d* )? | \. \d+ ) )
    (?P<suffix>
        [KMGTPE]i            # binary SI: Ki = 2**10 ... Ei = 2**60
      | [eE] [+-]? \d+       # decimal exponent: 1e3, 5E-2 (before decimal SI: "1E3" != "1E")
      | [numkMGTPE]          # decimal SI: n u m "" k M G T P E
    )?
    """,
    re.VERBOSE,
)
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
# Beyond this a "limit" means nothing on any machine; refusing it also keeps a hostile
# "1e999999999" from costing gigabytes to turn into an int.
_MAX_BYTES = 2**63 - 1


def parse_quantity(value: object) -> int | None:
    """A Kubernetes quantity ("128Mi", "1.5G", "100m", "1e9") as a whole number, rounded
    up as resource.Quantity.Value() does; None for anything the API would not accept."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) <= _MAX_BYTES else None
    if isinstance(value, float):
        value = repr(value)
    if not isinstance(value, str) or len(value) > 64:
        return None
    match = _QUANTITY.fullmatch(value)
    if match is None:
        return None
    try:
        number = Decimal(match["number"])
    except InvalidOperation:
        return None
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        scaled = number * (2 ** _BINARY[suffix])
    else:
        exponent = int(suffix[1:]) if suffix[:1] in ("e", "E") and len(suffix) > 1 else None
        if exponent is None:
            exponent = _DECIMAL.get(suffix, 0)
        if abs(exponent) > 40:
            return None
        scaled = number.scaleb(exponent)
    whole = int(scaled.to_integral_value(rounding="ROUND_UP"))
    return whole if abs(whole) <= _MAX_BYTES else None


# ---------------------------------------------------------------------------------------
# Projections


class ContainerKind(enum.StrEnum):
    CONTAINER = "container"
    INIT = "init"  # includes sidecars (init containers with restartPolicy Always)
    EPHEMERAL = "ephemeral"


_SPEC_FIELD = {
    ContainerKind.CONTAINER: ("containers", "containerStatuses"),
    ContainerKind.INIT: ("initContainers", "initContainerStatuses"),
    ContainerKind.EPHEMERAL: ("ephemeralContainers", "ephemeralContainerStatuses"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerView:
    name: str
    kind: ContainerKind
    restart_policy: str | None  # "Always" on an init container makes it a sidecar
    memory_request_bytes: int | None
    memory_limit_bytes: int | None
    container_id: str | None  # current, without the "containerd://" scheme
    runtime: str | None  # the scheme: "containerd", "cri-o", "docker"
    # Older IDs of this container, newest first: lastState.terminated's, then IDs this
    # cache saw as current before. A kill racing a restart carries one of these.
    past_container_ids: tuple[str, ...]
    running: bool
    restart_count: int

    @property
    def is_sidecar(self) -> bool:
        return self.kind is ContainerKind.INIT and self.restart_policy == "Always"

    @property
    def field_path(self) -> str:
        """The Event involvedObject.fieldPath naming this container."""
        return f"spec.{_SPEC_FIELD[self.kind][0]}{{{self.name}}}"

    @property
    def all_ids(self) -> tuple[str, ...]:
        current = (self.container_id,) if self.container_id else ()
        return current + self.past_container_ids


@dataclasses.dataclass(frozen=True, slots=True)
class PodView:
    uid: str
    namespace: str
    name: str
    node_name: str
    annotations: Mapping[str, str]  # read-only
    qos_class: str | None  # "Guaranteed" | "Burstable" | "BestEffort"
    priority: int | None
    priority_class_name: str | None
    # Static pods: the kubelet names the pod cgroup after this hash, not the mirror's UID.
    # Set only on a mirror pod as the kubelet creates it (`mirror_pod_hash`), never
    # from annotations alone.
    config_hash: str | None
    phase: str | None
    containers: tuple[ContainerView, ...]
    resource_version: str | None
    # Pod-level resources (KEP-2837): the memory request of the pod as a whole, which
    # the kubelet shares out among the containers for oom_score_adj. None: not set.
    pod_memory_request_bytes: int | None = None

    def container(self, name: str, kind: ContainerKind | None = None) -> ContainerView | None:
        for container in self.containers:
            if container.name == name and kind in (None, container.kind):
                return container
        return None


class MalformedPod(ValueError):
    """A pod object this cache cannot index (no UID); it is skipped, never fatal."""


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _shared(value: str | None) -> str | None:
    """One string object for a value many pods repeat (namespace, node, QoS class,
    phase, container names, runtime, annotation keys): json.loads makes a fresh copy in
    every object it decodes, and each PodView outlives the object it came from."""
    return None if value is None else sys.intern(value)


# The annotations of every pod that has none the agent acts on (most pods).
_NO_ANNOTATIONS: Mapping[str, str] = MappingProxyType({})


def _str(value: object, max_chars: int = _MAX_NAME_CHARS) -> str | None:
    """A non-empty string no longer than `max_chars`; anything else is absent."""
    return value if isinstance(value, str) and 0 < len(value) <= max_chars else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def split_container_id(container_id: str) -> tuple[str | None, str]:
    """("containerd", "abc...") from "containerd://abc..."; a bare ID has no runtime."""
    runtime, sep, bare = container_id.partition("://")
    return (runtime or None, bare.lower()) if sep else (None, container_id.lower())


def _container(
    kind: ContainerKind, spec: Mapping[str, Any], status: Mapping[str, Any]
) -> ContainerView:
    # status.resources is what the runtime applied (it differs during an in-place
    # resize); the spec is what was asked for.
    resources = _dict(status.get("resources")) or _dict(spec.get("resources"))
    runtime, container_id = None, None
    if raw_id := _str(status.get("containerID"), _MAX_CONTAINER_ID_CHARS):
        runtime, container_id = split_container_id(raw_id)
    past: list[str] = []
    terminated = _dict(_dict(status.get("lastState")).get("terminated"))
    if last_id := _str(terminated.get("containerID"), _MAX_CONTAINER_ID_CHARS):
        _, bare = split_container_id(last_id)
        if bare != container_id:
            past.append(bare)
    return ContainerView(
        name=_shared(_str(spec.get("name")) or _str(status.get("name")) or "") or "",
        kind=kind,
        restart_policy=_shared(_str(spec.get("restartPolicy"), _MAX_SHORT_CHARS)),
        memory_request_bytes=parse_quantity(_dict(resources.get("requests")).get("memory")),
        memory_limit_bytes=parse_quantity(_dict(resources.get("limits")).get("memory")),
        container_id=container_id,
        runtime=_shared(runtime),
        past_container_ids=tuple(past),
        running="running" in _dict(status.get("state")),
        restart_count=_int(status.get("restartCount")) or 0,
    )


def kept_annotations(raw: object) -> dict[str, str]:
    """The annotations the agent acts on, bounded (see the module docstring); values
    that are not strings are dropped, as the API would never send them."""
    kept: dict[str, str] = {}
    items = _dict(raw).items()
    candidates = sorted(
        key
        for key, value in items
        if isinstance(key, str)
        and isinstance(value, str)
        and len(key) <= _MAX_ANNOTATION_KEY_CHARS
        and (key.startswith(KEPT_ANNOTATION_PREFIX) or key in KEPT_KUBELET_ANNOTATIONS)
    )
    source = _dict(raw)
    for key in candidates[:MAX_KEPT_ANNOTATIONS]:
        value = source[key]
        if len(value) > MAX_ANNOTATION_VALUE_CHARS:
            value = value[:MAX_ANNOTATION_VALUE_CHARS] + CUT_MARKER
        kept[sys.intern(key)] = value
    return kept


def mirror_pod_hash(meta: Mapping[str, Any], node_name: str | None) -> str | None:
    """The static pod's config hash if this is its mirror pod as the kubelet creates it
    (mirror annotation, and a single controller ownerReference to its own Node); None
    for any other pod, whatever its annotations say. Rules: the module docstring."""
    if not node_name:
        return None
    annotations = _dict(meta.get("annotations"))
    mirror = _str(annotations.get(CONFIG_MIRROR_ANNOTATION), _MAX_SHORT_CHARS)
    if mirror is None:
        return None
    declared = annotations.get(CONFIG_HASH_ANNOTATION)
    if declared is not None and declared != mirror:
        return None
    owners = _list(meta.get("ownerReferences"))
    if len(owners) != 1:
        return None
    owner = _dict(owners[0])
    if (
        owner.get("apiVersion") != "v1"
        or owner.get("kind") != "Node"
        or owner.get("name") != node_name
        or owner.get("controller") is not True
    ):
        return None
    return mirror


def _pod_memory_request(spec: Mapping[str, Any], status: Mapping[str, Any]) -> int | None:
    """The pod-level memory request the kubelet computes with: the allocated one
    (`status.allocatedResources`, in-place pod-level resize), else the one applied
    (`status.resources`), else the spec's; None when the pod sets none."""
    for requests in (
        _dict(status.get("allocatedResources")),
        _dict(_dict(status.get("resources")).get("requests")),
        _dict(_dict(spec.get("resources")).get("requests")),
    ):
        if "memory" in requests:
            return parse_quantity(requests.get("memory"))
    return None


def project_pod(obj: object) -> PodView:
    """The small, immutable view of a pod object; tolerant of any missing or mistyped
    field except the UID it is indexed by."""
    if not isinstance(obj, Mapping):
        raise MalformedPod("pod object is not a JSON object")
    meta, spec, status = (
        _dict(obj.get("metadata")),
        _dict(obj.get("spec")),
        _dict(obj.get("status")),
    )
    uid = _str(meta.get("uid"), _MAX_UID_CHARS)
    pod_namespace, pod_name = meta.get("namespace"), meta.get("name")
    if uid is None:
        raise MalformedPod(
            f"pod {_short(pod_namespace)}/{_short(pod_name)} has no usable metadata.uid"
        )
    for what, value in (("namespace", pod_namespace), ("name", pod_name)):
        if isinstance(value, str) and len(value) > _MAX_NAME_CHARS:
            raise MalformedPod(f"pod {uid}: metadata.{what} is longer than any valid name")
    containers = []
    for kind, (spec_field, status_field) in _SPEC_FIELD.items():
        statuses = {
            name: item
            for item in _list(status.get(status_field))
            if isinstance(item, Mapping) and (name := _str(item.get("name")))
        }
        for spec_item in _list(spec.get(spec_field)):
            if isinstance(spec_item, Mapping) and (name := _str(spec_item.get("name"))):
                containers.append(_container(kind, spec_item, statuses.pop(name, {})))
        for name, status_item in statuses.items():  # a status whose spec we did not get
            containers.append(_container(kind, {"name": name}, status_item))
    node_name = _shared(_str(spec.get("nodeName"))) or ""
    annotations = kept_annotations(meta.get("annotations"))
    return PodView(
        uid=uid,
        namespace=_shared(_str(pod_namespace)) or "",
        name=_str(pod_name) or "",
        node_name=node_name,
        annotations=MappingProxyType(annotations) if annotations else _NO_ANNOTATIONS,
        qos_class=_shared(_str(status.get("qosClass"), _MAX_SHORT_CHARS)),
        priority=_int(spec.get("priority")),
        priority_class_name=_shared(_str(spec.get("priorityClassName"))),
        config_hash=mirror_pod_hash(meta, node_name),
        phase=_shared(_str(status.get("phase"), _MAX_SHORT_CHARS)),
        containers=tuple(containers),
        resource_version=_str(meta.get("resourceVersion"), _MAX_SHORT_CHARS),
        pod_memory_request_bytes=_pod_memory_request(spec, status),
    )


def _short(value: object) -> str:
    """A name for a log line about a malformed pod, whatever the server sent."""
    return repr(value)[:40] if not isinstance(value, str) else value[:40]


def _with_history(new: PodView, old: PodView | None, keep: int) -> PodView:
    """Carry IDs the previous version knew into the new one, so a kill of a container
    that restarted twice since (and left lastState) is still found."""
    if old is None:
        return new
    containers = []
    for container in new.containers:
        before = old.container(container.name, container.kind)
        ids = list(container.past_container_ids)
        if before is not None:
            ids += [i for i in before.all_ids if i != container.container_id]
        unique = tuple(dict.fromkeys(ids))[:keep]
        containers.append(dataclasses.replace(container, past_container_ids=unique))
    return dataclasses.replace(new, containers=tuple(containers))


def normalize_pod_key(uid_or_hash: str) -> str:
    """One form for UIDs and config hashes however a cgroup path spells them (dashes in
    cgroupfs, underscores in systemd slice names, none in a static pod's hash)."""
    return uid_or_hash.lower().replace("-", "").replace("_", "")


# ---------------------------------------------------------------------------------------
# The cache


@dataclasses.dataclass(frozen=True)
class PodCacheSettings:
    # Server-side end of each watch: bounds how long a silently broken stream can last.
    watch_timeout_s: float = 300.0
    # Added to watch_timeout_s for the client read timeout, so only a dead connection
    # (not a quiet one) trips it.
    watch_read_slack_s: float = 30.0
    list_timeout_s: float = 60.0
    # Jittered exponential backoff after failures: random in [0, min(max, initial * 2**n)].
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # Deleted pods stay findable this long: a kill is often reported after its pod went.
    deleted_retention_s: float = 120.0
    deleted_max_pods: int = 512
    past_ids_per_container: int = 4


@dataclasses.dataclass(frozen=True)
class PodCacheCounters:
    """Totals since start, for metrics (a snapshot: read `PodCache.counters` again)."""

    relists: int = 0  # full lists, the first one included
    watch_restarts: int = 0  # watches that ended or dropped normally and were reopened
    errors: int = 0  # failed attempts that led to a backoff
    malformed_objects: int = 0  # pod objects or events skipped as unusable
    events: int = 0  # ADDED/MODIFIED/DELETED events applied (bookmarks not counted)
    last_error: str | None = None


class PodCache:
    """This node's pods, from one thread that lists and watches; lookups from any thread."""

    def __init__(
        self,
        api: KubeApi,
        node_name: str,
        settings: PodCacheSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not node_name:
            raise ValueError("node_name is required: the cache watches only this node's pods")
        self.node_name = node_name
        self.settings = settings or PodCacheSettings()
        self._clock = clock
        self._changed = threading.Condition()
        self._pods: dict[str, PodView] = {}  # normalized uid -> view
        # normalized config hash -> normalized uids of the live mirror pods claiming it
        # (more than one: ambiguous, names neither)
        self._by_hash: dict[str, set[str]] = {}
        self._by_container: dict[str, tuple[PodView, ContainerView]] = {}
        self._deleted: collections.OrderedDict[str, tuple[float, PodView]] = (
            collections.OrderedDict()
        )
        self._deleted_containers: dict[str, tuple[PodView, ContainerView]] = {}
        self._deleted_hashes: dict[str, str] = {}
        self._malformed = 0
        s = self.settings
        self._list_watch = ListWatch(
            api,
            PODS_PATH,
            name="pod",
            query=[("fieldSelector", f"spec.nodeName={node_name}")],
            settings=ListWatchSettings(
                watch_timeout_s=s.watch_timeout_s,
                watch_read_slack_s=s.watch_read_slack_s,
                list_timeout_s=s.list_timeout_s,
                backoff_initial_s=s.backoff_initial_s,
                backoff_max_s=s.backoff_max_s,
            ),
            replace=self._replace_all,
            apply=self._apply,
            on_failure=self._note_failure,
            on_malformed=self._skipped,
        )
        self.synced = self._list_watch.synced

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._list_watch.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ends the watch at once (shutting its socket down) and waits for the thread.

        A list request in flight is not interrupted: it ends by its own timeout, on a
        daemon thread, after this returns."""
        self._list_watch.stop(0)
        with self._changed:
            self._changed.notify_all()
        self._list_watch.stop(timeout_s)

    @property
    def running(self) -> bool:
        return self._list_watch.running

    # -- lookups ----------------------------------------------------------------------

    def pods(self) -> list[PodView]:
        with self._changed:
            return list(self._pods.values())

    def lookup_pod(self, uid_or_config_hash: str) -> PodView | None:
        with self._changed:
            return self._lookup_pod(normalize_pod_key(uid_or_config_hash))

    def lookup_container(self, container_id: str) -> tuple[PodView, ContainerView] | None:
        _, bare = split_container_id(container_id)
        with self._changed:
            self._expire_deleted()
            return self._by_container.get(bare) or self._deleted_containers.get(bare)

    def wait_for_container(
        self, container_id: str, timeout_s: float
    ) -> tuple[PodView, ContainerView] | None:
        """Waits (bounded) for a container the kernel killed before its pod reached the
        cache, e.g. a kill within moments of the container's start."""
        _, bare = split_container_id(container_id)
        deadline = self._clock() + timeout_s
        with self._changed:
            while True:
                hit = self._by_container.get(bare) or self._deleted_containers.get(bare)
                remaining = deadline - self._clock()
                if hit is not None or remaining <= 0 or self._list_watch.stopping:
                    return hit
                self._changed.wait(remaining)

    def wait_for_pod(self, uid_or_config_hash: str, timeout_s: float) -> PodView | None:
        key = normalize_pod_key(uid_or_config_hash)
        deadline = self._clock() + timeout_s
        with self._changed:
            while True:
                hit = self._lookup_pod(key)
                remaining = deadline - self._clock()
                if hit is not None or remaining <= 0 or self._list_watch.stopping:
                    return hit
                self._changed.wait(remaining)

    @property
    def counters(self) -> PodCacheCounters:
        loop = self._list_watch.counters
        with self._changed:
            malformed = self._malformed
        return PodCacheCounters(
            relists=loop.relists,
            watch_restarts=loop.watch_restarts,
            errors=loop.errors,
            malformed_objects=malformed,
            events=loop.events,
            last_error=loop.last_error,
        )

    @property
    def resource_version(self) -> str | None:
        return self._list_watch.resource_version

    def _lookup_pod(self, key: str) -> PodView | None:
        """A UID (live, then recently deleted) before any hash; a hash only when exactly
        one live mirror pod claims it, else the last deleted one that did."""
        self._expire_deleted()
        if key in self._pods:
            return self._pods[key]
        if key in self._deleted:
            return self._deleted[key][1]
        claims = self._by_hash.get(key)
        if claims:
            if len(claims) > 1:
                return None
            (claimant,) = claims
            return self._pods.get(claimant)
        buried = self._deleted_hashes.get(key)
        return self._deleted[buried][1] if buried is not None and buried in self._deleted else None

    def hash_claims(self, config_hash: str) -> int:
        """How many live pods claim this static-pod hash (for a message: 2+ names none)."""
        with self._changed:
            return len(self._by_hash.get(normalize_pod_key(config_hash), ()))

    def sizes(self) -> dict[str, int]:
        """Entries in each of the cache's structures (for tests and benches of churn)."""
        with self._changed:
            return {
                "pods": len(self._pods),
                "hashes": len(self._by_hash),
                "containers": len(self._by_container),
                "deleted": len(self._deleted),
                "deleted_containers": len(self._deleted_containers),
                "deleted_hashes": len(self._deleted_hashes),
            }

    # -- index maintenance (callers hold self._changed) --------------------------------

    def _index(self, view: PodView) -> None:
        key = normalize_pod_key(view.uid)
        self._pods[key] = view
        if view.config_hash:
            self._by_hash.setdefault(normalize_pod_key(view.config_hash), set()).add(key)
        for container in view.containers:
            for container_id in container.all_ids:
                self._by_container[container_id] = (view, container)

    def _unindex(self, key: str) -> PodView | None:
        view = self._pods.pop(key, None)
        if view is None:
            return None
        if view.config_hash:
            hashed = normalize_pod_key(view.config_hash)
            claims = self._by_hash.get(hashed)
            if claims is not None:
                claims.discard(key)
                if not claims:
                    del self._by_hash[hashed]
        for container in view.containers:
            for container_id in container.all_ids:
                hit = self._by_container.get(container_id)
                if hit is not None and hit[0].uid == view.uid:
                    del self._by_container[container_id]
        return view

    def _bury(self, view: PodView) -> None:
        key = normalize_pod_key(view.uid)
        self._deleted[key] = (self._clock() + self.settings.deleted_retention_s, view)
        self._deleted.move_to_end(key)
        if view.config_hash:
            self._deleted_hashes[normalize_pod_key(view.config_hash)] = key
        for container in view.containers:
            for container_id in container.all_ids:
                self._deleted_containers[container_id] = (view, container)
        while len(self._deleted) > self.settings.deleted_max_pods:
            self._forget(next(iter(self._deleted)))

    def _forget(self, key: str) -> None:
        _, view = self._deleted.pop(key)
        if (
            view.config_hash
            and self._deleted_hashes.get(normalize_pod_key(view.config_hash)) == key
        ):
            del self._deleted_hashes[normalize_pod_key(view.config_hash)]
        for container in view.containers:
            for container_id in container.all_ids:
                hit = self._deleted_containers.get(container_id)
                if hit is not None and hit[0].uid == view.uid:
                    del self._deleted_containers[container_id]

    def _expire_deleted(self) -> None:
        now = self._clock()
        while self._deleted:
            key, (deadline, _) = next(iter(self._deleted.items()))
            if deadline > now:
                break
            self._forget(key)

    def _upsert(self, obj: Mapping[str, Any]) -> None:
        view = project_pod(obj)
        key = normalize_pod_key(view.uid)
        with self._changed:
            if view.node_name != self.node_name:
                # Never attribute a kill to another node's pod, whatever the server sent.
                if (gone := self._unindex(key)) is not None:
                    self._bury(gone)
            else:
                old = self._unindex(key)
                self._index(_with_history(view, old, self.settings.past_ids_per_container))
                if key in self._deleted:  # a pod seen deleted cannot come back; be safe
                    self._forget(key)
            self._changed.notify_all()

    def _delete(self, obj: Mapping[str, Any]) -> None:
        view = project_pod(obj)
        key = normalize_pod_key(view.uid)
        with self._changed:
            old = self._unindex(key)
            self._bury(_with_history(view, old, self.settings.past_ids_per_container))
            self._changed.notify_all()

    def _replace_all(self, items: Iterable[object]) -> None:
        views: dict[str, PodView] = {}
        malformed = 0
        for item in items:
            try:
                view = project_pod(item)
            except Exception as exc:  # one odd object must not hide the others
                malformed += 1
                log.warning("skipping a pod the API listed: %r", exc)
                continue
            if view.node_name == self.node_name:
                views[normalize_pod_key(view.uid)] = view
        with self._changed:
            for key in list(self._pods):
                old = self._unindex(key)
                if old is None:
                    continue
                if key in views:
                    views[key] = _with_history(
                        views[key], old, self.settings.past_ids_per_container
                    )
                else:  # deleted while we were not watching
                    self._bury(old)
            for view in views.values():
                self._index(view)
            self._malformed += malformed
            self._changed.notify_all()

    # -- the list -> watch loop's hooks ----------------------------------------------

    def _apply(self, kind: str, obj: Mapping[str, Any]) -> None:
        if kind == "DELETED":
            self._delete(obj)
        else:
            self._upsert(obj)

    def _skipped(self, kind: str, exc: BaseException | None) -> None:
        if exc is not None:
            log.warning("skipping a pod %s event: %r", kind, exc)
        with self._changed:
            self._malformed += 1

    def _note_failure(self, exc: BaseException, attempt: int, wait_s: float) -> None:
        if isinstance(exc, StreamEndedEarly):
            log.info("pod watch ended before any event; reconnecting in %.1fs", wait_s)
            return
        level = (
            logging.ERROR
            if isinstance(exc, ApiStatusError) and exc.status in (401, 403)
            else logging.WARNING
        )
        log.log(
            level, "pod list/watch failed (attempt %d): %s; retrying in %.1fs", attempt, exc, wait_s
        )

    def apply_event(self, event: Mapping[str, Any]) -> None:
        """One watch event as the server streamed it (the cache's input boundary).

        Any ADDED/MODIFIED/DELETED/BOOKMARK event, however malformed its object, is
        applied or counted as malformed and never raises; an ERROR event raises (410:
        relist; others: back off), as the watch loop expects."""
        self._list_watch.apply_event(event)
