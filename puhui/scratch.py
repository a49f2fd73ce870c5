"""puhui's temporary folders, named for the host, pid namespace and process that made them.

A ``with`` block removes its folder, but a process killed inside one (kill -9, the OOM
killer, a lost container) leaves it in the temp folder for good: a copy of a model's files,
a training's publish folder, a feature build's scattered phone feeds. Each is made by
``scratch_dir`` as ``puhui-<kind>-<host>-<pidns>-<pid>-<random>``, and ``sweep_scratch_dirs``
(at the reconcile every model command and training starts with) removes those of this host
and pid namespace whose process is gone. A pid means something only in its namespace: two
containers of one pod share the hostname and may share a ``/tmp`` (an emptyDir) with
separate pid namespaces, where the other's live pid 7 is a dead pid 7 here. So a live
process's folder is kept whatever its age, and another host's or another namespace's (a
sibling container's, or a restarted container's predecessor's: the emptyDir goes with the
pod) is never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from puhui.processes import pid_alive

KINDS = ("model", "publish", "report", "scatter", "artifact", "bins")
_NAMED = re.compile(
    rf"puhui-(?P<kind>{'|'.join(KINDS)})-(?P<host>.+)-(?P<ns>\d+)-(?P<pid>\d+)-[^-]+")


def pid_namespace() -> str:
    """This process's pid namespace (the inode of ``/proc/self/ns/pid``); ``0`` where there
    is no such file (no /proc, as on macOS: one namespace per host)."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory[str]:
    """A temp folder of ``kind`` (one of ``KINDS``), removed on exit, swept if killed."""
    assert kind in KINDS, kind
    return tempfile.TemporaryDirectory(
        prefix=f"puhui-{kind}-{socket.gethostname()}-{pid_namespace()}-{os.getpid()}-")


def sweep_scratch_dirs() -> list[str]:
    """Remove the ``scratch_dir`` folders of this host's and pid namespace's processes that
    are gone; returns the folders removed. One that cannot be removed (another user's,
    mode 700) stays, unreported: it is no news on the next reconcile either."""
    removed: list[str] = []
    host, namespace = socket.gethostname(), pid_namespace()
    for folder in Path(tempfile.gettempdir()).glob("puhui-*"):
        named = _NAMED.fullmatch(folder.name)
        if (named is None or named["host"] != host or named["ns"] != namespace
                or not folder.is_dir() or pid_alive(int(named["pid"]))):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(str(folder))
    return removed
