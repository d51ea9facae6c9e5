"""In-cluster credentials: two environment variables, a token file and a CA file.

What a DaemonSet pod is given, read without the `kubernetes` package; every way it can
be missing or malformed ends in one sentence naming what and where.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from oomguard.k8s.credentials import CredentialsError, in_cluster
from tests.cluster.tls import make_certificate, service_account

ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cert, _ = make_certificate(tmp_path_factory.mktemp("tls"))
    return cert


@pytest.fixture
def sa(tmp_path: Path, ca: Path) -> Path:
    return service_account(tmp_path / "serviceaccount", ca, token="abc.def.ghi")


def test_the_server_token_and_ca_of_a_pod(sa: Path) -> None:
    creds = in_cluster(ENV, sa)
    assert creds.server == "https://10.96.0.1:443"
    assert creds.authorization() == "Bearer abc.def.ghi"
    assert creds.ca_file == str(sa / "ca.crt")
    assert creds.verify


def test_an_ipv6_service_address_is_bracketed(sa: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert in_cluster(env, sa).server == "https://[fd00:10:96::1]:6443"


def test_the_token_file_may_end_with_a_newline(sa: Path) -> None:
    (sa / "token").write_text("abc.def.ghi\n")
    assert in_cluster(ENV, sa).authorization() == "Bearer abc.def.ghi"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT not set"),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, "KUBERNETES_SERVICE_PORT not set"),
        ({"KUBERNETES_SERVICE_PORT": "443"}, "KUBERNETES_SERVICE_HOST not set"),
        ({"KUBERNETES_SERVICE_HOST": " ", "KUBERNETES_SERVICE_PORT": "443"}, "HOST not set"),
    ],
)
def test_outside_a_pod_the_missing_variables_are_named(
    sa: Path, env: dict[str, str], names: str
) -> None:
    with pytest.raises(CredentialsError) as err:
        in_cluster(env, sa)
    assert names in str(err.value)
    assert "--kubeconfig" in str(err.value)


@pytest.mark.parametrize("port", ["https", "0", "65536", "-1", "44 3", "٤٤٣"])
def test_a_port_that_is_no_port(sa: Path, port: str) -> None:
    with pytest.raises(CredentialsError, match=r"KUBERNETES_SERVICE_PORT=.* is not a TCP port"):
        in_cluster(ENV | {"KUBERNETES_SERVICE_PORT": port}, sa)


@pytest.mark.parametrize("host", ["evil.example/path", "user@10.0.0.1", "[::1]", "a b"])
def test_a_host_that_is_no_host(sa: Path, host: str) -> None:
    with pytest.raises(CredentialsError, match=r"KUBERNETES_SERVICE_HOST=.* is not a host"):
        in_cluster(ENV | {"KUBERNETES_SERVICE_HOST": host}, sa)


def test_no_token_file_says_where_it_looked(sa: Path) -> None:
    (sa / "token").unlink()
    with pytest.raises(CredentialsError) as err:
        in_cluster(ENV, sa)
    assert str(sa / "token") in str(err.value)
    assert "automountServiceAccountToken" in str(err.value)


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"", "is empty"), (b" \n", "is empty"), (b"a\nb", "not one token"), (b"\xff\xfe", "text")],
)
def test_an_odd_token_file(sa: Path, content: bytes, why: str) -> None:
    (sa / "token").write_bytes(content)
    with pytest.raises(CredentialsError, match=why):
        in_cluster(ENV, sa)


def test_no_ca_file(sa: Path) -> None:
    (sa / "ca.crt").unlink()
    with pytest.raises(CredentialsError, match=r"CA file .*ca\.crt is missing"):
        in_cluster(ENV, sa)


def test_a_ca_file_with_no_certificate(sa: Path) -> None:
    (sa / "ca.crt").write_text("not a certificate\n")
    with pytest.raises(CredentialsError, match="no usable PEM certificate"):
        in_cluster(ENV, sa)


def test_a_rotated_token_is_read_again_after_a_minute(sa: Path) -> None:
    now = [100.0]
    creds = in_cluster(ENV, sa, clock=lambda: now[0])
    (sa / "token").write_text("rotated")
    now[0] += 59
    assert creds.authorization() == "Bearer abc.def.ghi"  # cached, as client-go
    now[0] += 1
    assert creds.authorization() == "Bearer rotated"


def test_a_token_file_gone_later_keeps_the_last_good_token(sa: Path) -> None:
    now = [100.0]
    creds = in_cluster(ENV, sa, clock=lambda: now[0])
    (sa / "token").unlink()
    now[0] += 61
    assert creds.authorization() == "Bearer abc.def.ghi"
    (sa / "token").write_text("back")
    now[0] += 61
    assert creds.authorization() == "Bearer back"
