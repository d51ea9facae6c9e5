"""The oom_score_adj values (and kill modes) the reconciler set and wants, kept in the
state directory.

One JSON file, `oom-score-adj.json`, written by the agent's reconciler, for two readers:

- the reconciler itself after a restart. `applied` lists the containers whose processes
  it moved off the kubelet's value, and to what; an annotation removed while the agent
  was down then still gets the kubelet's value back on the first pass (on the processes
  that still carry oomguard's value, the same rule as without a restart). `kill_modes`
  does the same for `memory.oom.group` (cgroup v2): the containers whose file oomguard
  changed, the value it wrote and the value it found there before its first write,
  which a removed `oomguard.io/oom-kill` annotation gets back.
- `oomguard top`, which has no API credentials. `wanted` lists, per container ID, the
  pod, the container, the value the policy wants for its processes and how that value
  came about (the policy's outcome, or "restore").

    {"format": "oomguard/oom-score-adj/v1", "boot_id": "...", "dry_run": false,
     "applied": [{"pod_uid": "...", "container": "app", "value": 1000,
                  "kubelet_value": 900}],
     "wanted": [{"container_id": "...", "namespace": "default", "pod": "web-0",
                 "pod_uid": "...", "container": "app", "value": 1000,
                 "outcome": "applied"}],
     "kill_modes": [{"pod_uid": "...", "container": "db", "oom_group": 0,
                     "oom_group_before": 1}]}

`kill_modes` came after the first agents that wrote this format, in the same version:
they read the file key by key and ignore it, and a file without it (written by them)
loads as "no kill mode set". (Such an agent, downgraded to, forgets the kill modes it
cannot know about: their containers keep the mode until they restart.)

The file is written (crash-safe, following no symlink, through `statefile`) only when what it says
changes, never by a pass that changes nothing. A dry run writes no process, so it adds
nothing to `applied`; its `wanted` says what it would set (and `dry_run` says so).

A file from another boot is ignored: every process is new after a reboot, none carries a
value this agent wrote, and "restoring" would overwrite values someone else set. A file
that is unreadable, or in a format this version does not know (or not a regular file,
larger than `statefile.MAX_STATE_FILE_BYTES`, JSON nested too deeply), is moved aside as
`<name>.corrupt-<time>` with a log line, and the agent starts without it; it is never
fatal. `oomguard top` only reads the file (`read_wanted`), with the same bounds, and
never moves it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oomguard.state.files import (
    StateFile,
    StateFileError,
    StateWrites,
    parse_versioned,
    read_capped,
)

log = logging.getLogger(__name__)

STATE_FILE = "oom-score-adj.json"
STATE_FORMAT = "oomguard/oom-score-adj/v1"
_SCORE_MIN, _SCORE_MAX = -1000, 1000
_OOM_GROUP_VALUES = (0, 1)


class StateFormatError(ValueError):
    """The file is not an oom_score_adj state this version can read."""


@dataclass(frozen=True, slots=True)
class AppliedValue:
    """A container whose processes oomguard set to `value` (the kubelet gave them another)."""

    pod_uid: str
    container: str  # the container's name in the pod
    value: int
    kubelet_value: int


@dataclass(frozen=True, slots=True)
class AppliedKillMode:
    """A container whose `memory.oom.group` oomguard set to `oom_group`; `before` is the
    value it found there before its first write (the kubelet's), to put back."""

    pod_uid: str
    container: str  # the container's name in the pod
    oom_group: int  # 0 or 1
    before: int  # 0 or 1


@dataclass(frozen=True, slots=True)
class WantedValue:
    """The value the policy wants for every process of one container."""

    container_id: str  # as in its cgroup path, without the runtime's scheme
    namespace: str
    pod: str
    pod_uid: str
    container: str
    value: int
    outcome: str  # policy.Outcome's value, or "restore" (the kubelet's value put back)


@dataclass(frozen=True, slots=True)
class ScoreState:
    """Everything in the file. Equal states are never written twice."""

    boot_id: str | None
    dry_run: bool
    applied: Mapping[tuple[str, str], AppliedValue] = field(default_factory=dict)
    wanted: Mapping[str, WantedValue] = field(default_factory=dict)  # by container ID
    kill_modes: Mapping[tuple[str, str], AppliedKillMode] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        applied = sorted(self.applied.values(), key=lambda a: (a.pod_uid, a.container))
        wanted = sorted(self.wanted.values(), key=lambda w: (w.namespace, w.pod, w.container))
        kill_modes = sorted(self.kill_modes.values(), key=lambda k: (k.pod_uid, k.container))
        body = {
            "format": STATE_FORMAT,
            "boot_id": self.boot_id,
            "dry_run": self.dry_run,
            "applied": [
                {
                    "pod_uid": a.pod_uid,
                    "container": a.container,
                    "value": a.value,
                    "kubelet_value": a.kubelet_value,
                }
                for a in applied
            ],
            "wanted": [
                {
                    "container_id": w.container_id,
                    "namespace": w.namespace,
                    "pod": w.pod,
                    "pod_uid": w.pod_uid,
                    "container": w.container,
                    "value": w.value,
                    "outcome": w.outcome,
                }
                for w in wanted
            ],
            "kill_modes": [
                {
                    "pod_uid": k.pod_uid,
                    "container": k.container,
                    "oom_group": k.oom_group,
                    "oom_group_before": k.before,
                }
                for k in kill_modes
            ],
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ScoreState:
        """Parse a file's content; `StateFormatError` says what is wrong with it."""
        body, boot_id = parse_versioned(
            raw, STATE_FORMAT, "an oom_score_adj state", StateFormatError
        )
        applied: dict[tuple[str, str], AppliedValue] = {}
        for item in _list(body, "applied"):
            a = AppliedValue(
                pod_uid=_str(item, "pod_uid"),
                container=_str(item, "container"),
                value=_score(item, "value"),
                kubelet_value=_score(item, "kubelet_value"),
            )
            applied[(a.pod_uid, a.container)] = a
        wanted: dict[str, WantedValue] = {}
        for item in _list(body, "wanted"):
            w = WantedValue(
                container_id=_str(item, "container_id"),
                namespace=_str(item, "namespace"),
                pod=_str(item, "pod"),
                pod_uid=_str(item, "pod_uid"),
                container=_str(item, "container"),
                value=_score(item, "value"),
                outcome=_str(item, "outcome"),
            )
            wanted[w.container_id] = w
        kill_modes: dict[tuple[str, str], AppliedKillMode] = {}
        for item in _list(body, "kill_modes"):  # absent in files of older agents
            k = AppliedKillMode(
                pod_uid=_str(item, "pod_uid"),
                container=_str(item, "container"),
                oom_group=_oom_group(item, "oom_group"),
                before=_oom_group(item, "oom_group_before"),
            )
            kill_modes[(k.pod_uid, k.container)] = k
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise StateFormatError("dry_run is not true or false")
        return cls(boot_id, dry_run, applied, wanted, kill_modes)


def _list(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = body.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise StateFormatError(f"{key} is not a list of objects")
    return items


def _str(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise StateFormatError(f"an entry's {key} is missing or not a string")
    return value


def _score(item: dict[str, Any], key: str) -> int:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateFormatError(f"an entry's {key} is missing or not an integer")
    if not _SCORE_MIN <= value <= _SCORE_MAX:
        raise StateFormatError(f"an entry's {key} ({value}) is outside -1000..1000")
    return value


def _oom_group(item: dict[str, Any], key: str) -> int:
    value = item.get(key)
    if isinstance(value, bool) or value not in _OOM_GROUP_VALUES:
        raise StateFormatError(f"an entry's {key} is missing or not 0 or 1")
    assert isinstance(value, int)
    return value


# ---------------------------------------------------------------------------- the agent


class ScoreStateFile(StateFile[ScoreState]):
    """The agent's side: load once at start, then save each state that differs."""

    def __init__(
        self, state_dir: Path, boot_id: str | None, writes: StateWrites | None = None
    ) -> None:
        super().__init__(
            Path(state_dir) / STATE_FILE,
            boot_id,
            ScoreState.from_bytes,
            log=log,
            without="starting without it (an annotation removed while the agent was down "
            "keeps its last value until the container restarts)",
            stale="every process and cgroup is new, so the oom_score_adj values and kill "
            "modes written then are moot",
            unsaved="an agent restart would forget which oom_score_adj values and kill modes "
            "oomguard set",
            writes=writes,
        )

    def load(self) -> ScoreState | None:
        """The state the agent left in this boot; None when there is none to resume.

        Never raises: an unreadable file is set aside, another boot's is ignored.
        """
        state = self.read_this_boot()
        if state is not None and state.applied:
            log.info(
                "resuming with %d containers whose oom_score_adj oomguard set before the restart",
                len(state.applied),
            )
        if state is not None and state.kill_modes:
            log.info(
                "resuming with %d containers whose memory.oom.group oomguard set before the "
                "restart",
                len(state.kill_modes),
            )
        return state

    def save(self, state: ScoreState) -> bool:
        """Write `state` if it differs from what the file holds; True when written.

        A failed write is logged and retried by the next call (memory still has it all).
        """
        if state == self.saved:
            return False
        return self.write(state)


# ---------------------------------------------------------------------------- top


@dataclass(frozen=True, slots=True)
class PublishedWants:
    """What `oomguard top` learns from the file."""

    wanted: Mapping[str, WantedValue]  # by container ID
    dry_run: bool = False
    note: str | None = None  # why `wanted` is empty: missing, stale or unreadable


def read_wanted(state_dir: Path, boot_id: str | None) -> PublishedWants:
    """The agent's wanted values, for `top`; never raises, never changes the file."""
    path = Path(state_dir) / STATE_FILE
    try:
        raw = read_capped(path)
    except FileNotFoundError:
        return PublishedWants(
            {},
            note=f"no {STATE_FILE} in {state_dir} (no oomguard agent has run here with "
            "this --state-dir)",
        )
    except StateFileError as exc:
        return PublishedWants({}, note=f"{path} is unreadable: {exc}")
    except OSError as exc:
        return PublishedWants({}, note=f"cannot read {path}: {exc.strerror or exc}")
    try:
        state = ScoreState.from_bytes(raw)
    except StateFormatError as exc:
        return PublishedWants({}, note=f"{path} is unreadable: {exc}")
    if boot_id is None:
        return PublishedWants(
            {}, note=f"this boot's id is unreadable: cannot tell if {path} is current"
        )
    if state.boot_id != boot_id:
        return PublishedWants(
            {}, note=f"{path} was written before the last reboot (no agent has run since)"
        )
    return PublishedWants(state.wanted, dry_run=state.dry_run)
