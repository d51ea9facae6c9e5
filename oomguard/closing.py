"""`with` support for the classes that hold a kernel handle and have a `close()`.

Descriptors of /proc directories, /dev/kmsg and cgroup trees must be released on every
path, including a failure half-way; one base class gives each of them the same
`with obj:` behaviour instead of four copies of the same two methods.
"""

from __future__ import annotations

from typing import Self


class Closing:
    """`with obj:` closes `obj` on the way out, however the block ends."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
