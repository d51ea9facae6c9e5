"""The pod cache against the test API server, over real HTTP with the official client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from oomguard.cgroups.path import parse_cgroup_path
from oomguard.k8s import (
    ApiConnectionError,
    ApiStatusError,
    ContainerKind,
    KubeApi,
    PodCache,
    PodCacheSettings,
    parse_quantity,
    project_pod,
)
from oomguard.k8s.attribution import attribute
from oomguard.k8s.client import MAX_RETRY_AFTER_S, parse_retry_after
from oomguard.records import OomKill
from tests.cluster.apiserver import PODS, ApiServer
from tests.unit.test_events import make_kill

NODE = "node-1"
NS = "team-a"
FAST = PodCacheSettings(
    backoff_initial_s=0.05, backoff_max_s=0.3, watch_timeout_s=10, deleted_retention_s=60
)


def cid(n: int) -> str:
    return f"{n:064x}"


def pod(
    name: str,
    *,
    node: str = NODE,
    uid: str | None = None,
    containers: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A pod whose app containers are {name: container id} (running)."""
    if containers is None:
        containers = {"main": name.encode().hex().rjust(64, "0")}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": uid or f"uid-{name}"},
        "spec": {
            "nodeName": node,
            "containers": [{"name": c, "image": "busybox"} for c in containers],
        },
        "status": {
            "phase": "Running",
            "qosClass": "BestEffort",
            "containerStatuses": [
                {"name": c, "containerID": f"containerd://{i}", "state": {"running": {}}}
                for c, i in containers.items()
            ],
        },
        **extra,
    }


def wait_until(predicate: Callable[[], object], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(0.01)


def names(cache: PodCache) -> list[str]:
    return sorted(p.name for p in cache.pods())


def start_cache(server: ApiServer, settings: PodCacheSettings = FAST) -> PodCache:
    cache = PodCache(KubeApi(server.client_configuration()), NODE, settings)
    cache.start()
    return cache


@pytest.fixture
def cache(apiserver: ApiServer) -> Iterator[PodCache]:
    cache = start_cache(apiserver)
    try:
        yield cache
    finally:
        cache.stop()
        assert not cache.running


# -- quantities and projection --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("128Mi", 128 * 2**20),
        ("1Gi", 2**30),
        ("1.5Gi", 3 * 2**29),
        ("512Ki", 512 * 1024),
        ("2Ti", 2 * 2**40),
        ("1Ei", 2**60),
        ("100", 100),
        ("1k", 1000),
        ("1M", 10**6),
        ("1G", 10**9),
        ("0.5G", 5 * 10**8),
        (".5M", 500_000),
        ("1.", 1),
        ("+2k", 2000),
        ("1E", 10**18),  # exa, not an exponent
        ("1e3", 1000),
        ("1E3", 1000),
        ("1.5e6", 1_500_000),
        ("5e-1", 1),  # rounded up, as Quantity.Value()
        ("100m", 1),
        ("1500m", 2),
        ("1n", 1),
        ("0", 0),
        ("-1Mi", -(2**20)),
        (268435456, 268435456),
        ("", None),
        ("Mi", None),
        ("1 Mi", None),
        ("1mi", None),
        ("1KB", None),
        ("1e", None),
        ("0x10", None),
        ("1e999999999", None),  # refused, not computed
        ("9Ei", None),  # beyond int64
        (None, None),
        (True, None),
        (["1Gi"], None),
    ],
)
def test_quantity_parsing(text: object, expected: int | None) -> None:
    assert parse_quantity(text) == expected


def test_projection_covers_every_container_kind() -> None:
    view = project_pod(
        {
            "metadata": {
                "uid": "U-1",
                "namespace": NS,
                "name": "web",
                "annotations": {"oomguard.io/protect": "true", "bad": 1},
            },
            "spec": {
                "nodeName": NODE,
                "priority": 1000,
                "priorityClassName": "high",
                "containers": [
                    {
                        "name": "app",
                        "resources": {"requests": {"memory": "64Mi"}, "limits": {"memory": "1Gi"}},
                    }
                ],
                "initContainers": [
                    {"name": "setup"},
                    {"name": "proxy", "restartPolicy": "Always"},
                ],
                "ephemeralContainers": [{"name": "debugger"}],
            },
            "status": {
                "qosClass": "Burstable",
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "app",
                        "containerID": "containerd://" + cid(2),
                        "state": {"running": {}},
                        "lastState": {"terminated": {"containerID": "containerd://" + cid(1)}},
                        "restartCount": 1,
                        # What the runtime applied wins over the spec (in-place resize).
                        "resources": {"limits": {"memory": "2Gi"}},
                    }
                ],
                "initContainerStatuses": [
                    {
                        "name": "setup",
                        "containerID": "cri-o://" + cid(3),
                        "state": {"terminated": {}},
                    },
                    {"name": "proxy", "containerID": "cri-o://" + cid(4), "state": {"running": {}}},
                ],
                "ephemeralContainerStatuses": [
                    {"name": "debugger", "containerID": "docker://" + cid(5), "state": {}}
                ],
            },
        }
    )
    assert (view.uid, view.qos_class, view.priority, view.priority_class_name) == (
        "U-1",
        "Burstable",
        1000,
        "high",
    )
    assert dict(view.annotations) == {"oomguard.io/protect": "true"}  # non-strings dropped
    app = view.container("app")
    assert app is not None
    assert (app.kind, app.memory_request_bytes, app.memory_limit_bytes) == (
        ContainerKind.CONTAINER,
        None,  # status.resources replaced the spec's resources as a whole
        2 * 2**30,
    )
    assert (app.container_id, app.runtime, app.past_container_ids) == (
        cid(2),
        "containerd",
        (cid(1),),
    )
    assert (app.running, app.restart_count, app.field_path) == (True, 1, "spec.containers{app}")
    setup, proxy = view.container("setup"), view.container("proxy")
    assert setup is not None and proxy is not None
    assert (setup.kind, setup.is_sidecar, setup.running) == (ContainerKind.INIT, False, False)
    assert (proxy.is_sidecar, proxy.runtime, proxy.field_path) == (
        True,
        "cri-o",
        "spec.initContainers{proxy}",
    )
    debugger = view.container("debugger", ContainerKind.EPHEMERAL)
    assert debugger is not None
    assert debugger.field_path == "spec.ephemeralContainers{debugger}"
    assert debugger.container_id == cid(5)


# -- the cache over HTTP --------------------------------------------------------------


def test_only_this_nodes_pods_are_cached(apiserver: ApiServer, cache: PodCache) -> None:
    apiserver.apply(pod("mine"))
    apiserver.apply(pod("theirs", node="node-2"))
    apiserver.apply(pod("pending", node=""))
    wait_until(lambda: names(cache) == ["mine"])
    assert cache.synced.is_set()
    for request in apiserver.requests(resource="pods"):
        assert request.params["fieldSelector"] == f"spec.nodeName={NODE}"
    wait_until(lambda: apiserver.requests(verb="watch", resource="pods"))
    (watch, *_) = apiserver.requests(verb="watch", resource="pods")
    assert watch.params["allowWatchBookmarks"] == "true"
    assert watch.params["timeoutSeconds"] == "10"
    apiserver.apply(pod("pending", node=NODE))  # scheduled here later
    wait_until(lambda: names(cache) == ["mine", "pending"])
    assert cache.lookup_pod("uid-theirs") is None


def test_add_modify_delete_are_seen(apiserver: ApiServer, cache: PodCache) -> None:
    assert cache.synced.wait(5)
    apiserver.apply(pod("web", containers={"app": cid(1)}))
    assert cache.wait_for_container(cid(1), 5) is not None
    apiserver.apply(
        pod(
            "web",
            containers={"app": cid(1)},
            metadata={
                "name": "web",
                "namespace": NS,
                "uid": "uid-web",
                "annotations": {"oomguard.io/sacrifice": "true"},
            },
        )
    )
    wait_until(lambda: (p := cache.lookup_pod("uid-web")) and p.annotations)
    apiserver.delete(PODS, NS, "web")
    wait_until(lambda: names(cache) == [])
    counters = cache.counters
    assert counters.events >= 3 and counters.errors == 0 and counters.relists == 1


def test_every_container_kind_and_last_state_is_indexed(
    apiserver: ApiServer, cache: PodCache
) -> None:
    obj = pod("web", containers={"app": cid(10)})
    obj["spec"]["initContainers"] = [
        {"name": "init", "image": "x"},
        {"name": "sidecar", "image": "x", "restartPolicy": "Always"},
    ]
    obj["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "x"}]
    obj["status"]["containerStatuses"][0]["lastState"] = {
        "terminated": {"containerID": "containerd://" + cid(9), "exitCode": 137}
    }
    obj["status"]["initContainerStatuses"] = [
        {"name": "init", "containerID": "containerd://" + cid(11), "state": {"terminated": {}}},
        {"name": "sidecar", "containerID": "containerd://" + cid(12), "state": {"running": {}}},
    ]
    obj["status"]["ephemeralContainerStatuses"] = [
        {"name": "debug", "containerID": "containerd://" + cid(13), "state": {"running": {}}}
    ]
    apiserver.apply(obj)
    assert cache.wait_for_container(cid(13), 5) is not None
    found = {n: cache.lookup_container(cid(n)) for n in (9, 10, 11, 12, 13)}
    summary = {n: (hit[0].name, hit[1].name, hit[1].kind.value) for n, hit in found.items() if hit}
    assert summary == {
        9: ("web", "app", "container"),  # lastState.terminated
        10: ("web", "app", "container"),
        11: ("web", "init", "init"),
        12: ("web", "sidecar", "init"),
        13: ("web", "debug", "ephemeral"),
    }
    hit = cache.lookup_container("containerd://" + cid(12).upper())
    assert hit is not None and hit[1].is_sidecar


def restarted(name: str, old: str, new: str) -> dict[str, Any]:
    obj = pod(name, containers={"app": new})
    obj["status"]["containerStatuses"][0]["lastState"] = {
        "terminated": {"containerID": f"containerd://{old}", "reason": "OOMKilled"}
    }
    obj["status"]["containerStatuses"][0]["restartCount"] = 1
    return obj


def test_restart_racing_a_lookup(apiserver: ApiServer, cache: PodCache) -> None:
    apiserver.apply(pod("web", containers={"app": cid(1)}))
    assert cache.wait_for_container(cid(1), 5) is not None

    # The kill of cid(1) is looked up only after the restart reached the cache...
    apiserver.apply(restarted("web", cid(1), cid(2)))
    assert cache.wait_for_container(cid(2), 5) is not None
    hit = cache.lookup_container(cid(1))
    assert hit is not None and hit[1].name == "app" and hit[1].container_id == cid(2)
    # ...or after two restarts, when lastState no longer names it.
    apiserver.apply(restarted("web", cid(2), cid(3)))
    assert cache.wait_for_container(cid(3), 5) is not None
    assert cache.lookup_container(cid(1)) is not None

    # The new container is killed before its status reached the cache: a bounded wait.
    waited: list[object] = []
    waiter = threading.Thread(target=lambda: waited.append(cache.wait_for_container(cid(4), 5)))
    waiter.start()
    time.sleep(0.1)
    apiserver.apply(restarted("web", cid(3), cid(4)))
    waiter.join(5)
    assert waited and waited[0] is not None

    # Lookups of recent IDs never miss while restarts stream in (no torn index).
    misses: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            misses.extend(c for c in (cid(3), cid(4)) if cache.lookup_container(c) is None)

    thread = threading.Thread(target=reader)
    thread.start()
    for n in (5, 6, 7):
        apiserver.apply(restarted("web", cid(n - 1), cid(n)))
    assert cache.wait_for_container(cid(7), 5) is not None
    done.set()
    thread.join()
    assert misses == []
    hit = cache.lookup_container(cid(7))
    assert hit is not None
    # The history is bounded (PodCacheSettings.past_ids_per_container = 4).
    assert hit[1].past_container_ids == (cid(6), cid(5), cid(4), cid(3))
    assert cache.lookup_container(cid(2)) is None


@pytest.mark.parametrize("gone_as_http", [False, True], ids=["in-stream-410", "http-410"])
def test_relist_after_410(gone_as_http: bool) -> None:
    with ApiServer(gone_as_http=gone_as_http, bookmark_interval_s=0.2) as server:
        server.apply(pod("keep"))
        server.apply(pod("gone"))
        cache = start_cache(server)
        try:
            wait_until(lambda: names(cache) == ["gone", "keep"])
            server.begin_outage()
            # While the agent is cut off: changes, then compaction of that history.
            server.delete(PODS, NS, "gone")
            server.apply(pod("new"))
            server.apply(
                pod(
                    "keep",
                    metadata={
                        "name": "keep",
                        "namespace": NS,
                        "uid": "uid-keep",
                        "labels": {"v": "2"},
                    },
                )
            )
            server.compact()
            floor = server.resource_version
            server.end_outage()
            wait_until(lambda: names(cache) == ["keep", "new"])
            assert cache.counters.relists == 2
            # The refused connections were errors; the 410 was routine, not one.
            assert "too old" not in (cache.counters.last_error or "")
            resumed = [int(r.params["resourceVersion"]) for r in server.requests(verb="watch")]
            assert min(resumed) < floor  # it really tried the old version first
            # The pod deleted during the gap is still findable for a late kill report.
            deleted = cache.lookup_pod("uid-gone")
            assert deleted is not None and deleted.name == "gone"
        finally:
            cache.stop()


def test_relist_when_an_open_watch_expires(apiserver: ApiServer, cache: PodCache) -> None:
    apiserver.apply(pod("a"))
    wait_until(lambda: names(cache) == ["a"] and apiserver.active_watches() == 1)
    apiserver.expire_watches()  # in-stream ERROR 410 on the established watch
    wait_until(lambda: cache.counters.relists == 2)
    apiserver.apply(pod("b"))
    wait_until(lambda: names(cache) == ["a", "b"])
    assert cache.counters.errors == 0  # a 410 is routine, not an error


@pytest.mark.parametrize("refuse", [True, False], ids=["refused", "503"])
def test_outage_then_recovery(apiserver: ApiServer, cache: PodCache, refuse: bool) -> None:
    apiserver.apply(pod("a"))
    apiserver.apply(pod("b"))
    wait_until(lambda: names(cache) == ["a", "b"])
    apiserver.begin_outage(refuse=refuse)
    apiserver.delete(PODS, NS, "a")
    apiserver.apply(pod("c", containers={"main": cid(77)}))
    # Once the cache has met the outage (a positive signal, not a pause): stale but intact.
    wait_until(lambda: cache.counters.errors >= 1, timeout_s=30)
    assert cache.running and names(cache) == ["a", "b"]
    apiserver.end_outage()
    wait_until(lambda: names(cache) == ["b", "c"], timeout_s=6)
    assert cache.lookup_container(cid(77)) is not None
    counters = cache.counters
    assert counters.errors >= 1 and counters.last_error
    assert counters.relists == 1  # resumed from its resourceVersion: no relist needed
    assert cache.running


def test_dropped_streams_are_normal(apiserver: ApiServer, cache: PodCache) -> None:
    apiserver.apply(pod("a"))
    wait_until(lambda: names(cache) == ["a"])
    for i in range(3):
        wait_until(lambda: apiserver.active_watches() == 1)
        apiserver.drop_streams()
        apiserver.apply(pod(f"p{i}"))
    wait_until(lambda: names(cache) == ["a", "p0", "p1", "p2"])
    assert cache.counters.relists == 1


def test_malformed_pods_neither_crash_nor_hide_others(
    apiserver: ApiServer, cache: PodCache
) -> None:
    def raw(name: str, **fields: Any) -> None:
        obj = {"metadata": {"name": name, "namespace": NS}, **fields}
        apiserver.apply(obj, rtype=PODS, stamp=False)

    raw("no-uid", spec={"nodeName": NODE})
    raw(
        "garbage",
        metadata={"name": "garbage", "namespace": NS, "uid": "uid-garbage", "annotations": [1]},
        spec={
            "nodeName": NODE,
            "containers": "not-a-list",
            "initContainers": [None, 5, {"name": "i", "resources": {"limits": {"memory": "lots"}}}],
            "priority": "high",
        },
        status={
            "containerStatuses": {"a": 1},
            "initContainerStatuses": [{"name": "i", "containerID": 7, "state": []}],
            "qosClass": 3,
        },
    )
    raw("no-spec", metadata={"name": "no-spec", "namespace": NS, "uid": "uid-no-spec"})
    apiserver.apply(pod("good", containers={"main": cid(5)}))
    assert cache.wait_for_container(cid(5), 5) is not None
    garbage = cache.lookup_pod("uid-garbage")
    assert garbage is not None
    (init,) = garbage.containers
    assert (init.name, init.container_id, init.memory_limit_bytes) == ("i", None, None)
    assert garbage.priority is None and garbage.qos_class is None
    assert cache.lookup_pod("uid-no-spec") is None  # no spec.nodeName: not this node's
    assert cache.counters.malformed_objects == 1  # the pod without a uid

    # The same objects in a list (after a restart of the agent) are just as harmless.
    second = start_cache(apiserver)
    try:
        assert second.synced.wait(5)
        assert names(second) == ["garbage", "good"]
        assert second.counters.malformed_objects == 1
    finally:
        second.stop()
    assert cache.running


ETCD_HASH = "6f1e2b0c9d8a7e6f5a4b3c2d1e0f9a8b"
NODE_OWNER = {
    "apiVersion": "v1",
    "kind": "Node",
    "name": NODE,
    "uid": "node-uid",
    "controller": True,
}


def mirror_pod(
    name: str = "etcd-node-1",
    *,
    config_hash: str = ETCD_HASH,
    owners: list[dict[str, Any]] | None = None,
    namespace: str = "kube-system",
    **fields: Any,
) -> dict[str, Any]:
    """A static pod's mirror as the kubelet creates it (mirror_client.go): the hash in
    both annotations and a single controller ownerReference to its Node."""
    obj = pod(name, containers={}, **fields)
    obj["metadata"]["namespace"] = namespace
    obj["metadata"]["annotations"] = {
        "kubernetes.io/config.hash": config_hash,
        "kubernetes.io/config.mirror": config_hash,
        "kubernetes.io/config.source": "file",
    }
    obj["metadata"]["ownerReferences"] = [NODE_OWNER] if owners is None else owners
    return obj


def static_kill(config_hash: str, container_id: str) -> OomKill:
    """A kill in a static pod's container as the cgroup path names it (pod<hash>), the
    container not (yet) in any status."""
    path = f"/kubepods/burstable/pod{config_hash}/{container_id}"
    identity = parse_cgroup_path(path)
    assert identity.pod_uid is not None and identity.container_id == container_id
    return make_kill(time=datetime.now(UTC), cgroup=path, oom_cgroup=path, identity=identity)


def test_static_pods_are_found_by_config_hash(apiserver: ApiServer, cache: PodCache) -> None:
    apiserver.apply(mirror_pod(uid="3b4c5d6e-0000-4000-8000-000000000001"))
    wait_until(lambda: cache.lookup_pod(ETCD_HASH) is not None)
    view = cache.lookup_pod(ETCD_HASH)
    assert view is not None and view.name == "etcd-node-1" and view.config_hash == ETCD_HASH
    # UIDs however a cgroup path spells them: dashes, systemd's underscores.
    assert cache.lookup_pod("3b4c5d6e_0000_4000_8000_000000000001") is view
    assert cache.lookup_pod("3B4C5D6E-0000-4000-8000-000000000001") is view
    target = attribute(static_kill(ETCD_HASH, cid(77)), cache)
    assert (target.namespace, target.name) == ("kube-system", "etcd-node-1")


def test_a_pod_cannot_take_the_blame_for_a_static_pods_kills(
    apiserver: ApiServer, cache: PodCache
) -> None:
    """Issue 14.3: the last pod to write etcd's hash in its annotations was named for
    kills in etcd's cgroup. Annotations are user input; only a mirror pod as the kubelet
    makes it (mirror annotation and its Node as sole controller owner) names a hash."""
    apiserver.apply(mirror_pod())
    wait_until(lambda: cache.lookup_pod(ETCD_HASH) is not None)
    decoys = {
        # what issue 14 reproduced: the hash annotation alone
        "hash-only": {"kubernetes.io/config.hash": ETCD_HASH},
        # the mirror annotation too, but no Node owner (any user can write annotations)
        "mirror-no-owner": {
            "kubernetes.io/config.hash": ETCD_HASH,
            "kubernetes.io/config.mirror": ETCD_HASH,
        },
    }
    for name, decoy_annotations in decoys.items():
        decoy = pod(name, containers={"main": cid(len(name))})
        decoy["metadata"]["namespace"] = "evil"
        decoy["metadata"]["annotations"] = decoy_annotations
        apiserver.apply(decoy)
    decoy_owned = mirror_pod("other-owner", namespace="evil")
    decoy_owned["metadata"]["ownerReferences"] = [{**NODE_OWNER, "name": "node-2"}]
    apiserver.apply(decoy_owned)
    not_controller = mirror_pod("not-controller", namespace="evil")
    not_controller["metadata"]["ownerReferences"] = [{**NODE_OWNER, "controller": False}]
    apiserver.apply(not_controller)
    wait_until(lambda: len(cache.pods()) == 5)
    for kill_target in (
        cache.lookup_pod(ETCD_HASH),
        attribute(static_kill(ETCD_HASH, cid(999)), cache),
    ):
        assert kill_target is not None
        assert (kill_target.namespace, kill_target.name) == ("kube-system", "etcd-node-1")
    # Without the real mirror pod, none of them is found by the hash.
    apiserver.delete(PODS, "kube-system", "etcd-node-1")
    wait_until(lambda: len(cache.pods()) == 4)
    with_retention = cache.lookup_pod(ETCD_HASH)  # the deleted mirror, still remembered
    assert with_retention is not None and with_retention.name == "etcd-node-1"
    assert all(p.config_hash is None for p in cache.pods())


def test_two_pods_claiming_one_hash_name_neither(apiserver: ApiServer, cache: PodCache) -> None:
    """A user allowed to create pods can forge a mirror pod at create time (annotation
    and a Node ownerReference); until it is deleted, the claim is ambiguous, and the kill
    goes on the Node saying so, never on whichever pod wrote last."""
    apiserver.apply(mirror_pod())
    forged = mirror_pod("decoy", namespace="evil")
    apiserver.apply(forged)
    wait_until(lambda: len(cache.pods()) == 2)
    assert cache.lookup_pod(ETCD_HASH) is None
    target = attribute(static_kill(ETCD_HASH, cid(999)), cache)
    assert target.is_node
    assert target.unresolved is not None and "2 pods" in target.unresolved
    apiserver.delete(PODS, "evil", "decoy")  # the garbage collector or the kubelet
    wait_until(lambda: cache.hash_claims(ETCD_HASH) == 1)
    view = cache.lookup_pod(ETCD_HASH)
    assert view is not None and view.name == "etcd-node-1"


def test_a_uid_wins_over_a_hash(apiserver: ApiServer, cache: PodCache) -> None:
    """A mirror pod whose hash is spelled like another pod's UID cannot take that pod's
    kills: a key that is a pod's UID is never looked up as a hash."""
    victim_uid = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"
    apiserver.apply(pod("victim", uid=victim_uid))
    apiserver.apply(mirror_pod("decoy", config_hash=victim_uid.replace("-", "")))
    wait_until(lambda: len(cache.pods()) == 2)
    view = cache.lookup_pod(victim_uid.replace("-", ""))
    assert view is not None and view.name == "victim"
    apiserver.delete(PODS, NS, "victim")  # deleted but remembered: still the UID's pod
    wait_until(lambda: len(cache.pods()) == 1)
    view = cache.lookup_pod(victim_uid)
    assert view is not None and view.name == "victim"


def test_deleted_pods_stay_findable_for_a_while(apiserver: ApiServer) -> None:
    now = [1000.0]  # the cache's clock, moved by hand: retention without real waiting
    settings = PodCacheSettings(backoff_initial_s=0.05, deleted_retention_s=60)
    cache = PodCache(
        KubeApi(apiserver.client_configuration()), NODE, settings, clock=lambda: now[0]
    )
    cache.start()
    try:
        apiserver.apply(pod("job", containers={"main": cid(3)}))
        wait_until(lambda: cache.lookup_container(cid(3)))
        apiserver.delete(PODS, NS, "job")
        wait_until(lambda: names(cache) == [])
        hit = cache.lookup_container(cid(3))
        assert hit is not None and hit[0].name == "job"
        assert cache.lookup_pod("uid-job") is not None
        now[0] += 61
        assert cache.lookup_container(cid(3)) is None
        assert cache.lookup_pod("uid-job") is None
    finally:
        cache.stop()


def test_waiting_for_an_unknown_container_is_bounded(cache: PodCache) -> None:
    assert cache.synced.wait(5)
    started = time.monotonic()
    assert cache.wait_for_container(cid(404), 0.2) is None
    assert cache.wait_for_pod("nope", 0.1) is None
    # It waited its time; the upper bound only tells "bounded" from "hangs" on a loaded
    # 2-core machine.
    assert 0.3 <= time.monotonic() - started < 30


def test_stop_is_prompt_with_a_watch_open(apiserver: ApiServer) -> None:
    cache = start_cache(apiserver, PodCacheSettings(watch_timeout_s=300))
    assert cache.synced.wait(5)
    wait_until(lambda: apiserver.active_watches() == 1)
    started = time.monotonic()
    cache.stop()
    # Not the 300 s the watch would last (loose: a loaded 2-core machine).
    assert time.monotonic() - started < 60
    assert not cache.running


def test_missing_rbac_backs_off_then_syncs_once_granted(apiserver: ApiServer) -> None:
    apiserver.allow({("watch", "pods")})  # "list" forgotten
    apiserver.apply(pod("a"))
    cache = start_cache(apiserver)
    try:
        wait_until(lambda: cache.counters.errors >= 2)
        assert not cache.synced.is_set() and cache.running
        assert "403" in (cache.counters.last_error or "")
        apiserver.allow({("list", "pods"), ("watch", "pods")})
        assert cache.synced.wait(5)
        assert names(cache) == ["a"]
    finally:
        cache.stop()


def test_server_errors_back_off_and_recover(apiserver: ApiServer) -> None:
    apiserver.fail_next(3, 500, verb="watch")
    cache = start_cache(apiserver)
    try:
        assert cache.synced.wait(5)
        wait_until(lambda: cache.counters.errors == 3)
        apiserver.apply(pod("a"))
        wait_until(lambda: names(cache) == ["a"])
        assert cache.counters.errors == 3 and "500" in (cache.counters.last_error or "")
    finally:
        cache.stop()


# -- API server restarts and flow control ------------------------------------------------


@pytest.fixture
def quiet_server() -> Iterator[ApiServer]:
    """Periodic bookmarks a minute apart: the version a watch has is from its events, or
    from the bookmark a shutting-down server sends."""
    with ApiServer(bookmark_interval_s=60) as server:
        yield server


def lists(server: ApiServer) -> int:
    return len(server.requests("list", "pods"))


def test_an_api_server_restart_is_resumed_without_a_relist(quiet_server: ApiServer) -> None:
    server = quiet_server
    server.apply(pod("a"))
    cache = start_cache(server)
    try:
        wait_until(lambda: names(cache) == ["a"] and server.active_watches() == 1)
        assert lists(server) == 1
        server.apply(pod("elsewhere", node="node-2"))  # moves the version, not our pod
        latest = str(server.resource_version)
        server.restart(down_s=0.3)  # its watch cache comes back without history
        server.apply(pod("b"))
        wait_until(lambda: names(cache) == ["a", "b"])
        assert lists(server) == 1  # the first: resumed, not relisted
        assert cache.counters.relists == 1
        resumed = server.requests("watch", "pods")[1]
        assert resumed.params["resourceVersion"] == latest  # from the shutdown bookmark
    finally:
        cache.stop()


@pytest.mark.parametrize("when", ["before-a-crash", "while-down"])
def test_a_restart_that_lost_the_version_costs_one_relist(
    quiet_server: ApiServer, when: str
) -> None:
    """No bookmark on the way down (a crash), or writes through another API server while
    this one was down: the restarted watch cache cannot resume the version (410), and
    the cache lists again, once."""
    server = quiet_server
    server.apply(pod("a"))
    cache = start_cache(server)
    try:
        wait_until(lambda: names(cache) == ["a"] and server.active_watches() == 1)
        if when == "before-a-crash":
            server.apply(pod("elsewhere", node="node-2"))
            server.stop_serving(graceful=False)
        else:
            server.stop_serving()
            server.apply(pod("elsewhere", node="node-2"))
        server.delete(PODS, NS, "a")
        server.serve_again()
        wait_until(lambda: names(cache) == [] and cache.counters.relists == 2)
        server.apply(pod("b"))
        wait_until(lambda: names(cache) == ["b"])
        assert lists(server) == 2
        assert cache.lookup_pod("uid-a") is not None  # deleted meanwhile: still findable
    finally:
        cache.stop()


def test_a_throttled_list_and_watch_wait_as_told(apiserver: ApiServer) -> None:
    """API Priority and Fairness drops the first list and the first watch (429,
    Retry-After: 1): each is tried again no earlier than told, the watch from the same
    version (no relist), and nothing is lost. The backoff alone would be 0.05 s."""
    apiserver.throttle_next(1, 1, verb="list", resource="pods")
    apiserver.throttle_next(1, 1, verb="watch", resource="pods")
    apiserver.apply(pod("a"))
    cache = start_cache(apiserver)
    try:
        assert cache.synced.wait(10)
        wait_until(lambda: len(apiserver.requests("watch", "pods")) == 2)
        apiserver.apply(pod("b"))
        wait_until(lambda: names(cache) == ["a", "b"])
        for verb in ("list", "watch"):
            first, second = apiserver.requests(verb, "pods")
            assert (first.faulted, second.faulted) == (429, None)
            assert second.at - first.at >= 1.0, verb
        first, second = apiserver.requests("watch", "pods")
        assert first.params["resourceVersion"] == second.params["resourceVersion"]
        counters = cache.counters
        assert counters.relists == 1 and counters.errors == 2
        assert "Retry-After 1.0 s" in (counters.last_error or "")
    finally:
        cache.stop()


# -- the client layer -----------------------------------------------------------------


def test_kubeconfig_loading_and_error_types(apiserver: ApiServer, kubeconfig: Path) -> None:
    api = KubeApi.from_kubeconfig(kubeconfig)
    apiserver.apply(pod("a"))
    assert [i["metadata"]["name"] for i in api.get("/api/v1/pods")["items"]] == ["a"]
    with pytest.raises(ApiStatusError) as missing:
        api.get(f"/api/v1/namespaces/{NS}/pods/nope")
    assert (missing.value.status, missing.value.reason) == (404, "NotFound")
    assert missing.value.body is not None and missing.value.body["kind"] == "Status"
    apiserver.begin_outage()
    with pytest.raises(ApiConnectionError, match=r"Connection refused"):
        api.get("/api/v1/pods")
    apiserver.end_outage()
    assert api.get("/api/v1/pods")["items"]
    api.close()


def test_the_client_leaves_the_wait_to_its_caller(apiserver: ApiServer) -> None:
    """A 429 with Retry-After comes back at once with the wait on it: urllib3 does not
    retry it by itself (its default would sleep inside the request, uncapped), and the
    same path is not sent again before that time."""
    api = KubeApi(apiserver.client_configuration())

    def cluster_lists() -> list[Any]:
        return [r for r in apiserver.requests("list", "pods") if r.namespace is None]

    apiserver.throttle_next(1, 1, verb="list", resource="pods")
    with pytest.raises(ApiStatusError) as throttled:
        api.get("/api/v1/pods")
    assert (throttled.value.status, throttled.value.retry_after_s) == (429, 1.0)
    assert "Too many requests" in str(throttled.value)
    assert len(cluster_lists()) == 1
    with pytest.raises(ApiStatusError) as held:
        api.get("/api/v1/pods")  # too early: refused here, never sent
    assert held.value.status == 429 and "not sent" in str(held.value)
    left = held.value.retry_after_s
    assert left is not None and 0 < left <= 1.0
    assert len(cluster_lists()) == 1
    assert api.get(f"/api/v1/namespaces/{NS}/pods")["items"] == []  # another path: sent
    time.sleep(left)
    assert api.get("/api/v1/pods")["items"] == []
    assert len(cluster_lists()) == 2
    api.close()


NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("1", 1.0),
        (" 32 ", 32.0),  # APF's largest
        ("0", 0.0),
        ("3600", MAX_RETRY_AFTER_S),  # capped
        ("Thu, 01 Jan 2026 12:00:30 GMT", 30.0),  # an HTTP-date (a proxy's)
        ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),  # in the past: now
        ("Fri, 02 Jan 2026 12:00:00 GMT", MAX_RETRY_AFTER_S),
        ("-1", None),
        ("1.5", None),  # not delay-seconds (client-go ignores it too)
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_parsing(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


def test_a_permanent_410_backs_off_instead_of_spinning(apiserver: ApiServer) -> None:
    """The client's SharedInformer relists 56 times in 2 s against this; we must not."""
    import kmock

    from tests.cluster.apiserver import Response, status_body

    gone = status_body(410, "Expired", "too old resource version: 1 (2)")
    apiserver.run(
        lambda: (
            apiserver.handler[kmock.action.WATCH, kmock.resource("", "v1", "pods")]
            << Response(status=410, payload=gone)
        )
    )
    started = time.monotonic()
    cache = start_cache(apiserver, PodCacheSettings(backoff_initial_s=0.1, backoff_max_s=0.4))
    try:
        assert cache.synced.wait(5)
        wait_until(lambda: cache.counters.relists >= 10, timeout_s=60)
        # Nine backoffs, each random in [0, min(0.4, 0.1 * 2**n)] s (full jitter): they
        # add up to under 0.3 s with a probability of about 2e-6, while a cache that
        # spins gets there in milliseconds. (A lower bound on time holds however loaded
        # the machine is.)
        assert time.monotonic() - started >= 0.3
        counters = cache.counters
        assert cache.running
        assert counters.errors >= 1
    finally:
        cache.stop()
