"""Crash-safe writes to the agent's state directory, and reading its files back safely.

Every state file of the agent (event queue, kernel log position, oom_kill counters,
oom_score_adj state) is written and read through here, and nowhere else.

Writing: the new content goes to a temporary file in the same directory, created with a
random name and `O_CREAT|O_EXCL|O_NOFOLLOW` (so whatever already lies at that name, a
symlink planted by someone who can write to the directory included, makes the write fail
instead of being followed), then fsync, rename over the old file, fsync of the
directory. A crash at any point leaves the old file or the new one, never half of either.
The directory is opened once per write and every step is relative to that descriptor,
so the steps cannot be pointed at two different directories.

Reading: the file is opened with `O_NOFOLLOW|O_NONBLOCK` relative to the directory (a
symlink is refused, a FIFO cannot block the start), must be a regular file, and is read
only up to a cap (`MAX_STATE_FILE_BYTES`, or the owner's own): a huge file is never read
whole into memory. Parsing turns every error into `StateFileError` (a ValueError),
`RecursionError` from JSON nested too deeply included.

`StateFile` is what the files share: no file is a first start; a file that cannot be
used (not a regular file, over the cap, not JSON, nested too deeply, not this version's
format) is never fatal: it is moved aside as `<name>.corrupt-<UTC time>` for a human to
look at, with one log line saying what starting without it means. Another boot's is not
resumed. Each state file that only holds for one boot carries the boot id
(`read_boot_id`).

`StateWrites` is how writes fail: when the state directory is full (ENOSPC) or
read-only, the agent goes on from memory (Events are still delivered); the failure is
said once, not once per write, counted (the `oomguard_state_write_errors_total` metric),
and the first write that works again is logged. The agent shares one `StateWrites`
between all its state files, so a full disk is one log line, not four.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from oomguard.say_once import SaidOnce

log = logging.getLogger(__name__)

# The default of `oomguard run --state-dir` (and of `oomguard top --state-dir`, which
# reads what the agent publishes there).
DEFAULT_STATE_DIR = Path("/var/lib/oomguard")
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"

# The most a one-value state file (kernel log position, oom_kill counters, oom_score_adj
# state) may hold. Their largest, the oom_score_adj state, holds about 300 bytes per
# container: 4 MiB is over 10,000 containers, forty times a node's default pod limit
# (110) with three containers each, and reading and parsing it costs ~15 MiB, well
# inside the chart's 256 MiB memory limit. The event queue has its own, larger cap
# (EventQueueSettings.max_state_bytes).
MAX_STATE_FILE_BYTES = 4 * 1024 * 1024

_READ_CHUNK_BYTES = 1024 * 1024
_TEMP_INFIX = ".tmp-"
_ASIDE_INFIX = ".corrupt-"


class StateFileError(ValueError):
    """A state file that cannot be used as one; the message says why."""


def read_boot_id(path: str = BOOT_ID_PATH) -> str | None:
    """This boot's id, or None off Linux / when unreadable."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


@contextlib.contextmanager
def _directory(path: Path) -> Iterator[int]:
    """The directory, opened once: every step of one read or write is relative to it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _temp_name(name: str) -> str:
    """A temporary name nobody can guess in advance (64 random bits)."""
    return f".{name}{_TEMP_INFIX}{secrets.token_hex(8)}"


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data`, crash-safe, following no symlink. Raises OSError.

    A symlink (or anything else) already at the temporary name makes the write fail
    with FileExistsError; a symlink at `path` itself is replaced, not followed.
    """
    with _directory(path.parent) as dir_fd:
        tmp = _temp_name(path.name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        os.fsync(dir_fd)


def read_capped(path: Path, max_bytes: int = MAX_STATE_FILE_BYTES) -> bytes:
    """The bytes of the regular file `path`, if it holds at most `max_bytes`.

    Raises FileNotFoundError when there is none, StateFileError when what lies there is
    not something to read as a state file (a symlink, a directory, a FIFO or device,
    more than `max_bytes`), OSError when it cannot be read.
    """
    with _directory(path.parent) as dir_fd:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path.name, flags, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateFileError("a symbolic link, not a file") from None
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise StateFileError(f"not a regular file ({_file_type(info.st_mode)})")
            if info.st_size > max_bytes:
                raise StateFileError(_too_large(info.st_size, max_bytes))
            chunks: list[bytes] = []
            size = 0
            while size <= max_bytes:  # the file may grow after fstat
                chunk = os.read(fd, min(_READ_CHUNK_BYTES, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if size > max_bytes:
                raise StateFileError(_too_large(size, max_bytes))
            return b"".join(chunks)
        finally:
            os.close(fd)


def _too_large(size: int, max_bytes: int) -> str:
    return f"{size} bytes, larger than the {max_bytes} a state file may have"


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return f"mode {mode:o}"


def load_json(raw: bytes, error: type[ValueError] = StateFileError) -> Any:
    """`raw` parsed as JSON, or `error` saying why not (never RecursionError)."""
    try:
        return json.loads(raw)
    except RecursionError:
        # The C scanner stops at Python's recursion limit ('[' * 100000): no state file
        # of ours nests more than a few levels.
        raise error("JSON nested too deeply to be a state file") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise error(f"not JSON ({exc})") from None


def set_aside(path: Path) -> Path:
    """Move an unusable state file out of the way as `<name>.corrupt-<UTC time>`.

    Kept for a human to look at; the caller logs why and starts without it. A symlink
    is moved, never followed.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}{_ASIDE_INFIX}{stamp}")
    with _directory(path.parent) as dir_fd:
        os.replace(path.name, aside.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return aside


def remove_leftover_temps(path: Path) -> int:
    """Remove the temporary files a crash mid-write left for `path`; how many.

    Only names `atomic_write` makes for this file (`.<name>.tmp-<hex>`) are touched, and
    unlink removes a symlink itself, never its target. Call it only where no write to
    `path` can be in progress (the owner's start).
    """
    prefix = f".{path.name}{_TEMP_INFIX}"
    removed = 0
    with contextlib.suppress(OSError), _directory(path.parent) as dir_fd:
        for entry in os.listdir(dir_fd):
            suffix = entry[len(prefix) :]
            if entry.startswith(prefix) and suffix and all(c in "0123456789abcdef" for c in suffix):
                with contextlib.suppress(OSError):
                    os.unlink(entry, dir_fd=dir_fd)
                    removed += 1
    return removed


def parse_versioned(
    raw: bytes, state_format: str, what: str, error: type[ValueError] = StateFileError
) -> tuple[dict[str, Any], str | None]:
    """The JSON object of a state file in `state_format`, and the boot id it carries.

    Raises `error`, saying what is wrong, for anything else: not JSON (or nested too
    deeply), not an object (a `what`), another format (another file's, or another
    version's), a boot id that is not a string. The caller reads the rest of the object.
    """
    body = load_json(raw, error)
    if not isinstance(body, dict):
        raise error(f"not {what} (a JSON {type(body).__name__})")
    if body.get("format") != state_format:
        raise error(f"format {body.get('format')!r}, this version reads only {state_format!r}")
    boot_id = body.get("boot_id")
    if boot_id is not None and not isinstance(boot_id, str):
        raise error("boot_id is not a string")
    return body, boot_id


class StateWrites:
    """Whether the agent's state files can be written, shared by all of them.

    Writes fail together (the directory full or read-only): the first failure is logged
    once, with what it means; further failures are counted, not logged (a new kind of
    error is logged once too); the first write that works after all failed ones is
    logged. Thread-safe: the detector's and the sender's writes meet here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.errors = 0  # failed writes since start (the metric)
        self.set_aside = 0  # unusable files moved aside since start (the metric)
        self._failing: set[Path] = set()  # files whose last write failed
        self._said: SaidOnce[str] = SaidOnce(64)  # errors logged during this outage
        self._errors_at_outage = 0

    @property
    def failing(self) -> bool:
        with self._lock:
            return bool(self._failing)

    def failed(self, path: Path, error: Exception, unsaved: str, owner: logging.Logger) -> None:
        why = _describe(error)
        with self._lock:
            self.errors += 1
            if not self._failing:
                self._errors_at_outage = self.errors - 1
            self._failing.add(path)
            new = self._said.first(why)
        if new:
            owner.error(
                "cannot write %s (%s); %s. The agent goes on from memory (Events are still "
                "delivered) and tries again with each change; said once, the first write "
                "that works again is logged",
                path,
                why,
                unsaved,
            )

    def worked(self, path: Path, owner: logging.Logger) -> None:
        with self._lock:
            if path not in self._failing:
                return
            self._failing.discard(path)
            if self._failing:
                return
            failed = self.errors - self._errors_at_outage
            self._said.forget()
        owner.warning(
            "state files are written again (%s works; %d writes failed meanwhile)", path, failed
        )

    def count_set_aside(self) -> None:
        with self._lock:
            self.set_aside += 1


def _describe(error: Exception) -> str:
    if isinstance(error, OSError) and error.errno is not None:
        name = errno.errorcode.get(error.errno, str(error.errno))
        return f"{name}: {error.strerror}"
    return str(error)


class BootState(Protocol):
    """What a state file holds: the boot it was written in, and its bytes on disk."""

    @property
    def boot_id(self) -> str | None: ...

    def to_bytes(self) -> bytes: ...


S = TypeVar("S", bound=BootState)


class StateFile(Generic[S]):
    """One state file of the agent holding one value `S`; the owner's log says what it means.

    `parse` turns the file's bytes into the value and raises ValueError (with a message
    saying what is wrong) for anything this version does not read; any other exception
    it raises is taken the same way. The log lines come from the owner's `log` and end
    with its words: `without`, what starting without the file means; `stale`, what a
    file of another boot means; `unsaved`, what a failed write risks. `writes` is shared
    by the agent's state files (one is made when none is given); `max_bytes` caps what
    is read and written.
    """

    def __init__(
        self,
        path: Path,
        boot_id: str | None,
        parse: Callable[[bytes], S],
        *,
        log: logging.Logger,
        without: str,
        unsaved: str,
        stale: str | None = None,
        writes: StateWrites | None = None,
        max_bytes: int = MAX_STATE_FILE_BYTES,
    ) -> None:
        self.path = path
        self.boot_id = boot_id
        self.saved: S | None = None  # what the file holds (as far as we know)
        self.save_errors = 0
        self.set_aside_count = 0
        self.writes = StateWrites() if writes is None else writes
        self.max_bytes = max_bytes
        self._parse = parse
        self._log = log
        self._without = without
        self._unsaved = unsaved
        self._stale = without if stale is None else stale

    def read(self) -> S | None:
        """The file's value, of whatever boot; None when there is none to use. Never raises.

        Missing: None, silently (a first start). Unreadable: logged and left in place.
        Anything else that cannot be used: moved aside as `<name>.corrupt-<time>`, and
        logged. Temporary files an earlier run left behind are removed.
        """
        remove_leftover_temps(self.path)
        try:
            raw = read_capped(self.path, self.max_bytes)
        except FileNotFoundError:
            return None
        except StateFileError as exc:
            self._set_aside(exc)
            return None
        except OSError as exc:
            self._log.error("cannot read %s (%s); %s", self.path, exc, self._without)
            return None
        try:
            return self._parse(raw)
        except RecursionError:
            self._set_aside(StateFileError("JSON nested too deeply to be a state file"))
        except ValueError as exc:
            self._set_aside(exc)
        except Exception as exc:  # a parser's oversight must not stop the agent's start
            self._set_aside(StateFileError(f"{type(exc).__name__}: {exc}"))
        return None

    def read_this_boot(self) -> S | None:
        """`read`, and only a value written in this boot (a known one) is taken as saved."""
        value = self.read()
        if value is None:
            return None
        if self.boot_id is None or value.boot_id != self.boot_id:
            self._log.info(
                "%s is from another boot (or the boot is unknown): %s", self.path, self._stale
            )
            return None
        self.saved = value
        return value

    def write(self, value: S) -> bool:
        """Write `value` unless the file holds it already; True when the file holds it now.

        A failed write is said through `writes` (once per outage) and not taken for
        saved, so the next call tries again.
        """
        if value == self.saved:
            return True
        if not self.write_bytes(value.to_bytes()):
            return False
        self.saved = value
        return True

    def write_bytes(self, data: bytes) -> bool:
        """Replace the file's content with `data`; False (said, counted) when that failed.

        More than `max_bytes` is refused: it would be set aside when read back, so the
        last file that can be read stays.
        """
        try:
            if len(data) > self.max_bytes:
                raise StateFileError(_too_large(len(data), self.max_bytes))
            atomic_write(self.path, data)
        except (OSError, StateFileError) as exc:
            self.save_errors += 1
            self.writes.failed(self.path, exc, self._unsaved, self._log)
            return False
        self.writes.worked(self.path, self._log)
        return True

    def _set_aside(self, why: ValueError) -> None:
        self.set_aside_count += 1
        self.writes.count_set_aside()
        try:
            aside = set_aside(self.path)
        except OSError as exc:
            self._log.error(
                "%s is unreadable (%s) and could not be moved aside (%s); %s, and the file "
                "will be overwritten",
                self.path,
                why,
                exc,
                self._without,
            )
        else:
            self._log.error(
                "%s is unreadable (%s); moved it aside to %s; %s",
                self.path,
                why,
                aside.name,
                self._without,
            )
