"""The test API server against the official client over real HTTP.

These pin the server's behaviour to the real kube-apiserver's where oomguard relies on
it, so a test that passes here means something on a cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from kubernetes.client.api_client import ApiClient

from tests.cluster.apiserver import EVENTS, EVENTS_V1, NAMESPACES, PODS, ApiServer

NS = "team-a"


def pod(name: str, node: str = "node-1", ns: str = NS, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
        **extra,
    }


class Raw:
    """The official client's transport (ApiClient.call_api) with JSON in and out."""

    def __init__(self, configuration: Any) -> None:
        self.client = ApiClient(configuration)

    def _send(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Content-Type": content_type} if body is not None else {}
        m, url, h, b, p = self.client.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        return self.client.call_api(m, url, h, b, p, _request_timeout=(5, 5)).response

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        response = self._send(method, path, **kwargs)
        data = response.read()
        return response.status, json.loads(data) if data else None

    def watch(self, path: str, query: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        response = self._send("GET", path, [*query, ("watch", "true")])
        assert response.status == 200, response.read()
        for line in response:
            if line.strip():
                yield json.loads(line)


@pytest.fixture
def raw(k8s_configuration: Any) -> Raw:
    return Raw(k8s_configuration)


def take(stream: Iterator[dict[str, Any]], count: int) -> list[tuple[str, str]]:
    """(type, name-or-resourceVersion) of the next `count` events."""
    out = []
    for event in stream:
        meta = event["object"].get("metadata", {})
        out.append((event["type"], meta.get("name") or meta.get("resourceVersion")))
        if len(out) == count:
            break
    return out


# -- lists, selectors and resourceVersion ---------------------------------------------


def test_field_selectors_filter_lists(apiserver: ApiServer, raw: Raw) -> None:
    apiserver.apply(pod("a", "node-1"))
    apiserver.apply(pod("b", "node-2"))
    apiserver.apply(pod("c", "node-1", ns="team-b"))
    apiserver.apply(pod("pending", ""))

    def names(path: str, selector: str) -> list[str]:
        status, body = raw.call("GET", path, query=[("fieldSelector", selector)])
        assert status == 200, body
        return [item["metadata"]["name"] for item in body["items"]]

    assert names("/api/v1/pods", "spec.nodeName=node-1") == ["a", "c"]
    assert names("/api/v1/pods", "spec.nodeName==node-2") == ["b"]
    assert names("/api/v1/pods", "spec.nodeName=") == ["pending"]  # unset matches ""
    assert names("/api/v1/pods", "spec.nodeName!=node-1") == ["b", "pending"]
    assert names(f"/api/v1/namespaces/{NS}/pods", "spec.nodeName=node-1") == ["a"]
    assert names("/api/v1/pods", "metadata.namespace=team-b,metadata.name=c") == ["c"]
    status, body = raw.call("GET", "/api/v1/pods", query=[("labelSelector", "app=a")])
    assert status == 400  # not implemented: refused rather than ignored

    status, body = raw.call("GET", "/api/v1/pods", query=[("fieldSelector", "spec.foo=x")])
    assert (status, body["reason"], body["message"]) == (
        400,
        "BadRequest",
        "field label not supported: spec.foo",
    )


def test_resource_versions_increase_and_list_items_are_untyped(
    apiserver: ApiServer, raw: Raw
) -> None:
    first = apiserver.apply(pod("a"))
    second = apiserver.apply(pod("a", status={"phase": "Running"}))
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert second["metadata"]["uid"] == first["metadata"]["uid"]  # a replace keeps identity
    status, body = raw.call("GET", "/api/v1/pods")
    assert body["kind"] == "PodList"
    assert body["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]
    (item,) = body["items"]
    assert "kind" not in item and "apiVersion" not in item  # as a real PodList
    assert item["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]
    status, body = raw.call("GET", f"/api/v1/namespaces/{NS}/pods/missing")
    assert (status, body["reason"], body["details"]) == (
        404,
        "NotFound",
        {"kind": "pods", "name": "missing"},
    )


def test_typed_client_reads_the_server(apiserver: ApiServer, k8s_configuration: Any) -> None:
    from kubernetes.client import CoreV1Api

    apiserver.apply(pod("a"))
    pods = CoreV1Api(ApiClient(k8s_configuration)).list_pod_for_all_namespaces(
        field_selector="spec.nodeName=node-1"
    )
    assert [p.metadata.name for p in pods.items if p.metadata] == ["a"]


def test_namespaces_are_read_by_name_with_the_name_label(apiserver: ApiServer, raw: Raw) -> None:
    apiserver.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "db", "labels": {"t": "1"}}}
    )
    status, body = raw.call("GET", "/api/v1/namespaces/db")
    assert status == 200, body
    assert (body["apiVersion"], body["kind"], body["metadata"]["name"]) == ("v1", "Namespace", "db")
    assert "namespace" not in body["metadata"]  # cluster-scoped
    # The real server labels every namespace with its name (1.21+).
    assert body["metadata"]["labels"] == {"t": "1", "kubernetes.io/metadata.name": "db"}
    assert apiserver.get(NAMESPACES, None, "db") == body
    assert raw.call("GET", "/api/v1/namespaces/db/pods")[0] == 200  # still pods in "db"
    status, body = raw.call("GET", "/api/v1/namespaces/nope")
    assert (status, body["reason"], body["message"], body["details"]) == (
        404,
        "NotFound",
        'namespaces "nope" not found',
        {"kind": "namespaces", "name": "nope"},
    )
    assert apiserver.requests("get", "namespaces")[-1].name == "nope"

    apiserver.allow({("list", "pods")})
    status, body = raw.call("GET", "/api/v1/namespaces/db")
    assert (status, body["reason"], body["message"]) == (
        403,
        "Forbidden",
        'namespaces "db" is forbidden: User "system:serviceaccount:kube-system:oomguard" '
        'cannot get resource "namespaces" in API group "" at the cluster scope',
    )
    apiserver.allow(None)
    apiserver.fail_next(1, 503, verb="get", resource="namespaces")
    assert raw.call("GET", "/api/v1/namespaces/db")[0] == 503
    assert raw.call("GET", "/api/v1/namespaces/db")[0] == 200


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def test_namespaces_are_listed_and_watched(apiserver: ApiServer, raw: Raw) -> None:
    apiserver.apply(namespace("db", t="1"))
    status, body = raw.call("GET", "/api/v1/namespaces", query=[("resourceVersion", "0")])
    assert status == 200, body
    assert (body["kind"], body["apiVersion"]) == ("NamespaceList", "v1")
    (item,) = body["items"]
    assert "kind" not in item and item["metadata"]["labels"]["kubernetes.io/metadata.name"] == "db"
    rv = body["metadata"]["resourceVersion"]
    stream = raw.watch(
        "/api/v1/namespaces", [("resourceVersion", rv), ("allowWatchBookmarks", "true")]
    )
    apiserver.apply(namespace("shop"))
    apiserver.apply(namespace("db", t="2"))
    apiserver.delete(NAMESPACES, None, "shop")
    events: list[tuple[str, str]] = []
    for e in stream:
        if e["type"] != "BOOKMARK":
            events.append((e["type"], e["object"]["metadata"]["name"]))
        if len(events) == 3:
            break
    assert events == [("ADDED", "shop"), ("MODIFIED", "db"), ("DELETED", "shop")]
    assert [(r.verb, r.resource, r.name) for r in apiserver.requests()] == [
        ("list", "namespaces", None),
        ("watch", "namespaces", None),
    ]
    apiserver.allow({("list", "namespaces")})
    status, body = raw.call("GET", "/api/v1/namespaces", query=[("watch", "true")])
    assert (status, body["message"]) == (
        403,
        'namespaces is forbidden: User "system:serviceaccount:kube-system:oomguard" '
        'cannot watch resource "namespaces" in API group "" at the cluster scope',
    )


# -- flow control (API Priority and Fairness) ------------------------------------------


def test_a_throttled_request_is_a_429_with_retry_after_in_plain_text(
    apiserver: ApiServer, raw: Raw
) -> None:
    """As APF's filter answers (apiserver filters/priority-and-fairness.go,
    tooManyRequests: the header and http.Error's text, no Status)."""
    apiserver.throttle_next(1, 3, verb="create", resource="events")
    response = raw._send("POST", EVENTS_PATH, body=event("e1"))
    assert response.status == 429
    assert response.headers["Retry-After"] == "3"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "X-Kubernetes-PF-FlowSchema-UID" in response.headers
    assert response.read() == b"Too many requests, please try again later.\n"
    assert raw.call("POST", EVENTS_PATH, body=event("e1"))[0] == 201  # one dropped, then in
    assert [r.faulted for r in apiserver.requests("create", "events")] == [429, None]


def test_the_official_client_retries_a_throttled_get_by_itself(
    apiserver: ApiServer, raw: Raw
) -> None:
    """Left to its defaults, the official client's urllib3 (Retry.DEFAULT: Retry-After
    respected for 429/503 on GET, three times, uncapped) waits inside the request: a
    caller with a backoff of its own would wait twice. oomguard's client turns it off."""
    apiserver.throttle_next(1, 1, verb="list", resource="pods")
    status, _ = raw.call("GET", "/api/v1/pods")
    assert status == 200
    first, second = apiserver.requests("list", "pods")
    assert first.faulted == 429 and second.at - first.at >= 1.0


# -- restarts ---------------------------------------------------------------------------


@pytest.fixture
def quiet_server() -> Iterator[ApiServer]:
    """Periodic bookmarks a minute apart: any bookmark a test sees is a shutdown's."""
    with ApiServer(bookmark_interval_s=60) as server:
        yield server


def test_a_restart_keeps_the_store_and_port_and_bookmarks_its_watchers(
    quiet_server: ApiServer,
) -> None:
    server, raw = quiet_server, Raw(quiet_server.client_configuration())
    server.apply(pod("a"))
    url, rv = server.url, str(server.resource_version)
    response = raw._send(  # open now (a generator would send on its first read)
        "GET",
        "/api/v1/pods",
        [
            ("fieldSelector", "spec.nodeName=node-1"),
            ("resourceVersion", rv),
            ("allowWatchBookmarks", "true"),
            ("watch", "true"),
        ],
    )
    assert response.status == 200
    server.apply(pod("b", node="node-2"))  # not this watcher's: the version moves on
    latest = str(server.resource_version)
    server.stop_serving()
    # On the way down: a bookmark at the current version, then the stream ends cleanly.
    events = [json.loads(line) for line in response if line.strip()]
    assert events == [
        {
            "type": "BOOKMARK",
            "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": latest}},
        }
    ]
    with pytest.raises(urllib3.exceptions.NewConnectionError, match="refused"):
        urllib3.PoolManager(retries=False).request("GET", url + "/api/v1/pods")
    server.serve_again()
    assert server.url == url and str(server.resource_version) == latest
    assert [o["metadata"]["name"] for o in server.objects(PODS)] == ["a", "b"]
    # The watch cache comes back without history: from the bookmark's version a watch
    # resumes, from an older one it is told 410 (and must relist).
    resumed = raw.watch("/api/v1/pods", [("resourceVersion", latest), ("timeoutSeconds", "5")])
    server.apply(pod("c"))
    assert take(resumed, 1) == [("ADDED", "c")]
    (gone,) = raw.watch("/api/v1/pods", [("resourceVersion", rv)])
    assert (gone["type"], gone["object"]["code"]) == ("ERROR", 410)


def test_a_crash_sends_no_bookmark(quiet_server: ApiServer) -> None:
    server, raw = quiet_server, Raw(quiet_server.client_configuration())
    server.apply(pod("a"))
    stream = raw.watch("/api/v1/pods", [("allowWatchBookmarks", "true")])
    assert take(stream, 1) == [("ADDED", "a")]
    server.stop_serving(graceful=False)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        next(stream)  # cut, with nothing more
    server.serve_again()
    assert raw.call("GET", "/api/v1/pods")[0] == 200


# -- watch ----------------------------------------------------------------------------


def test_watch_without_version_sends_state_then_changes(apiserver: ApiServer, raw: Raw) -> None:
    apiserver.apply(pod("a"))
    apiserver.apply(pod("other", "node-2"))
    stream = raw.watch("/api/v1/pods", [("fieldSelector", "spec.nodeName=node-1")])
    assert take(stream, 1) == [("ADDED", "a")]
    apiserver.apply(pod("a", status={"phase": "Running"}))
    apiserver.apply(pod("other", "node-2", status={"phase": "Running"}))  # not ours
    apiserver.delete(PODS, NS, "a")
    assert take(stream, 2) == [("MODIFIED", "a"), ("DELETED", "a")]


def test_watch_sees_objects_entering_and_leaving_the_selection(
    apiserver: ApiServer, raw: Raw
) -> None:
    apiserver.apply(pod("p", node=""))  # pending: not on any node yet
    rv = str(apiserver.resource_version)
    stream = raw.watch(
        "/api/v1/pods", [("fieldSelector", "spec.nodeName=node-1"), ("resourceVersion", rv)]
    )
    apiserver.apply(pod("p", node="node-1"))  # scheduled here: ADDED, not MODIFIED
    apiserver.apply(pod("p", node="node-9"))  # leaves the selection: DELETED
    assert take(stream, 2) == [("ADDED", "p"), ("DELETED", "p")]


def test_watch_resumes_after_a_version_without_replaying(apiserver: ApiServer, raw: Raw) -> None:
    apiserver.apply(pod("a"))
    since = str(apiserver.resource_version)
    apiserver.apply(pod("b"))
    stream = raw.watch("/api/v1/pods", [("resourceVersion", since)])
    assert take(stream, 1) == [("ADDED", "b")]  # a is older than `since`: not replayed


def test_too_old_version_is_an_in_stream_410(apiserver: ApiServer, raw: Raw) -> None:
    apiserver.apply(pod("a"))
    since = str(apiserver.resource_version)
    apiserver.apply(pod("b"))
    apiserver.compact()
    response = raw._send("GET", "/api/v1/pods", [("watch", "true"), ("resourceVersion", since)])
    assert response.status == 200  # the real server reports it inside the stream
    (event,) = [json.loads(line) for line in response if line.strip()]
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410
    assert event["object"]["reason"] == "Expired"
    assert event["object"]["message"].startswith(f"too old resource version: {since}")


def test_too_old_version_as_http_410() -> None:
    with ApiServer(gone_as_http=True) as server:
        raw = Raw(server.client_configuration())
        server.apply(pod("a"))
        since = str(server.resource_version)
        server.apply(pod("b"))
        server.compact()
        status, body = raw.call(
            "GET", "/api/v1/pods", query=[("watch", "true"), ("resourceVersion", since)]
        )
        assert (status, body["kind"], body["code"], body["reason"]) == (
            410,
            "Status",
            410,
            "Expired",
        )


def test_official_watch_raises_410_after_one_stale_retry(
    apiserver: ApiServer, k8s_configuration: Any
) -> None:
    """ECOSYSTEM.md's trap reproduced: the client's Watch does not relist by itself."""
    from kubernetes import watch
    from kubernetes.client import CoreV1Api
    from kubernetes.client.exceptions import ApiException

    apiserver.apply(pod("a"))
    since = str(apiserver.resource_version)
    apiserver.apply(pod("b"))
    apiserver.compact()
    core = CoreV1Api(ApiClient(k8s_configuration))
    with pytest.raises(ApiException) as raised:
        # (No timeout_seconds: with one, the client disables even that single retry.)
        stream = watch.Watch().stream  # type: ignore[no-untyped-call]
        for _ in stream(core.list_pod_for_all_namespaces, resource_version=since):  # type: ignore[no-untyped-call]
            pass
    assert raised.value.status == 410
    watches = apiserver.requests(verb="watch", resource="pods")
    assert [r.params.get("resourceVersion") for r in watches] == [since, since]


def test_expire_watches_ends_open_streams_with_410(apiserver: ApiServer, raw: Raw) -> None:
    apiserver.apply(pod("a"))
    stream = raw.watch("/api/v1/pods", [])
    assert take(stream, 1) == [("ADDED", "a")]
    apiserver.expire_watches()
    event = next(stream)
    assert (event["type"], event["object"]["code"]) == ("ERROR", 410)
    assert list(stream) == []  # and the stream ends


def test_bookmarks_only_when_asked(apiserver: ApiServer, raw: Raw) -> None:
    apiserver.apply(pod("a"))
    rv = str(apiserver.resource_version)
    stream = raw.watch(
        "/api/v1/pods",
        [("resourceVersion", rv), ("allowWatchBookmarks", "true"), ("timeoutSeconds", "2")],
    )
    event = next(stream)
    assert event == {
        "type": "BOOKMARK",
        "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv}},
    }
    apiserver.apply(pod("a", status={"phase": "Running"}))
    assert next(stream)["type"] == "MODIFIED"
    quiet = raw.watch("/api/v1/pods", [("resourceVersion", rv), ("timeoutSeconds", "1")])
    assert [e["type"] for e in quiet] == ["MODIFIED"]  # no bookmarks, then the end


def test_timeout_seconds_ends_the_stream(apiserver: ApiServer, raw: Raw) -> None:
    started = time.monotonic()
    assert list(raw.watch("/api/v1/pods", [("timeoutSeconds", "1")])) == []
    # It lasted the second asked for, then ended by itself: a stream left open would
    # raise the client's 5 s read timeout instead of ending (no upper bound on the
    # clock here, which a loaded 2-core machine could overrun).
    assert time.monotonic() - started >= 0.9


def test_dropped_stream_is_cut_mid_response(apiserver: ApiServer, raw: Raw) -> None:
    apiserver.apply(pod("a"))
    stream = raw.watch("/api/v1/pods", [])
    assert take(stream, 1) == [("ADDED", "a")]
    assert apiserver.active_watches() == 1
    assert apiserver.drop_streams() == 1
    with pytest.raises(urllib3.exceptions.ProtocolError):
        next(stream)


# -- Events ---------------------------------------------------------------------------


def event(name: str, ns: str = NS, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": "web", "uid": "u-1"},
        "type": "Warning",
        "reason": "OOMKilled",
        "message": "killed",
        "source": {"component": "oomguard", "host": "node-1"},
        "firstTimestamp": "2025-01-01T00:00:00Z",
        "lastTimestamp": "2025-01-01T00:00:00Z",
        "count": 1,
    }
    body.update(fields)
    return body


EVENTS_PATH = f"/api/v1/namespaces/{NS}/events"


def causes(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["field"], c["reason"]) for c in body["details"]["causes"]]


def test_core_event_create_and_duplicate(apiserver: ApiServer, raw: Raw) -> None:
    status, body = raw.call("POST", EVENTS_PATH, body=event("web.1"))
    assert status == 201, body
    assert body["metadata"]["uid"] and body["metadata"]["resourceVersion"]
    assert apiserver.get(EVENTS, NS, "web.1") == body
    status, body = raw.call("POST", EVENTS_PATH, body=event("web.1"))
    assert (status, body["reason"], body["message"]) == (
        409,
        "AlreadyExists",
        'events "web.1" already exists',
    )


def test_core_event_namespace_must_match_involved_object(raw: Raw) -> None:
    wrong = event("web.2", involvedObject={"kind": "Pod", "namespace": "other", "name": "web"})
    status, body = raw.call("POST", EVENTS_PATH, body=wrong)
    assert (status, body["reason"]) == (422, "Invalid")
    assert body["message"] == (
        'Event "web.2" is invalid: involvedObject.namespace: Invalid value: "other": '
        "does not match event.namespace"
    )
    assert causes(body) == [("involvedObject.namespace", "FieldValueInvalid")]
    # A Node has no namespace: its events belong in "default", not elsewhere.
    node = {"kind": "Node", "name": "node-1", "uid": "node-1"}
    status, _ = raw.call("POST", EVENTS_PATH, body=event("node-1.1", involvedObject=node))
    assert status == 422
    status, _ = raw.call(
        "POST",
        "/api/v1/namespaces/default/events",
        body=event("node-1.1", ns="default", involvedObject=node),
    )
    assert status == 201


def test_core_event_name_and_namespace_rules(raw: Raw) -> None:
    status, body = raw.call("POST", EVENTS_PATH, body=event("a/b"))
    assert status == 422 and causes(body) == [("metadata.name", "FieldValueInvalid")]
    nameless = event("")
    status, body = raw.call("POST", EVENTS_PATH, body=nameless)
    assert status == 422 and causes(body) == [("metadata.name", "FieldValueRequired")]
    status, body = raw.call("POST", EVENTS_PATH, body=event("x", ns="elsewhere"))
    assert (status, body["reason"]) == (400, "BadRequest")  # body vs URL namespace


def test_core_event_accepts_what_events_k8s_io_rejects(raw: Raw) -> None:
    dotted = event("", metadata={"generateName": "web.", "namespace": NS})
    status, body = raw.call("POST", EVENTS_PATH, body=dotted)
    assert status == 201, body
    assert body["metadata"]["name"].startswith("web.") and len(body["metadata"]["name"]) == 9
    for stamp in ("2025-01-01T00:00:00Z", "2025-01-01T00:00:00.5Z", "2025-01-01T00:00:00.123Z"):
        status, body = raw.call(
            "POST",
            EVENTS_PATH,
            body=event("", metadata={"generateName": "t-"}, lastTimestamp=stamp),
        )
        assert status == 201, (stamp, body)


def test_core_event_with_event_time_needs_the_new_fields(raw: Raw) -> None:
    timed = event("web.3", eventTime="2025-01-01T00:00:00.000000Z")
    status, body = raw.call("POST", EVENTS_PATH, body=timed)
    assert status == 422
    assert sorted(causes(body)) == [
        ("action", "FieldValueRequired"),
        ("reportingController", "FieldValueRequired"),
        ("reportingInstance", "FieldValueRequired"),
    ]
    timed.update(reportingComponent="oomguard", reportingInstance="node-1", action="Killed")
    status, body = raw.call("POST", EVENTS_PATH, body=timed)
    assert status == 201, body
    # eventTime is a MicroTime in core/v1 as well: six fractional digits or a 400.
    short = dict(timed, metadata={"name": "web.4"}, eventTime="2025-01-01T00:00:00.123Z")
    status, body = raw.call("POST", EVENTS_PATH, body=short)
    assert (status, body["reason"]) == (400, "BadRequest")


def test_core_event_patch_aggregates_and_is_validated(apiserver: ApiServer, raw: Raw) -> None:
    status, created = raw.call("POST", EVENTS_PATH, body=event("web.5"))
    assert status == 201
    path = f"{EVENTS_PATH}/web.5"
    bump = {"count": 2, "lastTimestamp": "2025-01-01T00:01:00Z"}
    status, body = raw.call(
        "PATCH", path, body=bump, content_type="application/strategic-merge-patch+json"
    )
    assert status == 200, body
    assert body["count"] == 2 and body["message"] == "killed"
    assert int(body["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    status, body = raw.call(
        "PATCH",
        path,
        body=[{"op": "replace", "path": "/count", "value": 3}],
        content_type="application/json-patch+json",
    )
    assert (status, body["count"]) == (200, 3)
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "count": 9}
    status, body = raw.call("PATCH", path, body=stale, content_type="application/merge-patch+json")
    assert (status, body["reason"]) == (409, "Conflict")
    moved = {"involvedObject": {"namespace": "other"}}
    status, body = raw.call("PATCH", path, body=moved, content_type="application/merge-patch+json")
    assert status == 422 and causes(body) == [("involvedObject.namespace", "FieldValueInvalid")]
    status, body = raw.call(
        "PATCH", f"{EVENTS_PATH}/nope", body=bump, content_type="application/merge-patch+json"
    )
    assert status == 404
    assert apiserver.get(EVENTS, NS, "web.5")["count"] == 3  # type: ignore[index]


def test_typed_client_creates_core_events(k8s_configuration: Any) -> None:
    from kubernetes.client import CoreV1Api, CoreV1Event, V1ObjectMeta, V1ObjectReference

    core = CoreV1Api(ApiClient(k8s_configuration))
    created = core.create_namespaced_event(
        NS,
        CoreV1Event(
            metadata=V1ObjectMeta(name="web.6", namespace=NS),
            involved_object=V1ObjectReference(kind="Pod", namespace=NS, name="web"),
            reason="OOMKilled",
            type="Warning",
            message="killed",
        ),
    )
    assert created.metadata.resource_version


def events_v1(name: str = "", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": NS} if name else {"generateName": "web-"},
        "regarding": {"kind": "Pod", "namespace": NS, "name": "web"},
        "eventTime": "2025-01-01T00:00:00.000000Z",
        "reportingController": "oomguard.io/agent",
        "reportingInstance": "node-1",
        "action": "Killed",
        "reason": "OOMKilled",
        "type": "Warning",
        "note": "killed",
    }
    body.update(fields)
    return body


EVENTS_V1_PATH = f"/apis/events.k8s.io/v1/namespaces/{NS}/events"


def test_events_k8s_io_rejects_what_core_accepts(apiserver: ApiServer, raw: Raw) -> None:
    status, body = raw.call("POST", EVENTS_V1_PATH, body=events_v1("ok"))
    assert status == 201, body
    assert apiserver.get(EVENTS_V1, NS, "ok") == body
    for stamp in ("2025-01-01T00:00:00Z", "2025-01-01T00:00:00.123Z", "2025-01-01T00:00:00"):
        status, body = raw.call("POST", EVENTS_V1_PATH, body=events_v1(eventTime=stamp))
        assert (status, body["reason"]) == (400, "BadRequest"), stamp
        assert "2006-01-02T15:04:05.000000Z07:00" in body["message"]
    status, body = raw.call(
        "POST", EVENTS_V1_PATH, body=events_v1(metadata={"generateName": "web."})
    )
    assert status == 422, body
    assert causes(body) == [("metadata.generateName", "FieldValueInvalid")]
    assert body["details"]["group"] == "events.k8s.io"
    status, body = raw.call(
        "POST", EVENTS_V1_PATH, body=events_v1(deprecatedCount=1, series={"count": 1})
    )
    assert status == 422
    assert sorted(causes(body)) == [
        ("count", "FieldValueInvalid"),
        ("series.count", "FieldValueInvalid"),
        ("series.lastObservedTime", "FieldValueRequired"),
    ]


# -- access and faults ----------------------------------------------------------------


def test_rbac_forbids_what_was_not_granted(apiserver: ApiServer, raw: Raw) -> None:
    apiserver.allow({("list", "pods"), ("watch", "pods"), ("create", "events")})
    assert raw.call("GET", "/api/v1/pods")[0] == 200
    assert raw.call("POST", EVENTS_PATH, body=event("web.7"))[0] == 201
    status, body = raw.call(
        "PATCH",
        f"{EVENTS_PATH}/web.7",
        body={"count": 2},
        content_type="application/strategic-merge-patch+json",
    )
    assert (status, body["reason"], body["details"]) == (
        403,
        "Forbidden",
        {"kind": "events", "name": "web.7"},
    )
    assert body["message"] == (
        'events "web.7" is forbidden: User "system:serviceaccount:kube-system:oomguard" '
        'cannot patch resource "events" in API group "" in the namespace "team-a"'
    )
    status, body = raw.call("GET", "/api/v1/nodes/node-1")
    assert (status, body["reason"]) == (403, "Forbidden")
    assert raw.call("GET", "/api/v1")[0] == 200  # discovery is open to everyone


def test_requests_without_the_token_are_unauthorized(apiserver: ApiServer) -> None:
    stranger = Raw(apiserver.client_configuration(token="wrong"))
    status, body = stranger.call("GET", "/api/v1/pods")
    assert (status, body["reason"]) == (401, "Unauthorized")


def test_fail_next_injects_errors_then_recovers(apiserver: ApiServer, raw: Raw) -> None:
    apiserver.fail_next(2, 503, verb="create")
    assert raw.call("GET", "/api/v1/pods")[0] == 200  # other verbs unaffected
    for _ in range(2):
        status, body = raw.call("POST", EVENTS_PATH, body=event("web.8"))
        assert (status, body["reason"]) == (503, "ServiceUnavailable")
    assert raw.call("POST", EVENTS_PATH, body=event("web.8"))[0] == 201


def test_outage_refuses_connections_then_recovers(apiserver: ApiServer, raw: Raw) -> None:
    apiserver.apply(pod("a"))
    stream = raw.watch("/api/v1/pods", [])
    assert take(stream, 1) == [("ADDED", "a")]
    apiserver.begin_outage()
    with pytest.raises(urllib3.exceptions.ProtocolError):
        next(stream)  # open streams are cut
    with pytest.raises(urllib3.exceptions.MaxRetryError) as refused:
        raw.call("GET", "/api/v1/pods")
    assert isinstance(refused.value.reason, urllib3.exceptions.NewConnectionError)
    apiserver.end_outage()
    assert raw.call("GET", "/api/v1/pods")[0] == 200  # same port, back up


def test_timed_outage_ends_by_itself(apiserver: ApiServer, raw: Raw) -> None:
    apiserver.outage(0.3)
    deadline = time.monotonic() + 5
    while True:
        try:
            assert raw.call("GET", "/api/v1/pods")[0] == 200
            break
        except urllib3.exceptions.MaxRetryError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_outage_can_answer_503_instead(apiserver: ApiServer, raw: Raw) -> None:
    apiserver.begin_outage(refuse=False)
    status, body = raw.call("GET", "/api/v1/pods")
    assert (status, body["reason"]) == (503, "ServiceUnavailable")
    apiserver.end_outage()
    assert raw.call("GET", "/api/v1/pods")[0] == 200


def test_typed_client_whole_second_event_time_is_rejected(k8s_configuration: Any) -> None:
    """The client serializes datetimes with isoformat(), which drops the fraction when
    microsecond == 0: a real server then answers 400. Format eventTime with %f yourself."""
    from datetime import UTC, datetime

    from kubernetes.client import EventsV1Api, EventsV1Event, V1ObjectMeta, V1ObjectReference
    from kubernetes.client.exceptions import ApiException

    events = EventsV1Api(ApiClient(k8s_configuration))

    def create(when: datetime) -> Any:
        return events.create_namespaced_event(
            NS,
            EventsV1Event(
                metadata=V1ObjectMeta(generate_name="web-", namespace=NS),
                regarding=V1ObjectReference(kind="Pod", namespace=NS, name="web"),
                event_time=when,
                reporting_controller="oomguard.io/agent",
                reporting_instance="node-1",
                action="Killed",
                reason="OOMKilled",
                type="Warning",
            ),
        )

    with pytest.raises(ApiException) as raised:
        create(datetime(2025, 1, 1, tzinfo=UTC))
    assert raised.value.status == 400
    assert create(datetime(2025, 1, 1, 0, 0, 0, 1, tzinfo=UTC)).metadata.name.startswith("web-")
