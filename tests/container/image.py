"""Lane 3's container engine and image: podman + runc from Debian, the Dockerfile as is.

Facts this module is built on (TESTING.md, lane 3; measured on this kind of machine):

- Public registries cannot be pulled from, so the `PYTHON_IMAGE` base is made from
  Debian's packages: `mmdebstrap --variant=minbase` with python3, python3-venv and
  ca-certificates, from the host's own apt sources, then `podman import`. The rootfs
  tarball is cached per day under `/var/tmp/oomguard-lane3` (or
  `$OOMGUARD_LANE3_CACHE`): a re-run the same day starts at the build, and a machine
  with no cache (CI) makes it in ~40 s.
- crun refuses this host's hybrid cgroup layout: every podman call goes through runc
  with the cgroupfs manager. podman asks for rlimits above this VM's hard limits: the
  ulimits are set to the hard limits the test process itself has.
- pip in the build reaches the index through a TLS-intercepting proxy: the build is
  lent pip's configuration and the CA bundle it uses as build secrets (the Dockerfile's
  `--mount=type=secret`), never build arguments or layers; `secrets_left_in` checks the
  built image for both.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE_ENV = "OOMGUARD_LANE3_CACHE"
CONTEXT_ENV = "OOMGUARD_LANE3_CONTEXT"
DEFAULT_CACHE = Path("/var/tmp/oomguard-lane3")
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Not needed to run Python and only weight in an image: documentation, manual pages and
# translations (dpkg skips them while unpacking).
BASE_PATH_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*")
IMAGE = "localhost/oomguard-lane3"
SECRET_MOUNT = "/run/secrets"  # where the Dockerfile's secret mounts put them
TOOLS = ("podman", "runc", "mmdebstrap")


class LaneSetupError(RuntimeError):
    """A step of making the image failed; the message has the command's output."""


def missing_tools() -> list[str]:
    return [name for name in TOOLS if shutil.which(name) is None]


def ulimit_flags() -> list[str]:
    """rlimits no higher than this process's hard limits (podman's defaults are higher)."""
    _, nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    _, nproc = resource.getrlimit(resource.RLIMIT_NPROC)
    nproc = 32768 if nproc == resource.RLIM_INFINITY else min(nproc, 32768)
    nofile = 1048576 if nofile == resource.RLIM_INFINITY else nofile
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def podman(*args: str, timeout_s: float = 600, check: bool = True) -> str:
    """One podman command (runc, cgroupfs); its stdout, or LaneSetupError with its output."""
    command = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and done.returncode != 0:
        raise LaneSetupError(
            f"{' '.join(command[:6])} ... exited {done.returncode}:\n{done.stderr[-4000:]}"
        )
    return done.stdout


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _apt_sources() -> Path:
    for path in APT_SOURCES:
        if path.exists():
            return path
    raise LaneSetupError(f"no apt sources file at {' or '.join(map(str, APT_SOURCES))}")


def base_key() -> str:
    """Today's date and what goes into the base: a new day or recipe makes a new base."""
    recipe = json.dumps(
        [SUITE, BASE_PACKAGES, BASE_PATH_EXCLUDES, _apt_sources().read_text()], sort_keys=True
    )
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return f"{dt.date.today().isoformat()}-{digest}"


def base_rootfs(timings: dict[str, float]) -> Path:
    """The base rootfs tarball, made with mmdebstrap unless today's is cached."""
    root = cache_dir()
    key = base_key()
    tarball = root / f"base-{key}.tar"
    if tarball.exists():
        return tarball
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=root, prefix=".base-") as scratch:
        partial = Path(scratch) / "rootfs.tar"
        command = [
            *("mmdebstrap", "--quiet", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES)),
            *(f"--dpkgopt=path-exclude={pattern}" for pattern in BASE_PATH_EXCLUDES),
            *(SUITE, str(partial), str(_apt_sources())),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise LaneSetupError(f"mmdebstrap exited {done.returncode}:\n{done.stderr[-4000:]}")
        partial.rename(tarball)
    for old in root.glob("base-*.tar"):  # earlier days' bases: ours, and superseded
        if old != tarball:
            old.unlink(missing_ok=True)
    timings["mmdebstrap_s"] = time.monotonic() - started
    return tarball


def base_image(timings: dict[str, float]) -> str:
    """The imported base image's name (imported once per base tarball)."""
    tarball = base_rootfs(timings)
    name = f"{IMAGE}-base:{tarball.stem.removeprefix('base-')}"
    if subprocess.run(["podman", "image", "exists", name], check=False).returncode != 0:
        started = time.monotonic()
        podman("import", "--quiet", str(tarball), name)
        timings["import_s"] = time.monotonic() - started
    return name


@dataclass
class PipLoan:
    """What the build borrows from the host's pip: a configuration and its CA bundle."""

    config: Path
    ca_bundle: Path | None
    lent: dict[str, str] = field(default_factory=dict)  # the settings, for the report


def _host_pip_settings() -> dict[str, str]:
    """pip's effective settings on the host (files and PIP_* environment), by key."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    settings: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        section, _, name = key.rpartition(".")
        if section in ("global", "install", ":env:"):
            settings[name] = value.strip().strip("'\"")
    return settings


def _names_a_host_file(value: str) -> bool:
    """A setting that points into this host's file system, which the build cannot see."""
    return any(word.startswith(("/", "file:")) for word in value.split())


def pip_loan(into: Path) -> PipLoan:
    """The host's pip configuration, made fit for the build container.

    Settings that name files of this host (find-links directories, file:// indexes,
    constraint files) mean nothing inside the build and are left out; `cert` becomes the
    lent CA bundle's path there.
    """
    settings = _host_pip_settings()
    ca = settings.pop("cert", None) or os.environ.get("PIP_CERT")
    if ca is None:
        paths = ssl.get_default_verify_paths()
        ca = paths.cafile or paths.openssl_cafile
    ca_bundle = Path(ca) if ca and Path(ca).is_file() else None
    lent = {k: v for k, v in settings.items() if not _names_a_host_file(v)}
    if ca_bundle is not None:
        lent["cert"] = f"{SECRET_MOUNT}/pip-ca.crt"
    config = into / "pip.conf"
    config.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(lent.items())))
    return PipLoan(config, ca_bundle, lent)


def build_context() -> Path:
    """The repository, or `$OOMGUARD_LANE3_CONTEXT` (another tree, e.g. an older commit's
    `git archive`, to see what the lane says of it)."""
    return Path(os.environ.get(CONTEXT_ENV) or REPO)


def build(base: str, tag: str, loan: PipLoan, timings: dict[str, float]) -> str:
    """`podman build` of the repository's Dockerfile on `base`; returns the image id."""
    secrets = ["--secret", f"id=pip.conf,src={loan.config}"]
    if loan.ca_bundle is not None:
        secrets += ["--secret", f"id=pip-ca.crt,src={loan.ca_bundle}"]
    started = time.monotonic()
    podman(
        *("build", "--quiet", "--build-arg", f"PYTHON_IMAGE={base}", *secrets),
        *(*ulimit_flags(), "--tag", tag, "--file", str(REPO / "Dockerfile"), str(build_context())),
        timeout_s=900,
    )
    timings["build_s"] = time.monotonic() - started
    return podman("image", "inspect", "--format", "{{.Id}}", tag).strip()


def image_size(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).strip())


@contextlib.contextmanager
def mounted(image: str) -> Iterator[Path]:
    """The image's file system, mounted read-only on the host for inspection."""
    path = Path(podman("image", "mount", image).strip())
    try:
        yield path
    finally:
        podman("image", "unmount", image, check=False)


def secrets_left_in(image: str, loan: PipLoan) -> list[str]:
    """Files of the image that hold what the build was lent (empty: nothing kept).

    The lent CA bundle is found by content anywhere in the image (a file of the same
    size and digest); the lent pip configuration by its path in the build and by
    content; build secrets' mount directory must not be in the image at all.
    """
    wanted: dict[int, set[str]] = {}
    for lent in (loan.config, loan.ca_bundle):
        if lent is not None:
            data = lent.read_bytes()
            wanted.setdefault(len(data), set()).add(hashlib.sha256(data).hexdigest())
    found: list[str] = []
    with mounted(image) as root:
        if (root / SECRET_MOUNT.lstrip("/")).exists():
            found.append(SECRET_MOUNT)
        for directory, _, files in os.walk(root):
            for name in files:
                path = Path(directory, name)
                try:
                    size = path.lstat().st_size
                    if size not in wanted or path.is_symlink():
                        continue
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                except OSError:
                    continue
                if digest in wanted[size]:
                    found.append("/" + str(path.relative_to(root)))
    return found
