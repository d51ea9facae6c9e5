"""State files as an attacker (or a broken disk) leaves them: every loader of the agent's
state directory, fed what it did not write.

The five loaders: the kernel log position, the oom_kill counter snapshot, the
oom_score_adj state (the agent's, and `top`'s read-only look at it) and the event queue.
Whatever lies in the directory, each one starts (without the file, which is set aside
for a human with one log line) and never writes outside the directory.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from oomguard.k8s.event_queue import STATE_FILE as QUEUE_FILE
from oomguard.k8s.event_queue import EventQueue
from oomguard.state.counter_snapshot import STATE_FILE as COUNTERS_FILE
from oomguard.state.counter_snapshot import CounterSnapshotFile
from oomguard.state.files import atomic_write
from oomguard.state.log_position import LOG_POSITION_FILE, LogPosition
from oomguard.steer.score_state import STATE_FILE as SCORE_FILE
from oomguard.steer.score_state import ScoreStateFile, read_wanted

BOOT = "8c2e6f0b-1d3a-4a5e-9b7c-2f4d6e8a0b1c"

# '[' * 100000 + ']' * 100000: 200 kB, valid JSON, deeper than Python's recursion limit.
DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_IN_OBJECT = b'{"format": "x", "boot_id": "b", "a": ' + DEEP + b"}"


def load_position(d: Path) -> object:
    return LogPosition(d, BOOT).resume_after("kmsg")


def load_counters(d: Path) -> object:
    return CounterSnapshotFile(d, BOOT).load()


def load_score_state(d: Path) -> object:
    return ScoreStateFile(d, BOOT).load()


def load_queue(d: Path) -> object:
    queue = EventQueue(d)
    return len(queue) or None


# (file, load, logger): each agent loader returns None when it starts without its file.
AGENT_LOADERS: list[tuple[str, Callable[[Path], object], str]] = [
    (LOG_POSITION_FILE, load_position, "oomguard.state.log_position"),
    (COUNTERS_FILE, load_counters, "oomguard.state.counter_snapshot"),
    (SCORE_FILE, load_score_state, "oomguard.steer.score_state"),
    (QUEUE_FILE, load_queue, "oomguard.k8s.event_queue"),
]
IDS = ["kmsg-position", "counters", "score-state", "event-queue"]


def set_aside(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f"{name}.corrupt-*"))


@pytest.mark.parametrize("content", [DEEP, DEEP_IN_OBJECT], ids=["list", "in-object"])
@pytest.mark.parametrize(("name", "load", "logger"), AGENT_LOADERS, ids=IDS)
def test_deeply_nested_json_is_set_aside_not_fatal(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    load: Callable[[Path], object],
    logger: str,
    content: bytes,
) -> None:
    (tmp_path / name).write_bytes(content)
    with caplog.at_level(logging.INFO):
        assert load(tmp_path) is None
    (aside,) = set_aside(tmp_path, name)
    assert aside.read_bytes() == content and not (tmp_path / name).exists()
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.name == logger and "nested too deeply" in record.getMessage()
    assert aside.name in record.getMessage()


def test_top_reads_a_deeply_nested_state_as_unreadable(tmp_path: Path) -> None:
    (tmp_path / SCORE_FILE).write_bytes(DEEP)
    published = read_wanted(tmp_path, BOOT)
    assert published.wanted == {} and "nested too deeply" in (published.note or "")
    assert (tmp_path / SCORE_FILE).read_bytes() == DEEP  # top never moves it


@pytest.mark.parametrize(("name", "load", "logger"), AGENT_LOADERS, ids=IDS)
def test_an_oversized_file_is_set_aside_unread(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    load: Callable[[Path], object],
    logger: str,
) -> None:
    with open(tmp_path / name, "wb") as f:
        f.truncate(1 << 40)  # 1 TiB, sparse: reading it whole could never work
    with caplog.at_level(logging.INFO):
        assert load(tmp_path) is None
    (aside,) = set_aside(tmp_path, name)
    assert aside.stat().st_size == 1 << 40
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.name == logger and "larger than" in record.getMessage()


# Run under the chart's memory limit (256 MiB, here as the address-space limit of a
# child process): the loaders must cope with a 512 MiB file without reading it whole.
UNDER_LIMIT = r"""
import json, logging, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (256 << 20, 256 << 20))
logging.basicConfig(level=logging.ERROR, format="%(name)s %(message)s")
from tests.unit.test_state_hostile import AGENT_LOADERS, read_wanted, BOOT, SCORE_FILE
d = Path(sys.argv[1])
results = {}
for name, load, _ in AGENT_LOADERS:
    with open(d / name, "wb") as f:
        f.truncate(512 << 20)
    results[name] = load(d)
with open(d / SCORE_FILE, "wb") as f:
    f.truncate(512 << 20)
results["top"] = read_wanted(d, BOOT).note
print(json.dumps(results))
"""


def test_huge_state_files_under_the_charts_memory_limit(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", UNDER_LIMIT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [results[name] for name, _, _ in AGENT_LOADERS] == [None] * 4
    assert "larger than" in results["top"]
    assert "MemoryError" not in done.stderr


# -- no symlink is followed --------------------------------------------------------------


def test_a_symlink_planted_at_the_old_temporary_name_is_not_followed(tmp_path: Path) -> None:
    """The temporary name used to be `.<name>.tmp-<pid>`: anyone able to write in the
    directory could point it at a file elsewhere, which the write then truncated."""
    state, outside = tmp_path / "state", tmp_path / "outside"
    state.mkdir()
    outside.mkdir()
    precious = outside / "precious"
    precious.write_bytes(b"not yours")
    (state / f".{LOG_POSITION_FILE}.tmp-{os.getpid()}").symlink_to(precious)
    LogPosition(state, BOOT).save(42)
    assert precious.read_bytes() == b"not yours"
    assert not (state / LOG_POSITION_FILE).is_symlink()
    assert LogPosition(state, BOOT).resume_after("kmsg") == 42


def test_a_write_never_follows_a_symlink_at_any_temporary_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a name the attacker guessed: the temporary file is created, never opened."""
    import oomguard.state.files as statefile

    state, outside = tmp_path / "state", tmp_path / "outside"
    state.mkdir()
    outside.mkdir()
    precious = outside / "precious"
    precious.write_bytes(b"not yours")
    monkeypatch.setattr(statefile, "_temp_name", lambda name: f".{name}.tmp-guessed")
    (state / f".{QUEUE_FILE}.tmp-guessed").symlink_to(precious)
    with pytest.raises(FileExistsError):
        atomic_write(state / QUEUE_FILE, b"{}")
    assert precious.read_bytes() == b"not yours" and not (state / QUEUE_FILE).exists()


@pytest.mark.parametrize(("name", "load", "logger"), AGENT_LOADERS, ids=IDS)
def test_a_state_file_that_is_a_symlink_is_not_read(
    tmp_path: Path, name: str, load: Callable[[Path], object], logger: str
) -> None:
    state, outside = tmp_path / "state", tmp_path / "outside"
    state.mkdir()
    outside.mkdir()
    elsewhere = outside / "elsewhere.json"
    elsewhere.write_bytes(b"{}")
    (state / name).symlink_to(elsewhere)
    assert load(state) is None
    (aside,) = set_aside(state, name)
    assert aside.is_symlink() and elsewhere.read_bytes() == b"{}"


def test_writing_replaces_a_symlink_at_the_final_name_not_its_target(tmp_path: Path) -> None:
    state, outside = tmp_path / "state", tmp_path / "outside"
    state.mkdir()
    outside.mkdir()
    precious = outside / "precious"
    precious.write_bytes(b"not yours")
    (state / COUNTERS_FILE).symlink_to(precious)
    assert CounterSnapshotFile(state, BOOT).save({"/a": 1})
    assert precious.read_bytes() == b"not yours"
    assert not (state / COUNTERS_FILE).is_symlink()
    assert CounterSnapshotFile(state, BOOT).load() == {"/a": 1}


def test_a_fifo_at_the_state_name_does_not_block_the_start(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / LOG_POSITION_FILE)
    assert load_position(tmp_path) is None
    assert len(set_aside(tmp_path, LOG_POSITION_FILE)) == 1


def test_temporary_files_left_by_a_crash_are_cleared_at_start(tmp_path: Path) -> None:
    leftover = tmp_path / f".{COUNTERS_FILE}.tmp-0123456789abcdef"
    leftover.write_bytes(b"half a fi")
    unrelated = tmp_path / ".something-else"
    unrelated.write_bytes(b"keep")
    assert load_counters(tmp_path) is None
    assert not leftover.exists() and unrelated.exists()


def test_an_event_queue_at_its_bounds_fits_its_cap_and_is_read_back(tmp_path: Path) -> None:
    """The cap must never set aside a file the agent itself wrote: fill the queue to
    every bound with the longest names the API allows and read it back."""
    from datetime import UTC, datetime, timedelta

    from oomguard.k8s.event_queue import EventQueueSettings
    from oomguard.k8s.events import AggregationKey, Occurrence

    settings = EventQueueSettings()
    cgroup = "/kubepods.slice/kubepods-burstable.slice/" + "c" * 150
    now = datetime.now(UTC)
    items = []
    for n in range(settings.max_events_tracked):
        ns, name = f"{n:05d}".ljust(63, "n"), f"{n:05d}".ljust(253, "p")
        occurrence = Occurrence(
            key=AggregationKey(ns, "u" * 36, "c" * 63, "OOMKilled"),
            namespace=ns,
            name=name,
            involved_object={
                "kind": "Pod",
                "apiVersion": "v1",
                "namespace": ns,
                "name": name,
                "uid": "u" * 36,
                "fieldPath": "spec.containers{" + "c" * 63 + "}",
            },
            reason="OOMKilled",
            message="m" * 1024,
            time=now,
            window_start=now,
            window_end=now + timedelta(minutes=10),
        )
        items.append((f"counter/{BOOT}{cgroup}/{n}", occurrence))
    queue = EventQueue(tmp_path, settings)
    assert queue.offer_many(items) == settings.max_events_tracked
    size = (tmp_path / QUEUE_FILE).stat().st_size
    assert 8 << 20 < size < settings.max_state_bytes
    again = EventQueue(tmp_path, settings)
    assert len(again) == settings.max_pending and again.counters.state_files_set_aside == 0
