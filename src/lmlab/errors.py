"""The user-error type, and the failed writes that are the user's to fix (a full disk, permissions); importable
without torch (the CLI parser is built from it before any heavy import)."""

from __future__ import annotations

import errno
import re
from pathlib import Path


class LmlabError(Exception):
    """An error caused by the user's input (config, path, model name...).

    The CLI prints its message as one line and exits non-zero; the message should name the problem
    and, where possible, the fix.
    """


# Writes that fail for a reason the user fixes outside lmlab, and what to do about it.
WRITE_FAILURES = {
    errno.ENOSPC: "no space left on the device: free space (or write elsewhere) and run again",
    errno.EDQUOT: "the disk quota is exceeded: free space (or write elsewhere) and run again",
    errno.EACCES: "permission denied: make it writable or write elsewhere",
    errno.EPERM: "operation not permitted: make it writable or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
}


def write_failure(e: BaseException, path: str | Path) -> LmlabError | None:
    """The user error for a write to `path` that failed for a reason outside lmlab (`WRITE_FAILURES`), naming the
    path; None for any other failure (a bug stays an internal error)."""
    code = getattr(e, "errno", None)
    if code is None and type(e).__name__ == "SafetensorError":  # it reports the OS error in its message only
        m = re.search(r"os error (\d+)", str(e))
        code = int(m.group(1)) if m else None
    if code not in WRITE_FAILURES:
        return None
    return LmlabError(f"cannot write {path}: {WRITE_FAILURES[code]}")


class PositionLimitError(LmlabError):
    """An input longer than the positions a model can take at all (learned absolute position embeddings, e.g.
    GPT-2's n_positions); `lmlab.lengths.check_length` raises it before the model would fail on an index."""
