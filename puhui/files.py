"""Writing files that other processes may read at any moment."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

from puhui.crashpoints import crash_point

# A writer's temporary name (``.<name>.<pid>.<thread>.tmp``) older than this belongs to a
# process killed mid-write: a text file is written in well under a second.
STALE_TEMP_SECONDS = 15 * 60
_TEMP_NAME = re.compile(r"\..+\.\d+\.\d+\.tmp")


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` aside and rename it into place (creating the folder).

    Readers never see half a file, and two processes or threads writing the same path
    never interleave their bytes: the last rename wins whole. Temporary files a killed
    writer left in the folder (older than ``STALE_TEMP_SECONDS``) are removed: nothing else
    would ever remove them.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    crash_point("files.before_rename")
    tmp.replace(path)
    _sweep_stale_temps(path.parent)


def _sweep_stale_temps(folder: Path) -> None:
    cutoff = time.time() - STALE_TEMP_SECONDS
    with os.scandir(folder) as entries:
        for entry in entries:
            if _TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                except FileNotFoundError:  # another writer swept it first
                    pass
