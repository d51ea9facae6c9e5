"""Fuzz: pod objects as a watch may deliver them never crash, mislead or bloat the cache.

Issue 14 asks for a fuzz test per input surface; this one is the API's pod objects, fed
at the pod cache's input boundary (`PodCache.apply_event`, what the watch loop calls for
every event the server streams; the HTTP path itself is covered in
tests/cluster/test_pod_cache.py and would make each example cost milliseconds). The
objects have missing, extra and wrong-typed fields, huge annotation maps, odd owner
references and container statuses, any JSON where an object belongs.

Properties:
- projecting or applying any of them never raises (an ERROR event is the one kind that
  does, by design: it makes the loop relist or back off, so it is not generated here);
- a well-formed pod and a static pod's mirror on the same node are found, projected and
  attributed exactly as without the odd pods; the one exception the rules allow is a
  forged mirror pod (mirror annotation and a Node controller owner, which a user can
  write at create time): its hash then names *no* pod, never the forger;
- what the cache keeps per pod is bounded: annotations the agent never reads are not
  kept (the projection is the same without them), and a view's size has a fixed bound
  plus one per container, whatever the object's size.

Container statuses are written by the kubelet (the status subresource), so the odd pods'
container IDs are drawn from a space apart from the good pods' ones: a status naming
another pod's container is the kubelet's word, not an attack this can defend against.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from oomguard.cgroups.path import parse_cgroup_path
from oomguard.k8s.attribution import Target, attribute
from oomguard.k8s.pod_cache import (
    KEPT_ANNOTATION_PREFIX,
    KEPT_KUBELET_ANNOTATIONS,
    MalformedPod,
    PodCache,
    PodView,
    mirror_pod_hash,
    normalize_pod_key,
    project_pod,
)
from oomguard.records import CgroupIdentity, Constraint, OomKill

NODE = "node-1"
GOOD_UID = "0f1e2d3c-0000-4000-8000-00000000000a"
GOOD_CID = "a" * 64
MIRROR_UID = "0f1e2d3c-0000-4000-8000-00000000000b"
STATIC_HASH = "6f1e2b0c9d8a7e6f5a4b3c2d1e0f9a8b"
STATIC_CID = "b" * 64
NODE_OWNER = {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": "n", "controller": True}
RESERVED_KEYS = {normalize_pod_key(k) for k in (GOOD_UID, MIRROR_UID, STATIC_HASH)}
RESERVED_CIDS = {GOOD_CID, STATIC_CID}

# A view: a fixed part (identity, the kept annotations) plus one part per container.
VIEW_BYTES_FIXED = 48 * 1024
VIEW_BYTES_PER_CONTAINER = 4 * 1024


def good_pod() -> dict[str, Any]:
    return {
        "metadata": {
            "uid": GOOD_UID,
            "namespace": "team-a",
            "name": "web",
            "resourceVersion": "7",
            "annotations": {"oomguard.io/sacrifice": "true"},
        },
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "app", "resources": {"requests": {"memory": "1Gi"}}}],
        },
        "status": {
            "qosClass": "Burstable",
            "containerStatuses": [
                {"name": "app", "containerID": f"containerd://{GOOD_CID}", "state": {"running": {}}}
            ],
        },
    }


def mirror_pod() -> dict[str, Any]:
    return {
        "metadata": {
            "uid": MIRROR_UID,
            "namespace": "kube-system",
            "name": f"etcd-{NODE}",
            "annotations": {
                "kubernetes.io/config.hash": STATIC_HASH,
                "kubernetes.io/config.mirror": STATIC_HASH,
                "kubernetes.io/config.source": "file",
            },
            "ownerReferences": [NODE_OWNER],
        },
        "spec": {"nodeName": NODE, "containers": [{"name": "etcd"}]},
        "status": {
            "qosClass": "Burstable",
            "containerStatuses": [{"name": "etcd", "containerID": f"containerd://{STATIC_CID}"}],
        },
    }


# ------------------------------------------------------------------------ strategies

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def odd(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The field as it should be, or any JSON in its place."""
    return st.one_of(strategy, json_values)


fuzz_uids = st.one_of(
    st.uuids().map(str),
    st.text(min_size=1, max_size=40),
    st.text(alphabet="ab-_", min_size=200, max_size=300),  # longer than any real uid
).filter(lambda uid: normalize_pod_key(uid) not in RESERVED_KEYS)

fuzz_cids = st.tuples(
    st.sampled_from(["containerd://", "cri-o://", "docker://", "", "://"]),
    st.text(alphabet="0123456789cdefCDEF", max_size=80),
).map("".join)

hashes = st.one_of(
    st.just(STATIC_HASH),
    st.just(STATIC_HASH.upper()),
    st.just(GOOD_UID.replace("-", "")),
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    json_values,
)

owner_refs = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "apiVersion": st.sampled_from(["v1", "apps/v1", ""]),
                "kind": st.sampled_from(["Node", "ReplicaSet", "node"]),
                "name": st.sampled_from([NODE, "node-2", ""]),
                "uid": st.text(max_size=8),
                "controller": odd(st.booleans()),
            },
        ),
        st.just(NODE_OWNER),
        json_values,
    ),
    max_size=3,
)


@st.composite
def annotation_maps(draw: st.DrawFn) -> Any:
    """Kubelet and oomguard keys with odd values, and many or huge ones nobody reads."""
    kept: dict[str, Any] = {}
    for key in sorted(KEPT_KUBELET_ANNOTATIONS):
        if draw(st.booleans()):
            kept[key] = draw(hashes)
    for word in draw(st.lists(st.text(max_size=12), max_size=4)):
        kept[KEPT_ANNOTATION_PREFIX + word] = draw(odd(st.text(max_size=12)))
    junk_count, junk_len = draw(st.tuples(st.integers(0, 3000), st.integers(0, 400)))
    many = {f"example.com/junk-{i}": "x" * junk_len for i in range(junk_count)}
    many_ours = {
        f"{KEPT_ANNOTATION_PREFIX}oom-score-adj.c{i}": "9" * draw(st.integers(0, 5000))
        for i in range(draw(st.integers(0, 100)))
    }
    return draw(st.one_of(st.just({**many, **many_ours, **kept}), json_values))


def containers(spec_field: bool) -> st.SearchStrategy[Any]:
    item = st.fixed_dictionaries(
        {},
        optional={
            "name": odd(st.sampled_from(["app", "etcd", "side", "x" * 300])),
            "restartPolicy": odd(st.just("Always")),
            "resources": odd(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "requests": odd(
                            st.fixed_dictionaries({"memory": odd(st.text(max_size=70))})
                        ),
                        "limits": odd(
                            st.fixed_dictionaries({"memory": odd(st.just("1e999999999"))})
                        ),
                    },
                )
            ),
        }
        if spec_field
        else {
            "name": odd(st.sampled_from(["app", "etcd", "side", ""])),
            "containerID": odd(fuzz_cids),
            "state": odd(st.sampled_from([{"running": {}}, {"terminated": {}}, {}])),
            "restartCount": odd(st.integers()),
            "lastState": odd(
                st.fixed_dictionaries(
                    {"terminated": odd(st.fixed_dictionaries({"containerID": odd(fuzz_cids)}))}
                )
            ),
        },
    )
    return odd(st.lists(st.one_of(item, json_values), max_size=4))


odd_pods = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "metadata": odd(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "uid": odd(fuzz_uids),
                        "name": odd(st.text(max_size=300)),
                        "namespace": odd(st.text(max_size=10)),
                        "resourceVersion": odd(st.text(max_size=100)),
                        "annotations": annotation_maps(),
                        "ownerReferences": odd(owner_refs),
                    },
                )
            ),
            "spec": odd(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "nodeName": odd(st.sampled_from([NODE, "node-2", ""])),
                        "containers": containers(True),
                        "initContainers": containers(True),
                        "ephemeralContainers": containers(True),
                        "priority": odd(st.integers()),
                        "resources": odd(
                            st.fixed_dictionaries(
                                {
                                    "requests": odd(
                                        st.fixed_dictionaries({"memory": odd(st.text(max_size=70))})
                                    )
                                }
                            )
                        ),
                    },
                )
            ),
            "status": odd(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "qosClass": odd(st.sampled_from(["Burstable", "BestEffort", "Guaranteed"])),
                        "phase": odd(st.text(max_size=100)),
                        "containerStatuses": containers(False),
                        "initContainerStatuses": containers(False),
                        "ephemeralContainerStatuses": containers(False),
                        "allocatedResources": odd(
                            st.fixed_dictionaries({"memory": odd(st.text(max_size=10))})
                        ),
                    },
                )
            ),
            "extra": json_values,
        },
    ),
    json_values,
)


@st.composite
def decoy_pods(draw: st.DrawFn) -> dict[str, Any]:
    """Well-formed pods on this node that try to pass for the static pod: its hash in
    their annotations, Node owner references in every shape."""
    hash_value = draw(st.sampled_from([STATIC_HASH, STATIC_HASH.upper(), MIRROR_UID]))
    annotations = {
        key: hash_value
        for key in ("kubernetes.io/config.hash", "kubernetes.io/config.mirror")
        if draw(st.booleans())
    }
    obj = good_pod()
    obj["metadata"] = {
        "uid": draw(fuzz_uids),
        "namespace": "evil",
        "name": "decoy",
        "annotations": annotations,
        "ownerReferences": draw(owner_refs),
    }
    obj["status"]["containerStatuses"] = draw(containers(False))
    return obj


events = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "BOGUS"]),
            "object": st.one_of(odd_pods, decoy_pods()),
        }
    ),
    max_size=8,
)


# --------------------------------------------------------------------------- helpers


def deep_size(obj: object, seen: set[int] | None = None) -> int:
    """Bytes held by a view and everything it refers to (each object counted once)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, MappingProxyType | Mapping):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, tuple | list):
        size += sum(deep_size(item, seen) for item in obj)
    elif hasattr(obj, "__slots__"):
        size += sum(deep_size(getattr(obj, name), seen) for name in obj.__slots__)
    return size


def without_unused_annotations(obj: Any) -> Any:
    """The same object with every annotation the agent does not read removed."""
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        return obj
    meta = obj["metadata"]
    annotations = meta.get("annotations")
    if not isinstance(annotations, dict):
        return obj
    used = {
        k: v
        for k, v in annotations.items()
        if k.startswith(KEPT_ANNOTATION_PREFIX) or k in KEPT_KUBELET_ANNOTATIONS
    }
    return {**obj, "metadata": {**meta, "annotations": used}}


def kill_in(pod_key: str, container_id: str) -> OomKill:
    identity: CgroupIdentity = parse_cgroup_path(f"/kubepods/burstable/pod{pod_key}/{container_id}")
    return OomKill(
        **{
            "time": datetime(2026, 1, 1, tzinfo=UTC),
            "kernel_time_us": None,
            "kmsg_seq": None,
            "constraint": Constraint.CONTAINER,
            "cgroup": identity.path,
            "oom_cgroup": identity.path,
            "identity": identity,
            "pid": None,
            "command": None,
            "uid": None,
            "rss_bytes": None,
            "anon_rss_bytes": None,
            "file_rss_bytes": None,
            "shmem_rss_bytes": None,
            "oom_score_adj": None,
            "memory_limit_bytes": None,
            "memory_usage_bytes": None,
            "source": "counters",
        }
    )


def good_cache(extra_events: list[dict[str, Any]]) -> PodCache:
    cache = PodCache(api=None, node_name=NODE)  # type: ignore[arg-type]  # never started
    cache.apply_event({"type": "ADDED", "object": good_pod()})
    cache.apply_event({"type": "ADDED", "object": mirror_pod()})
    for event in extra_events:
        cache.apply_event(event)
    # The good pods change once more (a status update), and the odd ones come again
    # after that: neither the first nor the last word may matter.
    cache.apply_event({"type": "MODIFIED", "object": good_pod()})
    cache.apply_event({"type": "MODIFIED", "object": mirror_pod()})
    for event in extra_events:
        cache.apply_event(event)
    return cache


def results(cache: PodCache) -> tuple[PodView | None, PodView | None, Target, Target, Target]:
    found = cache.lookup_container(GOOD_CID)
    return (
        found[0] if found else None,
        cache.lookup_pod(GOOD_UID),
        attribute(kill_in(GOOD_UID, GOOD_CID), cache),
        attribute(kill_in(STATIC_HASH, STATIC_CID), cache),
        attribute(kill_in(STATIC_HASH, "a" * 63 + "b"), cache),  # not in a status yet
    )


BASELINE = results(good_cache([]))
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ----------------------------------------------------------------------------- tests


@FUZZ
@given(odd_pods)
@example({"metadata": {"uid": "u", "annotations": {f"k/{i}": "v" * 1000 for i in range(1000)}}})
@example({"metadata": {"uid": "u", "annotations": {"oomguard.io/oom-score-adj": "9" * 100_000}}})
def test_projection_never_raises_and_stays_small(obj: Any) -> None:
    try:
        view = project_pod(obj)
    except MalformedPod:
        return
    assert view == project_pod(without_unused_annotations(obj))
    limit = VIEW_BYTES_FIXED + VIEW_BYTES_PER_CONTAINER * len(view.containers)
    assert deep_size(view) <= limit
    for value in view.annotations.values():  # a cut value is never a valid one
        assert len(value) <= 257


@FUZZ
@given(events)
def test_odd_pods_do_not_touch_other_pods(batch: list[dict[str, Any]]) -> None:
    cache = good_cache(batch)  # apply_event raising fails the test here
    found_by_container, found_by_uid, good_kill, static_kill, static_early = results(cache)
    assert (found_by_container, found_by_uid, good_kill) == BASELINE[:3]
    assert static_kill == BASELINE[3]  # by container ID: the kubelet's status decides
    forgers = [
        event["object"]
        for event in batch
        if event["type"] in ("ADDED", "MODIFIED")
        and isinstance(event["object"], dict)
        and isinstance(event["object"].get("metadata"), dict)
        and _forges_the_static_hash(event["object"])
    ]
    if not forgers:
        assert static_early == BASELINE[4]
    else:  # a forged mirror pod makes the hash name no pod: never the forger
        assert static_early == BASELINE[4] or static_early.is_node


def _forges_the_static_hash(obj: dict[str, Any]) -> bool:
    try:
        view = project_pod(obj)
    except MalformedPod:
        return False
    node = obj.get("spec", {}).get("nodeName") if isinstance(obj.get("spec"), dict) else None
    claimed = mirror_pod_hash(obj["metadata"], node if isinstance(node, str) else None)
    return (
        view.node_name == NODE and claimed is not None and normalize_pod_key(claimed) == STATIC_HASH
    )


def test_a_forged_mirror_pod_is_what_the_fuzz_counts_as_forging() -> None:
    """The exception in the property above is exactly the documented residual case."""
    forged = mirror_pod()
    forged["metadata"].update(uid="f" * 32, namespace="evil", name="decoy")
    forged["status"]["containerStatuses"] = []
    assert _forges_the_static_hash(forged)
    cache = good_cache([{"type": "ADDED", "object": forged}])
    assert results(cache)[4].is_node and cache.hash_claims(STATIC_HASH) == 2
