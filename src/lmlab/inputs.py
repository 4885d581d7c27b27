"""Reading the files a user gives (and the ones lmlab wrote): one place that turns every way a file can be wrong —
missing, a folder, unreadable, not UTF-8, binary, empty, malformed JSON — into a LmlabError that names the file,
the line or byte, and the fix."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

log = logging.getLogger(__name__)


def read_text(path: str | Path, what: str = "file", *, allow_empty: bool = False) -> str:
    """The UTF-8 text of `path`; `what` names it in errors (e.g. "data file", "--context")."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise LmlabError(f"{what} {p} not found: give an existing file") from None
    except IsADirectoryError:
        raise LmlabError(f"{what} {p} is a folder: give a file") from None
    except PermissionError:
        raise LmlabError(f"cannot read {what} {p}: permission denied") from None
    except OSError as e:
        raise LmlabError(f"cannot read {what} {p}: {e.strerror or e}") from None
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise LmlabError(f"{what} {p} is binary, not text (a NUL byte on line {line}): give a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise LmlabError(f"{what} {p} is not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start}, line {line}): "
                         "convert it to UTF-8 (e.g. iconv -t UTF-8)") from None
    if not allow_empty and not text.strip():
        raise LmlabError(f"{what} {p} is empty: give a file with content")
    return text


def read_lines(path: str | Path, what: str = "file") -> list[str]:
    """The non-blank lines of a UTF-8 text file (at least one)."""
    return [ln for ln in read_text(path, what).splitlines() if ln.strip()]


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise LmlabError(f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def read_jsonl(path: str | Path, what: str = "JSONL file", *, drop_torn_last: bool = False) -> list[Any]:
    """One JSON value per non-blank line. `drop_torn_last`: a last line cut short (a crash while lmlab appended it)
    is dropped with a warning instead of refused."""
    lines = read_text(path, what, allow_empty=True).splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if drop_torn_last and n == len(lines):
                log.warning("%s %s: dropping its torn last line %d (%s)", what, path, n, e.msg)
                break
            raise LmlabError(f"{what} {path} line {n} is not valid JSON ({e.msg}): fix or remove that line") \
                from None
    return out
