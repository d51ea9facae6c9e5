"""The detector's progress in the state directory: what is written, in which order, and
what a restart resumes from.

`Checkpoints` takes the detector's marks as the agent forwards them (`Agent._take`) and
writes them once per turn (`Agent.step`), in real files of a temporary state directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from oomguard.records import HandedOn
from oomguard.state.checkpoints import Checkpoints, Resume
from oomguard.state.counter_snapshot import STATE_FILE, CounterSnapshotFile
from oomguard.state.log_position import LOG_POSITION_FILE, LogPosition

BOOT = "8c2e6f0b-1d3a-4a5e-9b7c-2f4d6e8a0b1c"
A = "/kubepods/burstable/pod6f1e0c7a-2b3d-4e5f-8a9b-0c1d2e3f4a5b/" + "a1" * 32


def checkpoints_in(state_dir: Path) -> Checkpoints:
    state_dir.mkdir(parents=True, exist_ok=True)
    return Checkpoints(state_dir, BOOT)


def mark(
    oom_kill: dict[str, int],
    position: int | None = None,
    *,
    source: str = "kmsg",
    complete: bool = False,
    limit_hits: dict[str, int] | None = None,
) -> HandedOn:
    """A mark as the detector makes it; `position` in reader `source`'s numbers."""
    return HandedOn(
        oom_kill=oom_kill,
        log_position=position,
        log_source=None if position is None else source,
        complete=complete,
        limit_hits=limit_hits,
    )


def saved(state_dir: Path) -> tuple[object, object]:
    def read(name: str) -> object:
        path = state_dir / name
        return json.loads(path.read_text()) if path.exists() else None

    counters, position = read(STATE_FILE), read(LOG_POSITION_FILE)
    return (
        None if counters is None else counters["oom_kill"],  # type: ignore[index]
        None if position is None else position["seq"],  # type: ignore[index]
    )


def test_nothing_is_written_before_the_first_complete_mark(tmp_path: Path) -> None:
    cp = checkpoints_in(tmp_path)
    cp.take(mark({A: 3}, 90))
    cp.save()
    assert saved(tmp_path) == (None, None)


def test_marks_are_written_once_per_turn(tmp_path: Path) -> None:
    cp = checkpoints_in(tmp_path)
    cp.take(mark({A: 1}, 100, complete=True))
    cp.take(mark({A: 2}))
    cp.take(mark({A: 3}, 120))
    cp.save()
    assert saved(tmp_path) == ({A: 3}, 120)
    cp.take(mark({A: 0}))  # removed: it drops out
    cp.save()
    assert saved(tmp_path) == ({}, 120)


def test_the_position_waits_for_the_counters(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cp = checkpoints_in(state)
    cp.take(mark({A: 1}, 100, complete=True))
    cp.save()
    assert saved(state) == ({A: 1}, 100)
    # The counters cannot be written: the position must not run ahead of them.
    (state / STATE_FILE).unlink()
    (state / STATE_FILE).mkdir()
    cp.take(mark({A: 2}, 130))
    cp.save()
    assert json.loads((state / LOG_POSITION_FILE).read_text())["seq"] == 100
    # Once they can, both follow, on the next turn even with no new mark.
    shutil.rmtree(state / STATE_FILE)
    cp.save()
    assert saved(state) == ({A: 2}, 130)


def test_limit_hits_go_with_the_counters(tmp_path: Path) -> None:
    cp = checkpoints_in(tmp_path)
    cp.take(mark({A: 1}, 100, complete=True, limit_hits={A: 2}))
    cp.save()
    assert json.loads((tmp_path / STATE_FILE).read_text())["limit_hits"] == {A: 2}
    cp.take(mark({A: 2}))  # None: unchanged
    cp.save()
    body = json.loads((tmp_path / STATE_FILE).read_text())
    assert (body["oom_kill"], body["limit_hits"]) == ({A: 2}, {A: 2})
    cp.take(mark({}, limit_hits={}))
    cp.save()
    body = json.loads((tmp_path / STATE_FILE).read_text())
    assert (body["oom_kill"], body["limit_hits"]) == ({A: 2}, {})
    resumed = CounterSnapshotFile(tmp_path, BOOT)
    assert (resumed.load(), resumed.loaded_limit_hits) == ({A: 2}, {})


def test_the_position_is_saved_as_its_readers(tmp_path: Path) -> None:
    cp = checkpoints_in(tmp_path)
    cp.take(mark({}, 11441347894000, source="syslog", complete=True))
    cp.save()
    body = json.loads((tmp_path / LOG_POSITION_FILE).read_text())
    assert (body["seq"], body["source"], body["boot_id"]) == (11441347894000, "syslog", BOOT)


def test_a_first_start_resumes_from_nothing(tmp_path: Path) -> None:
    assert checkpoints_in(tmp_path).load() == Resume()


def test_a_restart_resumes_where_the_last_run_saved(tmp_path: Path) -> None:
    first = checkpoints_in(tmp_path)
    first.take(mark({A: 4}, 200, complete=True, limit_hits={A: 5}))
    first.save()
    resume = Checkpoints(tmp_path, BOOT).load()
    assert resume == Resume({"kmsg": 200}, {A: 4}, {A: 5})


def test_a_restart_resumes_only_its_readers_position(tmp_path: Path) -> None:
    LogPosition(tmp_path, BOOT).save(77, source="syslog")
    assert Checkpoints(tmp_path, BOOT).load().log_after == {"syslog": 77}


def test_a_new_boot_reads_the_whole_log_back_and_takes_counters_from_disk(
    tmp_path: Path,
) -> None:
    first = checkpoints_in(tmp_path)
    first.take(mark({A: 4}, 200, complete=True))
    first.save()
    resume = Checkpoints(tmp_path, "another-boot").load()
    assert resume == Resume({"kmsg": -1, "syslog": -1}, None, None)


def test_a_resumed_position_is_not_written_again_until_it_moves(tmp_path: Path) -> None:
    first = checkpoints_in(tmp_path)
    first.take(mark({}, 200, complete=True))
    first.save()
    again = Checkpoints(tmp_path, BOOT)
    again.load()
    marked = {"seq": 200, "boot_id": BOOT, "source": "kmsg", "x": 1}
    (tmp_path / LOG_POSITION_FILE).write_text(json.dumps(marked))
    again.take(mark({}, 200, complete=True))
    again.save()
    assert "x" in json.loads((tmp_path / LOG_POSITION_FILE).read_text())  # not rewritten
    again.take(mark({}, 201))
    again.save()
    assert saved(tmp_path) == ({}, 201)
