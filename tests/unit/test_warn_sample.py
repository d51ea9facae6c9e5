"""What a cgroup's memory files say, for the warnings: limit, working set, reclaim, pressure.

The parsers read files the kernel writes, but also whatever a broken or hostile mount
shows: odd contents give None (or are skipped), never an exception, so one strange
cgroup cannot end the look at the others.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from oomguard.cgroups.hierarchy import CgroupVersion
from oomguard.warn.sample import (
    CgroupFiles,
    inactive_file,
    limit_hits_v2,
    oom_kills,
    parse_flat_keyed,
    parse_limit,
    parse_single_int,
    pressure_some_avg10,
    working_set,
)

MIB = 1024 * 1024
V1, V2 = CgroupVersion.V1, CgroupVersion.V2

# Verbatim from this project's hosts: a v1 child cgroup (kernel 6.18) with a 256 MiB
# limit whose reader streams a file through it, and a v2 container cgroup (kernel 6.1).
V1_STAT = """cache 262144000
rss 5451776
rss_huge 0
shmem 0
mapped_file 0
dirty 0
writeback 0
workingset_refault_anon 0
workingset_refault_file 1310720
swap 0
swapcached 0
pgpgin 262144
pgpgout 197120
pgfault 3000
pgmajfault 0
inactive_anon 5451776
active_anon 0
inactive_file 262144000
active_file 0
unevictable 0
hierarchical_memory_limit 268435456
hierarchical_memsw_limit 268435456
total_cache 262144000
total_rss 5451776
total_rss_huge 0
total_shmem 0
total_mapped_file 0
total_dirty 0
total_writeback 0
total_workingset_refault_anon 0
total_workingset_refault_file 1310720
total_swap 0
total_swapcached 0
total_pgpgin 262144
total_pgpgout 197120
total_pgfault 3000
total_pgmajfault 0
total_inactive_anon 5451776
total_active_anon 0
total_inactive_file 262144000
total_active_file 0
total_unevictable 0
"""
V2_STAT = """anon 201326592
file 41943040
kernel 1048576
kernel_stack 16384
pagetables 512000
sec_pagetables 0
percpu 0
sock 0
vmalloc 0
shmem 0
file_mapped 0
file_dirty 0
file_writeback 0
swapcached 0
anon_thp 0
file_thp 0
shmem_thp 0
inactive_anon 201326592
active_anon 0
inactive_file 31457280
active_file 10485760
unevictable 0
slab_reclaimable 0
slab_unreclaimable 0
slab 0
workingset_refault_anon 0
workingset_refault_file 0
pgfault 49215
pgmajfault 0
"""
V2_EVENTS = "low 0\nhigh 3\nmax 38\noom 1\noom_kill 1\noom_group_kill 0\n"
V2_PRESSURE = (
    "some avg10=12.34 avg60=3.10 avg300=0.70 total=1523456\n"
    "full avg10=10.02 avg60=2.88 avg300=0.64 total=1400321\n"
)
HUGE = "9" * 5000  # more digits than int() takes (4300): must not raise


def short(value: object) -> str:
    """Test ids that stay readable when a value is HUGE."""
    return repr(value)[:24]


# ----- limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "text", "expected"),
    [
        (V1, "268435456\n", 256 * MIB),
        (V2, "268435456\n", 256 * MIB),
        (V2, "max\n", None),
        (V1, "9223372036854771712\n", None),  # v1's "no limit" (PAGE_COUNTER_MAX pages)
        (V1, str(1 << 62), None),
        (V1, str((1 << 62) - 4096), (1 << 62) - 4096),  # big, but a real limit
        (V2, "", None),
        (V2, "-1\n", None),
        (V2, "12 34\n", None),
        (V2, "0x100\n", None),
        (V2, "\u0661\u0662\n", None),  # Arabic-Indic digits: isdigit(), not the kernel's
        (V1, HUGE, None),
        (V2, "1" * 21, None),
    ],
    ids=short,
)
def test_limit(version: CgroupVersion, text: str, expected: int | None) -> None:
    assert parse_limit(version, text) == expected


def test_single_int_takes_the_largest_counter_and_no_more() -> None:
    assert parse_single_int(str(2**64 - 1)) == 2**64 - 1
    assert parse_single_int(" 42 \n") == 42
    for odd in ("", " ", "\n", "4 2", "+4", "4.0", "\x00", HUGE, "1e9"):
        assert parse_single_int(odd) is None, odd


# ----- working set ----------------------------------------------------------------------


def test_v1_takes_the_hierarchical_inactive_file() -> None:
    stat = V1_STAT.replace("\ninactive_file 262144000", "\ninactive_file 4096")
    assert inactive_file(V1, stat) == 262144000


def test_v2_takes_its_own_inactive_file() -> None:
    assert inactive_file(V2, V2_STAT) == 30 * MIB


def test_page_cache_streamed_through_the_limit_is_not_working_set() -> None:
    """The reader's cgroup: 255.2 MiB used, 250 MiB of it inactive file."""
    usage = 262144000 + 5451776
    assert working_set(usage, inactive_file(V1, V1_STAT)) == 5451776


def test_anon_and_active_file_are_working_set() -> None:
    usage = 201326592 + 41943040
    assert working_set(usage, inactive_file(V2, V2_STAT)) == 192 * MIB + 10 * MIB


@pytest.mark.parametrize(
    ("usage", "inactive", "expected"),
    [
        (100, None, 100),  # memory.stat unreadable: usage, as cAdvisor without it
        (100, 0, 100),
        (100, 100, 0),
        (100, 150, 0),  # the two reads are not atomic: never below 0
        (0, 0, 0),
    ],
    ids=short,
)
def test_working_set_bounds(usage: int, inactive: int | None, expected: int) -> None:
    assert working_set(usage, inactive) == expected


@pytest.mark.parametrize(
    "stat",
    [
        "",
        "inactive_file\n",
        "total_inactive_file -5\n",
        "total_inactive_file 5 6\n",
        "total_inactive_file five\n",
        f"total_inactive_file {HUGE}\n",
        "\x00\x00\x00",
        "\ufffd" * 100,
        "inactive_file 4096\n",  # v1 wants the total_ form
    ],
    ids=short,
)
def test_odd_memory_stat_has_no_inactive_file(stat: str) -> None:
    assert inactive_file(V1, stat) is None


def test_odd_lines_do_not_hide_the_good_ones() -> None:
    stat = f"garbage\nanon {HUGE}\n\x00\ninactive_file 4096\nfile -1\nfile 1 2\n"
    assert parse_flat_keyed(stat) == {"inactive_file": 4096}


# ----- reclaim forced by the limit ---------------------------------------------------


def test_oom_kills_of_either_version() -> None:
    assert oom_kills(V2_EVENTS) == 1
    assert oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n") == 3


@pytest.mark.parametrize(
    "text", ["", "oom_kill\n", "oom_kill x\n", "oom_kill -1\n", "\x00"], ids=short
)
def test_oom_kills_unknown_without_a_readable_count(text: str) -> None:
    assert oom_kills(text) is None


def test_limit_hits_are_max_plus_high() -> None:
    assert limit_hits_v2(V2_EVENTS) == 41


def test_limit_hits_without_high() -> None:
    assert limit_hits_v2("max 7\noom 0\n") == 7


@pytest.mark.parametrize(
    "events",
    ["", "high 3\n", "max\n", "max x\n", f"max {HUGE}\n", "max -1\n", "\x00"],
    ids=short,
)
def test_limit_hits_unknown_without_a_readable_max(events: str) -> None:
    assert limit_hits_v2(events) is None


# ----- pressure -----------------------------------------------------------------------


def test_pressure_is_some_avg10() -> None:
    assert pressure_some_avg10(V2_PRESSURE) == pytest.approx(12.34)


def test_pressure_of_an_idle_cgroup() -> None:
    idle = (
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    assert pressure_some_avg10(idle) == 0.0


def test_pressure_reads_some_not_full_whatever_the_order() -> None:
    text = "full avg10=90.00 avg60=0 avg300=0 total=1\nsome avg60=1 avg10=5.50 total=2\n"
    assert pressure_some_avg10(text) == pytest.approx(5.5)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "some\n",
        "some avg10\n",
        "some avg10=\n",
        "some avg10=abc avg60=1.00\n",
        "some avg10=nan\n",
        "some avg10=inf\n",
        "some avg10=-1.00\n",
        "some avg10=100.01\n",
        f"some avg10={HUGE}\n",
        "full avg10=50.00\n",
        "something avg10=50.00\n",
        "\x00some avg10=50.00\n",
    ],
    ids=short,
)
def test_odd_pressure_is_unknown(text: str) -> None:
    assert pressure_some_avg10(text) is None


# ----- the files, opened once -----------------------------------------------------------


def _cgroup(tmp_path: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return str(tmp_path)


def test_v1_full_look(tmp_path: Path) -> None:
    usage = 262144000 + 5451776
    directory = _cgroup(
        tmp_path,
        {
            "memory.usage_in_bytes": f"{usage}\n",
            "memory.limit_in_bytes": f"{256 * MIB}\n",
            "memory.stat": V1_STAT,
            "memory.failcnt": "12\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        },
    )
    files = CgroupFiles(V1, directory)
    try:
        limit = files.limit()
        assert limit == 256 * MIB
        sample = files.read_sample(5.0, limit)
    finally:
        files.close()
    assert sample.usage_bytes == usage
    assert sample.working_set_bytes == 5451776
    assert sample.limit_hits == 12
    assert sample.pressure_some_avg10 is None  # v1 has no PSI per cgroup
    assert sample.limit_bytes == 256 * MIB and sample.at == 5.0
    assert sample.oom_kills == 2


def test_v2_full_look(tmp_path: Path) -> None:
    directory = _cgroup(
        tmp_path,
        {
            "memory.current": f"{200 * MIB}\n",
            "memory.max": f"{256 * MIB}\n",
            "memory.stat": V2_STAT,
            "memory.events": V2_EVENTS,
            "memory.pressure": V2_PRESSURE,
        },
    )
    files = CgroupFiles(V2, directory)
    try:
        sample = files.read_sample(1.0, files.limit())
    finally:
        files.close()
    assert sample.working_set_bytes == 170 * MIB
    assert sample.limit_hits == 41
    assert sample.pressure_some_avg10 == pytest.approx(12.34)
    assert sample.oom_kills == 1  # from memory.events, read once with the hits


def test_the_files_are_read_again_on_each_look(tmp_path: Path) -> None:
    directory = _cgroup(tmp_path, {"memory.current": "100\n", "memory.max": "max\n"})
    files = CgroupFiles(V2, directory)
    try:
        assert files.read_usage(0.0, None).usage_bytes == 100
        (tmp_path / "memory.current").write_text("4096\n")
        assert files.read_usage(1.0, None).usage_bytes == 4096
        assert files.limit() is None
    finally:
        files.close()


def test_only_usage_is_required(tmp_path: Path) -> None:
    """A cgroup with nothing else readable: usage stands for the working set."""
    directory = _cgroup(tmp_path, {"memory.current": f"{MIB}\n"})
    files = CgroupFiles(V2, directory)
    try:
        assert files.limit() is None
        sample = files.read_sample(0.0, None)
    finally:
        files.close()
    assert sample.working_set_bytes == MIB
    assert sample.limit_hits is None and sample.pressure_some_avg10 is None


def test_no_usage_file_is_not_a_memory_cgroup(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        CgroupFiles(V1, str(tmp_path))


def test_hostile_contents_give_unknowns_not_errors(tmp_path: Path) -> None:
    directory = _cgroup(
        tmp_path,
        {
            "memory.current": f"{8 * MIB}\n",
            "memory.max": HUGE,
            "memory.stat": f"inactive_file {HUGE}\n" + "x" * 9000,
            "memory.events": f"max {HUGE}\nhigh 1\n",
            "memory.pressure": "some avg10=" + HUGE + "\n",
        },
    )
    files = CgroupFiles(V2, directory)
    try:
        assert files.limit() is None
        sample = files.read_sample(0.0, None)
    finally:
        files.close()
    assert sample.usage_bytes == 8 * MIB
    assert sample.working_set_bytes == 8 * MIB
    assert sample.limit_hits is None
    assert sample.pressure_some_avg10 is None


@pytest.mark.parametrize("usage", ["", "max\n", HUGE, "\x00\x01\x02", "\xff\xfe"], ids=short)
def test_unreadable_usage_is_an_os_error(tmp_path: Path, usage: str) -> None:
    """The caller drops a cgroup on OSError (removed mid-look); garbage usage is treated
    the same way, not as a crash of the watcher's turn."""
    directory = _cgroup(tmp_path, {"memory.usage_in_bytes": usage})
    files = CgroupFiles(V1, directory)
    try:
        with pytest.raises(OSError, match="unreadable usage"):
            files.read_usage(0.0, None)
    finally:
        files.close()
