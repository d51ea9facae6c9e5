"""The reconciler's state file: round trip, write-on-change, and every way it can be wrong."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from oomguard.steer.score_state import (
    STATE_FILE,
    STATE_FORMAT,
    AppliedKillMode,
    AppliedValue,
    ScoreState,
    ScoreStateFile,
    StateFormatError,
    WantedValue,
    read_wanted,
)

BOOT = "8c2e6f0b-1d3a-4a5e-9b7c-2f4d6e8a0b1c"
OTHER_BOOT = "0d9f1e2c-3b4a-4c5d-8e6f-7a8b9c0d1e2f"
CID = "a1" * 32
UID = "6f1e0c7a-2b3d-4e5f-8a9b-0c1d2e3f4a5b"


def applied(container: str = "app", value: int = 1000) -> AppliedValue:
    return AppliedValue(pod_uid=UID, container=container, value=value, kubelet_value=900)


def wanted(container_id: str = CID, value: int = 1000) -> WantedValue:
    return WantedValue(
        container_id=container_id,
        namespace="shop",
        pod="web-0",
        pod_uid=UID,
        container="app",
        value=value,
        outcome="applied",
    )


def kill_mode(container: str = "db", oom_group: int = 0, before: int = 1) -> AppliedKillMode:
    return AppliedKillMode(pod_uid=UID, container=container, oom_group=oom_group, before=before)


def state(*, boot_id: str | None = BOOT, dry_run: bool = False) -> ScoreState:
    a, b = applied("app"), applied("sidecar", 950)
    return ScoreState(
        boot_id=boot_id,
        dry_run=dry_run,
        applied={(UID, "app"): a, (UID, "sidecar"): b},
        wanted={CID: wanted()},
        kill_modes={(UID, "db"): kill_mode()},
    )


def write_body(directory: Path, body: object) -> Path:
    path = directory / STATE_FILE
    path.write_text(json.dumps(body))
    return path


def good_body() -> dict[str, object]:
    body: dict[str, object] = json.loads(state().to_bytes())
    return body


def aside_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".corrupt-" in p.name)


# ---------------------------------------------------------------------------- round trip


def test_round_trip_through_bytes() -> None:
    original = state(dry_run=True)
    assert ScoreState.from_bytes(original.to_bytes()) == original


def test_the_file_says_what_it_is() -> None:
    body = good_body()
    assert body["format"] == STATE_FORMAT == "oomguard/oom-score-adj/v1"
    assert body["boot_id"] == BOOT
    assert body["applied"] == [
        {"pod_uid": UID, "container": "app", "value": 1000, "kubelet_value": 900},
        {"pod_uid": UID, "container": "sidecar", "value": 950, "kubelet_value": 900},
    ]
    assert body["wanted"] == [
        {
            "container_id": CID,
            "namespace": "shop",
            "pod": "web-0",
            "pod_uid": UID,
            "container": "app",
            "value": 1000,
            "outcome": "applied",
        }
    ]
    assert body["kill_modes"] == [
        {"pod_uid": UID, "container": "db", "oom_group": 0, "oom_group_before": 1}
    ]


def test_a_file_from_before_kill_modes_loads_with_none() -> None:
    """Agents before kill modes wrote the same format without `kill_modes`."""
    body = good_body()
    del body["kill_modes"]
    loaded = ScoreState.from_bytes(json.dumps(body).encode())
    assert loaded.kill_modes == {}
    assert (loaded.applied, loaded.wanted) == (state().applied, state().wanted)


def test_order_of_entries_does_not_make_a_state_differ() -> None:
    a, b = applied("app"), applied("sidecar", 950)
    one = ScoreState(BOOT, False, {(UID, "app"): a, (UID, "sidecar"): b})
    two = ScoreState(BOOT, False, {(UID, "sidecar"): b, (UID, "app"): a})
    assert one == two and one.to_bytes() == two.to_bytes()


def test_save_then_load_in_a_new_instance(tmp_path: Path) -> None:
    assert ScoreStateFile(tmp_path, BOOT).save(state())
    loaded = ScoreStateFile(tmp_path, BOOT).load()
    assert loaded == state()
    assert (tmp_path / STATE_FILE).stat().st_mode & 0o777 == 0o600


def test_written_only_when_it_changes(tmp_path: Path) -> None:
    file = ScoreStateFile(tmp_path, BOOT)
    assert file.save(state())
    inode = (tmp_path / STATE_FILE).stat().st_ino  # a write replaces the file
    assert not file.save(state())
    assert (tmp_path / STATE_FILE).stat().st_ino == inode
    changed = ScoreState(BOOT, False, {(UID, "app"): applied("app", 999)}, {CID: wanted()})
    assert file.save(changed)
    assert (tmp_path / STATE_FILE).stat().st_ino != inode


def test_a_loaded_state_is_not_written_again(tmp_path: Path) -> None:
    ScoreStateFile(tmp_path, BOOT).save(state())
    inode = (tmp_path / STATE_FILE).stat().st_ino
    restarted = ScoreStateFile(tmp_path, BOOT)
    assert restarted.load() == state()
    assert not restarted.save(state())
    assert (tmp_path / STATE_FILE).stat().st_ino == inode


def test_missing_file_is_a_first_start(tmp_path: Path) -> None:
    assert ScoreStateFile(tmp_path, BOOT).load() is None


# ---------------------------------------------------------------------------- wrong files


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "a JSON list"),
        (b"", "not JSON"),
    ],
)
def test_corrupt_file_is_set_aside_with_a_clear_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, why: str
) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="oomguard.steer.score_state"):
        assert ScoreStateFile(tmp_path, BOOT).load() is None
    assert not (tmp_path / STATE_FILE).exists()
    [aside] = aside_files(tmp_path)
    assert aside.startswith(f"{STATE_FILE}.corrupt-")
    assert (tmp_path / aside).read_bytes() == content  # kept for a human to look at
    [record] = caplog.records
    assert why in record.getMessage() and "moved it aside" in record.getMessage()


def test_foreign_version_is_set_aside_naming_the_format(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = good_body()
    body["format"] = "oomguard/oom-score-adj/v2"
    write_body(tmp_path, body)
    with caplog.at_level(logging.ERROR, logger="oomguard.steer.score_state"):
        assert ScoreStateFile(tmp_path, BOOT).load() is None
    assert len(aside_files(tmp_path)) == 1
    assert "oomguard/oom-score-adj/v2" in caplog.text and STATE_FORMAT in caplog.text


@pytest.mark.parametrize(
    ("section", "entry"),
    [
        ("applied", {"pod_uid": UID, "container": "app", "value": 5000, "kubelet_value": 900}),
        ("applied", {"pod_uid": UID, "container": "app", "value": True, "kubelet_value": 900}),
        ("applied", {"pod_uid": UID, "container": "app", "value": "1000", "kubelet_value": 900}),
        ("applied", {"pod_uid": UID, "value": 1000, "kubelet_value": 900}),
        ("applied", {"pod_uid": "", "container": "app", "value": 1000, "kubelet_value": 900}),
        ("wanted", {"container_id": CID, "value": 1000}),
        ("wanted", "not an object"),
        ("kill_modes", {"pod_uid": UID, "container": "db", "oom_group": 2, "oom_group_before": 1}),
        (
            "kill_modes",
            {"pod_uid": UID, "container": "db", "oom_group": True, "oom_group_before": 1},
        ),
        ("kill_modes", {"pod_uid": UID, "container": "db", "oom_group": 0}),
        ("kill_modes", {"pod_uid": UID, "oom_group": 0, "oom_group_before": 1}),
        ("kill_modes", "not an object"),
    ],
)
def test_bad_entries_are_refused_whole(section: str, entry: object) -> None:
    body = good_body()
    body[section] = [entry]
    with pytest.raises(StateFormatError):
        ScoreState.from_bytes(json.dumps(body).encode())


def test_another_boot_is_ignored_not_set_aside(tmp_path: Path) -> None:
    ScoreStateFile(tmp_path, OTHER_BOOT).save(state(boot_id=OTHER_BOOT))
    file = ScoreStateFile(tmp_path, BOOT)
    assert file.load() is None
    assert aside_files(tmp_path) == [] and (tmp_path / STATE_FILE).exists()
    assert file.save(state())  # the first pass replaces it
    assert ScoreStateFile(tmp_path, BOOT).load() == state()


def test_unknown_boot_resumes_nothing(tmp_path: Path) -> None:
    ScoreStateFile(tmp_path, None).save(state(boot_id=None))
    assert ScoreStateFile(tmp_path, None).load() is None


def test_a_failed_write_is_logged_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = ScoreStateFile(tmp_path / "absent", BOOT)
    with caplog.at_level(logging.ERROR, logger="oomguard.steer.score_state"):
        assert not file.save(state())
        assert not file.save(state())
    assert file.save_errors == 2
    assert len(caplog.records) == 1 and "cannot write" in caplog.text
    (tmp_path / "absent").mkdir()
    assert file.save(state())  # not taken as saved after a failure


def test_unreadable_and_unmovable_is_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / STATE_FILE).write_text("{")

    def refuse(*_: object, **__: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with caplog.at_level(logging.ERROR, logger="oomguard.steer.score_state"):
        assert ScoreStateFile(tmp_path, BOOT).load() is None
    assert "could not be moved aside" in caplog.text


# ---------------------------------------------------------------------------- top's reader


def test_read_wanted_by_container_id(tmp_path: Path) -> None:
    ScoreStateFile(tmp_path, BOOT).save(state(dry_run=True))
    published = read_wanted(tmp_path, BOOT)
    assert published.note is None and published.dry_run
    assert dict(published.wanted) == {CID: wanted()}


def test_read_wanted_says_why_it_has_nothing(tmp_path: Path) -> None:
    missing = read_wanted(tmp_path, BOOT)
    assert missing.wanted == {} and missing.note is not None and STATE_FILE in missing.note

    ScoreStateFile(tmp_path, OTHER_BOOT).save(state(boot_id=OTHER_BOOT))
    stale = read_wanted(tmp_path, BOOT)
    assert stale.wanted == {} and stale.note is not None and "reboot" in stale.note

    (tmp_path / STATE_FILE).write_text("{")
    corrupt = read_wanted(tmp_path, BOOT)
    assert corrupt.wanted == {} and corrupt.note is not None and "unreadable" in corrupt.note
    assert aside_files(tmp_path) == []  # top never moves the agent's files

    unknown_boot = read_wanted(tmp_path, None)
    assert unknown_boot.wanted == {} and unknown_boot.note is not None
