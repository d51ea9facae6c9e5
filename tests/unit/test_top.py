"""`oomguard top`'s rows merged with the agent's published wants (pure: no /proc)."""

from __future__ import annotations

import dataclasses

import pytest

from oomguard.cgroups.path import parse_cgroup_path
from oomguard.steer.score_state import WantedValue
from oomguard.top import ProcessScore, format_table, with_kill_modes, with_wanted

UID = "6f1e0c7a-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
CID = "a1" * 32
OTHER_CID = "b2" * 32
POD_CGROUP = (
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice"
)
# The fields `top --json` had before the policy columns: a public contract, unchanged.
FIELDS_BEFORE = [
    "pid",
    "command",
    "oom_score",
    "oom_score_adj",
    "rss_bytes",
    "cgroup",
    "container_id",
    "pod_uid",
    "qos",
    "runtime",
    "unit",
]
FIELDS_ADDED = [
    "wanted_oom_score_adj",
    "applied",
    "pod_namespace",
    "pod_name",
    "container_name",
    "kill_mode",
]


def row(pid: int, cgroup: str, adj: int = 900) -> ProcessScore:
    return ProcessScore(
        pid=pid,
        command="app",
        oom_score=adj + 10,
        oom_score_adj=adj,
        rss_bytes=10 * 1024 * 1024,
        cgroup=cgroup,
        identity=parse_cgroup_path(cgroup),
    )


def wanted(value: int = 1000, container_id: str = CID) -> WantedValue:
    return WantedValue(
        container_id=container_id,
        namespace="shop",
        pod="web-0",
        pod_uid=UID,
        container="app",
        value=value,
        outcome="applied",
    )


CONTAINER = f"{POD_CGROUP}/cri-containerd-{CID}.scope"


def test_processes_of_a_governed_container_get_its_wanted_value() -> None:
    rows = [
        row(1, CONTAINER, adj=1000),
        row(2, f"{CONTAINER}/worker/deeper", adj=1000),  # nested below the container
        row(3, CONTAINER, adj=900),  # not (yet) brought in line
    ]
    merged = with_wanted(rows, {CID: wanted()})
    assert [r.wanted_oom_score_adj for r in merged] == [1000, 1000, 1000]
    assert [r.applied for r in merged] == [True, True, False]


def test_other_processes_are_not_governed() -> None:
    rows = [
        row(1, f"{POD_CGROUP}/cri-containerd-{OTHER_CID}.scope"),  # another container
        row(2, POD_CGROUP),  # the pod cgroup itself
        row(3, "/system.slice/sshd.service"),
        row(4, "/"),
    ]
    merged = with_wanted(rows, {CID: wanted()})
    assert merged == rows
    assert all(r.wanted_oom_score_adj is None and r.applied is None for r in merged)


def test_nothing_published_changes_nothing() -> None:
    rows = [row(1, CONTAINER)]
    assert with_wanted(rows, {}) == rows


def test_cgroupfs_driver_and_a_restore_entry() -> None:
    cgroup = f"/kubepods/burstable/pod{UID}/{CID}"
    restore = WantedValue(CID, "shop", "web-0", UID, "app", 900, "restore")
    [merged] = with_wanted([row(1, cgroup, adj=900)], {CID: restore})
    assert merged.wanted_oom_score_adj == 900 and merged.applied is True


def test_json_keeps_every_old_field_and_adds_the_policy_ones() -> None:
    plain = row(1, CONTAINER, adj=950).to_json_dict()
    assert list(plain) == FIELDS_BEFORE + FIELDS_ADDED
    assert plain["container_id"] == CID and plain["pod_uid"] == UID
    assert {k: plain[k] for k in FIELDS_ADDED} == dict.fromkeys(FIELDS_ADDED)

    [governed] = with_wanted([row(1, CONTAINER, adj=950)], {CID: wanted()})
    body = governed.to_json_dict()
    assert {k: body[k] for k in FIELDS_BEFORE} == {k: plain[k] for k in FIELDS_BEFORE}
    assert body["wanted_oom_score_adj"] == 1000 and body["applied"] is False
    assert body["pod_namespace"] == "shop" and body["pod_name"] == "web-0"
    assert body["container_name"] == "app"


def test_table_has_want_and_ok_columns_and_pod_names() -> None:
    rows = with_wanted(
        [row(1, CONTAINER, adj=1000), row(2, CONTAINER, adj=900), row(3, "/system.slice/x")],
        {CID: wanted()},
    )
    lines = format_table(rows).splitlines()
    assert lines[0].split() == [
        "PID",
        "OOM_SCORE",
        "ADJ",
        "WANT",
        "OK",
        "KILL",
        "RSS",
        "QOS",
        "POD",
        "CONTAINER",
        "COMMAND",
    ]
    assert lines[1].split()[:6] == ["1", "1010", "1000", "1000", "yes", "-"]
    assert "shop/web-0" in lines[1] and " app " in lines[1]
    assert lines[2].split()[:6] == ["2", "910", "900", "1000", "no", "-"]
    assert lines[3].split()[:6] == ["3", "910", "900", "-", "-", "-"]


HOSTILE_COMM = "\x1b[2J\x1b]0;pwn\x07\rX"  # 15 bytes: fits /proc/self/comm


def test_table_escapes_process_and_pod_names() -> None:
    # The pod names come from the agent's published file, which top does not vouch for.
    odd = dataclasses.replace(wanted(), pod="web\x1b]0;x\x07\u202e", container="a\rb")
    rows = with_wanted([dataclasses.replace(row(5, CONTAINER), command=HOSTILE_COMM)], {CID: odd})
    table = format_table(rows)
    assert all(line.isprintable() for line in table.splitlines())
    line = table.splitlines()[1]
    assert line.endswith(" \\x1b[2J\\x1b]0;pwn\\x07\\rX")
    assert " shop/web\\x1b]0;x\\x07\\u202e " in line and " a\\rb " in line


def test_json_keeps_the_raw_name() -> None:
    # JSON escapes control characters itself; scripts get the name as the process set it.
    body = dataclasses.replace(row(5, CONTAINER), command=HOSTILE_COMM).to_json_dict()
    assert body["command"] == HOSTILE_COMM


# ---------------------------------------------------------------------------- kill mode

SECOND = f"{POD_CGROUP}/cri-containerd-{OTHER_CID}.scope"


def test_each_container_process_shows_its_containers_kill_mode() -> None:
    asked: list[str] = []

    def read(cgroup: str) -> int | None:
        asked.append(cgroup)
        return {CONTAINER: 0, SECOND: 1}.get(cgroup)

    rows = [
        row(1, CONTAINER),
        row(2, f"{CONTAINER}/worker"),  # nested: its container's file, not its own
        row(3, SECOND),
        row(4, POD_CGROUP),  # the pod, no container
        row(5, "/system.slice/sshd.service"),
    ]
    modes = [r.kill_mode for r in with_kill_modes(rows, read)]
    assert modes == ["process", "process", "container", None, None]
    assert asked == [CONTAINER, SECOND]  # once per container


@pytest.mark.parametrize("failure", [None, OSError(13, "Permission denied"), ValueError("garbage")])
def test_a_kill_mode_that_cannot_be_read_is_unknown(failure: object) -> None:
    def read(cgroup: str) -> int | None:
        if isinstance(failure, Exception):
            raise failure
        assert failure is None or isinstance(failure, int)
        return failure

    [merged] = with_kill_modes([row(1, CONTAINER)], read)
    assert merged.kill_mode is None


def test_the_kill_mode_in_the_table_and_json() -> None:
    [process, container] = with_kill_modes(
        [row(1, CONTAINER), row(2, SECOND)], {CONTAINER: 0, SECOND: 1}.get
    )
    lines = format_table([process, container]).splitlines()
    assert lines[1].split()[5] == "process" and lines[2].split()[5] == "container"
    assert process.to_json_dict()["kill_mode"] == "process"
    assert container.to_json_dict()["kill_mode"] == "container"
    assert row(3, CONTAINER).to_json_dict()["kill_mode"] is None
