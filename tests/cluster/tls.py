"""The test API server behind HTTPS, as a pod's in-cluster credentials expect one.

In a pod the API server is https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
and its certificate is checked against the service account's ca.crt. Here: a
self-signed certificate for 127.0.0.1 made with the `openssl` command (it is its own
CA), and `ApiServer` listening with it (apiserver.py stays as every other test uses it:
only where it listens is overridden).
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import aiohttp.web

from tests.cluster.apiserver import TOKEN, ApiServer, KubernetesApi


def make_certificate(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate valid for 127.0.0.1 (also the CA to trust) and its key."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-subj", "/CN=kube-apiserver", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def service_account(directory: Path, ca: Path, token: str = TOKEN) -> Path:
    """A folder shaped like /var/run/secrets/kubernetes.io/serviceaccount."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(ca.read_bytes())
    (directory / "namespace").write_text("kube-system")
    return directory


class TlsApiServer(ApiServer):
    """`ApiServer` over HTTPS with the given certificate and key."""

    def __init__(
        self, cert: Path, key: Path, *, check_token: bool = True, bookmark_interval_s: float = 1.0
    ) -> None:
        super().__init__(host="127.0.0.1", port=0, bookmark_interval_s=bookmark_interval_s)
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(cert, key)
        if not check_token:
            # The official client's in-cluster loader sends "bearer <token>", which a
            # real API server takes (the scheme is case-blind) and the test server,
            # comparing "Bearer <token>" exactly, refuses.
            self._handler_factory = lambda: KubernetesApi(
                token=None, bookmark_interval_s=bookmark_interval_s
            )

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = aiohttp.web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl)
        await self._site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"
