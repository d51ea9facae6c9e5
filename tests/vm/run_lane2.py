"""Lane 2: run the `vm` tests inside a qemu VM that has cgroup v2 with the memory controller.

Usage, as root, from anywhere (the repo root is found from this file's location):

    python tests/vm/run_lane2.py [pytest args...]

What it does (standard library only):

1. Set-up, cached under ``$OOMGUARD_LANE2_CACHE`` (default ``~/.cache/oomguard-lane2``):
   Debian packages ``qemu-system-x86 busybox-static kmod e2fsprogs`` (apt-get, only if
   missing); the Debian kernel that ``linux-image-amd64`` depends on, unpacked with
   ``dpkg -x`` (not installed); PyPI ``virtme-ng`` in its own venv; and a read-only ext4
   image of each Python tree the guest needs (rebuilt only when the tree changed), because
   imports over 9p are very slow under emulation.
2. Boot the kernel with ``vng`` under TCG (no KVM here). The guest sees the host's root
   filesystem read-only over 9p, so the repo is at the same absolute path as on the host
   and cannot be written; the only writable host directory is this run's out dir, which
   lives in the cache dir, outside the repo.
3. In the guest: mount the Python image(s) over the same path(s), enable the memory
   controller in the root cgroup, run ``python -m pytest -m vm -p no:cacheprovider tests/vm
   [pytest args...]`` and write its output and exit code into the out dir.
4. Stream that output here and judge it: pytest's exit code, then its summary. Every
   `vm` test the host collects (same selection and args) must have passed; a skip
   counts only if `ALLOWED_SKIPS` names its reason (none does), so a run where tests
   skip, or fewer ran, fails although pytest exited 0. pytest's 5 ("no tests
   collected") is a failure here too.

Exit codes: pytest's own; 100 when the set-up (host or guest side) failed or the VM gave no
verdict; 101 when pytest exited 0 but not every vm test passed; 124 on the hard timeout.

Environment:
    OOMGUARD_LANE2_CACHE      cache dir (default ~/.cache/oomguard-lane2)
    OOMGUARD_LANE2_TIMEOUT_S  hard timeout for the VM run in seconds (default 1200)
    OOMGUARD_LANE2_VERBOSE=1  also stream the VM console (kernel boot log, vng) live
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(
    os.environ.get("OOMGUARD_LANE2_CACHE") or Path.home() / ".cache" / "oomguard-lane2"
).absolute()
TIMEOUT_S = float(os.environ.get("OOMGUARD_LANE2_TIMEOUT_S") or 20 * 60)
VERBOSE = os.environ.get("OOMGUARD_LANE2_VERBOSE") == "1"

APT_PACKAGES = ("qemu-system-x86", "busybox-static", "kmod", "e2fsprogs")
VIRTME_NG = "virtme-ng==1.42"
GUEST_MEMORY = "1G"
GUEST_CPUS = "2"
# Modules the guest must be able to import from the Python tree(s) on the image(s).
REQUIRED_MODULES = ("pydantic", "psutil", "inotify_simple", "pytest")
IMAGE_FORMAT = "1"  # bump to force every cached image to be rebuilt
RUNS_KEPT_S = 24 * 3600  # out dirs of earlier runs older than this are removed

APT_LOCK_WAIT_S = 300.0  # another apt run (other work on the machine) may hold the lock

EXIT_SETUP_FAILED = 100
EXIT_NOT_ALL_PASSED = 101
EXIT_TIMEOUT = 124
PYTEST_NO_TESTS = 5

# Skips that lane 2 accepts, as regexes matched against pytest's "path:line: reason".
# None today: the VM is the place where every `vm` test can run (it is root, cgroup v2
# with the memory controller, the only kernel log writer), so a skip there means a test
# did not test. A reason goes here only with a comment saying why the VM cannot help it.
ALLOWED_SKIPS: tuple[re.Pattern[str], ...] = ()

# No journal (the guest mounts it read-only), no reserved blocks.
MKFS = ("mkfs.ext4", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-L", "oomguard-py")
# Python trees never put on an image (the guest sees them over 9p anyway).
SYSTEM_TREES = (Path("/"), Path("/usr"))
# vng pastes paths unquoted into a shell command line and the kernel command line.
SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+-]+$")


class SetupError(Exception):
    """A set-up step failed; the message is the one-line reason shown to the user."""


def say(msg: str) -> None:
    print(f"lane2: {msg}", flush=True)


def run(
    cmd: Sequence[str | os.PathLike[str]],
    what: str,
    *,
    timeout: float = 900,
    cwd: Path | None = None,
) -> None:
    """Run a set-up command; on failure raise SetupError naming `what` and the output tail."""
    try:
        proc = subprocess.run(
            [os.fspath(c) for c in cmd],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise SetupError(f"{what}: {exc.filename} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise SetupError(f"{what}: timed out after {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
        raise SetupError(f"{what}: exit {proc.returncode}: {tail}")


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    start = time.monotonic()
    say(f"{what} ...")
    yield
    say(f"{what}: done in {time.monotonic() - start:.1f} s")


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """Serialise set-up between concurrent runs that share the cache dir."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        if not _try_lock(lock):
            say(f"waiting for another lane-2 set-up to release {CACHE / '.lock'} ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _try_lock(lock: IO[str]) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# --------------------------------------------------------------------------- host set-up


class Apt:
    def __init__(self) -> None:
        self.updated = False

    def update_once(self) -> None:
        if not self.updated:
            with timed("apt-get update"):
                self._update_waiting_for_the_lock()
            self.updated = True

    @staticmethod
    def _update_waiting_for_the_lock() -> None:
        """apt-get update, waiting while another apt (another engineer's, a timer) holds
        the lists lock: DPkg::Lock::Timeout covers dpkg's lock, not always that one."""
        deadline = time.monotonic() + APT_LOCK_WAIT_S
        while True:
            try:
                run(
                    ["apt-get", "update", "-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S:.0f}"],
                    "apt-get update",
                    timeout=600,
                )
                return
            except SetupError as exc:
                if "Could not get lock" not in str(exc) or time.monotonic() > deadline:
                    raise
                say("apt-get update: another apt holds the lock; waiting")
                time.sleep(5)

    def ensure_installed(self, packages: Sequence[str]) -> None:
        missing = [p for p in packages if not dpkg_installed(p)]
        if not missing:
            return
        self.update_once()
        with timed(f"apt-get install {' '.join(missing)}"):
            run(
                [
                    "apt-get",
                    "install",
                    "-y",
                    "--no-install-recommends",
                    "-o",
                    f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S:.0f}",
                    *missing,
                ],
                "apt-get install",
                timeout=1200,
            )
        still = [p for p in missing if not dpkg_installed(p)]
        if still:
            raise SetupError(f"apt-get install: still not installed: {' '.join(still)}")


def dpkg_installed(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0 and proc.stdout.strip() == "install ok installed"


def kernel_package_name(apt: Apt) -> str:
    """The versioned package that the linux-image-amd64 meta-package depends on."""
    for attempt in range(2):
        proc = subprocess.run(
            ["apt-cache", "depends", "linux-image-amd64"],
            capture_output=True,
            text=True,
            check=False,
        )
        names = re.findall(r"^\s*Depends:\s*(linux-image-\S+)", proc.stdout, re.MULTILINE)
        if names:
            return str(names[0])
        if attempt == 0:
            apt.update_once()
    raise SetupError("apt-cache depends linux-image-amd64 names no linux-image-* package")


def ensure_kernel(apt: Apt) -> tuple[Path, str]:
    """Return (vmlinuz, kernel version) of a Debian kernel unpacked in the cache."""
    kernels = CACHE / "kernel"
    found = sorted(kernels.glob("*/.complete"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        package = kernel_package_name(apt)
        with timed(f"fetch kernel {package}"):
            target = kernels / package
            shutil.rmtree(target, ignore_errors=True)
            kernels.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=kernels) as tmp:
                try:
                    run(["apt-get", "download", package], "apt-get download", cwd=Path(tmp))
                except SetupError:
                    apt.update_once()
                    run(["apt-get", "download", package], "apt-get download", cwd=Path(tmp))
                debs = list(Path(tmp).glob("*.deb"))
                if len(debs) != 1:
                    raise SetupError(f"apt-get download {package}: expected one .deb")
                run(["dpkg", "-x", debs[0], target], "dpkg -x")
            _vmlinuz, version = _kernel_in(target)
            # virtme would run depmod on first boot; do it now, under the cache lock.
            run(["depmod", "-a", "-b", target, version], "depmod")
            (target / ".complete").write_text(package + "\n")
        found = [target / ".complete"]
    return _kernel_in(found[0].parent)


def _kernel_in(tree: Path) -> tuple[Path, str]:
    images = sorted((tree / "boot").glob("vmlinuz-*"))
    if not images:
        raise SetupError(f"no boot/vmlinuz-* in {tree}")
    version = images[-1].name.removeprefix("vmlinuz-")
    if not (tree / "lib" / "modules" / version).is_dir():
        raise SetupError(f"no lib/modules/{version} in {tree}")
    return images[-1], version


def ensure_vng() -> Path:
    """Return the bin dir of a venv holding virtme-ng (vng, virtme-run)."""
    venv = CACHE / "venv"
    marker = venv / ".complete"
    if marker.exists() and marker.read_text().strip() == VIRTME_NG:
        return venv / "bin"
    with timed(f"install {VIRTME_NG} into {venv}"):
        shutil.rmtree(venv, ignore_errors=True)
        run([sys.executable, "-m", "venv", venv], "python -m venv")
        run(
            [venv / "bin" / "python", "-m", "pip", "install", "-q", VIRTME_NG],
            f"pip install {VIRTME_NG}",
        )
        run([venv / "bin" / "vng", "--version"], "vng --version")
        marker.write_text(VIRTME_NG + "\n")
    return venv / "bin"


def python_trees() -> list[Path]:
    """The directory trees that hold this interpreter and the modules the tests import.

    sys.base_prefix has the interpreter, stdlib and libpython; sys.prefix differs for a
    venv (its site-packages); a module may also come from elsewhere on sys.path (user
    site). The project itself is not needed: the guest reads it from the repo.
    """
    trees = [Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()]
    for name in REQUIRED_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise SetupError(
                f"{sys.executable} cannot import {name}: pip install -e '.[test]' first"
            )
        origin = Path(spec.origin).resolve()
        for entry in sys.path:
            if entry and origin.is_relative_to(Path(entry).resolve()):
                trees.append(Path(entry).resolve())
                break
    kept: list[Path] = []
    for tree in sorted(set(trees), key=lambda p: len(p.parts)):
        if any(tree.is_relative_to(k) for k in kept):
            continue
        if tree in SYSTEM_TREES:  # a system Python: too big to image, read over 9p (slow)
            say(f"not imaging {tree}: imports from it go over 9p and are slow")
            continue
        if REPO.is_relative_to(tree) or CACHE.is_relative_to(tree):
            # The image would hide the live repo (or contain the cache): a venv inside
            # the repo is fine, the repo inside the Python tree is not.
            raise SetupError(f"the repo {REPO} or the cache {CACHE} is inside {tree}")
        kept.append(tree)
    return kept


def tree_fingerprint(tree: Path) -> tuple[str, int, int]:
    """(hash of every entry's path, mode, size and mtime; entry count; byte total).

    __pycache__ is counted (it goes into the image) but not hashed: the host writes
    bytecode there all the time, and an image with older bytecode is still correct
    (CPython checks each .pyc against its source).
    """
    digest = hashlib.sha256(IMAGE_FORMAT.encode())
    count = total = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        hashed = "__pycache__" not in Path(dirpath).relative_to(tree).parts
        for name in sorted(filenames) + dirnames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            count += 1
            total += st.st_size
            if hashed and name != "__pycache__":
                digest.update(
                    f"{os.path.relpath(path, tree)}\0{st.st_mode}\0{st.st_size}\0"
                    f"{st.st_mtime_ns}\n".encode(errors="surrogateescape")
                )
    return digest.hexdigest(), count, total


def ensure_image(tree: Path) -> Path:
    """A read-only ext4 image of `tree`, rebuilt only when the tree changed."""
    key = hashlib.sha256(str(tree).encode()).hexdigest()[:12]
    image = CACHE / f"python-{key}.ext4"
    stamp = image.with_suffix(".stamp")
    fingerprint, count, total = tree_fingerprint(tree)
    if image.exists() and stamp.exists() and stamp.read_text().split()[0] == fingerprint:
        return image
    # Room for the data and ext4's metadata, each entry at least one block; the file is
    # sparse, so spare room costs no disk.
    size = int(total * 1.3) + count * 8192 + 512 * 2**20
    inodes = count + count // 2 + 4096
    with timed(f"build ext4 image of {tree} ({count} entries, {total / 2**20:.0f} MiB)"):
        tmp = image.with_suffix(f".tmp-{os.getpid()}")
        try:
            for attempt in range(2):
                tmp.unlink(missing_ok=True)
                with open(tmp, "wb") as f:
                    f.truncate(size)
                try:
                    run([*MKFS, "-N", str(inodes), "-d", tree, tmp], "mkfs.ext4 -d")
                    break
                except SetupError:
                    if attempt == 1:
                        raise
                    size, inodes = size * 2, inodes * 2  # the tree grew while we looked
            os.replace(tmp, image)  # a running VM keeps the old inode
        finally:
            tmp.unlink(missing_ok=True)
        stamp.write_text(f"{fingerprint} {tree}\n")
    return image


# ------------------------------------------------------------------------- the verdict
#
# pytest's exit code 0 also means "everything skipped": a lane whose tests all skip (a
# fixture that no longer finds cgroup v2, a test that thinks it is not root) would pass
# while testing nothing. So the run is judged on pytest's own counts: every `vm` test
# the host collects must have passed in the VM.

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The last line of a run: "=== 11 passed, 1 skipped, 2 warnings in 73.21s (0:01:13) ===",
# or under -q the same without the rules; "no tests ran in 0.01s" when nothing ran.
_RUN_SUMMARY = re.compile(
    r"^=*\s*(?P<body>no tests ran|\d+ [a-z]+(?:, \d+ [a-z]+)*) in [0-9.]+s(?: \([0-9:]+\))?\s*=*$"
)
_COUNT = re.compile(r"(\d+) ([a-z]+)")
# A line of -rs (in -ra, -rA): "SKIPPED [2] tests/vm/test_x.py:55: the reason".
_SKIPPED = re.compile(r"^SKIPPED \[(?P<n>\d+)\] (?P<where>\S+?:\d+): (?P<reason>.*)$")
# The last line of --collect-only: "12/13 tests collected (1 deselected) in 0.79s".
_COLLECTED = re.compile(r"^=*\s*(?:(?P<n>\d+)(?:/\d+)? tests? collected|no tests collected)")
_PLURALS = {"errors": "error", "warnings": "warning"}
_VERBOSITY = re.compile(r"^-(?:q+|v+)$|^--(?:quiet|verbose)$")


@dataclass(frozen=True)
class RunSummary:
    """pytest's counts for one run, and the skips it reported with their reasons."""

    counts: Mapping[str, int]  # "passed", "failed", "skipped", "error", "xfailed", ...
    skips: tuple[tuple[int, str], ...] = ()  # (how many, "path:line: reason")

    def count(self, outcome: str) -> int:
        return self.counts.get(outcome, 0)


def parse_summary(output: str) -> RunSummary | None:
    """The counts of the last pytest run in `output`; None when it printed no summary
    (it crashed, or was cut off) -- which is a failure, not zero tests."""
    counts: dict[str, int] | None = None
    skips: tuple[tuple[int, str], ...] = ()
    pending: list[tuple[int, str]] = []  # a run's skip lines come before its summary
    for raw in output.splitlines():
        line = _ANSI.sub("", raw).strip()
        if m := _SKIPPED.match(line):
            pending.append((int(m["n"]), f"{m['where']}: {m['reason']}"))
        elif m := _RUN_SUMMARY.match(line):
            counts = {}
            for n, word in _COUNT.findall(m["body"]):
                key = _PLURALS.get(word, word)
                counts[key] = counts.get(key, 0) + int(n)
            skips, pending = tuple(pending), []
    return None if counts is None else RunSummary(counts, skips)


def judge(
    summary: RunSummary | None,
    expected: int,
    allowed_skips: Sequence[re.Pattern[str]] = ALLOWED_SKIPS,
) -> list[str]:
    """What is wrong with a lane-2 run that should have passed `expected` tests; [] when
    nothing is. A skip counts as a pass only when `allowed_skips` names its reason."""
    if summary is None:
        return ["the VM's output has no pytest summary line (crashed or cut off)"]
    problems: list[str] = []
    if expected == 0:
        problems.append("the host collects no `vm` test: lane 2 would test nothing")
    for outcome in ("failed", "error", "xfailed", "xpassed"):
        if summary.count(outcome):
            problems.append(f"{summary.count(outcome)} {outcome}")
    allowed = 0
    for n, skip in summary.skips:
        if any(p.search(skip) for p in allowed_skips):
            allowed += n
        else:
            problems.append(f"{n} skipped in the VM, where it must run: {skip}")
    unexplained = summary.count("skipped") - sum(n for n, _ in summary.skips)
    if unexplained > 0:
        problems.append(f"{unexplained} skipped without a reason shown (run pytest with -rs)")
    if summary.count("passed") + allowed != expected:
        problems.append(
            f"{summary.count('passed')} passed of the {expected} `vm` tests the host collects"
        )
    return problems


def pytest_command(args: Sequence[str]) -> list[str]:
    """The pytest command line lane 2 runs (in the guest; collected on the host)."""
    return ["-m", "pytest", "-m", "vm", "-p", "no:cacheprovider", "tests/vm", *args]


def collect_vm_tests(args: Sequence[str]) -> int:
    """How many `vm` tests the guest's pytest (same selection, same args) must pass.

    Counted on the host, where they are collected like in the guest (the lane-2
    conftest only marks them skipped here): a test the guest fails to collect, or a
    selection that shrank, then shows as a shortfall. Verbosity flags are left out so
    that pytest prints its "N tests collected" line.
    """
    kept = [a for a in args if not _VERBOSITY.match(a)]
    proc = subprocess.run(
        [sys.executable, *pytest_command(kept), "--collect-only"],
        cwd=REPO,
        env=dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", OOMGUARD_IN_VM="0"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    found = [m for line in proc.stdout.splitlines() if (m := _COLLECTED.match(line.strip()))]
    if proc.returncode not in (0, PYTEST_NO_TESTS) or not found:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise SetupError(f"collecting the vm tests on the host: exit {proc.returncode}: {tail}")
    return int(found[-1]["n"] or 0)


# ------------------------------------------------------------------------------ the guest


GUEST_SCRIPT = r"""
# Generated by tests/vm/run_lane2.py; runs inside the lane-2 VM.
OUT=__OUT__
REPO=__REPO__
LOG="$OUT/output.log"
say() { echo "lane2-guest: $*" >> "$LOG"; }
verdict() { echo "$1" > "$OUT/verdict.tmp" && mv "$OUT/verdict.tmp" "$OUT/verdict"; }
fail() { say "set-up failed: $*"; verdict "setup: $*"; exit 1; }
find_dev() {
    for b in /sys/block/vd*; do
        if [ -r "$b/serial" ] && [ "$(cat "$b/serial")" = "$1" ]; then
            echo "/dev/${b##*/}"
            return 0
        fi
    done
    return 1
}

echo 1 > /proc/sys/kernel/printk   # a loud console slows OOM handling
say "booted kernel $(uname -r) in $(cut -d' ' -f1 /proc/uptime) s"

# A repo below /tmp (or another overlaid path) is writable here but the writes stay in
# guest memory; the host checks after the run that this probe never reached it.
( : > "$REPO/.lane2-write-probe" ) 2>/dev/null || true

modprobe -q virtio_blk 2>/dev/null
modprobe -q ext4 2>/dev/null
__MOUNTS__

grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts || fail "/sys/fs/cgroup is not cgroup2"
grep -qw memory /sys/fs/cgroup/cgroup.controllers || fail "no memory controller in the guest"
echo +memory > /sys/fs/cgroup/cgroup.subtree_control || fail "cannot enable +memory at the root"

cd "$REPO" || fail "cannot cd to $REPO"
export OOMGUARD_IN_VM=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONPATH="$REPO"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
say "running pytest at $(cut -d' ' -f1 /proc/uptime) s"
__PYTHON__ __PYTEST__ >> "$LOG" 2>&1 < /dev/null
rc=$?
say "pytest exited $rc at $(cut -d' ' -f1 /proc/uptime) s"
sync
verdict "$rc"
"""

MOUNT_SNIPPET = r"""
dev=""
for i in $(seq 1 100); do dev=$(find_dev __SERIAL__) && break; sleep 0.1; done
[ -n "$dev" ] || fail "no virtio disk with serial __SERIAL__ (image of __TREE__)"
mkdir -p __TREE__ 2>/dev/null
mount -t ext4 -o ro "$dev" __TREE__ || fail "mount $dev on __TREE__ failed"
say "mounted $dev (image of __TREE__) read-only"
"""


def guest_script(out: Path, mounts: Sequence[tuple[str, Path]], pytest_args: Sequence[str]) -> str:
    q = shlex.quote
    mount_lines = "".join(
        MOUNT_SNIPPET.replace("__SERIAL__", q(serial)).replace("__TREE__", q(str(tree)))
        for serial, tree in mounts
    )
    return (
        GUEST_SCRIPT.replace("__OUT__", q(str(out)))
        .replace("__REPO__", q(str(REPO)))
        .replace("__MOUNTS__", mount_lines)
        .replace("__PYTHON__", q(sys.executable))
        .replace("__PYTEST__", " ".join(q(a) for a in pytest_command(pytest_args)))
    )


def new_out_dir() -> Path:
    runs = CACHE / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in runs.iterdir():
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > RUNS_KEPT_S:
                shutil.rmtree(old)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=runs))


def boot(
    bin_dir: Path,
    vmlinuz: Path,
    images: Sequence[tuple[str, Path, Path]],
    out: Path,
    pytest_args: Sequence[str],
    expected: int,
) -> int:
    script = out / "guest.sh"
    script.write_text(guest_script(out, [(s, t) for s, _, t in images], pytest_args))
    qemu_opts: list[str] = []
    for serial, image, _tree in images:
        qemu_opts += [
            "-drive",
            f"if=none,id={serial},file={image},format=raw,readonly=on",
            "-device",
            f"virtio-blk-pci,drive={serial},serial={serial}",
        ]
    cmd = [
        str(bin_dir / "vng"),
        "--run",
        str(vmlinuz),
        "--disable-kvm",
        "--disable-microvm",  # a plain PCI machine, so virtio-blk-pci is right
        "--force-9p",  # qemu's own virtiofsd fails here; trying it first costs seconds
        "-m",
        GUEST_MEMORY,
        "-p",
        GUEST_CPUS,
        "--verbose",
        f"--rwdir={out}",
        "--exec",
        f"sh {shlex.quote(str(script))}",
        # One argument with "=" (argparse would take a bare "-drive ..." for an option);
        # vng pastes it unquoted, last, into the qemu command line.
        "--qemu-opts=" + " ".join(qemu_opts),
    ]
    (out / "vng.cmd").write_text(shlex.join(cmd) + "\n")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    console_log = out / "console.log"
    output_log = out / "output.log"
    verdict_file = out / "verdict"

    say(f"booting {vmlinuz.name} under TCG (timeout {TIMEOUT_S:.0f} s); out dir {out}")
    start = time.monotonic()
    # stdout/stderr must be a pipe: qemu reopens /proc/self/fd/1 and 2 with O_TRUNC, which
    # would wipe a regular file that our caller redirected us into.
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pump = threading.Thread(target=_pump_console, args=(proc.stdout, console_log), daemon=True)
    pump.start()
    shown = 0
    timed_out = False
    try:
        while True:
            shown = _show_new(output_log, shown)
            if proc.poll() is not None:
                break
            if time.monotonic() - start > TIMEOUT_S:
                timed_out = True
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pump.join(timeout=5)
    shown = _show_new(output_log, shown)
    elapsed = time.monotonic() - start

    if timed_out:
        _show_tail(console_log)
        say(f"FAILED: hard timeout after {elapsed:.0f} s, VM killed (console: {console_log})")
        return EXIT_TIMEOUT
    if not verdict_file.exists():
        _show_tail(console_log)
        say(
            f"FAILED: the VM exited (vng exit {proc.returncode}) after {elapsed:.0f} s "
            f"without a verdict: boot failure or guest crash (console: {console_log})"
        )
        return EXIT_SETUP_FAILED
    probe = REPO / ".lane2-write-probe"
    if probe.exists():
        probe.unlink()
        say(f"FAILED: the guest could write into the repo on the host ({probe})")
        return EXIT_SETUP_FAILED
    verdict = verdict_file.read_text().strip()
    if verdict.startswith("setup:"):
        _show_tail(console_log)
        say(f"FAILED: guest set-up: {verdict.removeprefix('setup:').strip()}")
        return EXIT_SETUP_FAILED
    try:
        rc = int(verdict)
    except ValueError:
        say(f"FAILED: unreadable verdict {verdict!r} in {verdict_file}")
        return EXIT_SETUP_FAILED
    if rc == PYTEST_NO_TESTS:
        say(f"FAILED: pytest collected no tests (exit 5) in {elapsed:.0f} s: lane 2 ran nothing")
    elif rc != 0:
        say(f"FAILED: pytest exit {rc}; VM run {elapsed:.0f} s (output: {output_log})")
    elif problems := judge(parse_summary(output_log.read_text(errors="replace")), expected):
        for problem in problems:
            say(f"FAILED: {problem}")
        say(f"FAILED: pytest exit 0, but not every vm test passed (output: {output_log})")
        return EXIT_NOT_ALL_PASSED
    else:
        say(f"passed: all {expected} vm tests passed; VM run {elapsed:.0f} s")
    return rc


def _pump_console(stream: IO[bytes], log: Path) -> None:
    with open(log, "wb") as f:
        for line in iter(stream.readline, b""):
            f.write(line)
            f.flush()
            if VERBOSE:
                sys.stdout.buffer.write(b"  | " + line)
                sys.stdout.flush()


def _show_new(path: Path, shown: int) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(shown)
            data = f.read()
    except FileNotFoundError:
        return shown
    if data:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return shown + len(data)


def _show_tail(path: Path, lines: int = 40) -> None:
    if VERBOSE or not path.exists():
        return
    tail = path.read_bytes().decode(errors="replace").splitlines()[-lines:]
    say(f"last {len(tail)} lines of the VM console:")
    for line in tail:
        print(f"  | {line}")


# ---------------------------------------------------------------------------------- main


class Terminated(Exception):
    """SIGTERM or SIGHUP arrived; raised so that boot() unwinds and kills the VM."""


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str]) -> int:
    start = time.monotonic()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if sys.platform != "linux" or os.geteuid() != 0:
        say("set-up failed: run as root on Linux (apt-get and qemu need it)")
        return EXIT_SETUP_FAILED
    for what, path in (("repo", REPO), ("cache dir", CACHE)):
        if not SAFE_PATH.match(str(path)):
            say(f"set-up failed: the {what} path {path} has characters vng cannot pass on")
            return EXIT_SETUP_FAILED
    try:
        with cache_lock():
            apt = Apt()
            apt.ensure_installed(APT_PACKAGES)
            vmlinuz, version = ensure_kernel(apt)
            bin_dir = ensure_vng()
            images = [
                (f"ogpy{i}", ensure_image(tree), tree) for i, tree in enumerate(python_trees())
            ]
        say(
            f"set-up ready in {time.monotonic() - start:.1f} s: kernel {version}, "
            f"python {sys.executable}, images {[str(t) for _, _, t in images]}"
        )
        expected = collect_vm_tests(argv)
        say(f"{expected} vm tests to pass")
        rc = boot(bin_dir, vmlinuz, images, new_out_dir(), argv, expected)
    except SetupError as exc:
        say(f"set-up failed: {exc}")
        return EXIT_SETUP_FAILED
    except KeyboardInterrupt:
        say("interrupted; the VM (if any) was killed")
        return 130
    except Terminated as exc:
        say(f"terminated by signal {exc.args[0]}; the VM (if any) was killed")
        return 128 + int(exc.args[0])
    say(f"total {time.monotonic() - start:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
