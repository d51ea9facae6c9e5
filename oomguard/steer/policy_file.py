"""The admin policy file, reloaded when it changes, never lost to a bad edit.

The policy comes from a ConfigMap mounted as a directory. The kubelet updates such a
mount atomically: it writes a new timestamped directory, then renames a `..data`
symlink over the old one, and the visible file (`policy.yaml -> ..data/policy.yaml`)
changes all at once. So a change shows up as a different resolved file (inode,
device, size, mtime), not as a write to the path the agent opened; stat-ing the path
through the symlinks on each check catches both that and a plain in-place edit.

`PolicySource.current()` is cheap enough to call on every reconcile pass: it stats at
most once every `poll_interval_s` and re-reads only when the stat changed.

- a missing file means the default policy (`load_policy("{}")`): nothing trusted,
  only raising works;
- an invalid file keeps the last good policy in force; `last_error` says why,
  `errors` counts rejected versions, and each distinct error is logged once, loudly
  (again if it comes back after the file was fixed); the `policy_valid` gauge reads 0
  until a version is taken into force;
- an invalid file at start, with no good version seen since, keeps the last good
  version the agent saved (`saved_path`, in its state directory) before it restarted:
  a pod crash-looping the agent, or a restart during a bad edit, must not drop the
  protection the admin granted. With nothing saved, the defaults: the most conservative
  choice (nothing is trusted, so no pod is made safer than the kubelet's value on the
  strength of a file the agent cannot read); the agent keeps running and reporting
  kills. A missing file removes the saved copy: the admin took the policy away;
- a file that becomes valid again clears `last_error`.

Nothing a file can contain makes `current()` raise: reading is bounded in
`policy.load_policy` (size here, depth, aliases and scalar length there), and any
other failure of the reader is taken as one more reason to reject that version.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from oomguard.metrics import Metrics
from oomguard.say_once import SaidOnce
from oomguard.state.files import atomic_write, read_capped
from oomguard.steer.admin import AdminPolicy, PolicyError, load_policy

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL_S = 2.0
# A policy is a few lines; a huge file is a mistake (or an attack), not a policy.
MAX_POLICY_BYTES = 1024 * 1024

# What identifies one version of the file: resolved path, device, inode, size, mtime.
_Stamp = tuple[str, int, int, int, int] | None


def _stamp(path: Path) -> _Stamp:
    """The identity of the file `path` resolves to now; None when there is none."""
    try:
        resolved = os.path.realpath(path)
        st = os.stat(resolved)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (resolved, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class PolicySource:
    """The admin policy at `path`, as of the last check; thread-safe."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        saved_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        # Where the last version taken into force is kept across restarts (None: not).
        self.saved_path = None if saved_path is None else Path(saved_path)
        self.loaded_from_saved = False
        self.poll_interval_s = poll_interval_s
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._policy: AdminPolicy = load_policy("{}")
        self._stamp: _Stamp = None
        self._checked_at: float | None = None
        self._seen = False  # the file was checked at least once
        self._said: SaidOnce[str] = SaidOnce(64)
        self.last_error: str | None = None
        self.errors = 0  # versions of the file rejected since start
        self.reloads = 0  # versions of the file (or its absence) taken into force
        self.loaded_from_file = False  # False: the defaults are in force (no file)

    def current(self) -> AdminPolicy:
        """The policy in force; re-checks the file at most every `poll_interval_s`."""
        with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self.poll_interval_s:
                self._checked_at = now
                self._check()
            return self._policy

    def reload(self) -> AdminPolicy:
        """Check the file now, whatever the poll interval (e.g. on an inotify event)."""
        with self._lock:
            self._checked_at = self._clock()
            self._check()
            return self._policy

    # -- internals (callers hold the lock) ---------------------------------------------

    def _check(self) -> None:
        stamp = _stamp(self.path)
        first = not self._seen
        self._seen = True
        if stamp == self._stamp and not first:
            return
        if stamp is None:
            if self._stamp is not None or first:
                if self.loaded_from_file:
                    log.warning(
                        "policy file %s is gone: the default policy is in force "
                        "(nothing trusted; pods may only ask to be killed sooner)",
                        self.path,
                    )
                self._policy = load_policy("{}")
                self.loaded_from_file = self.loaded_from_saved = False
                self._forget_saved()
                self._accepted()
            self._stamp = None
            return
        try:
            text = self._read(stamp[0])
            policy = load_policy(text)
        except Exception as exc:  # whatever a file does, it must never stop the agent
            self._stamp = stamp  # do not re-read an unchanged bad file on every poll
            if first:
                self._load_saved()
            self._reject(exc)
            return
        self._stamp = stamp
        self._policy = policy
        self.loaded_from_file = True
        self.loaded_from_saved = False
        self._save(text)
        if self.last_error is not None:
            log.warning("policy file %s is valid again; it is now in force", self.path)
        else:
            log.info("policy file %s loaded", self.path)
        self._accepted()

    def _accepted(self) -> None:
        self.last_error = None
        self._said.forget()  # a later breakage is news again
        self.reloads += 1
        if self._metrics is not None:
            self._metrics.policy_valid.set(1)

    @property
    def kept(self) -> str:
        """What is in force while the file is rejected, in words."""
        if self.loaded_from_saved:
            return "the last good policy, saved before the agent restarted,"
        return "the previous policy" if self.loaded_from_file else "the default policy"

    def _save(self, text: str) -> None:
        """Keep the version now in force for a restart (best effort: it is a copy)."""
        if self.saved_path is None:
            return
        try:
            atomic_write(self.saved_path, text.encode("utf-8"))
        except OSError as exc:
            log.warning("cannot save the policy in force to %s: %s", self.saved_path, exc)

    def _forget_saved(self) -> None:
        if self.saved_path is not None:
            try:
                self.saved_path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove %s: %s", self.saved_path, exc)

    def _load_saved(self) -> None:
        """At start, with the file rejected: the version saved before the restart."""
        if self.saved_path is None:
            return
        try:
            policy = load_policy(read_capped(self.saved_path, MAX_POLICY_BYTES).decode("utf-8"))
        except FileNotFoundError:
            return
        except Exception as exc:  # a saved copy is no more trusted than the file
            log.warning("the saved policy %s cannot be used either: %s", self.saved_path, exc)
            return
        self._policy = policy
        self.loaded_from_saved = True

    def _read(self, resolved: str) -> str:
        with open(resolved, "rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
        if len(data) > MAX_POLICY_BYTES:
            raise PolicyError(f"the policy file is larger than {MAX_POLICY_BYTES} bytes.")
        return data.decode("utf-8")

    def _reject(self, exc: BaseException) -> None:
        if isinstance(exc, PolicyError):
            why = str(exc)
        elif isinstance(exc, UnicodeDecodeError):
            why = f"the policy file is not UTF-8 text (byte {exc.start + 1})."
        elif isinstance(exc, OSError):
            why = f"the policy file cannot be read: {exc}."
        else:  # a failure load_policy should have turned into a PolicyError
            why = f"the policy file cannot be loaded: {type(exc).__name__}: {str(exc)[:200]!r}."
        self.last_error = why
        self.errors += 1
        if self._metrics is not None:
            self._metrics.policy_reload_errors.inc()
            self._metrics.policy_valid.set(0)
        if self._said.first(why):
            log.error(
                "INVALID oomguard policy in %s: %s %s stays in force.",
                self.path,
                why,
                self.kept[0].upper() + self.kept[1:],
            )
