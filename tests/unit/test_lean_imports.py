"""Each command imports only what it needs: `watch`, `top` and `demo` never load
pydantic-settings (the generated `run` flags) or `kubernetes`; the agent with in-cluster
credentials does not load `kubernetes` either. Checked in a fresh interpreter each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.tls import make_certificate, service_account

HEAVY = ("pydantic_settings", "kubernetes")

MAIN = """
import json, sys
from oomguard.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


def loaded_after(*code_and_args: str, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", *code_and_args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    ).stdout
    loaded: list[str] = json.loads(out.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["watch", "--help"],
        ["top", "--help"],
        ["demo", "--help"],
        ["top", "-n", "1", "--json", "--state-dir", "/nonexistent-oomguard-state"],
    ],
)
def test_commands_other_than_run_load_neither(argv: list[str]) -> None:
    assert loaded_after(MAIN.format(heavy=HEAVY), *argv) == []


def test_run_help_builds_the_flags_from_the_settings_model() -> None:
    # The other side of the lazy flags: `run` does get them (and so pydantic-settings).
    assert loaded_after(MAIN.format(heavy=HEAVY), "run", "--help") == ["pydantic_settings"]


def test_the_agent_with_in_cluster_credentials_loads_no_kubernetes(tmp_path: Path) -> None:
    cert, _ = make_certificate(tmp_path)
    sa = service_account(tmp_path / "sa", cert)
    code = f"""
import json, sys
from oomguard.agent import Agent
from oomguard.k8s.client import KubeApi
from oomguard.k8s.credentials import in_cluster
from oomguard.settings import load_settings
api = KubeApi(in_cluster(directory=__import__("pathlib").Path({str(sa)!r})))
api.close()
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
"""
    env = dict(os.environ, KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT="6443")
    assert loaded_after(code, env=env) == ["pydantic_settings"]


def test_run_in_a_pod_without_its_token_says_so_and_loads_no_kubernetes(tmp_path: Path) -> None:
    token = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    if token.exists():
        pytest.skip(f"{token} exists here")
    env = dict(os.environ, KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT="6443")
    argv = ["run", "--node-name=n", f"--state-dir={tmp_path}", "--metrics-address=127.0.0.1:0"]
    done = subprocess.run(
        [sys.executable, "-c", MAIN.format(heavy=HEAVY), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["pydantic_settings"]
    assert f"cannot read the service account token {token}" in done.stderr
