"""The one escaping rule for text shown to a person (pure)."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oomguard.safe_text import (
    EscapingFormatter,
    decode,
    escape,
    escape_bytes,
    json_text,
    truncate_utf8,
)

# The name from the report: clears the screen, sets the window title, rewinds the line.
HOSTILE_COMM = "\x1b[2J\x1b]0;pwn\x07\rX"

# Anything, including lone surrogates (what surrogateescape makes of bytes not UTF-8).
ANY_TEXT = st.text(st.characters(exclude_categories=()))
BYTES_AS_TEXT = st.binary().map(decode)


def unescape(shown: str) -> str:
    """Read escaped text back, strictly: a stray backslash or a cut escape is an error.

    Lives here, not in the package: nothing in the agent needs it, but it proves the
    escaped form names exactly one text.
    """
    out: list[str] = []
    i = 0
    short = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
    while i < len(shown):
        ch = shown[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        kind = shown[i + 1 : i + 2]
        if kind in short:
            out.append(short[kind])
            i += 2
            continue
        width = {"x": 2, "u": 4, "U": 8}.get(kind)
        digits = shown[i + 2 : i + 2 + width] if width else ""
        if width is None or not re.fullmatch(f"[0-9a-f]{{{width}}}", digits):
            raise ValueError(f"not an escape at {i}: {shown[i : i + 10]!r}")
        code = int(digits, 16)
        # \x80..\xff are bytes that were not UTF-8: back to their surrogateescape form.
        out.append(chr(0xDC00 + code) if kind == "x" and code >= 0x80 else chr(code))
        i += 2 + width
    return "".join(out)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param(HOSTILE_COMM, "\\x1b[2J\\x1b]0;pwn\\x07\\rX", id="report-name"),
        pytest.param("a\tb\nc\rd", "a\\tb\\nc\\rd", id="tab-newline-cr"),
        pytest.param("\x00\x01\x1f\x7f", "\\x00\\x01\\x1f\\x7f", id="c0-and-del"),
        pytest.param("\x85\x9b[2J", "\\u0085\\u009b[2J", id="c1-nel-and-csi"),
        pytest.param("abc\u202egnp.exe", "abc\\u202egnp.exe", id="bidi-override"),
        pytest.param(
            "\u2066x\u2067y\u2068z\u2069", "\\u2066x\\u2067y\\u2068z\\u2069", id="isolates"
        ),
        pytest.param("a\u200bb\u200dc\ufeff", "a\\u200bb\\u200dc\\ufeff", id="zero-width"),
        pytest.param("l1\u2028l2\u2029", "l1\\u2028l2\\u2029", id="line-paragraph-sep"),
        pytest.param("no\u00a0break", "no\\u00a0break", id="nbsp-looks-like-space"),
        pytest.param("\U000e0041", "\\U000e0041", id="tag-character"),
        pytest.param("\\x1b", "\\\\x1b", id="literal-backslash-x1b"),
        pytest.param("a\\b", "a\\\\b", id="backslash"),
        pytest.param(decode(b"ok\xff\xfe"), "ok\\xff\\xfe", id="invalid-utf8"),
        pytest.param(decode(b"\xc2\x9b"), "\\u009b", id="c1-as-valid-utf8"),
        pytest.param(decode(b"\x9b"), "\\x9b", id="c1-byte-not-utf8"),
        pytest.param("café 数据库 🐍 x", "café 数据库 🐍 x", id="printable-unicode-kept"),
        pytest.param('say "hi" (1)', 'say "hi" (1)', id="quotes-kept"),
        pytest.param("", "", id="empty"),
    ],
)
def test_escape(text: str, shown: str) -> None:
    assert escape(text) == shown
    assert unescape(shown) == text


def test_escape_bytes_shows_every_byte_that_is_not_utf8() -> None:
    assert escape_bytes(b"\x1b]0;x\x07\xe2\x80") == "\\x1b]0;x\\x07\\xe2\\x80"
    assert decode(b"\xff").encode("utf-8", "surrogateescape") == b"\xff"  # nothing lost


@given(ANY_TEXT)
def test_escaped_text_is_printable_and_reads_back(text: str) -> None:
    shown = escape(text)
    assert shown.isprintable()
    shown.encode("utf-8")  # no lone surrogate left: always writable
    assert unescape(shown) == text


@given(BYTES_AS_TEXT)
def test_any_bytes_escape_to_printable_text(text: str) -> None:
    shown = escape(text)
    assert shown.isprintable()
    assert unescape(shown).encode("utf-8", "surrogateescape") == text.encode(
        "utf-8", "surrogateescape"
    )


@given(ANY_TEXT | BYTES_AS_TEXT, st.integers(min_value=4, max_value=200))
def test_cut_never_splits_a_character_or_an_escape(text: str, limit: int) -> None:
    shown = escape(text)
    cut = truncate_utf8(shown, limit)
    assert len(cut.encode("utf-8")) <= limit
    if cut == shown:
        return
    assert cut.endswith("…")
    kept = cut[: -len("…")]
    assert shown.startswith(kept)
    assert text.startswith(unescape(kept))  # raises on half an escape
    assert len(cut.encode("utf-8")) > limit - 3 - 10  # not far before the limit


def test_cut_backs_off_to_the_start_of_an_escape() -> None:
    shown = escape("a" + "\x1b" * 10)  # a\x1b\x1b...
    assert truncate_utf8(shown, 9) == "a\\x1b…"  # 4 + 3 bytes; the next \x1b would not fit
    assert truncate_utf8("é" * 513, 1024).encode() == ("é" * 510).encode() + "…".encode()


def test_json_text_keeps_valid_text_and_shows_lost_bytes_as_replacement() -> None:
    assert json_text(HOSTILE_COMM) == HOSTILE_COMM  # JSON escapes it; scripts want it raw
    assert json_text("café") == "café"
    assert json_text(decode(b"a\xffb")) == "a\ufffdb"


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("oomguard.x", logging.WARNING, __file__, 1, msg, args, None)


def test_log_line_carries_no_control_character() -> None:
    formatter = EscapingFormatter("%(levelname)s %(name)s: %(message)s")
    line = formatter.format(_record("oom kill: %s in %s", HOSTILE_COMM, "/a\nWARNING forged"))
    assert line == (
        "WARNING oomguard.x: oom kill: \\x1b[2J\\x1b]0;pwn\\x07\\rX in /a\\nWARNING forged"
    )


def test_log_traceback_keeps_its_lines_but_escapes_them() -> None:
    formatter = EscapingFormatter("%(message)s")
    try:
        raise ValueError(f"bad name {HOSTILE_COMM}")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    text = formatter.format(record)
    assert text.startswith("failed\nTraceback (most recent call last):\n")
    assert "ValueError: bad name \\x1b[2J\\x1b]0;pwn\\x07\\rX" in text
    assert all(line.isprintable() for line in text.split("\n"))


def test_cli_text_logs_are_escaped() -> None:
    # The CLI's own logging set-up, in a process of its own (it configures the root).
    code = (
        "import logging\n"
        "from oomguard.cli import configure_logging\n"
        "configure_logging('INFO')\n"
        f"logging.getLogger('oomguard.detect.loop').warning('victim %s', {HOSTILE_COMM!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stderr == "WARNING oomguard.detect.loop: victim \\x1b[2J\\x1b]0;pwn\\x07\\rX\n"


def test_formatter_does_not_change_the_record_for_other_handlers() -> None:
    record = _record("%s", HOSTILE_COMM)
    EscapingFormatter().format(record)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(record)
    assert stream.getvalue() == HOSTILE_COMM + "\n"
