"""The counter snapshot: round trip, the detector's marks merged, every way the file is wrong."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from oomguard.records import HandedOn
from oomguard.state.counter_snapshot import (
    STATE_FILE,
    STATE_FORMAT,
    CounterSnapshot,
    CounterSnapshotFile,
    SnapshotFormatError,
    apply_handed_on,
)

BOOT = "8c2e6f0b-1d3a-4a5e-9b7c-2f4d6e8a0b1c"
OTHER_BOOT = "0d9f1e2c-3b4a-4c5d-8e6f-7a8b9c0d1e2f"
UID = "6f1e0c7a-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
A = f"/kubepods/burstable/pod{UID}/{'a1' * 32}"
B = f"/kubepods/burstable/pod{UID}/{'b2' * 32}"


def write_body(directory: Path, body: object) -> Path:
    path = directory / STATE_FILE
    path.write_text(json.dumps(body))
    return path


# ----- the format ------------------------------------------------------------------------


def test_round_trip() -> None:
    snap = CounterSnapshot(BOOT, {A: 3, B: 1})
    assert CounterSnapshot.from_bytes(snap.to_bytes()) == snap
    body = json.loads(snap.to_bytes())
    assert body == {"format": STATE_FORMAT, "boot_id": BOOT, "oom_kill": {A: 3, B: 1}}


def test_zero_values_are_not_kept() -> None:
    raw = json.dumps({"format": STATE_FORMAT, "boot_id": BOOT, "oom_kill": {A: 0, B: 2}})
    assert CounterSnapshot.from_bytes(raw.encode()).oom_kill == {B: 2}


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "not JSON"),
        (b'{"format": ', "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "a JSON list"),
        (b'{"boot_id": "x", "oom_kill": {}}', "format None"),
        (b'{"format": "oomguard/oom-kill-counters/v2"}', "format 'oomguard/oom-kill-counters/v2'"),
        (b'{"format": "oomguard/event-queue/v1"}', "this version reads only"),
        (f'{{"format": "{STATE_FORMAT}", "boot_id": 7}}'.encode(), "boot_id is not a string"),
        (f'{{"format": "{STATE_FORMAT}", "oom_kill": [1]}}'.encode(), "oom_kill is not an object"),
        (f'{{"format": "{STATE_FORMAT}", "oom_kill": {{"a": 1}}}}'.encode(), "not a path"),
        (f'{{"format": "{STATE_FORMAT}", "oom_kill": {{"/a": -1}}}}'.encode(), "not a count"),
        (f'{{"format": "{STATE_FORMAT}", "oom_kill": {{"/a": 1.5}}}}'.encode(), "not a count"),
        (f'{{"format": "{STATE_FORMAT}", "oom_kill": {{"/a": true}}}}'.encode(), "not a count"),
        (f'{{"format": "{STATE_FORMAT}", "oom_kill": {{"/a": "2"}}}}'.encode(), "not a count"),
    ],
)
def test_what_is_not_ours_says_why(raw: bytes, why: str) -> None:
    with pytest.raises(SnapshotFormatError, match=why.replace("(", r"\(").replace(")", r"\)")):
        CounterSnapshot.from_bytes(raw)


def test_limit_hits_round_trip() -> None:
    snap = CounterSnapshot(BOOT, {A: 3}, {A: 4, B: 1})
    assert CounterSnapshot.from_bytes(snap.to_bytes()) == snap
    assert json.loads(snap.to_bytes())["limit_hits"] == {A: 4, B: 1}
    raw = json.dumps({"format": STATE_FORMAT, "oom_kill": {}, "limit_hits": {A: 0, B: 2}})
    assert CounterSnapshot.from_bytes(raw.encode()).limit_hits == {B: 2}


def test_a_file_without_limit_hits_is_read_as_unknown() -> None:
    # Written by an earlier version, or on cgroup v1 (no `oom` count): not "none rose".
    raw = json.dumps({"format": STATE_FORMAT, "boot_id": BOOT, "oom_kill": {A: 2}})
    assert CounterSnapshot.from_bytes(raw.encode()) == CounterSnapshot(BOOT, {A: 2}, None)


@pytest.mark.parametrize(
    ("limit_hits", "why"),
    [([1], "limit_hits is not an object"), ({"a": 1}, "not a path"), ({"/a": -1}, "not a count")],
)
def test_bad_limit_hits_say_why(limit_hits: object, why: str) -> None:
    raw = json.dumps({"format": STATE_FORMAT, "oom_kill": {}, "limit_hits": limit_hits})
    with pytest.raises(SnapshotFormatError, match=why):
        CounterSnapshot.from_bytes(raw.encode())


# ----- the detector's marks ----------------------------------------------------------------


def test_nothing_before_the_first_complete_mark() -> None:
    # A run's first mark lists every cgroup: until it came, nothing may be written.
    assert apply_handed_on(None, HandedOn(oom_kill={A: 2})) is None


def test_a_complete_mark_replaces_everything() -> None:
    merged = apply_handed_on({A: 5, B: 1}, HandedOn(oom_kill={A: 6, B: 0}, complete=True))
    assert merged == {A: 6}
    # Cgroups removed while the agent was down are simply not in it.
    assert apply_handed_on({B: 1}, HandedOn(oom_kill={}, complete=True)) == {}


def test_marks_update_and_zero_forgets() -> None:
    merged = apply_handed_on(
        {A: 5, B: 1}, HandedOn(oom_kill={A: 7, B: 0}, log_position=40, log_source="kmsg")
    )
    assert merged == {A: 7}
    assert apply_handed_on(merged, HandedOn(oom_kill={B: 2})) == {A: 7, B: 2}
    # A cgroup made again under the same name counts from 0: a lower value is taken.
    assert apply_handed_on({A: 7}, HandedOn(oom_kill={A: 1})) == {A: 1}


# ----- the file ----------------------------------------------------------------------------


def test_save_then_load_in_the_same_boot(tmp_path: Path) -> None:
    f = CounterSnapshotFile(tmp_path, BOOT)
    assert f.load() is None  # no file: baselines from disk
    assert f.save({A: 2})
    assert CounterSnapshotFile(tmp_path, BOOT).load() == {A: 2}


def test_an_empty_snapshot_is_a_snapshot(tmp_path: Path) -> None:
    # Saved with no kills anywhere: every cgroup's baseline is 0, not what is on disk.
    CounterSnapshotFile(tmp_path, BOOT).save({})
    assert CounterSnapshotFile(tmp_path, BOOT).load() == {}


def test_equal_values_are_not_written_again(tmp_path: Path) -> None:
    f = CounterSnapshotFile(tmp_path, BOOT)
    assert f.save({A: 2})
    os.utime(f.path, (1, 1))
    assert f.save({A: 2})
    assert f.path.stat().st_mtime == 1
    assert f.save({A: 3})
    assert f.path.stat().st_mtime != 1


def test_loaded_values_are_not_written_again(tmp_path: Path) -> None:
    CounterSnapshotFile(tmp_path, BOOT).save({A: 2})
    f = CounterSnapshotFile(tmp_path, BOOT)
    f.load()
    os.utime(f.path, (1, 1))
    assert f.save({A: 2})
    assert f.path.stat().st_mtime == 1


@pytest.mark.parametrize("boot", [OTHER_BOOT, None])
def test_another_boot_or_an_unknown_one_is_not_resumed(tmp_path: Path, boot: str | None) -> None:
    CounterSnapshotFile(tmp_path, BOOT).save({A: 2})
    f = CounterSnapshotFile(tmp_path, boot)
    assert f.load() is None
    assert f.path.exists()  # not set aside: it is readable, just stale
    assert f.save({B: 1})
    assert json.loads(f.path.read_text())["boot_id"] == boot


def test_a_corrupt_file_is_set_aside_with_a_clear_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / STATE_FILE
    path.write_bytes(b'{"format": "oomguard/oom-kill-counters/v1", "oom_kill": {"/a": -3')
    f = CounterSnapshotFile(tmp_path, BOOT)
    with caplog.at_level(logging.ERROR):
        assert f.load() is None
    assert not path.exists()
    (aside,) = tmp_path.glob(f"{STATE_FILE}.corrupt-*")
    assert aside.read_bytes().startswith(b'{"format"')
    (message,) = [r.getMessage() for r in caplog.records]
    assert str(path) in message and "not JSON" in message and aside.name in message
    assert "taken from disk" in message
    # The agent goes on and writes a good one in its place.
    assert f.save({A: 1})
    assert CounterSnapshotFile(tmp_path, BOOT).load() == {A: 1}


def test_a_file_of_another_format_is_set_aside(tmp_path: Path) -> None:
    write_body(tmp_path, {"format": "oomguard/event-queue/v1", "pending": []})
    assert CounterSnapshotFile(tmp_path, BOOT).load() is None
    assert len(list(tmp_path.glob(f"{STATE_FILE}.corrupt-*"))) == 1


def test_an_unreadable_file_is_never_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / STATE_FILE).mkdir()  # not a file: moved aside, or no write could work
    f = CounterSnapshotFile(tmp_path, BOOT)
    with caplog.at_level(logging.ERROR):
        assert f.load() is None
    assert "a directory" in caplog.text and "taken from disk" in caplog.text
    assert f.save({A: 1})


def test_a_failed_write_is_logged_once_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = CounterSnapshotFile(tmp_path / "no-such-dir", BOOT)
    with caplog.at_level(logging.ERROR):
        assert not f.save({A: 1})
        assert not f.save({A: 1})  # not taken for written: tried again
    assert f.save_errors == 2
    assert caplog.text.count("cannot write") == 1
    (tmp_path / "no-such-dir").mkdir()
    assert f.save({A: 1})
    assert CounterSnapshotFile(tmp_path / "no-such-dir", BOOT).load() == {A: 1}


def test_limit_hits_are_saved_and_loaded(tmp_path: Path) -> None:
    f = CounterSnapshotFile(tmp_path, BOOT)
    assert f.save({A: 2}, {A: 3})
    g = CounterSnapshotFile(tmp_path, BOOT)
    assert g.load() == {A: 2}
    assert g.loaded_limit_hits == {A: 3}
    os.utime(g.path, (1, 1))
    assert g.save({A: 2}, {A: 3})  # loaded: not written again
    assert g.path.stat().st_mtime == 1
    assert g.save({A: 2}, {A: 4})
    assert g.path.stat().st_mtime != 1


def test_no_limit_hits_loaded_from_a_file_without_them(tmp_path: Path) -> None:
    CounterSnapshotFile(tmp_path, BOOT).save({A: 2})
    f = CounterSnapshotFile(tmp_path, BOOT)
    assert f.load() == {A: 2}
    assert f.loaded_limit_hits is None
