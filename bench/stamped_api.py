"""The test API server for the Event benches, noting when each Event write is stored.

The server (tests/cluster/apiserver.py) runs in the bench's process; its handler is
subclassed through `ApiServer`'s one seam for it, so the moment of each Event commit is
taken in-process with CLOCK_MONOTONIC (ns resolution), and apiserver.py stays as the
tests use it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import attrs

from tests.cluster.apiserver import EVENTS, ApiServer, KubernetesApi, ResourceType


@dataclass(frozen=True)
class EventWrite:
    at: float  # CLOCK_MONOTONIC when the server stored it
    name: str
    uid: str | None  # involvedObject.uid
    count: int


@attrs.define(kw_only=True)
class StampingApi(KubernetesApi):
    """The test server's handler, noting every Event write it stores."""

    event_writes: list[EventWrite] = attrs.field(factory=list, init=False)

    def commit(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        obj: dict[str, Any] | None,
        *,
        stamp: bool = True,
    ) -> dict[str, Any]:
        new = super().commit(rtype, namespace, name, obj, stamp=stamp)
        if rtype is EVENTS and obj is not None:
            uid = (new.get("involvedObject") or {}).get("uid")
            count = int(new.get("count") or 0)
            self.event_writes.append(EventWrite(time.monotonic(), name, uid, count))
        return new

    def first_stored(self) -> dict[str, float]:
        """involvedObject.uid -> when the server stored its first Event."""
        stored: dict[str, float] = {}
        for write in self.event_writes:
            if write.uid:
                stored.setdefault(write.uid, write.at)
        return stored


@contextmanager
def stamping_server() -> Iterator[tuple[ApiServer, StampingApi]]:
    """A started test API server on 127.0.0.1 and its stamping handler; stopped after."""
    server = ApiServer(host="127.0.0.1", port=0)
    server._handler_factory = StampingApi  # the server's one seam for its handler
    server.start()
    try:
        handler = server.handler
        assert isinstance(handler, StampingApi)
        yield server, handler
    finally:
        server.stop()


def running_pod(
    name: str, namespace: str, node: str, uid: str, containers: dict[str, str]
) -> dict[str, Any]:
    """A Running Burstable pod on `node` with containers {name: containerd id}."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": {
            "nodeName": node,
            "containers": [{"name": n, "image": "bench"} for n in containers],
        },
        "status": {
            "phase": "Running",
            "qosClass": "Burstable",
            "containerStatuses": [
                {"name": n, "containerID": f"containerd://{cid}", "state": {"running": {}}}
                for n, cid in containers.items()
            ],
        },
    }
