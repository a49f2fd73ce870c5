"""puhui's temporary folders, named for the host and process that made them.

A ``with`` block removes its folder, but a process killed inside one (kill -9, the OOM
killer, a lost container) leaves it in the temp folder for good: a copy of a model's files,
a training's publish folder, a feature build's scattered phone feeds. Each is made by
``scratch_dir`` as ``puhui-<kind>-<host>-<pid>-<random>``, and ``sweep_scratch_dirs`` (at
the reconcile every model command and training starts with) removes those of this host
whose process is gone. A live process's folder is kept whatever its age; another host's (a
shared temp folder) is never touched: its pids are not ours to judge.
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
_NAMED = re.compile(rf"puhui-(?P<kind>{'|'.join(KINDS)})-(?P<host>.+)-(?P<pid>\d+)-[^-]+")


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory[str]:
    """A temp folder of ``kind`` (one of ``KINDS``), removed on exit, swept if killed."""
    assert kind in KINDS, kind
    return tempfile.TemporaryDirectory(
        prefix=f"puhui-{kind}-{socket.gethostname()}-{os.getpid()}-")


def sweep_scratch_dirs() -> list[str]:
    """Remove the ``scratch_dir`` folders of this host's processes that are gone; returns
    the folders removed."""
    removed: list[str] = []
    host = socket.gethostname()
    for folder in Path(tempfile.gettempdir()).glob("puhui-*"):
        named = _NAMED.fullmatch(folder.name)
        if (named is None or named["host"] != host or not folder.is_dir()
                or pid_alive(int(named["pid"]))):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(str(folder))
    return removed
