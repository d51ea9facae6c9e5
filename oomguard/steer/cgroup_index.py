"""Where each container's cgroup is: an index of the tree by container ID.

Walking the whole kubepods tree costs milliseconds per thousand containers, and a pass
runs every few seconds, so the tree is walked once and the index is kept between
passes. A running container that is not in it is either new (rescan at once, but only
once per pass) or not there yet (rescan at most every `rescan_interval_s`): a pod that
never gets its cgroup must not make every pass walk the tree again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from oomguard.cgroups.hierarchy import MemoryHierarchy
from oomguard.cgroups.path import parse_cgroup_path
from oomguard.k8s.pod_cache import normalize_pod_key

# A running container whose cgroup was not found triggers a rescan of the tree at
# once the first time, then at most this often (it may simply not exist yet).
DEFAULT_RESCAN_INTERVAL_S = 10.0
_CONTAINER_ID_CHARS = 64
# Container IDs remembered as missing; past this the memory starts over (a missing
# one then costs one more early rescan).
_MAX_KNOWN_MISSING = 4096


@dataclass(frozen=True, slots=True)
class ContainerCgroup:
    """One container's cgroup, as the index found it."""

    cgroup: str  # the kernel's name for it (as /proc/PID/cgroup prints it)
    directory: str  # where it is in the file system
    pod_key: str  # normalize_pod_key of the pod UID (or config hash) in the path


def _looks_like_container_dir(name: str) -> bool:
    """Cheap pre-filter before the full parser: the name holds a 64-hex container ID."""
    if name.endswith(".scope"):
        name = name[: -len(".scope")]
    return len(name) >= _CONTAINER_ID_CHARS and all(
        c in "0123456789abcdef" for c in name[-_CONTAINER_ID_CHARS:]
    )


class CgroupIndex:
    """Container ID -> its cgroup, below one root; rebuilt only when one is missing."""

    def __init__(
        self,
        hierarchy: MemoryHierarchy,
        root: Path,
        *,
        rescan_interval_s: float = DEFAULT_RESCAN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hierarchy = hierarchy
        self.root = root
        self.rescan_interval_s = rescan_interval_s
        self._clock = clock
        self._index: dict[str, ContainerCgroup] = {}
        self._indexed_at: float | None = None
        self._known_missing: set[str] = set()
        self.pass_rescans = 0  # rescans `find` made since `begin_pass`

    def rescan(self) -> int:
        """Rebuild the index; returns how many containers it holds."""
        index: dict[str, ContainerCgroup] = {}
        stack = [str(self.root)]
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as entries:
                    subdirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in subdirs:
                if _looks_like_container_dir(entry.name):
                    try:
                        cgroup = self.hierarchy.cgroup_of(entry.path)
                    except ValueError:
                        continue
                    ident = parse_cgroup_path(cgroup)
                    if (
                        ident.is_container
                        and ident.container_id
                        and ident.container_path == cgroup
                        and ident.pod_uid
                    ):
                        index[ident.container_id] = ContainerCgroup(
                            cgroup, entry.path, normalize_pod_key(ident.pod_uid)
                        )
                        continue  # nested cgroups are walked on each pass instead
                stack.append(entry.path)
        self._index = index
        self._indexed_at = self._clock()
        return len(index)

    def begin_pass(self) -> None:
        self.pass_rescans = 0

    def locate(self, container_id: str, running: bool) -> ContainerCgroup | None:
        """A container's cgroup. A running one may be new: look for it (`find`); a
        stopped one is only taken from the index, it will not appear."""
        if running:
            return self.find(container_id)
        return self._index.get(container_id)

    def find(self, container_id: str) -> ContainerCgroup | None:
        """The cgroup of a running container, rescanning when it is new or it is time."""
        hit = self._index.get(container_id)
        if hit is not None:
            if os.path.isdir(hit.directory):
                return hit
            del self._index[container_id]
        now = self._clock()
        fresh = container_id not in self._known_missing
        stale = self._indexed_at is None or now - self._indexed_at >= self.rescan_interval_s
        if (fresh and self.pass_rescans == 0) or stale:
            self.rescan()
            self.pass_rescans += 1
        hit = self._index.get(container_id)
        if hit is None:
            self._known_missing.add(container_id)
        else:
            self._known_missing.discard(container_id)
        return hit

    def end_pass(self) -> None:
        """Keep the memory of missing containers bounded."""
        if len(self._known_missing) > _MAX_KNOWN_MISSING:
            self._known_missing.clear()
