"""puhui's temporary folders, each locked by the process that made it for as long as it lives.

A ``with`` block removes its folder, but a process killed inside one (kill -9, the OOM
killer, a lost container) leaves it in the temp folder for good: a copy of a model's files,
a training's publish folder, a feature build's scattered phone feeds. Each is made by
``scratch_dir`` as ``puhui-<kind>-<host>-<pidns>-<pid>-flock-<random>``, and its process
holds an exclusive ``flock`` on the file ``.lock`` in it until it removes the folder; the
kernel drops the lock at any death, kill -9 included. A file opened for writing, not the
folder: on an NFS or CIFS temp folder ``flock`` is emulated by a byte-range lock, which
needs write access (on a folder opened read-only it failed, EBADF). Where no lock can be had
at all (ENOLCK, EOPNOTSUPP) the folder takes the earlier format below.
``sweep_scratch_dirs`` (at the reconcile every model command and training starts with)
removes this host's folders whose lock it can take.

A lock, unlike a pid, means the same thing in every pid namespace of one kernel: two
containers of a pod share the hostname and may share a ``/tmp`` (an emptyDir) with separate
pid namespaces, where the other's live pid 7 is a dead pid 7 here, and a restarted container
gets a new namespace, so its predecessor's folders were of "another namespace" for good.
Another host's folders (a shared network temp folder) are never touched: each host sweeps
its own.

Folders of the earlier format (``...-<pidns>-<pid>-<random>``, no lock) are judged as
before: removed only when of this host and pid namespace and their pid is gone.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

from puhui.processes import pid_alive

KINDS = ("model", "publish", "report", "scatter", "artifact", "bins", "config")
_KIND = "|".join(KINDS)
_UNLOCKED = re.compile(rf"puhui-(?P<kind>{_KIND})-(?P<host>.+)-(?P<ns>\d+)-(?P<pid>\d+)-[^-]+")
_LOCKED = re.compile(rf"(?P<pending>\.?)puhui-(?P<kind>{_KIND})-(?P<host>.+)-\d+-\d+-flock-[^-]+")
# A folder is made under a hidden name, locked, then renamed: the lock is held before the
# folder is visible. A hidden one is unlocked for the instant between its mkdir and its lock,
# so it is swept only once this old (its process was killed in that instant).
PENDING_GRACE_SECONDS = 60.0
LOCK_FILE = ".lock"
WORK = "work"
# flock failing so means this file system has no lock to give (not that one is held);
# also the config snapshots' (puhui.runtime).
NO_LOCKS = frozenset({errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP})


def pid_namespace() -> str:
    """This process's pid namespace (the inode of ``/proc/self/ns/pid``); ``0`` where there
    is no such file (no /proc, as on macOS: one namespace per host)."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


class ScratchDir:
    """A temp folder locked by this process until removed (``with`` or ``cleanup``): the
    caller's folder is ``name``, in the locked ``folder``; ``parent``: where (default the
    temp folder; a config snapshot's copy is made beside the snapshots, to be renamed)."""

    def __init__(self, kind: str, parent: Path | None = None) -> None:
        assert kind in KINDS, kind
        named = f"puhui-{kind}-{socket.gethostname()}-{pid_namespace()}-{os.getpid()}-"
        pending = tempfile.mkdtemp(prefix=f".{named}flock-", dir=parent)
        random = os.path.basename(pending)[len(f".{named}flock-"):]
        lock = os.path.join(pending, LOCK_FILE)
        fd: int | None = None
        folder_fd: int | None = None
        try:
            folder_fd = _lock_folder(pending)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                # Blocking: a sweep never locks a young hidden folder, but one of an old
                # name's holder (removed and made again in between) may hold it an instant.
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as error:
                if error.errno not in NO_LOCKS:
                    raise
                os.close(fd)
                fd = None
                os.unlink(lock)
                if folder_fd is not None:  # the earlier format is judged by its pid alone
                    os.close(folder_fd)
                    folder_fd = None
            # The caller's files go in a folder of their own beside the lock file: a model's
            # files downloaded there are hashed whole.
            os.mkdir(os.path.join(pending, WORK))
            # Host, namespace and pid make the name unique among live processes: the rename
            # replaces no one's folder.
            self.folder = os.path.join(os.path.dirname(pending),
                                       f"{named}flock-{random}" if fd is not None
                                       else f"{named}{random}")
            os.rename(pending, self.folder)
            self.name = os.path.join(self.folder, WORK)
        except BaseException:
            for held in (fd, folder_fd):
                if held is not None:
                    os.close(held)
            shutil.rmtree(pending, ignore_errors=True)
            raise
        self._finalizer = weakref.finalize(self, _remove, self.folder, fd, os.getpid(),
                                           folder_fd)

    def __enter__(self) -> str:
        return self.name

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        self._finalizer()


def _remove(name: str, fd: int | None, owner: int, folder_fd: int | None = None) -> None:
    # The locks are let go only once the folder is gone: a sweep never races its removal.
    try:
        # A forked child dropping its copy of the object: the folder is its parent's, in use.
        if os.getpid() == owner:
            shutil.rmtree(name, ignore_errors=True)
    finally:
        for held in (fd, folder_fd):
            if held is not None:
                os.close(held)


def _lock_folder(folder: str) -> int | None:
    """The folder itself locked too (its descriptor, held; None where this file system
    locks no folder): the ``.lock`` file can be replaced by a new one, whose lock a sweep
    would then get while the folder's maker lives; the folder cannot be replaced under its
    open descriptor. Locking only the folder failed on NFS and CIFS (EBADF: their emulated
    lock needs a file open for writing), so there the file's lock is all there is."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a new folder: no sweep locks a young hidden one
    except OSError as error:
        os.close(fd)
        if error.errno not in NO_LOCKS:
            raise
        return None
    return fd


def scratch_dir(kind: str, parent: Path | None = None) -> ScratchDir:
    """A temp folder of ``kind`` (one of ``KINDS``), removed on exit, swept if killed;
    ``parent``: made there instead of the temp folder (swept with ``sweep_scratch_dirs(root=``
    that folder``)``)."""
    return ScratchDir(kind, parent)


def _remove_if_unlocked(folder: Path, pending: bool) -> bool:
    """Remove ``folder`` if no process holds its lock (and, ``pending`` or without its lock
    file, it is older than the grace); False if it is held, young, gone or not ours."""
    try:
        seen = os.lstat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(seen.st_mode):  # a link named so: not a folder of ours
        return False
    old = time.time() - seen.st_mtime >= PENDING_GRACE_SECONDS
    # Judged by age before it is locked: locking a young one, even for an instant, could
    # take the lock its maker is about to take.
    if pending and not old:
        return False
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:  # gone, replaced by a link, or not ours to read (another user's)
        return False
    try:
        try:
            fcntl.flock(folder_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in NO_LOCKS:  # its maker lives, whatever its .lock file is
                return False
        if os.fstat(folder_fd).st_ino != seen.st_ino:  # removed and made again since
            return False
        return _remove_if_file_unlocked(folder, seen, old)
    finally:
        os.close(folder_fd)


def _remove_if_file_unlocked(folder: Path, seen: os.stat_result, old: bool) -> bool:
    lock = folder / LOCK_FILE
    try:  # for writing, as the maker: a network file system's lock needs it
        fd: int | None = os.open(lock, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:  # its maker was killed before making it: as a pending one
        if not old:
            return False
        fd = None
    except OSError:
        return False
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by a live process (or locks unsupported here: leave it)
                return False
        try:  # the name may have been removed (and reused) since it was judged
            if os.lstat(folder).st_ino != seen.st_ino or (
                    fd is not None and os.lstat(lock).st_ino != os.fstat(fd).st_ino):
                return False
        except OSError:
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return not folder.exists()
    finally:
        if fd is not None:
            os.close(fd)


def sweep_scratch_dirs(root: Path | None = None) -> list[str]:
    """Remove the ``scratch_dir`` folders of this host whose process is gone (its lock free;
    the earlier format's: of this pid namespace, its pid gone) from ``root`` (default the
    temp folder); returns the folders removed.
    One that cannot be removed (another user's, mode 700) stays, unreported: it is no news
    on the next reconcile either."""
    removed: list[str] = []
    host, namespace = socket.gethostname(), pid_namespace()
    root = root or Path(tempfile.gettempdir())
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
