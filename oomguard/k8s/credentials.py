"""Where the API server is and how to prove who we are: in-cluster, or a kubeconfig file.

A DaemonSet pod's credentials are two environment variables and two files, so they
are read here with the standard library: importing the `kubernetes` package (which
pulls in requests, oauthlib, websocket, multiprocessing, yaml, dateutil and its
`dynamic` client) cost the agent more start-up CPU and RSS than everything else it
loads together. A kubeconfig file is another matter (exec plugins, auth providers,
token files, embedded certificates, contexts): there the official client's loader
serves, and its result is turned into the same `Credentials`.

In-cluster, as client-go's `rest.InClusterConfig`:
- the server is https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT (IPv6
  addresses bracketed);
- the token is the service account's `token` file, read again at most once a minute
  (bound tokens are rotated by the kubelet; client-go caches the file for a minute, and
  keeps the last good token when a re-read fails);
- the server's certificate is checked against the `ca.crt` file beside it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_S = 60.0  # client-go's cached token file source re-reads once a minute


class CredentialsError(ValueError):
    """No usable credentials; the message says what is missing or wrong, and where."""


@dataclass(frozen=True)
class Credentials:
    """What the HTTP layer needs: the server, TLS material, and the Authorization
    header to send now (`authorization()` may re-read a token file or run a plugin)."""

    server: str  # scheme://host:port, no trailing slash
    authorization: Callable[[], str | None] = field(default=lambda: None)
    ca_file: str | None = None
    ca_data: str | None = None  # PEM, for a configuration that carries it inline
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    tls_server_name: str | None = None
    proxy: str | None = None


class TokenFile:
    """A bearer token file, read again once `reread_s` has passed (rotation)."""

    def __init__(
        self,
        path: Path,
        *,
        reread_s: float = TOKEN_REREAD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._reread_s = reread_s
        self._clock = clock
        self._lock = threading.Lock()
        self._token = self._read()  # the first read must work: errors are said at start
        self._read_at = clock()

    def _read(self) -> str:
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CredentialsError(
                f"cannot read the service account token {self.path}: {exc.strerror or exc} "
                "(is automountServiceAccountToken off for the pod?)"
            ) from None
        except UnicodeDecodeError:
            raise CredentialsError(f"the service account token {self.path} is not text") from None
        if not token:
            raise CredentialsError(f"the service account token {self.path} is empty")
        if any(c.isspace() for c in token):
            raise CredentialsError(
                f"the service account token {self.path} is not one token (it has whitespace)"
            )
        return token

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if now - self._read_at >= self._reread_s:
                self._read_at = now
                # A failed re-read keeps the last good token, as client-go does.
                with contextlib.suppress(CredentialsError):
                    self._token = self._read()
            return self._token

    def header(self) -> str:
        return f"Bearer {self.token()}"


def _check_ca(path: Path) -> None:
    """The CA file must exist and hold at least one PEM certificate: said at start,
    not as a TLS failure on every request."""
    if not path.is_file():
        raise CredentialsError(
            f"the service account CA file {path} is missing (needed to check the API "
            "server's certificate)"
        )
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise CredentialsError(
            f"the service account CA file {path} holds no usable PEM certificate: {exc}"
        ) from None


def in_cluster(
    environ: Mapping[str, str] | None = None,
    directory: Path = SERVICE_ACCOUNT_DIR,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Credentials:
    """The pod's service account credentials (module docstring); CredentialsError says
    plainly what is missing."""
    env = os.environ if environ is None else environ
    host = env.get("KUBERNETES_SERVICE_HOST", "").strip()
    port = env.get("KUBERNETES_SERVICE_PORT", "").strip()
    if not host or not port:
        pairs = (("KUBERNETES_SERVICE_HOST", host), ("KUBERNETES_SERVICE_PORT", port))
        missing = [name for name, value in pairs if not value]
        raise CredentialsError(
            f"not in a pod: {' and '.join(missing)} not set (run in a pod with a service "
            "account, or give --kubeconfig)"
        )
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise CredentialsError(f"KUBERNETES_SERVICE_PORT={port!r} is not a TCP port")
    if any(c in host for c in "/?#@ ") or host.startswith("["):
        raise CredentialsError(f"KUBERNETES_SERVICE_HOST={host!r} is not a host name or address")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    token = TokenFile(directory / "token", clock=clock)
    ca = directory / "ca.crt"
    _check_ca(ca)
    return Credentials(
        server=f"https://{host}:{int(port)}", authorization=token.header, ca_file=str(ca)
    )


def from_configuration(configuration: Any) -> Credentials:
    """A `kubernetes.client.Configuration` (as the official loaders fill one in) as
    Credentials; its Authorization comes from the configuration each time, so its
    refresh hooks (exec plugins, expiring tokens) keep working."""
    proxy = configuration.proxy or None
    if proxy:
        from kubernetes.client.rest import should_bypass_proxies

        if should_bypass_proxies(configuration.host, configuration.no_proxy or ""):
            proxy = None

    def authorization() -> str | None:
        try:  # runs the configuration's refresh hook: an exec plugin may fail
            bearer = configuration.auth_settings().get("BearerToken")
        except Exception as exc:  # the loader's errors have no common base
            raise CredentialsError(f"cannot get a token for the API server: {exc}") from exc
        if bearer and bearer.get("value"):
            return str(bearer["value"])
        if configuration.username or configuration.password:
            pair = f"{configuration.username or ''}:{configuration.password or ''}"
            return "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return None

    return Credentials(
        server=str(configuration.host).rstrip("/"),
        authorization=authorization,
        ca_file=configuration.ssl_ca_cert,
        ca_data=getattr(configuration, "ca_cert_data", None) or None,
        cert_file=configuration.cert_file,
        key_file=configuration.key_file,
        verify=bool(configuration.verify_ssl),
        tls_server_name=getattr(configuration, "tls_server_name", None) or None,
        proxy=proxy,
    )


def from_kubeconfig(path: str | os.PathLike[str], context: str | None = None) -> Credentials:
    """A kubeconfig file through the official client's loader (`persist_config=False`:
    the agent never writes to a kubeconfig it was given)."""
    from kubernetes import config as kube_config
    from kubernetes.client.configuration import Configuration

    configuration = Configuration()
    try:
        kube_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.fspath(path),
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    except kube_config.ConfigException as exc:
        raise CredentialsError(f"kubeconfig {os.fspath(path)}: {exc}") from None
    return from_configuration(configuration)
