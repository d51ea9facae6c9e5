"""Real containers started by runc, their cgroups inside a test's scratch tree.

On cgroup v1 (lane 1), runc's cgroupfs driver puts a container into `linux.cgroupsPath`
in every v1 hierarchy it finds mounted (cpu, pids, freezer, ...), below each
hierarchy's root: on this host that would be cgroups beside everything else, outside
the test's own memory cgroup.
So every runc command runs in a mount namespace of its own in which /sys/fs/cgroup
holds only two hierarchies, each a bind of a scratch directory:

- memory: the scratch tree's top (below the test's own memory cgroup), so the
  kubelet-shaped `cgroupsPath` `/kubepods/burstable/pod<UID>/<64-hex id>` lands at
  `<scratch>/kubepods/burstable/pod<UID>/<id>`, the path oomguard watches and the
  kernel prints in /proc/PID/cgroup;
- devices: runc refuses to start a container without the devices controller (for
  security), so a scratch devices cgroup of the same name is made below the test's own
  devices cgroup and removed with everything in it afterwards.

Other hierarchies are not mounted there, so runc skips them (the container stays in
the test's own cgroup of each). The namespace's mounts go with it when runc exits;
runc's state (`--root`) records the paths as that namespace shows them, which is why
`delete` runs in the same kind of namespace.

On cgroup v2 (lane 2's VM, whose root cgroup the test runs in) runc runs as it is:
one hierarchy, the scratch tree below the test's own cgroup, `cgroupsPath` its full path.

The rootfs is a static busybox, read-only; the container runs `sleep` with the
kubelet's oom_score_adj (OCI `process.oomScoreAdj`), as the kubelet asks runc to.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oomguard.cgroups.hierarchy import CgroupVersion, parse_mountinfo
from oomguard.cgroups.scratch import ScratchTree, remove_tree
from oomguard.closing import Closing

RUNC_TIMEOUT_S = 60.0

# Runs as `unshare --mount --propagation private sh -c SCRIPT sh STAGE MEMORY DEVICES
# runc-args...`. The check first: the mount changes below must never reach the host.
IN_SCRATCH_CGROUPS = r"""
set -e
if [ "$(readlink /proc/self/ns/mnt)" = "$(readlink /proc/$PPID/ns/mnt)" ]; then
    echo "runc wrapper: not in a mount namespace of its own; nothing done" >&2
    exit 99
fi
stage=$1 memory=$2 devices=$3
shift 3
mount -t tmpfs -o mode=755 tmpfs "$stage"
mkdir "$stage/memory" "$stage/devices"
mount --bind "$memory" "$stage/memory"
mount --bind "$devices" "$stage/devices"
umount -R /sys/fs/cgroup
mount --move "$stage" /sys/fs/cgroup
exec runc "$@"
"""


def missing_tools() -> list[str]:
    """What this module needs and the host lacks ([]: all there)."""
    missing = [t for t in ("runc", "unshare") if shutil.which(t) is None]
    if busybox() is None:
        missing.append("busybox (static: apt-get install busybox-static)")
    return missing


def busybox() -> Path | None:
    """A statically linked busybox (it runs in a rootfs with no libraries), or None."""
    found = shutil.which("busybox")
    if found is None:
        return None
    with open(found, "rb") as f:
        head = f.read(1 << 16)
    return None if b"ld-linux" in head else Path(found)


def devices_hierarchy_dir() -> Path | None:
    """This process's own cgroup in the v1 devices hierarchy, as a directory; None when
    the devices controller is not mounted on its own v1 hierarchy."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        mounts = parse_mountinfo(f.read())
    mount = next((m for m in mounts if m.fstype == "cgroup" and "devices" in m.super_options), None)
    if mount is None:
        return None
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "devices" in controllers.split(","):
                return Path(mount.mount_point, path.lstrip("/"))
    return None


@dataclass(frozen=True)
class RuncContainer:
    """One container runc started: its ID and its init's PID on the host."""

    id: str
    pid: int
    cgroup: str  # its memory cgroup as the kernel names it


class Runc(Closing):
    """Starts and removes containers whose cgroups are in `tree` (see the module
    docstring). `close()` removes every container it started (`runc delete -f`) and
    the scratch devices cgroup, also after a failure.

    On cgroup v2 (lane 2's VM) there is one hierarchy and no devices controller (runc
    filters devices with eBPF there): runc runs as it is, with `cgroupsPath` the full
    path of the container's cgroup in the scratch tree."""

    def __init__(self, tree: ScratchTree, work: Path) -> None:
        self.tree = tree
        self.v1 = tree.hierarchy.version is CgroupVersion.V1
        self.devices: Path | None = None
        if self.v1:
            devices = devices_hierarchy_dir()
            if devices is None:
                raise RuntimeError("no cgroup v1 devices hierarchy: runc will not start here")
            self.devices = devices / tree.top.name
            self.devices.mkdir()
        self.state = work / "runc-state"
        self.stage = work / "runc-stage"
        self.rootfs = work / "rootfs"
        self.stage.mkdir()
        self._make_rootfs()
        self._spec = self._default_spec(work / "spec")
        self._bundles = work / "bundles"
        self._bundles.mkdir()
        self.started: list[str] = []

    def _make_rootfs(self) -> None:
        box = busybox()
        assert box is not None, "see missing_tools()"
        (self.rootfs / "bin").mkdir(parents=True)
        shutil.copy2(box, self.rootfs / "bin" / "busybox")
        for applet in ("sh", "sleep"):
            (self.rootfs / "bin" / applet).symlink_to("busybox")
        for mount_point in ("proc", "dev", "sys", "tmp"):
            (self.rootfs / mount_point).mkdir()

    @staticmethod
    def _default_spec(directory: Path) -> dict[str, Any]:
        """runc's own default config.json (`runc spec`), to adjust per container."""
        directory.mkdir()
        subprocess.run(["runc", "spec", "--bundle", str(directory)], check=True)
        spec: dict[str, Any] = json.loads((directory / "config.json").read_text())
        return spec

    def command(self, *args: str) -> list[str]:
        """A runc command line; on v1 one that sees only the scratch hierarchies."""
        runc = ["--root", str(self.state), *args]
        if not self.v1:
            return ["runc", *runc]
        assert self.devices is not None
        wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
        scratch = [str(self.stage), str(self.tree.top), str(self.devices)]
        return [*wrapper, IN_SCRATCH_CGROUPS, "sh", *scratch, *runc]

    def _runc(self, *args: str) -> str:
        # Files, not pipes: a detached container inherits runc's stdout and stderr, and
        # a pipe it holds would never reach EOF.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.run(
                self.command(*args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                timeout=RUNC_TIMEOUT_S,
                check=False,
            )
            out.seek(0)
            err.seek(0)
            if proc.returncode != 0:
                why = err.read().decode(errors="replace").strip()
                raise RuntimeError(f"runc {' '.join(args)}: exit {proc.returncode}: {why}")
            return out.read().decode()

    def cgroups_path(self, relative: str) -> str:
        """`linux.cgroupsPath` for a cgroup `relative` to the scratch tree's top."""
        relative = relative.strip("/")
        return f"/{relative}" if self.v1 else f"{self.tree.top_cgroup}/{relative}"

    def config(
        self,
        relative: str,
        oom_score_adj: int,
        limit_bytes: int,
        unified: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The container's config.json: runc's default with what the kubelet sets
        (`unified`: cgroup v2 files, as the kubelet's memory.oom.group)."""
        spec = json.loads(json.dumps(self._spec))
        process = spec["process"]
        process["terminal"] = False
        process["args"] = ["/bin/sleep", "600"]
        process["oomScoreAdj"] = oom_score_adj
        spec["root"] = {"path": str(self.rootfs), "readonly": True}
        # No cgroup file system inside: the container needs none, and on v1 the wrapper's
        # view of the hierarchies is the test's business.
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/sys/fs/cgroup"]
        linux = spec["linux"]
        linux["cgroupsPath"] = self.cgroups_path(relative)
        resources = linux.setdefault("resources", {})
        resources["memory"] = {"limit": limit_bytes}
        if unified:
            resources["unified"] = unified
        return spec  # type: ignore[no-any-return]

    def run(
        self,
        container_id: str,
        relative: str,
        oom_score_adj: int,
        limit_bytes: int,
        unified: dict[str, str] | None = None,
    ) -> RuncContainer:
        """`runc run --detach` a container whose cgroup is `relative` to the scratch
        tree's top; returns once runc has started it."""
        bundle = self._bundles / container_id
        bundle.mkdir()
        config = self.config(relative, oom_score_adj, limit_bytes, unified)
        (bundle / "config.json").write_text(json.dumps(config))
        self.started.append(container_id)
        self._runc("run", "--detach", "--bundle", str(bundle), container_id)
        state = json.loads(self._runc("state", container_id))
        cgroup = f"{self.tree.top_cgroup}/{relative.strip('/')}"
        return RuncContainer(container_id, int(state["pid"]), cgroup)

    def delete(self, container_id: str) -> None:
        self._runc("delete", "--force", container_id)
        self.started.remove(container_id)

    def close(self) -> None:
        failed: list[str] = []
        for container_id in list(self.started):
            try:
                self.delete(container_id)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                failed.append(str(exc))
        if self.devices is not None:
            remove_tree(self.devices)  # emptied by `delete`; a leftover is killed here
        assert not failed, failed
