"""Crash-safe writes to the agent's state directory, and reading its files back.

Write to a temp file, fsync, rename over the old file, fsync the directory: a crash
at any point leaves the old file or the new one, never half of either. Every state
file of the agent (event queue, kmsg position, oom_kill counters, oom_score_adj state)
is written through here. Each state file that only holds for one boot carries the boot
id (`read_boot_id`).

`StateFile` is what the one-value files (kmsg position, oom_kill counters,
oom_score_adj state) share: no file is a first start; a file that cannot be read, or
does not parse as this version's format, is never fatal (one log line says what
starting without it means, and one that does not parse is set aside for a human to
look at); another boot's is not resumed; a failed write is logged, not raised, and
retried by the next save.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

# The default of `oomguard run --state-dir` (and of `oomguard top --state-dir`, which
# reads what the agent publishes there).
DEFAULT_STATE_DIR = Path("/var/lib/oomguard")
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def read_boot_id(path: str = BOOT_ID_PATH) -> str | None:
    """This boot's id, or None off Linux / when unreadable."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def set_aside(path: Path) -> Path:
    """Move an unreadable state file out of the way as `<name>.corrupt-<UTC time>`.

    Kept for a human to look at; the caller logs why and starts without it.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, aside)
    return aside


def parse_versioned(
    raw: bytes, state_format: str, what: str, error: type[ValueError] = ValueError
) -> tuple[dict[str, Any], str | None]:
    """The JSON object of a state file in `state_format`, and the boot id it carries.

    Raises `error`, saying what is wrong, for anything else: not JSON, not an object (a
    `what`), another format (another file's, or another version's), a boot id that is
    not a string. The caller reads the rest of the object.
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise error(f"not {what} (a JSON {type(body).__name__})")
    if body.get("format") != state_format:
        raise error(f"format {body.get('format')!r}, this version reads only {state_format!r}")
    boot_id = body.get("boot_id")
    if boot_id is not None and not isinstance(boot_id, str):
        raise error("boot_id is not a string")
    return body, boot_id


class BootState(Protocol):
    """What a state file holds: the boot it was written in, and its bytes on disk."""

    @property
    def boot_id(self) -> str | None: ...

    def to_bytes(self) -> bytes: ...


S = TypeVar("S", bound=BootState)


class StateFile(Generic[S]):
    """One state file of the agent holding one value `S`; the owner's log says what it means.

    `parse` turns the file's bytes into the value and raises ValueError (with a message
    saying what is wrong) for anything this version does not read. The log lines come
    from the owner's `log` and end with its words: `without`, what starting without the
    file means; `stale`, what a file of another boot means; `unsaved`, what a failed
    write risks.
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
    ) -> None:
        self.path = path
        self.boot_id = boot_id
        self.saved: S | None = None  # what the file holds (as far as we know)
        self.save_errors = 0
        self._parse = parse
        self._log = log
        self._without = without
        self._unsaved = unsaved
        self._stale = without if stale is None else stale

    def read(self) -> S | None:
        """The file's value, of whatever boot; None when there is none to use. Never raises.

        Missing: None, silently (a first start). Unreadable: logged and left in place.
        Not this version's format: moved aside as `<name>.corrupt-<time>`, and logged.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._log.error("cannot read %s (%s); %s", self.path, exc, self._without)
            return None
        try:
            return self._parse(raw)
        except ValueError as exc:
            self._set_aside(exc)
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

        A failed write is logged (the first, then every 1000th) and not taken for saved,
        so the next call tries again.
        """
        if value == self.saved:
            return True
        try:
            atomic_write(self.path, value.to_bytes())
        except OSError as exc:
            self.save_errors += 1
            if self.save_errors == 1 or self.save_errors % 1000 == 0:
                self._log.error(
                    "cannot write %s (%s, %d times so far); %s",
                    self.path,
                    exc,
                    self.save_errors,
                    self._unsaved,
                )
            return False
        self.saved = value
        return True

    def _set_aside(self, why: ValueError) -> None:
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
