"""The client with a pod's credentials, over real HTTPS: the API server's certificate
checked against the service account's CA, the token sent and re-read when rotated."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from oomguard.k8s.client import ApiConnectionError, ApiStatusError, KubeApi
from oomguard.k8s.credentials import in_cluster
from tests.cluster.tls import TlsApiServer, make_certificate, service_account

NODE = "node-a"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[TlsApiServer, Path]]:
    cert, key = make_certificate(tmp_path)
    server = TlsApiServer(cert, key)
    server.start()
    try:
        server.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "cart", "namespace": "shop", "uid": "u-1"},
                "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "x"}]},
            }
        )
        yield server, cert
    finally:
        server.stop()


def env(server: TlsApiServer) -> dict[str, str]:
    return {"KUBERNETES_SERVICE_HOST": server.host, "KUBERNETES_SERVICE_PORT": str(server.port)}


def pods_on_node(api: KubeApi) -> list[str]:
    answer = api.get("/api/v1/pods", [("fieldSelector", f"spec.nodeName={NODE}")])
    return [p["metadata"]["name"] for p in answer["items"]]


def test_a_pod_lists_its_node_s_pods_over_https(
    tls_server: tuple[TlsApiServer, Path], tmp_path: Path
) -> None:
    server, cert = tls_server
    api = KubeApi(in_cluster(env(server), service_account(tmp_path / "sa", cert)))
    try:
        assert pods_on_node(api) == ["cart"]
    finally:
        api.close()


def test_a_server_the_ca_did_not_sign_is_refused(
    tls_server: tuple[TlsApiServer, Path], tmp_path: Path
) -> None:
    server, _ = tls_server
    other, _ = make_certificate(tmp_path, "other")
    api = KubeApi(in_cluster(env(server), service_account(tmp_path / "sa", other)))
    try:
        with pytest.raises(ApiConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            pods_on_node(api)
    finally:
        api.close()


def test_a_rotated_token_is_sent_once_re_read(
    tls_server: tuple[TlsApiServer, Path], tmp_path: Path
) -> None:
    server, cert = tls_server
    sa = service_account(tmp_path / "sa", cert)
    now = [0.0]
    api = KubeApi(in_cluster(env(server), sa, clock=lambda: now[0]))
    try:
        assert pods_on_node(api) == ["cart"]
        # The kubelet rotates the bound token; the server accepts only the new one.
        (sa / "token").write_text("rotated-token")

        def rotate() -> None:
            server.handler.token = "rotated-token"

        server.run(rotate)
        with pytest.raises(ApiStatusError) as err:
            pods_on_node(api)  # the old token, still cached
        assert err.value.status == 401
        now[0] += 60
        assert pods_on_node(api) == ["cart"]
    finally:
        api.close()


def test_a_kubeconfig_with_embedded_ca_data_over_https(
    tls_server: tuple[TlsApiServer, Path], tmp_path: Path
) -> None:
    """The kubeconfig path (the official loader) reaches the same HTTPS server: the CA
    given inline as certificate-authority-data, the token as the user's."""
    server, cert = tls_server
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    config = json.loads(kubeconfig.read_text())
    ca_data = base64.b64encode(cert.read_bytes()).decode()
    config["clusters"][0]["cluster"]["certificate-authority-data"] = ca_data
    kubeconfig.write_text(json.dumps(config))
    api = KubeApi.from_kubeconfig(kubeconfig)
    try:
        assert pods_on_node(api) == ["cart"]
    finally:
        api.close()
