"""Warehouse engines that behave alike on SQLite and PostgreSQL, and safe auto-migration.

SQLite is the embedded default: WAL journal, a generous busy timeout and ``BEGIN IMMEDIATE``
for every transaction but a read-only :func:`snapshot`, so concurrent writers queue instead of
failing on a lock upgrade.
PostgreSQL is the production path; cross-process critical sections take a transaction-scoped
advisory lock. Schema changes are Alembic migrations, applied on first use under that lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from puhui.errors import PuhuiError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


WAL_SIZE_LIMIT = 64 * 1024 * 1024
# A C callable: ~2x sqlite3's own str per text cell fetched, a Python lambda a little more.
_LENIENT_TEXT = partial(str, encoding="utf-8", errors="replace")


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI objects
        # Take transaction control away from pysqlite so BEGIN IMMEDIATE below is ours.
        dbapi_connection.isolation_level = None
        # SQLite keeps any bytes as TEXT (a hand edit: CAST(X'ff' AS TEXT)); sqlite3's strict
        # decoding failed the whole fetch, so one edited cell stopped every listing and
        # `audit verify`. Replaced with U+FFFD instead, in every column and reader of this
        # warehouse (valid UTF-8 reads as before; MLflow's and Prefect's engines are theirs).
        dbapi_connection.text_factory = _LENIENT_TEXT
        cursor = dbapi_connection.cursor()
        # The result, not the request: ":memory:", or a filesystem without shared memory,
        # stays in a rollback journal, where a snapshot's deferred BEGIN would keep a SHARED
        # lock writers fail on at COMMIT (after their work) instead of waiting at BEGIN.
        mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        _record.info[_WAL] = str(mode).lower() == "wal"
        cursor.execute("PRAGMA busy_timeout=60000")
        # A checkpoint truncates the WAL back to this: a long snapshot lets it grow meanwhile
        # (nothing can be checkpointed past its moment), and without a limit the file keeps
        # its peak size on disk for good.
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A snapshot's plain BEGIN: in WAL mode a reader holds no lock writers wait for, and
        # sees one committed moment from its first read on. Not in WAL mode: BEGIN IMMEDIATE,
        # so writers wait at their BEGIN until the reads are done.
        deferred = (conn.get_execution_options().get(_SNAPSHOT)
                    and conn.connection.info.get(_WAL))
        conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


# libpq's: probes after 30 s idle, every 10 s, 3 unanswered end the connection (60 s).
_PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                  "keepalives_count": 3}
# A held lock's connection (every ``held_lock`` on PostgreSQL: the training, model and
# split locks) sends only its `SELECT 1`s and unlock: one unacknowledged this long ends it
# (not the engine's: a COPY to a server stalled longer would be cut).
LOCK_TCP_USER_TIMEOUT_MS = 60_000


def missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite ``url`` when it does not exist, absolute (a relative URL is
    relative to the working directory, which a worker's may not share), else None (another
    dialect, an in-memory database, or the file is there). A command that only reads checks
    this first: opening the URL would create an empty warehouse, and then report on nothing."""
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # not a URL (or a port not a number): check_warehouse
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path.resolve()


def create_warehouse_engine(url: str) -> Engine:
    """A new engine for ``url`` with the dialect-specific settings above (not migrated)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})
        _install_sqlite_hooks(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            raise PuhuiError("PostgreSQL warehouse URLs must use psycopg 3: postgresql+psycopg://")
        # A silently dropped network (no RST) is noticed within a minute on an idle
        # connection instead of the OS's 2 h; settings given in the URL win.
        keepalives = {key: value for key, value in _PG_KEEPALIVES.items()
                      if key not in parsed.query}
        return create_engine(url, pool_pre_ping=True, connect_args=keepalives)
    raise PuhuiError(f"unsupported warehouse dialect {parsed.get_backend_name()!r}")


_T = TypeVar("_T")
IN_LIST_SIZE = 500


def in_list_chunks(values: Sequence[_T], size: int = IN_LIST_SIZE) -> Iterator[Sequence[_T]]:
    """``values`` in slices of at most ``size``, one ``IN (...)`` list each: a statement's
    bound parameters are capped (SQLite: 32,766, 999 before 3.32)."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def lock_for(conn: Connection, name: str) -> None:
    """Serialize a critical section across processes until the transaction ends.

    PostgreSQL: a transaction-scoped advisory lock keyed by ``name``. SQLite: the
    ``BEGIN IMMEDIATE`` every transaction starts with already holds the database write lock.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(name)})


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


_SNAPSHOT = "puhui_snapshot"
_WAL = "puhui_wal"


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A read-only connection whose reads all see one committed moment, for comparing two
    tables that writers change together (the audit trail and the ledger): read in two
    transactions, a commit between them reads as a disagreement.

    PostgreSQL: one REPEATABLE READ transaction (a long one holds back vacuum until it
    ends). SQLite in WAL mode (what :func:`create_warehouse_engine` sets): a deferred
    ``BEGIN``, whose snapshot (taken at its first read) writers do not wait for; a writer
    commits its rows and their event together, so the snapshot holds both or neither. A
    write in it would fail once another writer has committed, so write nothing. SQLite not
    in WAL mode (``:memory:``, or the pragma did not take): ``BEGIN IMMEDIATE``, writers
    wait until the reads are done.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        else:
            conn = conn.execution_options(**{_SNAPSHOT: True})
        with conn.begin():
            yield conn


_memory_locks: dict[str, threading.Lock] = {}


def _lost(name: str, how: str) -> PuhuiError:
    return PuhuiError(f"lost the lock {name} ({how}); another process may hold it now: "
                      "stopped here, run the command again")


def _file_still_held(name: str, path: Path, fd: int) -> None:
    # A lock file deleted (or replaced) while held: the next taker creates a new file and
    # locks it at once.
    try:
        same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except OSError:
        same = False
    if not same:
        raise _lost(name, f"its file {path} was removed or replaced")


def _set_tcp_user_timeout(conn: Connection, milliseconds: int) -> None:
    """What libpq's ``tcp_user_timeout`` sets, on one pooled connection only (no Unix socket)."""
    with socket.socket(fileno=os.dup(conn.connection.dbapi_connection.pgconn.socket)) as sock:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)


@contextmanager
def held_lock(engine: Engine, name: str,
              on_wait: Callable[[str | None], None] | None = None, *,
              unless_read_only: bool = False) -> Iterator[Callable[[], None]]:
    """Hold a cross-process lock ``name`` across several transactions (and other stores).

    Unlike ``lock_for`` it outlives a transaction, and the operating system releases it when
    the holder dies, even by ``kill -9``: PostgreSQL ends the session's advisory lock when
    the connection drops; on SQLite it is an ``flock`` on a file beside the database.
    ``on_wait``: called once before waiting, when another process holds the lock, with the
    holder (``pid N on HOST``) where known (SQLite: its holder writes it in the lock file).
    Yields ``still_held``: raises ``PuhuiError`` once the lock was lost while held (the
    server ended its connection: ``pg_terminate_backend``, ``idle_session_timeout``, a
    restart; the lock file deleted or replaced), so that a long holder checks before a step
    another holder must not repeat, instead of going on unprotected: it says whether the
    lock was held at the check, not during the step that follows it. A silently dropped
    network (no RST) is noticed within about a minute: the engine's keepalives while the
    connection idles or waits for the lock, a ``SELECT 1`` unacknowledged for
    ``LOCK_TCP_USER_TIMEOUT_MS`` (without them: ~15 min of retransmits, or hours idle). The
    server may keep the session, and so the lock, until its own keepalives end it: the next
    training waits meanwhile. ``unless_read_only`` (SQLite): a lock file this process may not
    create or open for writing (``EACCES``, ``EROFS``) means no lock rather than an error,
    for a caller that needs the lock only for writes it could not make there either.
    """
    if engine.dialect.name == "postgresql":
        key = {"key": _lock_key(name)}
        with engine.connect() as conn:
            got = on_wait is not None and conn.execute(
                text("SELECT pg_try_advisory_lock(:key)"), key).scalar()
            if not got:
                if on_wait is not None:
                    on_wait(None)
                conn.execute(text("SELECT pg_advisory_lock(:key)"), key)
            conn.commit()

            def still_held() -> None:
                # The session lock lasts as long as the session: a live one still holds it.
                try:
                    conn.execute(text("SELECT 1"))
                    conn.commit()
                except DBAPIError:
                    raise _lost(name, "the warehouse ended its connection") from None

            try:
                # Inside: had it raised (os.dup at EMFILE), the connection went back to the
                # pool still holding the session lock (a pool reset does not release it).
                _set_tcp_user_timeout(conn, LOCK_TCP_USER_TIMEOUT_MS)
                yield still_held
            finally:
                try:
                    if not conn.invalidated:
                        conn.execute(text("SELECT pg_advisory_unlock(:key)"), key)
                        conn.commit()
                        _set_tcp_user_timeout(conn, 0)  # back to the pool as it came
                except DBAPIError as error:
                    if not error.connection_invalidated:
                        raise  # a dropped session's locks went with it: nothing to undo
        return
    database = engine.url.database
    if not database or database == ":memory:":
        lock = _memory_locks.setdefault(name, threading.Lock())
        if not lock.acquire(blocking=False):
            if on_wait is not None:
                on_wait(None)
            lock.acquire()
        try:
            yield lambda: None
        finally:
            lock.release()
        return
    path = Path(f"{database}.{name}.lock")
    while True:
        # Never through a link: the holder's line below would truncate its target. O_APPEND:
        # truncate(0) keeps the write position, so the line would land after NUL bytes.
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o666)
        except OSError as error:
            if not (unless_read_only and error.errno in (errno.EACCES, errno.EROFS)):
                link = ("; a link there is not followed: remove it"
                        if error.errno == errno.ELOOP else "")
                raise PuhuiError(f"lock file {path}: cannot be opened ({error.strerror}){link}"
                                 ) from None
            fd = None
        if fd is None:
            yield lambda: None
            return
        with os.fdopen(fd, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    handle.seek(0)
                    on_wait(handle.read().strip() or None)
                fcntl.flock(handle, fcntl.LOCK_EX)
            still_held = partial(_file_still_held, name, path, fd)
            try:
                still_held()
            except PuhuiError:
                continue  # locked a file removed meanwhile: lock the one at the path now
            try:
                if on_wait is not None:  # for the next waiter's line
                    handle.truncate(0)
                    handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
                    handle.flush()
                yield still_held
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
            return


def _alembic_config(conn: Connection) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    """The newest migration shipped with this code."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at (None for an empty database)."""
    stamped = _stamped_revisions(engine)
    if len(stamped) > 1:  # as Alembic refuses it: our chain has one head
        raise PuhuiError(f"the warehouse is stamped with several revisions {stamped}: "
                         "resolve them with alembic before using it")
    return stamped[0] if stamped else None


def upgrade_schema(engine: Engine) -> str:
    """Migrate to the head revision; safe when several processes start at once.

    An up-to-date database, every command's case, is recognised without importing Alembic
    (half a second of a read-only command's start); anything else goes through Alembic.
    """
    declared = _declared_head()
    if declared is not None and current_revision(engine) == declared:
        return declared
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    head = head_revision()
    if current_revision(engine) == head:
        return head
    with engine.begin() as conn:
        lock_for(conn, "puhui.schema")
        # Re-check under the lock: another process may have migrated while we waited.
        if MigrationContext.configure(conn).get_current_revision() != head:
            command.upgrade(_alembic_config(conn), "head")
    return head


_REVISION = re.compile(r"^revision\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(
    r"^down_revision\s*(?::[^=]*)?=\s*(?:None|['\"]([^'\"]+)['\"])\s*$", re.MULTILINE)


def _declared_head() -> str | None:
    """The head of a linear migration chain, read from the scripts' ``revision`` and
    ``down_revision`` lines; None when that is not certain (Alembic decides then)."""
    revisions, parents = set(), set()
    for script in MIGRATIONS_DIR.joinpath("versions").glob("*.py"):
        source = script.read_text(encoding="utf-8")
        revision, down = _REVISION.findall(source), _DOWN_REVISION.findall(source)
        if len(revision) != 1 or len(down) != 1:
            return None
        revisions.add(revision[0])
        parents.add(down[0])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _stamped_revisions(engine: Engine) -> list[str]:
    """The revisions recorded in the database's ``alembic_version`` table."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return []
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def get_engine(url: str) -> Engine:
    """The process-wide engine for ``url``, migrated to head on first use."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_warehouse_engine(url)
            upgrade_schema(engine)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (tests, and before forking)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
