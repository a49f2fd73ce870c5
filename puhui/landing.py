"""The landing zone: which partner files have arrived, for which delivery date.

Files land as ``<location>/<YYYY-MM-DD>/<file>`` per feed; a location is a local path or any
fsspec URL. Discovery only lists; it never moves or modifies a landed file. A symbolic link
(a directory, or any other entry that is not a regular file) matching the pattern is listed
too, with its ``kind``: ingestion records it as held without following or reading it, so
nothing that landed goes unrecorded (a folder ``orders_1.parquet/`` of part files is not
silently skipped). A folder shaped like a date that is none (``2026-02-30/``) gives its files
no delivery date to be filed under: ingestion cannot take them, and ``undated_folders``
names them for the ingest summary instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from puhui.config import PartnerFeed

_DATE_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"


@dataclass(frozen=True)
class LandedFile:
    partner: str
    path: str  # full path or URL as fsspec reports it
    delivery_date: date
    size: int
    kind: str = "file"  # "file", or "symlink" / "directory" / "special": recorded, never read
    # Local regular files only: a file rewritten in place at the same size differs from the
    # ledger's row by this.
    mtime_ns: int | None = None
    # What changes when the file is rewritten or replaced: a remote store's
    # (``change_marker``; None where its listing gives none, then size only), a local file's
    # change time (``local_change_marker``).
    change_marker: str | None = None


# What a store's listing says changes with an object, as fsspec passes it on: a content tag
# first (S3's ETag, GCS's md5Hash, Azure's etag), else a time (SFTP/HDFS mtime, S3's
# LastModified, Azure's last_modified, GCS's updated, FTP's modify); the memory filesystem
# gives only ``created``, which a write renews (it replaces the object).
CONTENT_MARKER_KEYS = ("ETag", "etag", "md5Hash", "md5")
CHANGE_MARKER_KEYS = (*CONTENT_MARKER_KEYS, "mtime", "LastModified", "last_modified",
                      "updated", "modify", "created")


def change_marker(info: dict[str, Any],
                  keys: tuple[str, ...] = CHANGE_MARKER_KEYS) -> str | None:
    """``key=value`` of the first of ``keys`` a remote listing's ``info`` holds, or None.

    Taken from the listing, never from a later ``info()``: the two can render one value
    differently (the memory filesystem's ``created`` is a timestamp in one, a datetime in
    the other), and the ledger's value is compared with the next listing's.
    """
    for key in keys:
        value = info.get(key)
        if value not in (None, ""):
            return f"{key}={value}"
    return None


def local_change_marker(status: os.stat_result) -> str:
    """``ctime_ns=N`` of a local file's ``status``: the kernel's change time.

    The size and modification time alone let a corrected file sent again under its name at
    the same size with the first one's time (`rsync -t`, `cp -p`) pass for the file already
    loaded: skipped for good, its rows never loaded. The kernel sets the change time on
    every write and rename (the rename-over too) and nobody can set it back, so a change
    here re-reads the file (a hash; the same bytes only renew the ledger's marks). It also
    moves on a chmod, chown, new or removed hard link or xattr: a landing zone swept by
    such tools is hashed again after each sweep. The inode is left out: FUSE mounts make
    inode numbers up afresh at each mount, which re-hashed every file on every run.
    """
    return f"ctime_ns={status.st_ctime_ns}"


def _local_marks(path: str) -> tuple[int | None, str | None]:
    """A local file's modification time (ns; fsspec's float of seconds rounds them away)
    and change marker, from one ``lstat``."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:  # gone since listed: ingesting it defers it
        return None, None
    return status.st_mtime_ns, local_change_marker(status)


def feed_location(feed: PartnerFeed, landing: str) -> str:
    """The feed's configured location, or ``<landing>/<feed name>``."""
    return feed.location or f"{landing.rstrip('/')}/{feed.name}"


def is_delivery_expected(feed: PartnerFeed, day: date) -> bool:
    """Daily feeds deliver every day; monthly feeds on the first of the month."""
    return feed.delivery == "daily" or day.day == 1


def list_landed_files(feed: PartnerFeed, landing: str, day: date | None = None) -> list[LandedFile]:
    """Files of ``feed`` delivered on ``day`` (every delivery date if None), sorted by path."""
    location = feed_location(feed, landing)
    fs, root = fsspec.core.url_to_fs(location)
    glob_date = day.isoformat() if day else _DATE_GLOB
    pattern = f"{root.rstrip('/')}/{feed.pattern.format(date=glob_date)}"
    found: list[LandedFile] = []
    for path, info in sorted(fs.glob(pattern, detail=True).items()):
        kind = info.get("type", "file")
        if info.get("islink"):
            kind = "symlink"
        elif kind not in ("file", "directory"):
            kind = "special"
        folder = path.rstrip("/").split("/")[-2]
        try:
            delivered = date.fromisoformat(folder)
        except ValueError:  # "2026-13-45": no delivery date to file it under (undated_folders)
            continue
        regular = kind == "file"
        mtime_ns, marker = None, None
        if regular:
            local = isinstance(fs, LocalFileSystem)
            mtime_ns, marker = _local_marks(path) if local else (None, change_marker(info))
        found.append(
            LandedFile(
                feed.name,
                path if "://" not in location else fs.unstrip_protocol(path),
                delivered,
                int(info.get("size") or 0),
                kind,
                mtime_ns,
                marker,
            )
        )
    return found


def undated_folders(feed: PartnerFeed, landing: str) -> dict[str, int]:
    """Delivery folders of ``feed`` named like a date that is none (``2026-02-30``), each
    with how many entries matching the feed's pattern it holds (empty ones left out).

    ``list_landed_files`` cannot list these entries (no delivery date to file them under):
    this lists the folders only, then reads just the bad ones, so a run reports them
    without listing the whole landing zone twice."""
    fs, root = fsspec.core.url_to_fs(feed_location(feed, landing))
    pattern = f"{root.rstrip('/')}/{feed.pattern.format(date=_DATE_GLOB)}"
    folders, _, names = pattern.rpartition("/")
    found: dict[str, int] = {}
    for folder in sorted(fs.glob(folders)):
        name = folder.rstrip("/").rsplit("/", 1)[-1]
        if _is_date(name):  # digits by the glob; a real date is listed by list_landed_files
            continue
        entries = len(fs.glob(f"{folder.rstrip('/')}/{names}"))
        if entries:
            found[name] = entries
    return found


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True
