"""Fixtures for the cluster lane: a Kubernetes API on 127.0.0.1 over real HTTP.

Each test gets its own server (a thread and a free port; ~10 ms to start), so state,
RBAC rules and injected faults never leak between tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oomguard.agent import Agent
from oomguard.cgroups.scratch import ScratchTree
from oomguard.k8s.client import KubeApi
from oomguard.settings import load_settings
from tests.cluster.apiserver import ApiServer
from tests.cluster.test_agent import NODE, RunningAgent


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


@pytest.fixture
def make_agent(
    apiserver: ApiServer, kubeconfig: Path, tmp_path: Path, tree: ScratchTree
) -> Iterator[Any]:
    """`make(**settings)`: the agent in this process against `apiserver`, watching
    `tree` (the settings a test gives win; no policy file unless given)."""

    def make(**extra: Any) -> RunningAgent:
        extra.setdefault("policy_file", tmp_path / "no-policy.yaml")  # absent: the default
        settings = load_settings(
            node_name=NODE,
            kubeconfig=str(kubeconfig),
            cgroup_root=str(tree.top),
            state_dir=tmp_path / "state",
            metrics_address="127.0.0.1:0",
            **extra,
        )
        return RunningAgent(Agent(settings, tree.hierarchy, KubeApi.from_kubeconfig(kubeconfig)))

    yield make
