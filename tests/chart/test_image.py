"""The container image's recipe, checked without a container engine.

hadolint lints the Dockerfile; the rest checks what the build would do: the stages,
the entry point, that .dockerignore sends exactly what the Dockerfile copies, and that
the package built from that context (with the Dockerfile's own `pip install .`, as a
wheel) holds every module of the package. Lane 3 (tests/container/) builds the image
for real with podman and runs it with the chart's privileges; these checks stay for a
quick answer without root.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.chart import tools
from tests.chart.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_hadolint(hadolint: Path) -> None:
    done = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_shape() -> None:
    args = dict(
        value.split("=", 1) for word, value in _instructions() if word == "ARG" and "=" in value
    )
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    build, runtime = _stages()
    assert build[0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert runtime[0][1].startswith("${PYTHON_IMAGE}")
    runs = [rest for word, rest in build if word == "RUN"]
    assert any(re.search(r"\bpip install\b[^&]*\s\.(\s|$)", rest) for rest in runs), runs
    # pip's configuration is lent as a build secret, to the install step of the build
    # stage only: never an ARG or ENV (those are kept in the image's history and config).
    install = next(rest for rest in runs if "pip install" in rest)
    assert "--mount=type=secret,id=pip.conf" in install
    assert not any("secret" in rest.lower() for _, rest in runtime)
    lent = re.compile(r"PIP_(CONFIG_FILE|CERT|CLIENT_CERT|INDEX_URL|EXTRA_INDEX_URL|TRUSTED_HOST)")
    kept = [rest for word, rest in _instructions() if word in ("ARG", "ENV")]
    assert not any(lent.search(rest) for rest in kept), kept
    # The final stage gets the installed environment and nothing that builds.
    runtime_text = " ".join(rest for _, rest in runtime)
    for tool in ("pip install", "apt-get", "gcc", "build-essential"):
        assert tool not in runtime_text
    assert ("COPY", "--from=build /opt/oomguard /opt/oomguard") in runtime
    entrypoint = [json.loads(rest) for word, rest in runtime if word == "ENTRYPOINT"]
    command = [json.loads(rest) for word, rest in runtime if word == "CMD"]
    assert entrypoint == [["oomguard"]] and command == [["run"]]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and not users[-1].startswith(("0", "root"))


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*")
        regex = regex.replace("[^/]*[^/]*/", "(.*/)?")  # `**/`
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def _context_files() -> list[str]:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(path for path in listed if not _ignored(path, patterns))


def test_dockerignore_sends_what_the_dockerfile_copies() -> None:
    context = _context_files()
    copied = [
        source
        for word, rest in _instructions()
        if word == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]
    for source in copied:
        inside = source.rstrip("/") + "/"
        assert any(path == source or path.startswith(inside) for path in context), (
            f"COPY {source}: not in the build context"
        )
    assert "oomguard/cli.py" in context
    for path in context:
        assert path in ("pyproject.toml", "README.md") or path.startswith("oomguard/"), path
        assert "__pycache__" not in path


def test_package_from_the_build_context_has_every_module(tmp_path: Path) -> None:
    """`pip install .` from what .dockerignore sends installs all of oomguard.

    Built as a wheel, as the Dockerfile's pip builds it (an isolated build environment
    with setuptools from the registry), from a copy of exactly the build context.
    """
    context = tmp_path / "context"
    for path in _context_files():
        target = context / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / path, target)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet"),
            *("--disable-pip-version-check", "--wheel-dir", str(tmp_path / "dist"), str(context)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0 and tools.REGISTRY_UNREACHABLE.search(done.stderr):
        pytest.skip(f"pip cannot reach the registry for the build backend: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel_path,) = (tmp_path / "dist").glob("oomguard-*.whl")
    with zipfile.ZipFile(wheel_path) as wheel:
        names = set(wheel.namelist())
        entry_points = next(
            wheel.read(name).decode() for name in names if name.endswith("entry_points.txt")
        )
    modules = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "oomguard").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert modules <= names, f"not in the wheel: {sorted(modules - names)}"
    assert re.search(r"^oomguard\s*=\s*oomguard\.cli:main$", entry_points, re.MULTILINE)
