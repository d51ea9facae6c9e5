"""A Kubernetes API server for tests: real HTTP, the real API's semantics where oomguard needs them.

No kube-apiserver can be installed here, and a mock that answers "200 with whatever" would
let the agent pass tests that a real cluster fails. kmock supplies the HTTP plumbing, URL
parsing, discovery and its reaction DSL (a test can still add `server.handler[...] << 500`;
such reactions win over everything below). kmock's own KubernetesEmulator could not be
layered on: it keeps no resourceVersion or change history, ignores selectors and replays
every object as ADDED on every watch, and the pod cache depends on exactly those. So this
module keeps its own store and change log on top of kmock's KubernetesScaffold and serves
the resources oomguard uses from them:

- one resourceVersion counter for all objects (like etcd's revision), stamped on every
  object and every list; watches resume after a version, answer a version older than the
  last compaction with 410 Expired (in-stream ERROR like the real server, or as the HTTP
  status when `gone_as_http`), send BOOKMARKs, end after `timeoutSeconds`, and turn an
  object that stops/starts matching a selector into DELETED/ADDED, as the watch cache does;
- field selectors (`spec.nodeName`, `metadata.name`, ...; unknown labels are a 400) on
  list and watch (label selectors, which oomguard does not use, are refused loudly);
- Event create/patch with the apiserver's decoding and validation rules (source:
  pkg/apis/core/validation/events.go, apiserver registry/rest/create.go), Status bodies
  for 400/403/404/409/410/422;
- Namespaces by name (`GET /api/v1/namespaces/NAME`), listed and watched
  (`GET /api/v1/namespaces[?watch=true]`, which kmock cannot parse: rewritten before it
  does), labelled `kubernetes.io/metadata.name` as the real server does;
- RBAC as a set of (verb, resource) pairs, and faults: 5xx for the next N requests,
  dropped streams, outages that refuse connections or answer 503; API Priority and
  Fairness' 429 with `Retry-After` (and its plain-text body, as the real filter sends);
- a restart of the HTTP side with the same store and port (`restart`), as a
  kube-apiserver restart looks to a client: on a graceful shutdown each watcher that
  asked for bookmarks gets one at the current version (KEP-1904), then the streams end
  and the port refuses; the watch cache comes back with no history, so a watch may
  resume from the version it was restarted at or later, and older gets 410;
- every request recorded with its arrival time, for "no retry before Retry-After".

The server runs on its own event loop thread, so the agent's threads and the official
(sync) client talk to it exactly as they would to a remote server.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import contextvars
import copy
import dataclasses
import json
import random
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp.web
import attrs
import jsonpatch  # type: ignore[import-untyped]
import kmock
from kmock import Response as Response  # type: ignore[attr-defined]  # not in kmock's __all__

JSON = dict[str, Any]
T = TypeVar("T")

DEFAULT_USER = "system:serviceaccount:kube-system:oomguard"
TOKEN = "oomguard-test-token"

# The real server's layout for microsecond timestamps (metav1.MicroTime): exactly six
# fractional digits. metav1.Time (firstTimestamp, lastTimestamp) accepts any fraction.
_GO_MICRO_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
_MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*"
    "[a-z0-9])?)*')"
)
_DNS_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
# names.SimpleNameGenerator: 5 random characters from an alphabet without vowels.
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_MAX_GENERATE_NAME = 58

# The HTTP request being served; the watch stream needs its transport to notice drops.
_HTTP_REQUEST: contextvars.ContextVar[aiohttp.web.BaseRequest] = contextvars.ContextVar(
    "_HTTP_REQUEST"
)


@dataclasses.dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    field_labels: frozenset[str]
    name_rule: str = "dns-subdomain"  # | "path-segment" | "dns-label"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _labels(text: str) -> frozenset[str]:
    return frozenset(text.split())


# The field labels each kind's real conversion functions accept (others are a 400).
_META = "metadata.name metadata.namespace "
PODS = ResourceType(
    "", "v1", "pods", "Pod", True,
    _labels(_META + "spec.nodeName spec.restartPolicy spec.schedulerName "
            "spec.serviceAccountName spec.hostNetwork status.phase status.podIP "
            "status.nominatedNodeName"),
)  # fmt: skip
EVENTS = ResourceType(
    "", "v1", "events", "Event", True,
    _labels(_META + "involvedObject.kind involvedObject.namespace involvedObject.name "
            "involvedObject.uid involvedObject.apiVersion involvedObject.resourceVersion "
            "involvedObject.fieldPath reason reportingComponent source type"),
    name_rule="path-segment",  # core/v1 Event names need only be path segments
)  # fmt: skip
EVENTS_V1 = ResourceType(
    "events.k8s.io", "v1", "events", "Event", True,
    _labels(_META + "reason reportingController type regarding.kind regarding.name"),
)  # fmt: skip
NODES = ResourceType("", "v1", "nodes", "Node", False, _labels("metadata.name"))
NAMESPACES = ResourceType(
    "", "v1", "namespaces", "Namespace", False, _labels("metadata.name status.phase"),
    name_rule="dns-label",
)  # fmt: skip
RESOURCE_TYPES = (PODS, EVENTS, EVENTS_V1, NODES, NAMESPACES)
# The label the real server puts on every namespace (NamespaceDefaultLabelName, 1.21+).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# kmock reads /api/v1/namespaces/NAME as "namespace NAME, no resource": a Namespace.
_NAMESPACE_PATH = re.compile(r"/api/v1/namespaces/([^/]+)/?")
# kmock fails to parse /api/v1/namespaces (a collection whose plural is its own scope
# keyword): such requests reach it under this path and are mapped back in _handle.
_NAMESPACES_COLLECTION = re.compile(r"/api/v1/namespaces/?")
_NAMESPACES_STAND_IN = "/api/v1/oomguard-test-namespaces"
# What APF's filter answers when it drops a request (http.Error: plain text, not Status).
APF_BODY = "Too many requests, please try again later.\n"
_FIELD_ALIASES = {"source": "source.component"}


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One entry of a 422's `details.causes`, worded as apimachinery's field.Error."""

    kind: str  # "Invalid" | "Required"
    field: str
    detail: str = ""
    value: object = None

    @property
    def message(self) -> str:
        if self.kind == "Required":
            return "Required value" + (f": {self.detail}" if self.detail else "")
        return f"Invalid value: {json.dumps(self.value)}" + (
            f": {self.detail}" if self.detail else ""
        )

    def cause(self) -> JSON:
        return {"reason": f"FieldValue{self.kind}", "message": self.message, "field": self.field}


@dataclasses.dataclass(frozen=True)
class Change:
    rv: int
    rtype: ResourceType
    type: str  # ADDED | MODIFIED | DELETED
    old: JSON | None
    new: JSON


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """What a client asked for, for assertions such as "the watch used the node selector"."""

    verb: str
    resource: str  # group_resource, e.g. "pods" or "events.events.k8s.io"
    namespace: str | None
    name: str | None
    params: Mapping[str, str]
    at: float = dataclasses.field(default_factory=time.monotonic)  # arrival, monotonic
    # The status a fault rule answered it with (None: served normally).
    faulted: int | None = None


@dataclasses.dataclass
class _FailureRule:
    remaining: int
    status: int
    verb: str | None
    resource: str | None
    retry_after_s: int | None = None


class _Throttled(Exception):
    """A fault answered with a Retry-After header: APF's 429 (plain text), or a Status."""

    def __init__(self, status: int, retry_after_s: int) -> None:
        super().__init__(status, retry_after_s)
        self.status = status
        self.retry_after_s = retry_after_s


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code: int, reason: str, message: str, details: JSON | None = None) -> JSON:
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def _error(code: int, reason: str, message: str, details: JSON | None = None) -> Exception:
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details)


def _bad_request(message: str) -> Exception:
    return _error(400, "BadRequest", message)


def _details(rtype: ResourceType, name: str | None) -> JSON:
    details: JSON = {"kind": rtype.plural}
    if name:
        details["name"] = name
    if rtype.group:
        details["group"] = rtype.group
    return details


def _not_found(rtype: ResourceType, name: str) -> Exception:
    return _error(
        404, "NotFound", f'{rtype.group_resource} "{name}" not found', _details(rtype, name)
    )


def _invalid(rtype: ResourceType, name: str, errors: list[FieldError]) -> Exception:
    qualified = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind
    parts = [f"{e.field}: {e.message}" for e in errors]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details = {"name": name, "kind": rtype.kind, "causes": [e.cause() for e in errors]}
    if rtype.group:
        details["group"] = rtype.group
    return _error(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details)


def _expired(since: int, current: int) -> JSON:
    return status_body(410, "Expired", f"too old resource version: {since} ({current})")


# ---------------------------------------------------------------------------------------
# Selectors


def _field_value(obj: Mapping[str, Any], label: str) -> str:
    value: Any = obj
    for part in _FIELD_ALIASES.get(label, label).split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parse_field_selector(rtype: ResourceType, text: str) -> list[tuple[str, bool, str]]:
    requirements = []
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        match = re.fullmatch(r"([^!=]+)(==|=|!=)(.*)", term)
        if match is None:
            raise _bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        label, op, value = match.groups()
        if label not in rtype.field_labels:
            raise _bad_request(f"field label not supported: {label}")
        requirements.append((label, op != "!=", value))
    return requirements


@dataclasses.dataclass(frozen=True)
class _Selection:
    """Which objects of one resource a list or watch request covers."""

    rtype: ResourceType
    namespace: str | None
    name: str | None
    fields: tuple[tuple[str, bool, str], ...]

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        return all(
            (_field_value(obj, label) == value) == equal for label, equal, value in self.fields
        )


# ---------------------------------------------------------------------------------------
# Names, decoding and validation


def _name_errors(rule: str, name: str, *, prefix: bool) -> list[str]:
    if rule == "path-segment":
        if not prefix and name in (".", ".."):
            return [f"may not be '{name}'"]
        return [f"may not contain '{c}'" for c in "/%" if c in name]
    if prefix and name.endswith("-"):  # NameIsDNSSubdomain masks one trailing dash
        name = name[:-1] + "a"
    pattern, limit, msg = (
        (_DNS_LABEL, 63, _DNS_LABEL_MSG)
        if rule == "dns-label"
        else (_DNS_SUBDOMAIN, 253, _DNS_SUBDOMAIN_MSG)
    )
    errors = [] if pattern.fullmatch(name) else [msg]
    if len(name) > limit:
        errors.append(f"must be no more than {limit} characters")
    return errors


def _meta_errors(rtype: ResourceType, meta: Mapping[str, Any], rule: str) -> list[FieldError]:
    errors = []
    name, generate = meta.get("name") or "", meta.get("generateName") or ""
    if generate:
        errors += [
            FieldError("Invalid", "metadata.generateName", m, generate)
            for m in _name_errors(rule, generate, prefix=True)
        ]
    if not name:
        errors.append(FieldError("Required", "metadata.name", "name or generateName is required"))
    else:
        errors += [
            FieldError("Invalid", "metadata.name", m, name)
            for m in _name_errors(rule, name, prefix=False)
        ]
    if rtype.namespaced:
        ns = meta.get("namespace") or ""
        errors += [
            FieldError("Invalid", "metadata.namespace", m, ns)
            for m in _name_errors("dns-label", ns, prefix=False)
        ]
    return errors


def _internal_event(rtype: ResourceType, obj: Mapping[str, Any]) -> JSON:
    """The fields of core.Event (the internal type both API groups convert to)."""
    if rtype is EVENTS_V1:
        renames = {
            "regarding": "involvedObject",
            "note": "message",
            "deprecatedSource": "source",
            "deprecatedFirstTimestamp": "firstTimestamp",
            "deprecatedLastTimestamp": "lastTimestamp",
            "deprecatedCount": "count",
        }
    else:
        renames = {"reportingComponent": "reportingController"}
    return {renames.get(k, k): v for k, v in obj.items()}


def _decode_event(rtype: ResourceType, obj: Mapping[str, Any]) -> None:
    """Reject what Go's JSON decoding of the Event type rejects (a 400, before validation)."""

    def fail(why: str) -> Exception:
        return _bad_request(
            f'{rtype.kind} in version "{rtype.version}" cannot be handled as a {rtype.kind}: {why}'
        )

    ev = _internal_event(rtype, obj)
    series = ev.get("series")
    micro = {"eventTime": ev.get("eventTime")}
    if isinstance(series, Mapping):
        micro["series.lastObservedTime"] = series.get("lastObservedTime")
    for field, value in micro.items():
        if value is None:
            continue
        if not isinstance(value, str) or not _MICRO_TIME.fullmatch(value):
            rest = value[19:] if isinstance(value, str) else value
            raise fail(
                f'parsing time "{value}" as "{_GO_MICRO_LAYOUT}": cannot parse "{rest}" as '
                f'".000000" ({field})'
            )
    for field in ("firstTimestamp", "lastTimestamp"):
        value = ev.get(field)
        if value is not None and (not isinstance(value, str) or not _TIME.fullmatch(value)):
            raise fail(f'parsing time "{value}" as "2006-01-02T15:04:05Z07:00" ({field})')
    counts = [ev.get("count"), series.get("count") if isinstance(series, Mapping) else None]
    for value in counts:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise fail(f"cannot unmarshal {type(value).__name__} into Go value of type int32")


def _legacy_event_errors(ev: Mapping[str, Any], namespace: str) -> list[FieldError]:
    """legacyValidateEvent: what every Event must satisfy, in both API groups."""
    errors = []
    involved = ev.get("involvedObject") or {}
    inv_ns = involved.get("namespace") or ""
    mismatch = FieldError(
        "Invalid", "involvedObject.namespace", "does not match event.namespace", inv_ns
    )
    if not ev.get("eventTime"):
        if (not inv_ns and namespace not in ("", "default")) or (inv_ns and inv_ns != namespace):
            errors.append(mismatch)
    else:
        if not inv_ns and namespace not in ("default", "kube-system"):
            errors.append(mismatch)
        controller = ev.get("reportingController") or ""
        if not controller:
            errors.append(FieldError("Required", "reportingController"))
        else:
            name = controller.rsplit("/", 1)[-1]
            if not _QUALIFIED_NAME.fullmatch(name) or len(name) > 63:
                errors.append(
                    FieldError(
                        "Invalid",
                        "reportingController",
                        "name part must consist of alphanumeric characters, '-', '_' or '.', "
                        "and must start and end with an alphanumeric character",
                        controller,
                    )
                )
        for field, limit in (("reportingInstance", 128), ("action", 128), ("reason", 128)):
            value = ev.get(field) or ""
            if not value:
                errors.append(FieldError("Required", field))
            if len(value) > limit:
                errors.append(
                    FieldError("Invalid", field, f"can have at most {limit} characters", "")
                )
        if len(ev.get("message") or "") > 1024:
            errors.append(FieldError("Invalid", "message", "can have at most 1024 characters", ""))
    errors += [
        FieldError("Invalid", "namespace", m, namespace)
        for m in _name_errors("dns-subdomain", namespace, prefix=False)
    ]
    return errors


def _series_errors(ev: Mapping[str, Any]) -> list[FieldError]:
    series = ev.get("series")
    if not isinstance(series, Mapping):
        return []
    errors = []
    if (series.get("count") or 0) < 2:
        errors.append(FieldError("Invalid", "series.count", "should be at least 2", ""))
    if not series.get("lastObservedTime"):
        errors.append(FieldError("Required", "series.lastObservedTime"))
    return errors


def _event_create_errors(rtype: ResourceType, obj: Mapping[str, Any]) -> list[FieldError]:
    """ValidateEventCreate: legacy rules for core/v1, strict ones for events.k8s.io/v1."""
    ev = _internal_event(rtype, obj)
    meta = obj.get("metadata") or {}
    errors = _legacy_event_errors(ev, meta.get("namespace") or "")
    if rtype is not EVENTS_V1:
        return errors
    errors += _meta_errors(rtype, meta, "dns-subdomain")
    errors += _series_errors(ev)
    if not ev.get("eventTime"):
        errors.append(FieldError("Required", "eventTime"))
    if ev.get("type") not in ("Normal", "Warning"):
        errors.append(FieldError("Invalid", "type", f"has invalid value: {ev.get('type')}", ""))
    for field in ("firstTimestamp", "lastTimestamp", "count"):
        if ev.get(field):
            errors.append(FieldError("Invalid", field, "needs to be unset", ""))
    source = ev.get("source") or {}
    if source.get("component") or source.get("host"):
        errors.append(FieldError("Invalid", "source", "needs to be unset", ""))
    return errors


_IMMUTABLE_EVENT_FIELDS = sorted(
    _labels(
        "involvedObject reason message source firstTimestamp lastTimestamp count type "
        "eventTime action related reportingController reportingInstance"
    )
)


def _event_update_errors(
    rtype: ResourceType, new: Mapping[str, Any], old: Mapping[str, Any]
) -> list[FieldError]:
    """ValidateEventUpdate: core/v1 may change anything legacy rules allow (that is how
    count/lastTimestamp aggregation works); events.k8s.io/v1 may change only the series."""
    ev, old_ev = _internal_event(rtype, new), _internal_event(rtype, old)
    errors = _legacy_event_errors(ev, (new.get("metadata") or {}).get("namespace") or "")
    if rtype is not EVENTS_V1:
        return errors
    if ev.get("series") != old_ev.get("series"):
        errors += _series_errors(ev)
    errors += [
        FieldError("Invalid", field, "field is immutable", ev.get(field))
        for field in _IMMUTABLE_EVENT_FIELDS
        if ev.get(field) != old_ev.get(field)
    ]
    return errors


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386. Strategic merge patches are applied the same way: the objects oomguard
    patches (Events) have no lists with merge keys, where the two would differ."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _strip_type(obj: JSON) -> JSON:
    """List items of built-in kinds carry no apiVersion/kind on a real server."""
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}


def _verb(request: kmock.Request) -> str:
    method = str(request.method.value).upper()
    if method == "GET":
        if request.params.get("watch", "").lower() in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(method, method.lower())


# ---------------------------------------------------------------------------------------
# The handler


@attrs.define(kw_only=True)
class KubernetesApi(kmock.KubernetesScaffold):
    """The request handler; everything here runs on the server's event loop thread."""

    user: str = DEFAULT_USER
    gone_as_http: bool = False
    bookmark_interval_s: float = 1.0
    # None: every request is allowed. Otherwise the (verb, resource) pairs granted, where
    # resource is the plural with its group ("events.events.k8s.io") if not core.
    permissions: frozenset[tuple[str, str]] | None = None
    outage_503: bool = False
    # Requests must carry "Authorization: Bearer <token>" (401 otherwise); None: no check.
    token: str | None = TOKEN

    _store: dict[tuple[ResourceType, str, str], JSON] = attrs.field(factory=dict, init=False)
    _log: list[Change] = attrs.field(factory=list, init=False)
    _rv: int = attrs.field(default=1000, init=False)
    _floor: int = attrs.field(default=0, init=False)  # oldest version a watch may resume from
    _epoch: int = attrs.field(default=0, init=False)  # bumped to expire every open watch
    _shutting_down: bool = attrs.field(default=False, init=False)  # streams: bookmark, end
    _tick: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)  # set on each change
    _closing: bool = attrs.field(default=False, init=False)
    _streams: dict[int, aiohttp.web.BaseRequest] = attrs.field(factory=dict, init=False)
    _failures: list[_FailureRule] = attrs.field(factory=list, init=False)
    # (verb, resource) -> seconds every matching request waits before it is answered.
    _delays: dict[tuple[str | None, str | None], float] = attrs.field(factory=dict, init=False)
    records: list[RequestRecord] = attrs.field(factory=list, init=False)
    # Each resource type's own reaction (the `fallback << _serve` registered below), and
    # how many reactions there were then: while no test has added one, a request goes
    # straight to its resource's reaction (see `_handle`).
    _own: dict[ResourceType, Any] = attrs.field(factory=dict, init=False)
    _payloads_at_start: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for rtype in RESOURCE_TYPES:
            self.resources[kmock.resource(rtype.group, rtype.version, rtype.plural)] = (
                kmock.ResourceInfo(
                    kind=rtype.kind,
                    namespaced=rtype.namespaced,
                    singular=rtype.kind.lower(),
                    verbs={"get", "list", "watch", "create", "patch", "delete"},
                )
            )
            before = len(self._payloads)
            self.fallback[kmock.resource(rtype.group, rtype.version, rtype.plural)] << (
                lambda request, rtype=rtype: self._serve(rtype, request)
            )
            assert len(self._payloads) == before + 1, "kmock registers one reaction per <<"
            self._own[rtype] = self._payloads[-1]
        self._payloads_at_start = len(self._payloads)

    # -- entry points -----------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        token = _HTTP_REQUEST.set(raw_request)
        try:
            if _NAMESPACES_COLLECTION.fullmatch(raw_request.path):
                stand_in = raw_request.rel_url.with_path(_NAMESPACES_STAND_IN).with_query(
                    raw_request.rel_url.query
                )
                return await super().__call__(raw_request.clone(rel_url=stand_in))
            return await super().__call__(raw_request)
        finally:
            _HTTP_REQUEST.reset(token)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        match = _NAMESPACE_PATH.fullmatch(request.url.path)
        if match is not None and request.resource is not None and not request.resource.plural:
            parsed = request
            request = attrs.evolve(
                parsed,
                resource=kmock.resource("", "v1", "namespaces"),
                namespace=None,
                name=match.group(1),
            )
            self._replace_recorded(parsed, request)
        elif request.url.path == _NAMESPACES_STAND_IN:
            parsed = request
            request = attrs.evolve(parsed, resource=kmock.resource("", "v1", "namespaces"))
            self._replace_recorded(parsed, request)
        if self.outage_503:
            raise _error(503, "ServiceUnavailable", "the server is currently unable to handle it")
        if self.token is not None:
            auth = {k.lower(): v for k, v in request.headers.items()}.get("authorization", "")
            if auth != f"Bearer {self.token}":
                raise _error(401, "Unauthorized", "Unauthorized")
        resource = request.resource
        if resource is not None and resource.plural:
            rtype = self._rtype(request)
            plural = rtype.group_resource if rtype else str(resource.plural)
            verb = _verb(request)
            record = RequestRecord(
                verb, plural, request.namespace, request.name, dict(request.params)
            )
            self.records.append(record)
            try:
                self._inject_failure(verb, plural)
            except (kmock.KubernetesError, _Throttled) as fault:
                self.records[-1] = dataclasses.replace(record, faulted=fault.status)
                raise
            self._authorize(verb, plural, request)
            delay = max(
                (
                    d
                    for (v, r), d in self._delays.items()
                    if v in (None, verb) and r in (None, plural)
                ),
                default=0.0,
            )
            if delay:
                await asyncio.sleep(delay)  # a slow apiserver: the answer comes, late
            if rtype is not None and len(self._payloads) == self._payloads_at_start:
                # kmock finds a request's reaction by filtering the whole request history
                # once per reaction (O(requests served) each time: an Event create took
                # 2 ms at the start and 22 ms after 200 of them). A real apiserver's cost
                # does not grow with the requests it has served, and the latency benches
                # measure the agent, not this: with only this server's own reactions, the
                # resource's reaction is called directly.
                return cast(aiohttp.web.StreamResponse, await self._own[rtype](request))
        return await super()._handle(request)

    def _replace_recorded(self, parsed: kmock.Request, request: kmock.Request) -> None:
        # kmock finds a request's reactions by identity in the requests it recorded.
        for index in range(len(self._requests) - 1, -1, -1):  # it is the last, or near
            if self._requests[index] is parsed:
                self._requests[index] = request
                break

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, _Throttled):
            headers = {"Retry-After": str(exc.retry_after_s)}
            if exc.status == 429:  # APF's filter: tooManyRequests(), http.Error
                headers["X-Kubernetes-PF-FlowSchema-UID"] = "test-flowschema-uid"
                headers["X-Kubernetes-PF-PriorityLevel-UID"] = "test-prioritylevel-uid"
                return aiohttp.web.Response(
                    status=429,
                    text=APF_BODY,
                    content_type="text/plain",
                    charset="utf-8",
                    headers=headers,
                )
            body = status_body(exc.status, "ServiceUnavailable", "injected fault")
            body["details"] = {"retryAfterSeconds": exc.retry_after_s}
            return aiohttp.web.json_response(body, status=exc.status, headers=headers)
        if isinstance(exc, kmock.KubernetesError):
            body = status_body(exc.status, exc.reason or "", exc.message or "", exc.details)
            return aiohttp.web.json_response(body, status=exc.status)
        return await super()._render_error(exc)

    def _rtype(self, request: kmock.Request) -> ResourceType | None:
        res = request.resource
        for rtype in RESOURCE_TYPES:
            if res is not None and (res.group, res.version, res.plural) == (
                rtype.group,
                rtype.version,
                rtype.plural,
            ):
                return rtype
        return None

    def _inject_failure(self, verb: str, resource: str) -> None:
        for rule in self._failures:
            if rule.remaining <= 0:
                continue
            if rule.verb not in (None, verb) or rule.resource not in (None, resource):
                continue
            rule.remaining -= 1
            if rule.retry_after_s is not None:
                raise _Throttled(rule.status, rule.retry_after_s)
            reasons = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
            raise _error(rule.status, reasons.get(rule.status, "InternalError"), "injected fault")

    def _authorize(self, verb: str, resource: str, request: kmock.Request) -> None:
        if self.permissions is None or (verb, resource) in self.permissions:
            return
        group = request.resource.group if request.resource else ""
        scope = (
            f'in the namespace "{request.namespace}"'
            if request.namespace
            else "at the cluster scope"
        )
        subject = f'{resource} "{request.name}"' if request.name else resource
        details: JSON = {"kind": str(request.resource.plural if request.resource else "")}
        if request.name:
            details["name"] = request.name
        if group:
            details["group"] = group
        raise _error(
            403,
            "Forbidden",
            f'{subject} is forbidden: User "{self.user}" cannot {verb} resource '
            f'"{resource.split(".")[0]}" in API group "{group}" {scope}',
            details,
        )

    async def _serve(self, rtype: ResourceType, request: kmock.Request) -> Response:
        # Always a Response with its own status: kmock copies a returned Response's status
        # onto the reaction, so a bare dict after a 201 would be answered 201 as well.
        if request.subresource:
            raise _not_found(rtype, f"{request.name}/{request.subresource}")
        verb = _verb(request)
        if verb == "watch":
            return self._watch(rtype, request)
        status, payload = 200, None
        if verb == "list":
            payload = self._list(rtype, request)
        elif verb == "get":
            assert request.name is not None
            obj = self._store.get((rtype, request.namespace or "", request.name))
            if obj is None:
                raise _not_found(rtype, request.name)
            payload = copy.deepcopy(obj)
        elif verb == "create":
            status, payload = 201, self._create(rtype, request)
        elif verb == "patch":
            payload = self._patch(rtype, request)
        elif verb == "delete":
            assert request.name is not None
            key = (rtype, request.namespace or "", request.name)
            if key not in self._store:
                raise _not_found(rtype, request.name)
            payload = copy.deepcopy(self.commit(rtype, key[1], key[2], None))
        else:
            raise _error(405, "MethodNotAllowed", f"{verb} is not supported by this test server")
        return Response(status=status, payload=payload)

    # -- store and change log ---------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def commit(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        obj: JSON | None,
        *,
        stamp: bool = True,
    ) -> JSON:
        """The one way state changes: a new version, a log entry, and watchers woken.

        `stamp=False` stores the object as given apart from its resourceVersion (no uid,
        kind or timestamps filled in): how tests serve objects a real server never would.
        """
        key = (rtype, namespace if rtype.namespaced else "", name)
        old = self._store.get(key)
        if obj is None and old is None:
            raise _not_found(rtype, name)
        self._rv += 1
        if obj is None:
            assert old is not None
            new = copy.deepcopy(old)
            del self._store[key]
            kind = "DELETED"
        elif not stamp:
            new = copy.deepcopy(obj)
            self._store[key] = new
            kind = "ADDED" if old is None else "MODIFIED"
        else:
            new = copy.deepcopy(obj)
            new["apiVersion"], new["kind"] = rtype.api_version, rtype.kind
            meta = new.setdefault("metadata", {})
            meta["name"] = name
            if rtype.namespaced:
                meta["namespace"] = namespace
            if rtype is NAMESPACES:
                meta["labels"] = {**(meta.get("labels") or {}), NAMESPACE_NAME_LABEL: name}
            # A replacement keeps the object's identity, as an update on a real server does.
            meta.setdefault("uid", (old or {}).get("metadata", {}).get("uid") or str(uuid.uuid4()))
            meta.setdefault(
                "creationTimestamp",
                (old or {}).get("metadata", {}).get("creationTimestamp") or _now(),
            )
            self._store[key] = new
            kind = "ADDED" if old is None else "MODIFIED"
        new["metadata"]["resourceVersion"] = str(self._rv)
        self._log.append(Change(self._rv, rtype, kind, old, new))
        self._wake()
        return new

    def compact(self) -> None:
        """Forget history: resuming a watch from any earlier version now gets 410."""
        self._floor = self._rv
        self._log.clear()

    def expire_watches(self) -> None:
        """Compact, and end every open watch with an in-stream 410, as when etcd compacts
        under a watch."""
        self.compact()
        self._epoch += 1
        self._wake()

    def close(self) -> None:
        self._closing = True
        self._wake()

    def drop_streams(self) -> int:
        dropped = 0
        for http in list(self._streams.values()):
            if http.transport is not None:
                http.transport.abort()
                dropped += 1
        self._wake()
        return dropped

    def add_failures(
        self,
        count: int,
        status: int,
        verb: str | None,
        resource: str | None,
        retry_after_s: int | None = None,
    ) -> None:
        self._failures.append(_FailureRule(count, status, verb, resource, retry_after_s))

    async def shut_down_watches(self, graceful: bool) -> None:
        """As kube-apiserver stopping: (graceful) a bookmark at the current version to
        each watcher that asked for bookmarks, then every stream ends."""
        if graceful:
            self._shutting_down = True
            self._wake()
            for _ in range(100):  # the streams notice at once; a bound, not a pause
                if not self._streams:
                    break
                await asyncio.sleep(0.01)
            self._shutting_down = False

    def restarted(self) -> None:
        """The watch cache is rebuilt from storage: no history before now (410 for a
        watch from an older version), every open watch gone."""
        self.compact()
        self._epoch += 1

    def set_delay(self, seconds: float, verb: str | None, resource: str | None) -> None:
        self._delays[(verb, resource)] = seconds

    def objects(self, rtype: ResourceType, namespace: str | None = None) -> list[JSON]:
        return [
            copy.deepcopy(obj)
            for (t, ns, _), obj in sorted(self._store.items(), key=lambda kv: kv[0][1:])
            if t is rtype and namespace in (None, ns)
        ]

    def active_watches(self) -> int:
        return len(self._streams)

    def _wake(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    # -- list and watch ---------------------------------------------------------------

    def _selection(self, rtype: ResourceType, request: kmock.Request) -> _Selection:
        params = request.params
        if params.get("labelSelector"):  # oomguard has no use for them: fail loudly, not wrongly
            raise _bad_request("labelSelector is not implemented by this test server")
        return _Selection(
            rtype,
            request.namespace if rtype.namespaced else None,
            request.name,
            tuple(_parse_field_selector(rtype, params.get("fieldSelector", ""))),
        )

    def _list(self, rtype: ResourceType, request: kmock.Request) -> JSON:
        selection = self._selection(rtype, request)
        return {
            "kind": f"{rtype.kind}List",
            "apiVersion": rtype.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": [_strip_type(obj) for obj in self.objects(rtype) if selection.matches(obj)],
        }

    def _watch(self, rtype: ResourceType, request: kmock.Request) -> Response:
        selection = self._selection(rtype, request)
        params = request.params
        since: int | None = None
        if params.get("resourceVersion", "0") not in ("", "0"):
            try:
                since = int(params["resourceVersion"])
            except ValueError:
                raise _bad_request(
                    f'invalid resource version "{params["resourceVersion"]}"'
                ) from None
        try:
            timeout_s = float(params["timeoutSeconds"]) if "timeoutSeconds" in params else None
        except ValueError:
            raise _bad_request("timeoutSeconds: must be an integer") from None
        bookmarks = params.get("allowWatchBookmarks", "").lower() in ("true", "1")
        if since is not None and since < self._floor:
            if self.gone_as_http:
                gone = _expired(since, self._rv)
                raise _error(410, gone["reason"], gone["message"])
            stream = self._gone_stream(since)
        else:
            stream = self._stream(selection, since, bookmarks, timeout_s)
        return Response(status=200, headers={"Content-Type": "application/json"}, payload=stream)

    @staticmethod
    def _bookmark(selection: _Selection, position: int) -> JSON:
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": selection.rtype.kind,
                "apiVersion": selection.rtype.api_version,
                "metadata": {"resourceVersion": str(position)},
            },
        }

    async def _gone_stream(self, since: int) -> AsyncIterator[kmock.Payload]:
        yield {"type": "ERROR", "object": _expired(since, self._rv)}

    def _event_for(self, change: Change, selection: _Selection) -> JSON | None:
        """What a watcher with this selection sees of one change (the watch cache's rules)."""
        if change.rtype is not selection.rtype:
            return None
        was = change.old is not None and selection.matches(change.old)
        if change.type == "DELETED":
            return {"type": "DELETED", "object": copy.deepcopy(change.new)} if was else None
        now = selection.matches(change.new)
        if now:
            return {"type": "MODIFIED" if was else "ADDED", "object": copy.deepcopy(change.new)}
        return {"type": "DELETED", "object": copy.deepcopy(change.new)} if was else None

    async def _stream(
        self, selection: _Selection, since: int | None, bookmarks: bool, timeout_s: float | None
    ) -> AsyncIterator[kmock.Payload]:
        http = _HTTP_REQUEST.get()
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        epoch = self._epoch
        self._streams[id(http)] = http
        try:
            yield b""  # send the headers now: a quiet watch is still an open watch
            position = self._rv if since is None else since
            if since is None:  # "start at most recent": the current state as ADDED first
                for obj in self.objects(selection.rtype):
                    if selection.matches(obj):
                        yield {"type": "ADDED", "object": obj}
            next_bookmark = loop.time() + self.bookmark_interval_s
            while True:
                tick = self._tick
                transport = http.transport
                if self._closing or transport is None or transport.is_closing():
                    return
                if epoch != self._epoch or position < self._floor:
                    yield {"type": "ERROR", "object": _expired(position, self._rv)}
                    return
                if self._shutting_down:
                    for change in self._log[
                        bisect.bisect_right(self._log, position, key=lambda c: c.rv) :
                    ]:
                        position = change.rv
                        event = self._event_for(change, selection)
                        if event is not None:
                            yield event
                    if bookmarks:  # KEP-1904: clients resume from here after the restart
                        yield self._bookmark(selection, self._rv)
                    return
                start = bisect.bisect_right(self._log, position, key=lambda c: c.rv)
                for change in self._log[start:]:
                    position = change.rv
                    event = self._event_for(change, selection)
                    if event is not None:
                        yield event
                now = loop.time()
                if deadline is not None and now >= deadline:
                    return
                if bookmarks and now >= next_bookmark:
                    yield self._bookmark(selection, position)
                    next_bookmark = now + self.bookmark_interval_s
                waits = [0.5]
                if deadline is not None:
                    waits.append(deadline - now)
                if bookmarks:
                    waits.append(next_bookmark - now)
                with contextlib.suppress(TimeoutError):  # woken by a change, or time to act
                    await asyncio.wait_for(tick.wait(), max(0.0, min(waits)))
        finally:
            self._streams.pop(id(http), None)

    # -- create and patch -------------------------------------------------------------

    def _body(self, rtype: ResourceType, request: kmock.Request) -> JSON:
        body = request.data
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise _bad_request(
                f"the object provided is unrecognized (must be of type {rtype.kind})"
            )
        for field, expected in (("apiVersion", rtype.api_version), ("kind", rtype.kind)):
            if body.get(field) not in (None, "", expected):
                raise _bad_request(
                    f"the API version in the data ({body.get('apiVersion')}) does not match "
                    f"the expected API version ({rtype.api_version})"
                    if field == "apiVersion"
                    else f'{body.get("kind")} in version "{rtype.version}" cannot be '
                    f"handled as a {rtype.kind}"
                )
        return copy.deepcopy(body)

    def _create(self, rtype: ResourceType, request: kmock.Request) -> JSON:
        obj = self._body(rtype, request)
        meta = obj.setdefault("metadata", {})
        namespace = request.namespace or ""
        if rtype.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise _bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            meta["namespace"] = namespace
        if rtype.kind == "Event":
            _decode_event(rtype, obj)
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices(_NAME_ALPHABET, k=5))
            meta["name"] = str(meta["generateName"])[:_MAX_GENERATE_NAME] + suffix
        errors = _event_create_errors(rtype, obj) if rtype.kind == "Event" else []
        if not errors:  # generic ObjectMeta checks run only after the kind's own passed
            errors = _meta_errors(rtype, meta, rtype.name_rule)
        if errors:
            raise _invalid(rtype, meta.get("name") or "", errors)
        name = meta["name"]
        if (rtype, namespace, name) in self._store:
            raise _error(
                409,
                "AlreadyExists",
                f'{rtype.group_resource} "{name}" already exists',
                _details(rtype, name),
            )
        for field in ("uid", "resourceVersion", "creationTimestamp"):
            meta.pop(field, None)
        return copy.deepcopy(self.commit(rtype, namespace, name, obj))

    def _patch(self, rtype: ResourceType, request: kmock.Request) -> JSON:
        assert request.name is not None
        namespace = request.namespace or ""
        current = self._store.get((rtype, namespace if rtype.namespaced else "", request.name))
        if current is None:
            raise _not_found(rtype, request.name)
        headers = {k.lower(): v for k, v in request.headers.items()}
        content_type = headers.get("content-type", "").split(";")[0].strip()
        patch = request.data
        if content_type == "application/json-patch+json" and isinstance(patch, list):
            try:
                new = jsonpatch.apply_patch(current, patch)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise _error(422, "Invalid", f"the server rejected our request: {exc}") from None
        elif content_type in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ) and isinstance(patch, dict):
            new = _merge_patch(current, patch)
        else:
            raise _error(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format "
                f"- accepted media types include: application/json-patch+json, "
                f"application/merge-patch+json, application/strategic-merge-patch+json "
                f"(got {content_type or 'none'})",
            )
        if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
            raise _bad_request("the patched object has no metadata")
        meta, old_meta = new["metadata"], current["metadata"]
        wanted_rv = (
            patch.get("metadata", {}).get("resourceVersion") if isinstance(patch, dict) else None
        )
        if wanted_rv not in (None, old_meta.get("resourceVersion")):
            raise _error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rtype.group_resource} "{request.name}": the '
                "object has been modified; please apply your changes to the latest version and "
                "try again",
                _details(rtype, request.name),
            )
        errors = [
            FieldError("Invalid", f"metadata.{f}", "field is immutable", meta.get(f))
            for f in ("name", "namespace", "uid", "creationTimestamp")
            if meta.get(f) != old_meta.get(f)
        ]
        if rtype.kind == "Event":
            _decode_event(rtype, new)
            errors += _event_update_errors(rtype, new, current)
        if errors:
            raise _invalid(rtype, request.name, errors)
        return copy.deepcopy(self.commit(rtype, namespace, request.name, new))


# ---------------------------------------------------------------------------------------
# The server, run on its own thread


def _rtype_of(obj: Mapping[str, Any]) -> ResourceType:
    for rtype in RESOURCE_TYPES:
        if (obj.get("apiVersion"), obj.get("kind")) == (rtype.api_version, rtype.kind):
            return rtype
    raise ValueError(f"not a kind this server stores: {obj.get('apiVersion')}/{obj.get('kind')}")


class ApiServer:
    """The test-facing handle: start/stop, cluster state, access rules and faults.

    Every method is safe to call from any thread: each runs on the server's loop, so state
    changes from a test are ordered with the HTTP requests being served.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        gone_as_http: bool = False,
        bookmark_interval_s: float = 1.0,
        user: str = DEFAULT_USER,
    ) -> None:
        self.host = host
        self.port = port
        self._handler_factory: Callable[[], KubernetesApi] = lambda: KubernetesApi(
            gone_as_http=gone_as_http, bookmark_interval_s=bookmark_interval_s, user=user
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="test-apiserver", daemon=True)
        self._started = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._handler: KubernetesApi | None = None
        self._web: aiohttp.web.Server | None = None
        self._runner: aiohttp.web.ServerRunner | None = None
        self._site: aiohttp.web.TCPSite | None = None
        self._outage_end: asyncio.TimerHandle | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> ApiServer:
        self._thread.start()
        self._started.wait(10)
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def stop(self) -> None:
        if self._stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        try:
            handler = self._handler_factory()
            async with handler:
                self._handler = handler
                self._web = aiohttp.web.Server(handler)
                self._runner = aiohttp.web.ServerRunner(self._web, shutdown_timeout=1.0)
                await self._runner.setup()
                await self._listen()
                self._started.set()
                await self._stopped.wait()
                handler.close()
                self._abort_connections()
                await self._runner.cleanup()
        except BaseException as exc:
            self._startup_error = exc
            self._started.set()
            raise

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = aiohttp.web.TCPSite(self._runner, self.host, self.port)
        await self._site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])

    def _abort_connections(self) -> None:
        assert self._web is not None
        for connection in list(self._web.connections):
            if connection.transport is not None:
                connection.transport.abort()

    def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server's loop and return its result: for kmock reactions and
        anything else that touches the handler from a test's thread."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    @property
    def handler(self) -> KubernetesApi:
        """The kmock handler, for kmock reactions (`server.handler[...] << 500`)."""
        assert self._handler is not None, "start() the server first"
        return self._handler

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client_configuration(self, token: str = TOKEN) -> Any:
        """A `kubernetes.client.Configuration` for this server (each call a new one)."""
        from kubernetes.client.configuration import Configuration

        configuration = Configuration()
        configuration.host = self.url
        configuration.api_key = {"authorization": token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return configuration

    def write_kubeconfig(self, path: Path, token: str = TOKEN) -> Path:
        """A kubeconfig file for this server (JSON is YAML), to test config loading."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "agent", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "agent"}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(config))
        return path

    # -- cluster state ----------------------------------------------------------------

    def apply(
        self, obj: Mapping[str, Any], *, rtype: ResourceType | None = None, stamp: bool = True
    ) -> JSON:
        """Create or replace an object as a controller would (no validation), bumping its
        resourceVersion; watchers see ADDED or MODIFIED. With `stamp=False` the object is
        served exactly as given (say, with no uid), to test clients against malformed data;
        it still needs metadata.name and `rtype` when it lacks apiVersion/kind."""
        rtype = rtype or _rtype_of(obj)
        meta = obj["metadata"]
        namespace, name = meta.get("namespace") or "", meta["name"]
        body = copy.deepcopy(dict(obj))
        return self.run(lambda: self.handler.commit(rtype, namespace, name, body, stamp=stamp))

    def delete(self, rtype: ResourceType, namespace: str | None, name: str) -> JSON:
        return self.run(lambda: self.handler.commit(rtype, namespace or "", name, None))

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> JSON | None:
        key = (rtype, namespace or "" if rtype.namespaced else "", name)
        return self.run(lambda: copy.deepcopy(self.handler._store.get(key)))

    def objects(self, rtype: ResourceType, namespace: str | None = None) -> list[JSON]:
        return self.run(lambda: self.handler.objects(rtype, namespace))

    @property
    def resource_version(self) -> int:
        return self.run(lambda: self.handler.resource_version)

    def compact(self) -> None:
        self.run(self.handler.compact)

    def expire_watches(self) -> None:
        self.run(self.handler.expire_watches)

    # -- access -----------------------------------------------------------------------

    def allow(self, permissions: Iterable[tuple[str, str]] | None) -> None:
        """Grant exactly these (verb, resource) pairs; None grants everything."""
        granted = None if permissions is None else frozenset(permissions)
        self.run(lambda: setattr(self.handler, "permissions", granted))

    def requests(self, verb: str | None = None, resource: str | None = None) -> list[RequestRecord]:
        return self.run(
            lambda: [
                r
                for r in self.handler.records
                if verb in (None, r.verb) and resource in (None, r.resource)
            ]
        )

    def active_watches(self) -> int:
        return self.run(self.handler.active_watches)

    # -- faults -----------------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        status: int = 500,
        *,
        verb: str | None = None,
        resource: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        """Answer the next `count` matching resource requests with this status; with
        `retry_after_s`, a `Retry-After` header too (a 429 then as APF answers it)."""
        self.run(lambda: self.handler.add_failures(count, status, verb, resource, retry_after_s))

    def throttle_next(
        self,
        count: int,
        retry_after_s: int,
        *,
        verb: str | None = None,
        resource: str | None = None,
    ) -> None:
        """API Priority and Fairness drops the next `count` matching requests: 429 with
        `Retry-After: retry_after_s`."""
        self.fail_next(count, 429, verb=verb, resource=resource, retry_after_s=retry_after_s)

    def slow_down(
        self, seconds: float, *, verb: str | None = None, resource: str | None = None
    ) -> None:
        """Answer every matching resource request `seconds` late (0: on time again)."""
        self.run(lambda: self.handler.set_delay(seconds, verb, resource))

    def drop_streams(self) -> int:
        """Cut every open watch connection mid-stream (no chunked terminator)."""
        return self.run(self.handler.drop_streams)

    def begin_outage(self, *, refuse: bool = True) -> None:
        """Down until end_outage(): connections refused (the listener closes), or every
        request answered 503 (`refuse=False`, as behind a load balancer). Open connections
        are cut either way, as when the apiserver process dies."""
        future = asyncio.run_coroutine_threadsafe(self._begin_outage(refuse), self._loop)
        future.result(10)

    def end_outage(self) -> None:
        asyncio.run_coroutine_threadsafe(self._end_outage(), self._loop).result(10)

    def outage(self, duration_s: float, *, refuse: bool = True) -> None:
        """Begin an outage now and end it by itself after `duration_s` (returns at once)."""
        self.begin_outage(refuse=refuse)

        def schedule() -> None:
            self._outage_end = self._loop.call_later(
                duration_s, lambda: self._loop.create_task(self._end_outage())
            )

        self.run(schedule)

    def stop_serving(self, *, graceful: bool = True) -> None:
        """The API server process goes away (see `restart`): the store stays."""
        asyncio.run_coroutine_threadsafe(self._stop_serving(graceful), self._loop).result(10)

    def serve_again(self) -> None:
        """The API server is back on the same port, its watch cache without history."""
        asyncio.run_coroutine_threadsafe(self._serve_again(), self._loop).result(10)

    def restart(self, *, down_s: float = 0.0, graceful: bool = True) -> None:
        """Stop serving and serve again, on the same port with the same objects and
        resourceVersion, as a kube-apiserver restart looks to its clients. Anything a
        test changes in between is what another API server wrote meanwhile."""
        self.stop_serving(graceful=graceful)
        if down_s > 0:
            time.sleep(down_s)
        self.serve_again()

    async def _stop_serving(self, graceful: bool) -> None:
        await self.handler.shut_down_watches(graceful)
        await self._begin_outage(refuse=True)

    async def _serve_again(self) -> None:
        self.handler.restarted()
        await self._end_outage()

    async def _begin_outage(self, refuse: bool) -> None:
        handler = self.handler
        if refuse:
            if self._site is not None:
                await self._site.stop()
                self._site = None
        else:
            handler.outage_503 = True
        handler.drop_streams()
        self._abort_connections()

    async def _end_outage(self) -> None:
        if self._outage_end is not None:
            self._outage_end.cancel()
            self._outage_end = None
        self.handler.outage_503 = False
        if self._site is None:
            await self._listen()
