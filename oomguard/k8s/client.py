"""Lean access to the Kubernetes API: urllib3 and raw JSON by path.

The generated API classes and typed models cost a DaemonSet on every node: importing
CoreV1Api is ~2 s of CPU and ~20 MiB, and decoding pods into models takes ~10x the CPU
and far more memory than `json.loads` (figures in ECOSYSTEM.md). Even the official
client's `ApiClient` and loaders import the whole `kubernetes` package (requests,
oauthlib, websocket, multiprocessing, its dynamic client): more start-up CPU and RSS
than the rest of the agent. So requests go through one urllib3 pool here, and the
credentials come from `credentials`: in-cluster with the standard library, a kubeconfig
file through the official loader (only then is `kubernetes` imported). urllib3 loads on
first use, so importing oomguard stays cheap for `oomguard watch` on hosts with no
cluster at all.

The API server's flow control (API Priority and Fairness) answers an overloaded flow
with 429 and `Retry-After: N` (N from 1 to 32 s, growing while requests keep being
dropped: apiserver's dropped_requests_tracker). client-go waits exactly N before it
tries again (rest/with_retry.go: `checkWait` takes Retry-After on a 429 or any 5xx).
Here the wait is the caller's, not a sleep inside the request: the pod cache and the
namespace watch sleep it interruptibly on their own threads, and the Event sender
schedules its next round without blocking the agent's loop. So:

- `ApiStatusError.retry_after_s` carries the server's Retry-After (429 and 5xx only,
  as client-go), capped at `MAX_RETRY_AFTER_S`;
- urllib3's own retry on Retry-After is turned off (by default it sleeps, uncapped and
  uninterruptibly, and retries GETs up to three times: a second wait on top of the
  caller's); connect and read failures are still retried by urllib3 as before;
- until that time has passed, a request to the same path is not sent at all: it fails
  at once with the same 429 and the time left, so no caller, present or future, can
  send before the server said it may.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from oomguard import __version__
from oomguard.k8s.credentials import Credentials, from_configuration, from_kubeconfig, in_cluster

if TYPE_CHECKING:
    from kubernetes.client.configuration import Configuration
    from urllib3 import BaseHTTPResponse, PoolManager

JSON = dict[str, Any]
Query = Sequence[tuple[str, str]]

# The longest Retry-After obeyed. APF never asks for more than 32 s; a larger value comes
# from something else in front of the API (a proxy, a misconfiguration), and waiting
# longer than a minute would leave kills undelivered and the pod cache stale for longer
# than any backoff of the agent's own.
MAX_RETRY_AFTER_S = 60.0

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
    """The server answered with an error status (its `Status` body, when it sent one).

    `retry_after_s`: how long the server asked the client to wait before trying again
    (Retry-After on a 429 or 5xx, capped at MAX_RETRY_AFTER_S), or None.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        body: JSON | None = None,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        text = f"{status} {reason}: {message}"
        if retry_after_s is not None:
            text += f" (Retry-After {retry_after_s:.1f} s)"
        super().__init__(text)
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body
        self.retry_after_s = retry_after_s

    @classmethod
    def from_status(
        cls, status: int, body: object, *, retry_after_s: float | None = None
    ) -> ApiStatusError:
        if retry_after_s is None and (status == 429 or status >= 500) and isinstance(body, dict):
            # A Status may say it in its details too (apimachinery NewTooManyRequests).
            details = body.get("details")
            seconds = details.get("retryAfterSeconds") if isinstance(details, dict) else None
            if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
                retry_after_s = min(float(seconds), MAX_RETRY_AFTER_S)
        if isinstance(body, dict):
            return cls(
                int(body.get("code") or status),
                str(body.get("reason") or ""),
                str(body.get("message") or ""),
                body,
                retry_after_s=retry_after_s,
            )
        return cls(status, "", str(body).strip()[:500], retry_after_s=retry_after_s)

    @property
    def is_gone(self) -> bool:
        return self.status == 410


def retry_after_s(exc: BaseException | None) -> float | None:
    """The wait the API server asked for with this failure, if it asked for one."""
    return exc.retry_after_s if isinstance(exc, ApiStatusError) else None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now, capped at MAX_RETRY_AFTER_S; None if absent or
    unreadable. RFC 9110 allows delay-seconds or an HTTP-date; the API server sends
    seconds (client-go reads only those), proxies may send a date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        seconds = float(int(text))
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return min(seconds, MAX_RETRY_AFTER_S)


def load_configuration(
    kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None
) -> Configuration:
    """A `kubernetes` client configuration from a kubeconfig file, or the pod's service
    account, for code that wants the official client (KubeApi does not: it takes
    `credentials`). `persist_config=False`: never write to a kubeconfig we were given.
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
    Owns its configuration: its retry settings are set here (module docstring).
    """

    def __init__(
        self,
        credentials: Credentials | Configuration,
        *,
        connect_timeout_s: float = 10.0,
        request_timeout_s: float = 30.0,
        user_agent: str = f"oomguard/{__version__}",
        pool_size: int = 8,
    ) -> None:
        """`credentials`: also a `kubernetes.client.Configuration` (tests, callers of
        the official loaders). `pool_size`: connections kept open (the pod watch and the
        namespace watch hold one each for as long as they run; Event writes and the
        other requests share the rest; beyond it urllib3 opens one more and closes it
        after use, with a warning in the log)."""
        import urllib3
        from urllib3.util.retry import Retry

        if not isinstance(credentials, Credentials):
            credentials = from_configuration(credentials)
        self.credentials = credentials
        # Connect and read failures: retried by urllib3 three times, as its default does.
        # A status with Retry-After: never retried here; the caller waits (see above).
        self._retries = Retry(total=3, respect_retry_after_header=False)
        tls: dict[str, Any] = {
            "cert_reqs": "CERT_REQUIRED" if credentials.verify else "CERT_NONE",
            "ca_certs": credentials.ca_file,
            "ca_cert_data": credentials.ca_data,
            "cert_file": credentials.cert_file,
            "key_file": credentials.key_file,
        }
        if credentials.tls_server_name:
            tls["server_hostname"] = credentials.tls_server_name
        self._pool: PoolManager
        if credentials.proxy and credentials.proxy.startswith("socks"):
            from urllib3.contrib.socks import SOCKSProxyManager

            self._pool = SOCKSProxyManager(credentials.proxy, maxsize=pool_size, **tls)
        elif credentials.proxy:
            self._pool = urllib3.ProxyManager(credentials.proxy, maxsize=pool_size, **tls)
        else:
            self._pool = urllib3.PoolManager(maxsize=pool_size, **tls)
        self._user_agent = user_agent
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self._clock = time.monotonic
        # path -> clock time before which the server asked not to be sent it again.
        self._held: dict[str, float] = {}
        self._held_lock = threading.Lock()
        self._closed = False
        self._streams: weakref.WeakSet[WatchStream] = weakref.WeakSet()

    @classmethod
    def from_kubeconfig(
        cls, kubeconfig: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> KubeApi:
        """From a kubeconfig file, or (None) the pod's service account;
        `credentials.CredentialsError` (a ValueError) says what is missing."""
        credentials = in_cluster() if kubeconfig is None else from_kubeconfig(kubeconfig)
        return cls(credentials, **kwargs)

    def close(self) -> None:
        """Closes the connections and every watch still open; later requests fail with
        ApiConnectionError, so a list/watch loop still running on it ends
        (list_watch.ListWatch checks `closed`)."""
        self._closed = True
        for stream in list(self._streams):
            stream.close()
        self._pool.clear()

    @property
    def closed(self) -> bool:
        return self._closed

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

        if self._closed:
            raise ApiConnectionError(f"{method} {path}: the client was closed")
        self._check_held(method, path)
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        payload: bytes | None = None
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
            payload = json.dumps(body, separators=(",", ":")).encode()
        # A request's own read timeout shorter than the connect timeout bounds the
        # connect too: a caller that must not block for long means it for both.
        read_s = read_timeout_s or self.request_timeout_s
        timeout = urllib3.Timeout(connect=min(self.connect_timeout_s, read_s), read=read_s)
        url = self.credentials.server + path
        if query:
            url += "?" + urlencode(list(query), quote_via=quote)
        try:
            authorization = self.credentials.authorization()
            if authorization:
                headers["Authorization"] = authorization
            raw: BaseHTTPResponse = self._pool.request(
                method,
                url,
                body=payload,
                headers=headers,
                timeout=timeout,
                retries=self._retries,
                preload_content=False,
            )
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise ApiConnectionError(f"{method} {path}: {_describe(exc)}") from exc
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
            wait_s = None
            if raw.status == 429 or raw.status >= 500:  # client-go's checkWait
                wait_s = parse_retry_after(raw.headers.get("Retry-After"))
            error = ApiStatusError.from_status(raw.status, parsed, retry_after_s=wait_s)
            if error.retry_after_s:
                self._hold(path, error.retry_after_s)
            raise error
        return raw

    def _hold(self, path: str, seconds: float) -> None:
        with self._held_lock:
            now = self._clock()
            for other in [p for p, until in self._held.items() if until <= now]:
                del self._held[other]  # bounded: only paths still held stay
            self._held[path] = max(self._held.get(path, now), now + seconds)

    def _check_held(self, method: str, path: str) -> None:
        """A request the server said not to send yet fails here, unsent."""
        with self._held_lock:
            until = self._held.get(path)
            if until is None:
                return
            left = until - self._clock()
            if left <= 0:
                del self._held[path]
                return
        raise ApiStatusError(
            429,
            "TooManyRequests",
            f"{method} {path} not sent: the API server asked to wait before trying again",
            retry_after_s=left,
        )

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
        stream = WatchStream(self._send("GET", path, query=params, read_timeout_s=read_timeout_s))
        self._streams.add(stream)
        if self._closed:  # closed while this one was being opened
            stream.close()
        return stream
