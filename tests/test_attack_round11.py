"""Attack round 11: the code round 10 landed, attacked (see README, "Round 11")."""

from __future__ import annotations

import functools
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

from puhui.config import (
    MAX_CONFIG_BYTES,
    check_config_dir,
    config_hash,
    validate_config_dir,
)
from puhui.errors import PuhuiError
from puhui.lifecycle.publish import training_lock
from puhui.settings import repo_root
from puhui.throwaway_postgres import PostgresServer
from puhui.warehouse.engine import create_warehouse_engine, held_lock, upgrade_schema

CONFIGS = repo_root() / "configs"
EXPECTATIONS = repo_root() / "expectations"


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """A blocking read (a FIFO's) fails the test instead of hanging the suite."""
    def expired(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _plant(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "not utf-8":
        path.write_bytes(b"products:\n  - name: \"\xff\xfe\"\n")
    else:  # oversized: valid YAML, a comment past the cap
        path.write_bytes(b"products: []\n#" + b"x" * MAX_CONFIG_BYTES + b"\n")


@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "not utf-8", "oversized"])
def test_a_hostile_config_file_is_one_line_naming_it(tmp_path: Path, kind: str) -> None:
    """`config check` waited for good on a FIFO, read /dev/zero to a MemoryError, and printed
    IsADirectoryError / UnicodeDecodeError without the file's name; an extra FIFO `*.yaml`
    passed check_config_dir and blocked the run's config hash after Prefect started."""
    configs, extra = tmp_path / "configs", tmp_path / "extra"
    for folder in (configs, extra):
        shutil.copytree(CONFIGS, folder)
    (configs / "products.yaml").unlink()
    _plant(configs / "products.yaml", kind)
    with _deadline(20), pytest.raises(PuhuiError) as refused:
        validate_config_dir(configs)
    line = str(refused.value)
    assert line.startswith(f"{configs / 'products.yaml'}:") and "\n" not in line, line
    if kind in ("fifo", "device", "folder"):
        _plant(extra / "extra.yaml", kind)
        with _deadline(20):
            for check in (check_config_dir,
                          functools.partial(config_hash, expectations_dir=EXPECTATIONS)):
                with pytest.raises(PuhuiError, match="extra.yaml: not a regular file"):
                    check(extra)


def test_an_editors_lock_link_in_the_config_folder_is_not_a_config_file(tmp_path: Path) -> None:
    """Emacs' lock link '.#models.yaml' (a link to nothing) while a config was edited failed
    check_config_dir with 'config file is missing' and the run's config hash."""
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    before = config_hash(configs, expectations_dir=EXPECTATIONS)
    (configs / ".#models.yaml").symlink_to("root@host.1234:1700000000")
    check_config_dir(configs)
    assert validate_config_dir(configs) == sorted(os.listdir(CONFIGS))
    assert config_hash(configs, expectations_dir=EXPECTATIONS) == before
    (configs / "models.yaml").unlink()
    (configs / "models.yaml").symlink_to(tmp_path / "gone.yaml")
    with pytest.raises(PuhuiError, match="models.yaml: a link to nothing$"):
        validate_config_dir(configs)


def test_a_config_fifo_is_refused_without_being_opened(tmp_path: Path) -> None:
    """The config file was opened, then checked: opening acts on some files (a watchdog
    device arms, a tape rewinds; a FIFO's waiting writer wakes, seen here)."""
    import threading

    from puhui.config import read_config_bytes

    fifo = tmp_path / "extra.yaml"
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer() -> None:
        with open(fifo, "wb"):
            opened.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    thread.join(0.3)  # blocked in open(), waiting for a reader
    with pytest.raises(PuhuiError, match="not a regular file"):
        read_config_bytes(fifo)
    woke = opened.wait(0.2)
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # lets the writer go
    thread.join(5)
    assert not woke


def test_a_training_lock_lost_while_held_is_noticed(warehouse_url: str) -> None:
    """The training lock's PostgreSQL connection ended by the server (pg_terminate_backend;
    idle_session_timeout or a restart alike), or its SQLite lock file deleted, let the next
    training take the lock at once while the first went on unprotected to register its
    version, and on PostgreSQL the first's exit raised the driver's OperationalError. Now
    the holder's still_held() (called before registering and before the verdict) says so."""
    engine = create_warehouse_engine(warehouse_url)
    upgrade_schema(engine)  # the training lock takes a generation there
    told: list[str] = []
    try:
        with training_lock(engine, "round11", told.append) as still_held:
            still_held()
            if engine.dialect.name == "postgresql":
                with engine.connect() as other:
                    ended = other.execute(text(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = "
                        "'advisory' AND pid <> pg_backend_pid() AND database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database())"
                    )).scalars().all()
                    other.commit()
                assert ended == [True]
            else:
                Path(f"{engine.url.database}.puhui.training.round11.lock").unlink()
            with training_lock(engine, "round11", told.append):
                assert told == []  # the next training took it at once: the first must stop
            with pytest.raises(PuhuiError, match="^lost the lock puhui.training.round11 "):
                still_held()
    finally:
        engine.dispose()


def _warehouse_sockets(port: int) -> list[tuple[int, int]]:
    """(TCP_KEEPIDLE, TCP_USER_TIMEOUT) of this process's TCP sockets to the server."""
    import socket

    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        with sock:
            if sock.family in (socket.AF_INET, socket.AF_INET6) \
                    and sock.getpeername()[1] == port:
                found.append((sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                              sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)))
    return found


def test_a_silent_network_drop_is_bounded_on_the_lock_connection(
        pg_server: PostgresServer) -> None:
    """Nothing bounded a silently dropped network (no RST): still_held's SELECT 1 retried
    for ~15 min (tcp_retries2) and an idle connection waited for the OS's 2 h keepalive."""
    engine = create_warehouse_engine(pg_server.create_database("round11_keepalive"))
    upgrade_schema(engine)  # the training lock takes a generation there
    port = engine.url.port
    try:
        with training_lock(engine, "round11", print) as still_held:
            still_held()
            assert (30, 60_000) in _warehouse_sockets(port)
        after = _warehouse_sockets(port)  # other tests' engines may hold sockets too
        assert (30, 0) in after and (30, 60_000) not in after  # pooled, back as it came
    finally:
        engine.dispose()


def test_a_failed_timeout_setting_does_not_leave_the_lock_held_in_the_pool(
        pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set outside the try that unlocks, a failure of the TCP_USER_TIMEOUT setting (os.dup
    at EMFILE) returned the connection to the pool still holding the session lock: every
    other holder waited until the engine was disposed."""
    import errno

    import puhui.warehouse.engine as warehouse_engine

    url = pg_server.create_database("round11_timeout")
    engine, other = create_warehouse_engine(url), create_warehouse_engine(url)
    setting = warehouse_engine._set_tcp_user_timeout

    def out_of_descriptors(conn: object, milliseconds: int) -> None:
        if milliseconds:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        setting(conn, milliseconds)  # the reset on the way out

    monkeypatch.setattr(warehouse_engine, "_set_tcp_user_timeout", out_of_descriptors)
    try:
        with pytest.raises(OSError), held_lock(engine, "round11"):
            pass
        with other.connect() as conn:  # another session: the pooled one would re-enter it
            assert conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                {"k": warehouse_engine._lock_key("round11")}).scalar()
    finally:
        engine.dispose()
        other.dispose()


def test_a_lost_postgresql_lock_exits_quietly_without_still_held(
        pg_server: PostgresServer) -> None:
    """The holder's exit after the server ended its session raised psycopg's AdminShutdown;
    exiting without a still_held() first goes through held_lock's own unlock."""
    engine = create_warehouse_engine(pg_server.create_database("round11_exit"))
    try:
        with held_lock(engine, "round11"), engine.connect() as other:
            assert other.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND database = (SELECT oid FROM pg_database WHERE datname = "
                "current_database())")).scalars().all() == [True]
            other.commit()
    finally:
        engine.dispose()


def test_a_lock_file_removed_while_waited_on_is_locked_again(tmp_path: Path) -> None:
    """A waiter that gets the flock of a file removed meanwhile locks the one at the path
    (else the next taker, creating a new file, would lock it at once beside it)."""
    import threading

    engine = create_warehouse_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    lock_file = Path(f"{engine.url.database}.round11.lock")
    held, release, waiting = threading.Event(), threading.Event(), threading.Event()
    took: list[int] = []

    def first() -> None:
        with held_lock(engine, "round11"):
            held.set()
            release.wait(10)

    def second() -> None:
        with held_lock(engine, "round11", on_wait=lambda _: waiting.set()) as still_held:
            still_held()
            took.append(os.stat(lock_file).st_ino)

    threads = [threading.Thread(target=first)]
    threads[0].start()
    assert held.wait(10)
    threads.append(threading.Thread(target=second))
    threads[1].start()
    assert waiting.wait(10)
    threads[1].join(0.3)  # in flock() on the old file
    lock_file.unlink()
    release.set()
    for thread in threads:
        thread.join(10)
    engine.dispose()
    assert len(took) == 1 and lock_file.exists()


def test_a_link_at_the_training_lock_file_is_not_followed(tmp_path: Path) -> None:
    """The holder writes 'pid N on HOST' in its lock file for the next waiter: through a
    link planted at its path it truncated the link's target."""
    engine = create_warehouse_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    Path(f"{engine.url.database}.puhui.training.round11.lock").symlink_to(target)
    try:
        with pytest.raises(PuhuiError, match="a link there is not followed"), \
                training_lock(engine, "round11", print):
            pass
        assert target.read_text() == "keep me\n"
    finally:
        engine.dispose()


def test_the_training_lock_file_holds_its_holder_line_only(tmp_path: Path) -> None:
    """The lock file was opened without O_APPEND: truncate(0) kept the write position, so
    each holder wrote its 'pid N on HOST' line after the last one's length of NUL bytes (15,
    30, 45 bytes...), and the next waiter printed the NULs."""
    import socket

    engine = create_warehouse_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    upgrade_schema(engine)  # the training lock takes a generation there
    lock_file = Path(f"{engine.url.database}.puhui.training.round11.lock")
    try:
        for _ in range(2):
            with training_lock(engine, "round11", print):
                pass
        assert lock_file.read_bytes() == f"pid {os.getpid()} on {socket.gethostname()}".encode()
    finally:
        engine.dispose()


def test_identifiers_typed_in_full_width_digits_are_masked() -> None:
    """A Chinese input method's full-width mode types '１３８１２３４５６７８': a phone so typed
    into a free-text column was neither counted nor masked by ingestion (loaded raw into the
    warehouse), and error lines and log records printed it."""
    import pyarrow as pa

    from puhui.privacy import (
        count_identifiers_in_column,
        find_raw_identifiers,
        mask_identifiers_in_column,
    )

    notes = pa.array(["call １３８１２３４５６７８ today",
                      "id １１０１０５１９４９１２３１００２Ｘ",
                      "＋８６ １３８ １２３４ ５６７８", "order １２３４５６７８９０１２３", "ok",
                      # full-width separators: U+3000, U+FF0D, U+FF0E
                      "１３８\u3000１２３４\u3000５６７８", "１３８\uff0d１２３４\uff0d５６７８",
                      "１１０１０５\uff0e１９４９１２３１\uff0e００２Ｘ"])
    assert count_identifiers_in_column(notes) == 6
    assert mask_identifiers_in_column(notes).to_pylist() == [
        "call [identifier masked] today", "id [identifier masked]", "[identifier masked]",
        "order １２３４５６７８９０１２３", "ok"] + ["[identifier masked]"] * 3
    assert find_raw_identifiers("refused: １３８１２３４５６７８") == ["phone number"]
    for spaced in notes.to_pylist()[-3:]:
        assert find_raw_identifiers(spaced), spaced



def test_parquet_columns_outside_the_contract_are_never_decoded(tmp_path: Path) -> None:
    """Every column of a Parquet file was decoded, then the ones outside the contract were
    dropped ('extra column(s) ignored'). A column chunk is bounded only by 4 read blocks
    decompressed, so 11 extra columns of plain text whose long values sit in the last rows
    (0.97 MB of zstd, 200,000 rows) grew the reader by 346 MB against a 4 MB block; reading
    the contract's columns only, 53 MB (README, Round 11). Checked cheaply: what is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from puhui.config import PartnersConfig, load_config
    from puhui.ingest.reading import file_columns, iter_file_chunks, open_landed_file

    feed = load_config(CONFIGS, PartnersConfig).get("product_events")
    path = tmp_path / "extra.parquet"
    pq.write_table(pa.table({"extra_text": ["x" * 100] * 10, "event_id": ["e"] * 10}), path)
    handle = open_landed_file(str(path))
    chunks = list(iter_file_chunks(handle, feed, file_columns(handle, feed), 1 << 20))
    assert [chunk.column_names for chunk in chunks] == [["event_id"]]
    assert sum(chunk.num_rows for chunk in chunks) == 10


def test_a_parquet_file_without_the_contracts_columns_counts_its_rows(tmp_path: Path) -> None:
    """A Parquet file holding none of the contract's columns (all renamed, or 'EVENT_ID' for
    'event_id') was held with 0 rows: its rows were counted from the columns read, and only
    the contract's are. count_parsed_rows gives the held batch its row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from puhui.config import PartnersConfig, load_config
    from puhui.ingest.reading import count_parsed_rows, open_landed_file

    feed = load_config(CONFIGS, PartnersConfig).get("product_events")
    path = tmp_path / "renamed.parquet"
    pq.write_table(pa.table({"EVENT_ID": ["e"] * 10, "Customer": ["c"] * 10}), path,
                   row_group_size=4)
    assert count_parsed_rows(open_landed_file(str(path)), feed) == 10
