"""Fixtures for the cluster lane: a Kubernetes API on 127.0.0.1 over real HTTP.

Each test gets its own server (a thread and a free port; ~10 ms to start), so state,
RBAC rules and injected faults never leak between tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.apiserver import ApiServer


@pytest.fixture
def apiserver() -> Iterator[ApiServer]:
    server = ApiServer(host="127.0.0.1", port=0, bookmark_interval_s=0.5)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def k8s_configuration(apiserver: ApiServer) -> Any:
    """A `kubernetes.client.Configuration` pointing at the test server."""
    return apiserver.client_configuration()


@pytest.fixture
def kubeconfig(apiserver: ApiServer, tmp_path: Path) -> Path:
    """A kubeconfig file for the test server, for code that loads its own config."""
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")
