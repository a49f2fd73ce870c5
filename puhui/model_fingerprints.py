"""Model files already hashed by ``audit verify``, and what cheaply tells they are unchanged.

Hashing the model files of every aliased version on every ``audit verify`` reads them in full
(downloads them from a remote artifact store) though they rarely change. A version whose
files hashed to its registration event's digest is remembered with its files' *signature*,
what the store says about them without reading them; the next verify hashes it again only
if the signature differs:

- a local store: each file's relative path, size, mtime_ns, ctime_ns and inode. ctime is the
  kernel's, set on every write and on every ``utime``: a same-size rewrite with its mtime
  put back still changes it. The cache trusts that: a FUSE mount of a bucket (gcsfuse,
  s3fs) makes up ctime and inodes, so verify such a store with ``--deep``;
- a remote store (an fsspec URL): each object's path, size and the listing's content tag
  (``puhui.landing.CONTENT_MARKER_KEYS``: an ETag, an md5). A time (mtime, LastModified,
  updated, modify, created) is no signature: whoever writes the store can set it back (SFTP
  utime, HDFS setTimes), and ``created`` stays through an in-place rewrite. A store whose
  listing gives no content tag for some file, or one fsspec cannot list, has no signature:
  its files are downloaded and hashed every time, as before.

The cache is a file under PUHUI_HOME whose entries are HMACs under the audit key over (model,
version, digest, signature): an entry cannot be written for files of another content
without the key, and a damaged or foreign file only costs a rehash. So the cache trusts
whoever holds the audit key (in the local profile, ``$PUHUI_HOME/audit.key`` beside it):
``--deep`` ignores it, and so does ``--anchor``, whose point is not trusting that holder.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from puhui.registry_read import local_artifact_path

CACHE_FILE = Path("cache") / "verified-model-files.json"


def files_signature(uri: str) -> str | None:
    """A digest of what the store says about the files at ``uri`` (see the module), or None
    where it says nothing that changes with their content (or they are gone)."""
    # The folder model_files_dir hashes in place: the signature must be of the same files.
    local = local_artifact_path(uri)
    return _remote_signature(uri) if local is None else _local_signature(local)


def _digest(entries: list[Any]) -> str:
    return hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()


def _local_signature(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    entries: list[Any] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = path.stat()
        entries.append([path.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns,
                        st.st_ctime_ns, st.st_ino])
    return _digest(entries)


def _remote_signature(uri: str) -> str | None:
    import fsspec

    from puhui.landing import CONTENT_MARKER_KEYS, change_marker

    try:
        fs, root = fsspec.core.url_to_fs(uri)
        listing = fs.find(root, detail=True)
    except Exception:  # noqa: BLE001 - a scheme fsspec cannot list: no signature, hash it
        return None
    entries: list[Any] = []
    for path, info in sorted(listing.items()):
        marker = change_marker(info, CONTENT_MARKER_KEYS)
        if marker is None:
            return None  # size alone, or a settable time, misses a same-size rewrite
        entries.append([path, info.get("size"), marker])
    return _digest(entries) if entries else None


class VerifiedFiles:
    """The cache of model files verified against their registration event (see the module)."""

    def __init__(self, home: Path, key: bytes) -> None:
        self._path, self._key = home / CACHE_FILE, key
        try:
            entries = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            entries = {}
        self._entries: dict[str, str] = entries if isinstance(entries, dict) else {}
        self._changed = False

    def _mac(self, model: str, version: str, digest: str, signature: str) -> str:
        payload = json.dumps([model, version, digest, signature]).encode()
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def holds(self, model: str, version: str, digest: str, signature: str | None) -> bool:
        """True if these files, with this signature, hashed to ``digest`` before."""
        found = self._entries.get(f"{model}/{version}")
        return (signature is not None and isinstance(found, str)
                and hmac.compare_digest(found, self._mac(model, version, digest, signature)))

    def remember(self, model: str, version: str, digest: str, signature: str | None) -> None:
        if signature is not None:
            self._entries[f"{model}/{version}"] = self._mac(model, version, digest, signature)
            self._changed = True

    def save(self) -> None:
        """Write the entries if any changed (atomically; a home not writable keeps none)."""
        if not self._changed:
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            partial = self._path.with_name(f"{self._path.name}.{os.getpid()}.partial")
            partial.write_text(json.dumps(self._entries, sort_keys=True), encoding="utf-8")
            os.replace(partial, self._path)
        except OSError:
            pass  # a cache: verify is right without it, only slower
