"""The agent's side of the detector's progress marks: what is written, and in which order.

Only `Agent._take` and `Agent._save_handed_on` run here, on an agent without its threads
or API (built without `__init__`), writing real files in a temporary state directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

from oomguard.agent import Agent
from oomguard.records import HandedOn
from oomguard.state.counter_snapshot import STATE_FILE, CounterSnapshotFile
from oomguard.state.log_position import LOG_POSITION_FILE, LogPosition

BOOT = "8c2e6f0b-1d3a-4a5e-9b7c-2f4d6e8a0b1c"
A = "/kubepods/burstable/pod6f1e0c7a-2b3d-4e5f-8a9b-0c1d2e3f4a5b/" + "a1" * 32


def agent_on(state_dir: Path) -> Agent:
    state_dir.mkdir(parents=True, exist_ok=True)
    agent = Agent.__new__(Agent)
    agent.position = LogPosition(state_dir, BOOT)
    agent.counter_snapshot = CounterSnapshotFile(state_dir, BOOT)
    agent._handed_on = None
    agent._handed_on_seq = None
    agent._handed_on_unsaved = False
    agent.watcher = SimpleNamespace(kernel_log_source="kmsg")  # type: ignore[assignment]
    return agent


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
    agent = agent_on(tmp_path)
    agent._take(HandedOn(oom_kill={A: 3}, kmsg_seq=90))
    agent._save_handed_on()
    assert saved(tmp_path) == (None, None)


def test_marks_are_written_once_per_turn(tmp_path: Path) -> None:
    agent = agent_on(tmp_path)
    agent._take(HandedOn(oom_kill={A: 1}, kmsg_seq=100, complete=True))
    agent._take(HandedOn(oom_kill={A: 2}))
    agent._take(HandedOn(oom_kill={A: 3}, kmsg_seq=120))
    agent._save_handed_on()
    assert saved(tmp_path) == ({A: 3}, 120)
    agent._take(HandedOn(oom_kill={A: 0}))  # removed: it drops out
    agent._save_handed_on()
    assert saved(tmp_path) == ({}, 120)


def test_the_position_waits_for_the_counters(tmp_path: Path) -> None:
    state = tmp_path / "state"
    agent = agent_on(state)
    agent._take(HandedOn(oom_kill={A: 1}, kmsg_seq=100, complete=True))
    agent._save_handed_on()
    assert saved(state) == ({A: 1}, 100)
    # The counters cannot be written: the position must not run ahead of them.
    (state / STATE_FILE).unlink()
    (state / STATE_FILE).mkdir()
    agent._take(HandedOn(oom_kill={A: 2}, kmsg_seq=130))
    agent._save_handed_on()
    assert json.loads((state / LOG_POSITION_FILE).read_text())["seq"] == 100
    # Once they can, both follow, on the next turn even with no new mark.
    shutil.rmtree(state / STATE_FILE)
    agent._save_handed_on()
    assert saved(state) == ({A: 2}, 130)


def test_limit_hits_go_with_the_counters(tmp_path: Path) -> None:
    agent = agent_on(tmp_path)
    agent._take(HandedOn(oom_kill={A: 1}, kmsg_seq=100, complete=True, limit_hits={A: 2}))
    agent._save_handed_on()
    assert json.loads((tmp_path / STATE_FILE).read_text())["limit_hits"] == {A: 2}
    agent._take(HandedOn(oom_kill={A: 2}))  # None: unchanged
    agent._save_handed_on()
    body = json.loads((tmp_path / STATE_FILE).read_text())
    assert (body["oom_kill"], body["limit_hits"]) == ({A: 2}, {A: 2})
    agent._take(HandedOn(oom_kill={}, limit_hits={}))
    agent._save_handed_on()
    body = json.loads((tmp_path / STATE_FILE).read_text())
    assert (body["oom_kill"], body["limit_hits"]) == ({A: 2}, {})
    resumed = CounterSnapshotFile(tmp_path, BOOT)
    assert (resumed.load(), resumed.loaded_limit_hits) == ({A: 2}, {})
