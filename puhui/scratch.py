"""puhui's temporary folders, each locked by the process that made it for as long as it lives.

A ``with`` block removes its folder, but a process killed inside one (kill -9, the OOM
killer, a lost container) leaves it in the temp folder for good: a copy of a model's files,
a training's publish folder, a feature build's scattered phone feeds. Each is made by
``scratch_dir`` as ``puhui-<kind>-<host>-<pidns>-<pid>-flock-<random>``, and its process
holds an exclusive ``flock`` on the folder itself until it removes it; the kernel drops the
lock at any death, kill -9 included. ``sweep_scratch_dirs`` (at the reconcile every model
command and training starts with) removes this host's folders whose lock it can take.

A lock, unlike a pid, means the same thing in every pid namespace of one kernel: two
containers of a pod share the hostname and may share a ``/tmp`` (an emptyDir) with separate
pid namespaces, where the other's live pid 7 is a dead pid 7 here, and a restarted container
gets a new namespace, so its predecessor's folders were of "another namespace" for good.
Another host's folders (a shared network temp folder, where a lock may be local to each
client) are never touched.

Folders of the earlier format (``...-<pidns>-<pid>-<random>``, no lock) are judged as
before: removed only when of this host and pid namespace and their pid is gone.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

from puhui.processes import pid_alive

KINDS = ("model", "publish", "report", "scatter", "artifact", "bins")
_KIND = "|".join(KINDS)
_UNLOCKED = re.compile(rf"puhui-(?P<kind>{_KIND})-(?P<host>.+)-(?P<ns>\d+)-(?P<pid>\d+)-[^-]+")
_LOCKED = re.compile(rf"(?P<pending>\.?)puhui-(?P<kind>{_KIND})-(?P<host>.+)-\d+-\d+-flock-[^-]+")
# A folder is made under a hidden name, locked, then renamed: the lock is held before the
# folder is visible. A hidden one is unlocked for the instant between its mkdir and its lock,
# so it is swept only once this old (its process was killed in that instant).
PENDING_GRACE_SECONDS = 60.0


def pid_namespace() -> str:
    """This process's pid namespace (the inode of ``/proc/self/ns/pid``); ``0`` where there
    is no such file (no /proc, as on macOS: one namespace per host)."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


class ScratchDir:
    """A temp folder locked by this process until removed (``with`` or ``cleanup``)."""

    def __init__(self, kind: str) -> None:
        assert kind in KINDS, kind
        pending = tempfile.mkdtemp(prefix=(
            f".puhui-{kind}-{socket.gethostname()}-{pid_namespace()}-{os.getpid()}-flock-"))
        fd = os.open(pending, os.O_RDONLY | os.O_DIRECTORY)
        try:
            # Blocking: a sweep never locks a young hidden folder, but one of an old name's
            # holder (removed and made again in between) may hold it for an instant.
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Host, namespace and pid make the name unique among live processes: the rename
            # replaces no one's folder.
            self.name = os.path.join(os.path.dirname(pending), os.path.basename(pending)[1:])
            os.rename(pending, self.name)
        except BaseException:
            os.close(fd)
            shutil.rmtree(pending, ignore_errors=True)
            raise
        self._finalizer = weakref.finalize(self, _remove, self.name, fd)

    def __enter__(self) -> str:
        return self.name

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        self._finalizer()


def _remove(name: str, fd: int) -> None:
    # The lock is let go only once the folder is gone: a sweep never races its removal.
    try:
        shutil.rmtree(name, ignore_errors=True)
    finally:
        os.close(fd)


def scratch_dir(kind: str) -> ScratchDir:
    """A temp folder of ``kind`` (one of ``KINDS``), removed on exit, swept if killed."""
    return ScratchDir(kind)


def _remove_if_unlocked(folder: Path, pending: bool) -> bool:
    """Remove ``folder`` if no process holds its lock (and, ``pending``, it is older than
    the grace); False if it is held, young, gone or not ours to open."""
    try:
        seen = os.lstat(folder)
    except OSError:
        return False
    # Judged by age before it is locked: locking a young one, even for an instant, could
    # take the lock its maker is about to take.
    if pending and time.time() - seen.st_mtime < PENDING_GRACE_SECONDS:
        return False
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a live process (or locks unsupported here: leave it)
            return False
        try:  # the name may have been removed (and reused) since it was judged
            if os.stat(folder, follow_symlinks=False).st_ino != seen.st_ino \
                    or os.fstat(fd).st_ino != seen.st_ino:
                return False
        except OSError:
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return not folder.exists()
    finally:
        os.close(fd)


def sweep_scratch_dirs() -> list[str]:
    """Remove the ``scratch_dir`` folders of this host whose process is gone (its lock free;
    the earlier format's: of this pid namespace, its pid gone); returns the folders removed.
    One that cannot be removed (another user's, mode 700) stays, unreported: it is no news
    on the next reconcile either."""
    removed: list[str] = []
    host, namespace = socket.gethostname(), pid_namespace()
    root = Path(tempfile.gettempdir())
    for folder in (*root.glob("puhui-*"), *root.glob(".puhui-*")):
        if (locked := _LOCKED.fullmatch(folder.name)) is not None:
            if locked["host"] == host and _remove_if_unlocked(folder, bool(locked["pending"])):
                removed.append(str(folder))
            continue
        named = _UNLOCKED.fullmatch(folder.name)
        if (named is None or named["host"] != host or named["ns"] != namespace
                or not folder.is_dir() or pid_alive(int(named["pid"]))):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(str(folder))
    return removed
