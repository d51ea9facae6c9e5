"""Say a thing once: a bounded memory of what was already logged or sent.

A node agent meets the same failure on every pass (a policy file that stays broken, a
write the kernel keeps refusing, an API that stays down); said each time, it buries the
one line that matters. Each part keeps one `SaidOnce` per kind of message and asks it
before speaking. Bounded, because the keys can come from outside (a pod's annotation
quoted in a message): when full it forgets everything, and the worst case is a message
said once more.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class SaidOnce(Generic[K]):
    """Keys already said; `first(key)` is true once per key until forgotten."""

    def __init__(self, limit: int = 1024) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._said: set[K] = set()

    def first(self, key: K) -> bool:
        """True if `key` was not said yet (and remember it as said now)."""
        if key in self._said:
            return False
        if len(self._said) >= self.limit:
            self._said.clear()
        self._said.add(key)
        return True

    def forget(self, keep: Callable[[K], bool] | None = None) -> None:
        """Make keys news again (all of them, or those `keep` does not hold on to):
        after a recovery, the next failure is worth saying."""
        if keep is None:
            self._said.clear()
        else:
            self._said = {key for key in self._said if keep(key)}

    def __contains__(self, key: object) -> bool:
        return key in self._said

    def __len__(self) -> int:
        return len(self._said)
