"""Fuzzing the inputs a process or a pod controls: kernel log lines, /proc/PID/cgroup
texts and cgroup paths (pure; hypothesis).

Properties: the parsers never raise; a kernel record is None or a typed record whose
text fields show through the escaping rule (`safe_text.escape`) with no control
character, and whose bytes are kept exactly (a name that is not UTF-8 is still that
name); a cgroup path made below one's own container to look like another pod's
container never names that other pod.

test_kmsg_parse.py and test_cgroup_path.py hold the tables of real lines and paths
and the first properties (any bytes parse, built paths round-trip); this file mutates
those real inputs and adds the attacker's view.
"""

from __future__ import annotations

import dataclasses
import uuid

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from oomguard.cgroups.path import memory_cgroup, parse_cgroup_path, parse_proc_cgroup
from oomguard.k8s.attribution import Target, TargetKind, attribute
from oomguard.k8s.events import MESSAGE_LIMIT_BYTES, format_message
from oomguard.kernel.parse import KmsgRecord, OomReportAssembler, parse_kmsg_record
from oomguard.kernel.syslog import parse_syslog_line
from oomguard.output import human_line
from oomguard.records import CgroupKind, KernelOomKill
from oomguard.safe_text import escape
from tests.unit import test_kmsg_parse as real
from tests.unit.test_events import DictLookup, container, make_kill, pod_view

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every verbatim report of test_kmsg_parse.py, as /dev/kmsg records.
REAL_REPORTS: list[list[real.Line]] = [
    real.V1_6_18,
    real.AKS_V2_SYSTEMD,
    real.CGROUPFS_JAVA,
    real.CGROUPFS_UID_ONLY,
    real.GLOBAL_6X,
    real.GLOBAL_NO_CPUSET,
    real.LEGACY_4_8,
    real.LEGACY_3_13_MEMCG,
    real.LEGACY_3_13_GLOBAL,
    real.SACRIFICE_RHEL7_K8S,
    real.SACRIFICE_3_10_JAVA,
    real.SACRIFICE_GLOBAL_SH,
    real.OOM_GROUP_5_0,
    real.OOM_GROUP_6_1,
]
TEXT_FIELDS = ("command", "trigger_command", "oom_memcg", "task_memcg", "group_memcg", "scope")
# What a hostile name or path may hold: terminal escapes, C1, bidi, bytes not UTF-8.
NASTY_BYTES = [
    b"\x1b[2J",
    b"\x1b]0;pwn\x07",
    b"\r",
    b"\n",
    b"\t",
    b"\x7f",
    b"\xc2\x9b",  # C1 CSI, as UTF-8
    b"\x9b",  # the same byte alone: not UTF-8
    "\u202e".encode(),
    "\u2066".encode(),
    "\u200b".encode(),
    "\u2028".encode(),
    b"\xff\xfe",
    b"\\x1b",  # a literal backslash escape, typed
    b"\\",
    b",task=",
    b",pid=1",
    b") total-vm:",
]


def _records(lines: list[real.Line]) -> list[bytes]:
    return [real.kmsg_raw(line, real.FIRST_SEQ + i) for i, line in enumerate(lines)]


def _feed(raws: list[bytes]) -> list[KernelOomKill]:
    assembler = OomReportAssembler()
    kills: list[KernelOomKill] = []
    for raw in raws:
        rec = parse_kmsg_record(raw)
        assert rec is None or isinstance(rec, KmsgRecord)
        if rec is not None:
            kills += assembler.feed(rec)
    return kills + assembler.flush()


def _assert_shown_safely(kill: KernelOomKill) -> None:
    assert isinstance(kill, KernelOomKill)
    assert isinstance(kill.pid, int)
    for name in TEXT_FIELDS:
        value = getattr(kill, name)
        if value is not None:
            shown = escape(value)
            assert shown.isprintable(), (name, shown)
            shown.encode("utf-8")  # always writable


def _mutate(draw: st.DrawFn, raw: bytes) -> bytes:
    """A real record with a few bytes flipped, dropped, or nasty bytes spliced in."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "drop", "splice", "splice-escaped"]))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "drop":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "splice":
            data[at:at] = draw(st.sampled_from(NASTY_BYTES) | st.binary(max_size=6))
        else:  # the way devkmsg hands out controls and non-ASCII
            data[at:at] = real.kmsg_escape(draw(st.sampled_from(NASTY_BYTES)))
    return bytes(data)


@st.composite
def _mutated_report(draw: st.DrawFn) -> list[bytes]:
    """A real report, in order, with some of its records mutated (most still kill)."""
    raws = _records(draw(st.sampled_from(REAL_REPORTS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raws) - 1))
        raws[at] = _mutate(draw, raws[at])
    return raws


@FUZZ
@given(report=_mutated_report())
def test_mutated_real_reports_never_raise_and_show_safely(report: list[bytes]) -> None:
    for kill in _feed(report):
        _assert_shown_safely(kill)


@FUZZ
@given(
    report=st.sampled_from(REAL_REPORTS),
    prefix=st.binary(max_size=40),
    suffix=st.binary(max_size=40),
)
def test_real_lines_with_raw_bytes_around_them(
    report: list[real.Line], prefix: bytes, suffix: bytes
) -> None:
    # Whatever the record header or text holds, unescaped by the kernel or not.
    raws = [prefix + raw + suffix for raw in _records(report)]
    for kill in _feed(raws):
        _assert_shown_safely(kill)


COMM_BYTES = st.lists(
    st.sampled_from(NASTY_BYTES) | st.binary(min_size=1, max_size=3), max_size=6
).map(lambda parts: b"".join(parts).replace(b"\0", b"")[:15])
PATH_BYTES = st.lists(
    st.sampled_from([*NASTY_BYTES, b"/", b"kubepods", b"pod"]) | st.binary(min_size=1, max_size=4),
    max_size=8,
).map(lambda parts: b"/" + b"".join(parts).replace(b"\0", b""))


@FUZZ
@given(comm=COMM_BYTES, path=PATH_BYTES, pid=st.integers(1, 2**22))
def test_a_hostile_name_and_path_keep_every_byte_and_show_escaped(
    comm: bytes, path: bytes, pid: int
) -> None:
    # The kill line is anchored on fixed text to the comm's right; the summary line on
    # ",task_memcg=" to the path's right: inputs that spell those are ambiguous for any
    # reader, and test_kmsg_parse.py covers how they resolve.
    assume(b",task_memcg=" not in path and b",task=" not in path)
    assume(b"\n" not in comm.rstrip() and not comm.endswith((b" ", b"\t", b"\n")))
    (kill,) = _feed(_records(real.report_618(comm, path=path, pid=pid)))
    assert kill.pid == pid
    assert kill.command.encode("utf-8", "surrogateescape") == comm  # no byte lost
    assert (kill.task_memcg or "").encode("utf-8", "surrogateescape") == path
    _assert_shown_safely(kill)
    # And where people read it: the Event message and watch's line.
    record = make_kill(command=kill.command, cgroup=kill.task_memcg, pid=pid)
    message = format_message(record, Target.node("fuzz"))
    assert message.isprintable() and len(message.encode()) <= MESSAGE_LIMIT_BYTES
    assert human_line(record).isprintable()


@FUZZ
@given(st.binary(max_size=300))
def test_syslog_lines_never_raise(raw: bytes) -> None:
    line = parse_syslog_line(raw)
    if line is not None:
        assert escape(line.message).isprintable()


# --- /proc/PID/cgroup and cgroup paths ------------------------------------------------

VICTIM_UID = "6f1e0c7a-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
VICTIM_CID = "a1" * 32
OTHER_UID = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
OTHER_CID = "b2" * 32
OTHER_HASH = "c704ef4c297ab11032b83ce52cbfc87b"  # a static pod's config hash


def _u(uid: str) -> str:
    return uid.replace("-", "_")


# The cgroup a container process may create children in (its own), per driver.
OWN_CONTAINERS = [
    f"/kubepods/burstable/pod{VICTIM_UID}/{VICTIM_CID}",
    f"/kubepods/pod{VICTIM_UID}/{VICTIM_CID}",
    f"/kubepods/besteffort/pod{VICTIM_UID}/docker-{VICTIM_CID}",
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{_u(VICTIM_UID)}.slice/"
    f"cri-containerd-{VICTIM_CID}.scope",
    f"/kubepods.slice/kubepods-pod{_u(VICTIM_UID)}.slice/crio-{VICTIM_CID}.scope",
    f"/process_api/x/kubepods/burstable/pod{VICTIM_UID}/{VICTIM_CID}",  # nested, as lane 1
]
# Names that spell the other pod's levels, in every driver's spelling.
LOOKALIKES = [
    "kubepods",
    "kubepods.slice",
    "burstable",
    "besteffort",
    "kubepods-burstable.slice",
    "kubepods-besteffort.slice",
    f"pod{OTHER_UID}",
    f"pod{OTHER_HASH}",
    f"kubepods-burstable-pod{_u(OTHER_UID)}.slice",
    f"kubepods-pod{_u(OTHER_UID)}.slice",
    f"kubepods-besteffort-pod{_u(OTHER_UID)}.slice",
    OTHER_CID,
    f"cri-containerd-{OTHER_CID}.scope",
    f"crio-{OTHER_CID}.scope",
    f"docker-{OTHER_CID}.scope",
    f"docker-{OTHER_CID}",
    f"crio-conmon-{OTHER_CID}.scope",
    f"kubepods-burstable-pod{_u(OTHER_UID)}.slice:cri-containerd:{OTHER_CID}",
    "..",
    ".",
    "",
    "init.scope",
    "x.service",
    "\x1b[2J",
]
NAME = st.sampled_from(LOOKALIKES) | st.text(
    st.characters(exclude_characters="/\0", exclude_categories=()), max_size=12
)


@FUZZ
@given(own=st.sampled_from(OWN_CONTAINERS), below=st.lists(NAME, min_size=1, max_size=6))
def test_a_path_below_ones_own_container_never_names_another_pod(
    own: str, below: list[str]
) -> None:
    path = own + "/" + "/".join(below)
    got = parse_cgroup_path(path)
    assert got.path == path
    assert got.pod_uid in (VICTIM_UID, None)
    assert got.container_id in (VICTIM_CID, None)
    # And through the attribution, with both pods on the node.
    victim = dataclasses.replace(
        pod_view((container("app"),), name="victim"),
        uid=VICTIM_UID,
        containers=(dataclasses.replace(container("app"), container_id=VICTIM_CID),),
    )
    other = dataclasses.replace(
        pod_view((container("db"),), name="other"),
        uid=OTHER_UID,
        containers=(dataclasses.replace(container("db"), container_id=OTHER_CID),),
    )
    kill = make_kill(cgroup=path, identity=got)
    target = attribute(kill, DictLookup([victim, other]))
    assert not (target.kind is TargetKind.POD and target.name == "other")


@FUZZ
@given(
    own=st.sampled_from(OWN_CONTAINERS),
    below=st.lists(NAME, max_size=4),
    v1=st.booleans(),
    noise=st.lists(st.text(max_size=30), max_size=4),
)
def test_proc_cgroup_of_a_nested_process_never_names_another_pod(
    own: str, below: list[str], v1: bool, noise: list[str]
) -> None:
    path = "/".join([own, *below])
    memory_line = f"4:memory:{path}" if v1 else f"0::{path}"
    # Other controllers' lines may say anything; only the memory (or v2) line counts.
    decoy = f"1:name=systemd:/kubepods/burstable/pod{OTHER_UID}/{OTHER_CID}"
    text = "\n".join([*noise, decoy, memory_line]) + "\n"
    parse_proc_cgroup(text)
    found = memory_cgroup(text, v1)
    if found is None:
        return
    got = parse_cgroup_path(found)
    assert got.pod_uid in (VICTIM_UID, None)
    assert got.container_id in (VICTIM_CID, None)


@FUZZ
@given(st.binary(max_size=400), st.booleans())
def test_proc_cgroup_bytes_never_raise(raw: bytes, v1: bool) -> None:
    # Read with surrogateescape as procfs now reads: bytes not UTF-8 reach the parsers.
    text = raw.decode("utf-8", "surrogateescape")
    parse_proc_cgroup(text)
    found = memory_cgroup(text, v1)
    if found is not None:
        got = parse_cgroup_path(found)
        assert got.path == found
        if got.kind is CgroupKind.CONTAINER:
            assert got.container_id is not None and got.container_id.isascii()
        assert escape(found).isprintable()


def test_fuzz_fixtures_are_what_they_claim() -> None:
    # The anchors really are the victim's container, and the lookalikes alone, placed
    # where the kubelet would put them, really name the other pod: so the properties
    # above test a refusal, not a typo.
    for own in OWN_CONTAINERS:
        got = parse_cgroup_path(own)
        assert (got.pod_uid, got.container_id) == (VICTIM_UID, VICTIM_CID), own
    other = parse_cgroup_path(f"/kubepods/burstable/pod{OTHER_UID}/{OTHER_CID}")
    assert (other.pod_uid, other.container_id) == (OTHER_UID, OTHER_CID)
    assert uuid.UUID(OTHER_UID) and uuid.UUID(VICTIM_UID)
