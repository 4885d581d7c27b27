"""One owner per run folder: a lock file that every command writing a run folder takes before it touches anything.

The lock (`OUT/.lmlab.lock`) holds the owner's pid, host and start time, written with O_EXCL so two starts cannot
both take it. A lock left by a process that is gone (same host, dead pid) is stale and taken over, with a message;
a live owner is refused with its pid and start time; a lock from another host is refused naming that host and pid
(this host cannot tell whether it is alive) unless `force=True` (`--force-unlock`). Only the owner cleans the
folder's temporary files, so a second start can no longer delete a live run's in-progress checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from lmlab.errors import LmlabError

LOCK_FILE = ".lmlab.lock"
log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """`with RunLock(out, "lmlab pretrain"):` — hold `out` for this process; released on exit (also on errors and
    Ctrl-C). Re-entrant within one process (a command that calls another keeps the first lock)."""

    _held: dict[Path, int] = {}  # lock file -> nesting depth, in this process

    def __init__(self, folder: str | Path, command: str = "lmlab", force: bool = False):
        self.folder, self.command, self.force = Path(folder), command, force
        self.path = self.folder / LOCK_FILE
        self.subject = self.folder  # what the messages say is locked
        self._made = False

    @classmethod
    def for_file(cls, path: str | Path, command: str = "lmlab", force: bool = False) -> RunLock:
        """Hold an output *file* (e.g. the old spelling `lmlab compose --out bridge.pt`): the lock `.NAME.lmlab.lock`
        lies next to it, so writers of other files in the same folder are not in the way."""
        path = Path(path)
        if path.is_dir():
            raise LmlabError(f"{path} is a folder: pass a file name for the output")
        lock = cls(path.parent, command, force)
        lock.path, lock.subject = path.parent / f".{path.name}{LOCK_FILE}", path
        return lock

    def owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}  # a torn or foreign lock file: treated as stale below

    def __enter__(self) -> RunLock:
        key = self.path.resolve()
        if key in RunLock._held:
            RunLock._held[key] += 1
            return self
        if self.folder.exists() and not self.folder.is_dir():
            raise LmlabError(f"{self.folder} is a file, not a folder: pass a folder for the run's output")
        self._made = not self.folder.exists()  # a folder the lock made is removed again if nothing was written
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LmlabError(f"cannot create the run folder {self.folder} ({e.strerror}): pass a writable path") \
                from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": self.command}
        for _ in range(3):  # a stale lock removed by us or by another starter: try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_or_refuse()
                continue
            except OSError as e:
                raise LmlabError(f"cannot write the lock {self.path} ({e.strerror}): pass a writable folder") \
                    from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            RunLock._held[key] = 1
            return self
        raise LmlabError(f"could not take the lock {self.path}: another process keeps taking it")

    def _take_over_or_refuse(self) -> None:
        owner = self.owner()
        if owner is None:  # released meanwhile
            return
        pid, host = owner.get("pid"), owner.get("host")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
        what = f"{owner.get('command', 'a command')} (pid {pid} on {host}, since {since})"
        if owner and host != socket.gethostname() and not self.force:
            raise LmlabError(f"{self.subject} is locked by {what}, another host, which this one cannot check: "
                             "wait for it, pass another --out, or pass --force-unlock if that run is gone")
        if owner and host == socket.gethostname() and isinstance(pid, int) and _alive(pid) and not self.force:
            raise LmlabError(f"{self.subject} is in use by {what}: wait for it to finish or pass another --out "
                             "(one process writes a run folder at a time)")
        log.warning("taking over the lock of %s from %s, which is gone", self.subject, what if owner else
                    "an unreadable lock file")
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        key = self.path.resolve()
        RunLock._held[key] -= 1
        if RunLock._held[key]:
            return
        del RunLock._held[key]
        owner = self.owner()
        if owner and owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        if self._made and not any(self.folder.iterdir()):  # refused before anything was written
            self.folder.rmdir()
