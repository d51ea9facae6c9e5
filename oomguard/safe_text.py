"""One rule for showing untrusted text to a person: escape what a terminal or a reader
would act on instead of show.

Process names (`/proc/PID/comm`, 15 bytes any process can set for itself) and cgroup
paths (any name a delegated cgroup owner picks) reach Kubernetes Events, `watch` and
`top` lines and log lines. Printed raw, `\\x1b[2J` clears the screen of whoever runs
`oomguard top`, `\\r` rewrites the start of a line, and U+202E turns the rest of it
around. So everything that leaves the agent for a human goes through `escape`:

- the backslash itself becomes `\\\\`, so a name that spells `\\x1b` literally reads
  `\\\\x1b` and can never pass for an escaped byte;
- tab, newline and carriage return become `\\t`, `\\n`, `\\r` (as Python's repr);
- other C0 controls and DEL become `\\xNN`;
- bytes that are not UTF-8 become `\\xNN` with the byte's value (`\\x80`..`\\xff`; the
  readers decode with `surrogateescape`, see `decode`, so no byte is lost);
- every other code point Python does not call printable (C1 controls, the Cf format
  characters such as bidi overrides U+202E, U+2066..U+2069 and zero-width ones, line and
  paragraph separators, spaces other than " ", unassigned and private-use code points)
  becomes `\\uNNNN` (or `\\UNNNNNNNN`). C1 controls are shown as `\\u0080`..`\\u009f`, not
  `\\x80`, so a C1 character and an undecodable byte never look alike.

Printable non-ASCII ("café", "数据库") is left alone: it is a real name and stays
readable. The escaped form is unambiguous (`unescape`-able by reading it left to right)
and printable by construction, so a cut made with `truncate_utf8` on escape boundaries
keeps both properties.

Machine outputs (`watch --json`, `top --json`) are not escaped: JSON escapes controls
itself and scripts need the raw value. `json_text` only turns undecodable bytes into
U+FFFD there, as the readers did before they kept the bytes.
"""

from __future__ import annotations

import logging
import re

__all__ = [
    "EscapingFormatter",
    "decode",
    "escape",
    "escape_bytes",
    "is_safe",
    "json_text",
    "truncate_utf8",
]

_SHORT = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
# Lone surrogates U+DC80..U+DCFF are what `surrogateescape` makes of bytes 0x80..0xFF.
_ESCAPED_BYTE_LO = 0xDC80
_ESCAPED_BYTE_HI = 0xDCFF
# One unit of escaped text: an escape sequence, or one character.
_TOKEN_RE = re.compile(
    r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[\\tnr])|.",
    re.DOTALL,
)
ELLIPSIS = "…"


def decode(data: bytes) -> str:
    """Bytes from the kernel or /proc as text, keeping every byte that is not UTF-8.

    `errors="replace"` would turn them into U+FFFD and the person would never know which
    bytes a name held; `surrogateescape` keeps them, so `escape` can show them as `\\xNN`
    and `text.encode("utf-8", "surrogateescape")` gives the bytes back (a path on disk).
    """
    return data.decode("utf-8", errors="surrogateescape")


def _escape_char(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    if code < 0x80:
        return f"\\x{code:02x}"
    if _ESCAPED_BYTE_LO <= code <= _ESCAPED_BYTE_HI:
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def is_safe(text: str) -> bool:
    """True when `text` holds nothing a terminal or a reader would act on (`escape`'s
    output always is; it may still hold backslashes, so it may not *be* escaped text)."""
    return text.isprintable()


def escape(text: str) -> str:
    """`text` as a person may safely see it: see the module's docstring for the rule."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case: a plain name, nothing to do
    return "".join(ch if ch != "\\" and ch.isprintable() else _escape_char(ch) for ch in text)


def escape_bytes(data: bytes) -> str:
    """Raw bytes (a comm read from /proc, a path from the kernel) through `escape`."""
    return escape(decode(data))


def json_text(text: str) -> str:
    """`text` for a JSON output: bytes kept by `decode` become U+FFFD, as they did before.

    A lone surrogate cannot be written as UTF-8 (stdout would raise), and JSON readers
    in other languages turn a `\\udcff` escape into U+FFFD anyway.
    """
    if text.isascii():
        return text
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def truncate_utf8(text: str, limit: int, ellipsis: str = ELLIPSIS) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, with `ellipsis` to say so.

    Never splits a character, nor an escape sequence made by `escape` (half of `\\x1b`
    would read as a different text).
    """
    if len(text.encode("utf-8", errors="surrogatepass")) <= limit:
        return text
    budget = limit - len(ellipsis.encode("utf-8"))
    used = 0
    end = 0
    for token in _TOKEN_RE.finditer(text):
        size = len(token[0].encode("utf-8", errors="surrogatepass"))
        if used + size > budget:
            break
        used += size
        end = token.end()
    return text[:end] + ellipsis


class EscapingFormatter(logging.Formatter):
    """A text log formatter whose lines carry no control characters from what they quote.

    A log message often holds a process name or a cgroup path; a terminal or `kubectl
    logs` would act on its escapes, and a newline in it would forge a log line. The
    message is escaped whole (one record, one line); a traceback keeps its line breaks
    and has each line escaped.
    """

    def format(self, record: logging.LogRecord) -> str:
        shown = logging.makeLogRecord(record.__dict__)
        shown.msg = escape(record.getMessage())
        shown.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        shown.exc_info = None
        shown.exc_text = _escape_lines(record.exc_text) if record.exc_text else None
        shown.stack_info = _escape_lines(record.stack_info) if record.stack_info else None
        return super().format(shown)


def _escape_lines(text: str) -> str:
    return "\n".join(escape(line) for line in text.split("\n"))
