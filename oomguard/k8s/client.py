"""Lean access to the Kubernetes API: the official client's transport, raw JSON on top.

The generated API classes and typed models cost a DaemonSet on every node: importing
CoreV1Api is ~2 s of CPU and ~20 MiB, and decoding pods into models takes ~10x the CPU
and far more memory than `json.loads` (figures in ECOSYSTEM.md). What the official client
does well is everything around the call: kubeconfig and in-cluster loading (exec plugins,
token refresh, TLS) and the urllib3 pool. So this module keeps that and talks to the
API by path, returning plain dicts. The heavy modules load on first use, so importing
oomguard stays cheap for `oomguard watch` on hosts with no cluster at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from oomguard import __version__

if TYPE_CHECKING:
    from kubernetes.client.api_client import ApiClient
    from kubernetes.client.configuration import Configuration
    from urllib3 import BaseHTTPResponse

JSON = dict[str, Any]
Query = Sequence[tuple[str, str]]

STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def _describe(exc: BaseException) -> str:
    """The cause a person needs ("Connection refused"), not urllib3's nested reprs."""
    reason = getattr(exc, "reason", None)  # MaxRetryError wraps the real cause
    while isinstance(reason, BaseException) and getattr(reason, "reason", None) is not None:
        reason = reason.reason  # type: ignore[attr-defined]
    cause = reason if isinstance(reason, BaseException) else exc
    return f"{type(cause).__name__}: {cause}"


class KubeApiError(Exception):
    """Talking to the API failed; the subclass says whether the server answered."""


class ApiConnectionError(KubeApiError):
    """No answer: refused, reset, timed out, or a stream cut mid-way."""


class ApiStatusError(KubeApiError):
    """The server answered with an error status (its `Status` body, when it sent one)."""

    def __init__(self, status: int, reason: str, message: str, body: JSON | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body

    @classmethod
    def from_status(cls, status: int, body: object) -> ApiStatusError:
        if isinstance(body, dict):
            return cls(
                int(body.get("code") or status),
                str(body.get("reason") or ""),
                str(body.get("message") or ""),
                body,
            )
        return cls(status, "", str(body)[:500])

    @property
    def is_gone(self) -> bool:
        return self.status == 410


def load_configuration(
    kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None
) -> Configuration:
    """A client configuration from a kubeconfig file, or the pod's service account.

    `persist_config=False`: the agent must never write to a kubeconfig it was given.
    """
    from kubernetes import config as kube_config
    from kubernetes.client.configuration import Configuration

    configuration = Configuration()
    if kubeconfig is not None:
        kube_config.load_kube_config(
            config_file=os.fspath(kubeconfig),
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    else:
        kube_config.load_incluster_config(client_configuration=configuration)
    return configuration


class WatchStream:
    """One open watch response, read event by event.

    `close()` may be called from another thread to end a blocked read at once: that is
    how the pod cache stops promptly instead of waiting for the next event.
    """

    def __init__(self, response: BaseHTTPResponse) -> None:
        self._response = response
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[JSON]:
        import urllib3

        clean = False
        try:
            for line in self._response:
                line = line.strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise KubeApiError(f"undecodable watch event: {line[:200]!r}") from exc
                if not isinstance(event, dict):
                    raise KubeApiError(f"watch event is not an object: {line[:200]!r}")
                yield event
            clean = True
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if not self._closed.is_set():
                raise ApiConnectionError(f"watch stream broke: {_describe(exc)}") from exc
        except AttributeError:
            # urllib3 reading from a response that close() just tore down: a stop.
            if not self._closed.is_set():
                raise
        finally:
            if clean and not self._closed.is_set():
                self._response.release_conn()
            else:
                self.close()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        # shutdown() wakes a reader blocked in another thread; close() alone does not.
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            self._response.shutdown()
        with contextlib.suppress(OSError):
            self._response.close()


class KubeApi:
    """Requests by path with JSON in and out; errors become KubeApiError subclasses.

    Thread-safe: the pod cache's watch and the event sender share one connection pool.
    """

    def __init__(
        self,
        configuration: Configuration,
        *,
        connect_timeout_s: float = 10.0,
        request_timeout_s: float = 30.0,
        user_agent: str = f"oomguard/{__version__}",
    ) -> None:
        from kubernetes.client.api_client import ApiClient

        self._client: ApiClient = ApiClient(configuration)
        self._client.user_agent = user_agent
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s

    @classmethod
    def from_kubeconfig(
        cls, kubeconfig: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> KubeApi:
        return cls(load_configuration(kubeconfig), **kwargs)

    def close(self) -> None:
        self._client.close()

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Query = (),
        body: object = None,
        content_type: str | None = None,
        read_timeout_s: float | None = None,
    ) -> BaseHTTPResponse:
        import urllib3
        from kubernetes.client.exceptions import ApiException, ApiValueError

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        # A request's own read timeout shorter than the connect timeout bounds the
        # connect too: a caller that must not block for long means it for both.
        read_s = read_timeout_s or self.request_timeout_s
        timeout = (min(self.connect_timeout_s, read_s), read_s)
        try:
            method, url, headers, body, post = self._client.param_serialize(
                method,
                path,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._client.call_api(
                method, url, headers, body, post, _request_timeout=timeout
            )
        except (urllib3.exceptions.HTTPError, OSError, ApiException, ApiValueError) as exc:
            raise ApiConnectionError(f"{method} {path}: {_describe(exc)}") from exc
        raw: BaseHTTPResponse = response.response
        if not 200 <= raw.status < 300:
            try:
                data = raw.read()
                parsed: object = json.loads(data) if data else None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ApiConnectionError(f"{method} {path}: {_describe(exc)}") from exc
            except ValueError:
                parsed = data.decode("utf-8", "replace")
            finally:
                raw.release_conn()
            raise ApiStatusError.from_status(raw.status, parsed)
        return raw

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Query = (),
        body: object = None,
        content_type: str | None = None,
        timeout_s: float | None = None,
    ) -> JSON:
        """One call; the decoded JSON object the server answered with.

        `timeout_s` bounds each attempt's read (and its connect, if shorter); urllib3
        retries a failed connect or read up to three times.
        """
        import urllib3

        raw = self._send(
            method,
            path,
            query=query,
            body=body,
            content_type=content_type,
            read_timeout_s=timeout_s,
        )
        try:
            data = raw.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiConnectionError(f"{method} {path}: {_describe(exc)}") from exc
        finally:
            raw.release_conn()
        try:
            decoded = json.loads(data) if data else {}
        except ValueError as exc:
            raise KubeApiError(f"{method} {path}: undecodable response {data[:200]!r}") from exc
        if not isinstance(decoded, dict):
            raise KubeApiError(f"{method} {path}: response is not a JSON object")
        return decoded

    def get(self, path: str, query: Query = (), *, timeout_s: float | None = None) -> JSON:
        return self.request("GET", path, query=query, timeout_s=timeout_s)

    def create(self, path: str, body: Mapping[str, Any]) -> JSON:
        return self.request("POST", path, body=dict(body))

    def patch(self, path: str, body: object, *, content_type: str = STRATEGIC_MERGE_PATCH) -> JSON:
        return self.request("PATCH", path, body=body, content_type=content_type)

    def watch(self, path: str, query: Query, *, read_timeout_s: float) -> WatchStream:
        """Open a watch. `read_timeout_s` bounds the silence between two events: set it
        above the server-side `timeoutSeconds` so only a dead connection trips it."""
        params = [(k, v) for k, v in query if k != "watch"] + [("watch", "true")]
        return WatchStream(self._send("GET", path, query=params, read_timeout_s=read_timeout_s))
