"""One place that turns settings into the live handles every stage needs."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import URL, Engine, make_url
from sqlalchemy.exc import NoSuchModuleError

from puhui import console
from puhui.audit import AuditWriter, audit_key_bytes
from puhui.config import config_files, config_hash, read_config_bytes
from puhui.errors import PuhuiError
from puhui.privacy import error_line
from puhui.scratch import NO_LOCKS, scratch_dir, sweep_scratch_dirs
from puhui.settings import Settings, configure_runtime, ensure_local_audit_key, load_settings
from puhui.warehouse.engine import create_warehouse_engine, current_revision, get_engine

if TYPE_CHECKING:
    from puhui.prefect_server import PrefectTarget


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: Engine
    audit: AuditWriter


def open_runtime(settings: Settings | None = None) -> Runtime:
    """Settings from the environment, a migrated warehouse engine and an audit writer."""
    settings, made = ensure_local_audit_key(settings or load_settings())
    if made is not None:
        console.notice(f"puhui: made a local audit key in {made} (production sets "
                       "PUHUI_AUDIT_KEY)")
    configure_runtime(settings)
    engine = get_engine(settings.warehouse_url)
    audit = AuditWriter(actor=settings.actor,
                        config_hash=settings.config_hash or config_hash(
                            settings.config_dir, expectations_dir=settings.expectations_dir),
                        key=audit_key_bytes(settings.audit_key))
    return Runtime(settings, engine, audit)


def flow_settings() -> Settings:
    """The settings a flow run hands its tasks: read once, at its start, with its configs
    and expectation suites copied once into ``PUHUI_HOME/config-snapshots/<hash>`` and
    ``config_dir`` / ``expectations_dir`` pointing at that copy. Every step and the files
    logged with a model then read exactly the bytes the run's hash covers, even when
    ``configs/`` is edited during a long training."""
    settings = load_settings()
    digest, snapshot = snapshot_configs(settings.config_dir, settings.expectations_dir,
                                        settings.home / "config-snapshots")
    return replace(settings, config_dir=snapshot, expectations_dir=snapshot / "expectations",
                   config_hash=digest)


# Snapshots kept besides those in use: the newest by last use. A model's run logged its own
# copy of the configs and suites (``log_configuration``), so a pruned snapshot loses nothing
# a version needs; these only spare a re-copy to runs of recent configurations.
SNAPSHOTS_KEPT = 20
# A copy aside named so by a version before the locked scratch folders: no process of this
# version makes one, and a copy takes well under this.
LEGACY_PARTIAL_GRACE_SECONDS = 3600.0
# Snapshot -> a descriptor of its folder holding a shared flock for this process's life: a
# run in progress (the flow's process; its tasks read the folder, maybe elsewhere, while it
# lives) keeps its snapshot from being pruned.
_held_snapshots: dict[Path, int] = {}


def snapshot_configs(config_dir: Path, expectations_dir: Path,
                     snapshots: Path) -> tuple[str, Path]:
    """Copy ``config_dir``'s config files and ``expectations_dir``'s suites (into
    ``expectations/``) to ``snapshots/<hash>``, hold it for this process (see
    ``_held_snapshots``) and return both; the hash is taken from the copy, so the two cannot
    differ. Written aside in a locked ``scratch_dir`` then renamed (a concurrent run never
    sees half a folder; the copy of a run killed mid-way is swept by the next run, a live
    run's never); an existing snapshot is reused. Then the snapshots beyond the
    ``SNAPSHOTS_KEPT`` most recently used that no live process holds are removed."""
    snapshots.mkdir(parents=True, exist_ok=True)
    sweep_scratch_dirs(snapshots)
    for stale in (*snapshots.glob(".partial-*"), *snapshots.glob(".pruned-*")):
        if stale.name.startswith(".pruned-") or \
                time.time() - _mtime(stale) >= LEGACY_PARTIAL_GRACE_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    for _ in range(3):  # pruned by another run between its rename and our hold: copy again
        with scratch_dir("config", parent=snapshots) as work:
            aside = Path(work)
            for path in config_files(config_dir):
                (aside / path.name).write_bytes(read_config_bytes(path))
            # The suites too: the hash covers them, and the register step logs them.
            (aside / "expectations").mkdir()
            for path in sorted(expectations_dir.glob("*.json")):
                (aside / "expectations" / path.name).write_bytes(path.read_bytes())
            digest = config_hash(aside, expectations_dir=aside / "expectations")
            target = snapshots / digest
            if not target.is_dir():
                try:
                    aside.rename(target)
                except OSError:
                    # Another run renamed the same hash first: its copy holds the same bytes.
                    if not target.is_dir():
                        raise
        if _hold_snapshot(target):
            break
    else:
        raise PuhuiError(f"config snapshot {target}: removed three times while being taken")
    prune_snapshots(snapshots, SNAPSHOTS_KEPT)
    return digest, target


def _hold_snapshot(target: Path) -> bool:
    """Take (once per process) a shared flock on ``target``; False if it was pruned first."""
    if target in _held_snapshots:
        return True
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits out a prune holding it exclusively
    except OSError as error:
        if error.errno not in NO_LOCKS:
            os.close(fd)
            raise
        # No lock on this file system (some NFS, CIFS): no hold, and no prune either
        # (``prune_snapshots`` stops at the same error), so the snapshot stays.
    try:
        # A prune renames the folder away under its exclusive lock before removing it.
        intact = os.stat(target, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except OSError:
        intact = False
    if not intact:
        os.close(fd)
        return False
    os.utime(target)  # in use now: among the most recent
    _held_snapshots[target] = fd
    return True


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:  # removed meanwhile by another run: as old as can be
        return 0.0


def prune_snapshots(snapshots: Path, keep: int) -> list[Path]:
    """Remove the snapshot folders beyond the ``keep`` most recently used that no live
    process holds (an exclusive flock taken without waiting); returns those removed. Where
    the file system gives no lock (``NO_LOCKS``, some NFS and CIFS) or the lock fails
    otherwise, a hold cannot be seen: nothing more is pruned, and one line says so (the
    snapshots then pile up; removing them by hand when no run is in progress is safe)."""
    found = [p for p in snapshots.iterdir()
             if re.fullmatch(r"[0-9a-f]{16}", p.name) and p.is_dir() and not p.is_symlink()]
    found.sort(key=_mtime, reverse=True)
    removed = []
    for folder in found[keep:]:
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    continue  # a run in progress holds it
                console.notice(f"puhui: config snapshots in {snapshots} not pruned: no lock "
                               f"there ({errno.errorcode.get(error.errno, error.errno)}) to "
                               "tell one a run holds")
                return removed
            # Renamed first, under the lock: a half-removed folder is never found by its hash.
            gone = snapshots / f".pruned-{folder.name}-{os.getpid()}"
            try:
                if os.stat(folder).st_ino != os.fstat(fd).st_ino:
                    continue
                folder.rename(gone)
            except OSError:
                continue
        finally:
            os.close(fd)
        shutil.rmtree(gone, ignore_errors=True)
        removed.append(folder)
    return removed


def check_settings(settings: Settings, prefect: PrefectTarget | None = None, *,
                   needs_key: bool = True) -> None:
    """Refuse bad settings before any flow starts, in one line that says the fix.

    Checks the pseudonymization key (when the command ingests), that the warehouse URL
    parses, names a supported database and answers, that the MLflow URI has a scheme MLflow
    knows, and that a configured Prefect server answers. A flow would otherwise fail on
    each of these after Prefect started, with a traceback per retry.
    """
    if needs_key and not settings.pseudonym_key:
        raise PuhuiError("PUHUI_PSEUDONYM_KEY is not set: export PUHUI_PSEUDONYM_KEY=<a secret "
                         "of 32+ characters> (keep it out of git), or run 'puhui demo' once "
                         "for a local demo key")
    check_warehouse(settings)
    scheme = settings.mlflow_tracking_uri.split(":", 1)[0] if ":" in \
        settings.mlflow_tracking_uri else ""
    if scheme.split("+", 1)[0] not in MLFLOW_SCHEMES and not Path(
            settings.mlflow_tracking_uri).is_absolute():
        raise PuhuiError(
            f"MLFLOW_TRACKING_URI {settings.mlflow_tracking_uri!r} has no scheme MLflow "
            "knows: use sqlite:///path/mlflow.db, postgresql://..., or http://host:5000, or "
            "unset it for the embedded store")
    if prefect is not None and not prefect.ephemeral and prefect.api_url:
        from puhui.prefect_server import is_healthy

        if not is_healthy(prefect.api_url, timeout=3.0):
            fix = ("'puhui server stop' then 'puhui server start'" if prefect.kind == "server"
                   else "start it, or unset PREFECT_API_URL for a temporary local one")
            raise PuhuiError(f"the Prefect server at {prefect.api_url} does not answer: {fix}")


def usable_warehouse_url(settings: Settings) -> URL:
    """The warehouse URL parsed, with a driver SQLAlchemy has; else the one line that says
    how to set it (``make_url`` raises ``ValueError`` for a port that is not a number)."""
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(settings.warehouse_url)
        url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise PuhuiError(
            "PUHUI_WAREHOUSE_URL is not a usable SQLAlchemy URL: set it like "
            # '***' rather than 'password': every error line goes through scrub_text, which
            # masks whatever stands between 'user:' and '@' in a URL
            "postgresql+psycopg://user:***@host:5432/dbname (*** the password), or unset "
            "it for the embedded SQLite warehouse") from None
    return url


def check_warehouse(
    settings: Settings, *, existing: bool = False, anchored_seq: int | None = None
) -> None:
    """Refuse, in one line that says the fix, a warehouse URL that does not parse, names a
    database SQLAlchemy has no driver for, or does not answer (a read-only command had
    SQLAlchemy's ``ArgumentError`` or ``OperationalError`` with its driver's lines). The
    first connection migrates the warehouse, as ``get_engine`` always does, except with
    ``existing`` (a read whose answer on an empty warehouse is a success): a database puhui
    never migrated is refused then, untouched. `audit verify` migrated an empty PostgreSQL
    database and called it "intact: 0 events" (the missing SQLite file is the CLI's check).
    With ``anchored_seq`` (``audit verify --anchor``) a trail existed: no tables is the trail
    missing, not a database to create one in."""
    from sqlalchemy.exc import OperationalError

    url = usable_warehouse_url(settings)
    try:
        if existing:
            unmigrated = create_warehouse_engine(settings.warehouse_url)
            try:
                revision = current_revision(unmigrated)
            finally:
                unmigrated.dispose()
            shown = url.render_as_string(hide_password=True)
            if revision is None and anchored_seq is not None:
                raise PuhuiError(
                    f"the warehouse {shown} has no puhui tables: the trail anchored at seq "
                    f"{anchored_seq} is missing (emptied, or PUHUI_HOME or "
                    "PUHUI_WAREHOUSE_URL now points elsewhere: check them)")
            if revision is None:
                raise PuhuiError(
                    f"the warehouse {shown} has no puhui "
                    "tables: nothing has run against it (check PUHUI_WAREHOUSE_URL; 'puhui "
                    "db upgrade', 'puhui demo' or 'puhui run ingest' creates them)")
        with get_engine(settings.warehouse_url).connect():
            pass
    except OperationalError as exc:
        if anchored_seq is not None and _postgres_database_missing(url):
            raise PuhuiError(
                f"the warehouse {url.render_as_string(hide_password=True)} does not exist: "
                f"the trail anchored at seq {anchored_seq} is missing (dropped, or "
                "PUHUI_WAREHOUSE_URL now points elsewhere: check it)") from None
        raise PuhuiError(
            f"cannot reach the warehouse {url.render_as_string(hide_password=True)}: "
            f"{error_line(exc)}; "
            "check PUHUI_WAREHOUSE_URL and that the database is up") from None


def _postgres_database_missing(url: URL) -> bool:
    """Whether ``url``'s PostgreSQL server answers and has no database of that name (asked
    through its ``postgres`` database, as the same user): a dropped warehouse, which the
    failed connection's "does not exist" says only in the server's language. False for
    SQLite, or when that cannot be asked (the server down, no access to ``postgres``)."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    if url.get_backend_name() != "postgresql" or not url.database:
        return False
    maintenance = create_warehouse_engine(
        url.set(database="postgres").render_as_string(hide_password=False))
    try:
        with maintenance.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"),
                                 {"name": url.database}).first()
    except SQLAlchemyError:
        return False
    finally:
        maintenance.dispose()
    return found is None


# Tracking URI schemes MLflow resolves (database stores, its server, and files).
MLFLOW_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql", "http", "https",
                            "file", "databricks"})
