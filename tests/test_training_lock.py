"""Two trainings of one model at once: the training lock serializes them.

Before: two identical ``puhui run train risk`` started together both found no gated version
of their fingerprint and registered two (v1 and v2, both gated). Re-checking under the model
lock could not help: the first's version is still ungated then, and an ungated version must
not count (its training may have been killed). Now a training holds a lock of its model from
before its fingerprint check to its gate verdict; the second waits, then skips as unchanged.

Deterministic without test hooks: the test holds the training lock's flock file itself,
starts both trainings, waits until the kernel lists both as blocked on it (/proc/locks),
then lets go.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from puhui.lifecycle.publish import FINGERPRINT_TAG, find_version_by_fingerprint
from puhui.registry import mlflow_client
from puhui.runtime import open_runtime
from puhui.settings import load_settings
from puhui.warehouse.engine import create_warehouse_engine, held_lock
from tests.conftest import RISK_AS_OF
from tests.test_crash_model_changes import (  # noqa: F401 - fixtures
    NAME,
    Ran,
    empty_mlflow_store,
    puhui,
    registry_env,
    train_env,
)

WAIT = 180  # seconds a training may take to reach the lock


def _blocked_on(path: Path) -> int:
    """Processes the kernel lists as waiting for an flock on ``path``."""
    inode = f":{os.stat(path).st_ino} "
    return sum(1 for line in Path("/proc/locks").read_text().splitlines()
               if "->" in line and inode in line)


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)  # the PostgreSQL path: held_lock
def test_two_identical_trainings_at_once_register_one_version(train_env: Path,  # noqa: F811
                                                              dialect: str) -> None:
    database = open_runtime().engine.url.database
    lock_path = Path(f"{database}.puhui.training.{NAME}.lock")
    command = [sys.executable, "-m", "puhui", "run", "train", "risk", "--as-of", RISK_AS_OF]
    # The MLflow store exists, as after any earlier command: two first uses of an empty one
    # at once race in MLflow's own schema migration (one fails), a different matter.
    client = mlflow_client(load_settings().mlflow_tracking_uri)
    client.search_experiments()
    processes: list[subprocess.Popen] = []
    with lock_path.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"pid {os.getpid()} on the test")
        held.flush()
        try:
            for _ in range(2):
                processes.append(subprocess.Popen(command, env=dict(os.environ), text=True,
                                                  stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE))
            deadline = time.monotonic() + WAIT
            # Old code takes no lock: both run to the end (two versions, asserted below).
            while _blocked_on(lock_path) < 2 and any(p.poll() is None for p in processes):
                assert time.monotonic() < deadline, "the trainings never waited for the lock"
                time.sleep(0.2)
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
            for process in processes:
                if process.poll() is None and time.monotonic() > deadline:
                    process.kill()
    ran = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        ran.append(Ran(process.returncode, out, err))
    assert all(r.returncode == 0 for r in ran), [r.stderr[-2000:] for r in ran]
    versions = [str(v.version) for v in client.search_model_versions(f"name='{NAME}'")]
    assert versions == ["1"]
    skipped = ["unchanged: v1 was trained on the same data" in r.stdout for r in ran]
    assert sorted(skipped) == [False, True], [r.stdout[-2000:] for r in ran]
    for r in ran:  # each said why it stood still, naming who held the lock
        assert (f"waiting for another training of {NAME} (pid {os.getpid()} on the test)..."
                in r.stdout), r.stdout[-2000:]


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_the_newest_gated_version_of_a_fingerprint_is_found(
        registry_env: dict[str, str], puhui: Callable[..., Ran]) -> None:  # noqa: F811
    # Before: the first match in MLflow's order (last update first) was returned, so v1
    # edited after v2 existed (its description here) became "the" version of the fingerprint.
    uri = load_settings().mlflow_tracking_uri
    client = mlflow_client(uri)
    older, newer = registry_env["passed1"], registry_env["passed2"]
    for version in (older, newer, registry_env["ungated"]):
        client.set_model_version_tag(NAME, version, FINGERPRINT_TAG, "same")
    time.sleep(0.01)
    client.update_model_version(NAME, older, description="edited last")
    assert find_version_by_fingerprint(uri, NAME, "same") == newer


def test_a_waiter_is_told_once_who_holds_the_lock(warehouse_url: str) -> None:
    # The new try-then-wait path of held_lock on each dialect (the training lock's waiting
    # line); the holder is named on SQLite only (its lock file says so).
    engine = create_warehouse_engine(warehouse_url)
    told: list[str | None] = []
    got = threading.Event()

    def second() -> None:
        with held_lock(engine, "puhui.training.test", on_wait=told.append):
            got.set()

    try:
        with held_lock(engine, "puhui.training.test", on_wait=told.append):
            assert told == []  # free: taken at once, nobody told
            waiter = threading.Thread(target=second, daemon=True)
            waiter.start()
            deadline = time.monotonic() + 30
            while not told and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not got.is_set()
        waiter.join(30)
        assert got.is_set()
        holder = (f"pid {os.getpid()} on {socket.gethostname()}"
                  if engine.dialect.name == "sqlite" else None)
        assert told == [holder]
    finally:
        engine.dispose()


def test_a_registry_error_is_not_read_as_no_version_of_the_fingerprint(
        empty_mlflow_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    # Before: any MLflow error read as "no version", so a training during a registry outage
    # trained and registered a duplicate of an existing version. Only "no such model" is none.
    from puhui.errors import PuhuiError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    assert find_version_by_fingerprint(f"sqlite:///{empty_mlflow_store}", NAME,
                                       "same") is None
    down = "http://ops:s3cr3t-pw@127.0.0.1:9"  # the discard port: refused
    with pytest.raises(PuhuiError) as refused:
        find_version_by_fingerprint(down, NAME, "same")
    message = str(refused.value)
    assert message.startswith(f"model registry error reading the versions of {NAME}: ")
    assert "\n" not in message and "s3cr3t-pw" not in message, message


_CREATE = """
import sys, time
from pathlib import Path
import mlflow.store.db.utils as db_utils
import mlflow.store.model_registry.sqlalchemy_store as registry_store
from puhui.registry import mlflow_client

uri, signals, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
create_tables = db_utils._initialize_tables

def creating(engine):
    # A barrier, not a delay: the first process stays inside MLflow's creation of the tables
    # until the test lets it go, so the second one's attempt falls within it every time.
    (signals / f"{name}.creating").touch()
    while name == "first" and not (signals / "go").exists():
        time.sleep(0.01)
    create_tables(engine)

db_utils._initialize_tables = registry_store._initialize_tables = creating
mlflow_client(uri).search_experiments()
"""


def _waiting_for_a_flock(pid: int, lock_file: Path) -> bool:
    """Whether process ``pid`` is blocked on an ``flock`` of ``lock_file`` (a ``->`` line of
    /proc/locks naming its device and inode: a wait on any other flock is not this one)."""
    stat = lock_file.stat()
    file_id = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and fields[fields.index("->") + 1] == "FLOCK" and \
                fields[fields.index("->") + 4:fields.index("->") + 6] == [str(pid), file_id]:
            return True
    return False


def _until(condition: Callable[[], bool], processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), [
            p.communicate()[1][-2000:] for p in processes if p.poll() is not None]
        time.sleep(0.01)


@pytest.mark.slow  # MLflow's whole migration chain once, and two interpreters importing it
@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs /proc/locks (Linux)")
def test_two_processes_creating_one_new_mlflow_store_take_turns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: both found no tables and ran MLflow's migrations into one SQLite file at
    # once, and one (or both) failed inside them. Now the first creation holds an flock
    # beside the database file; the second waits and finds the store made. No timing: the
    # first is held inside MLflow's table creation until the second is seen either
    # creating too (the race) or blocked on the store's lock (/proc/locks).
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", _CREATE, uri, str(tmp_path), name],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start("first")
    _until((tmp_path / "first.creating").exists, [first])
    [lock_file] = (tmp_path / "new").glob("*.puhui.mlflow_store.lock")  # the first holds it
    second = start("second")
    _until(lambda: (tmp_path / "second.creating").exists()
           or _waiting_for_a_flock(second.pid, lock_file), [first, second])
    assert not (tmp_path / "second.creating").exists(), "created the tables at the same time"
    (tmp_path / "go").touch()
    ended = [(p.wait(timeout=WAIT), p.stderr.read()) for p in (first, second)]
    assert [code for code, _ in ended] == [0, 0], [err[-3000:] for _, err in ended]
    assert not (tmp_path / "second.creating").exists()  # it found the store made
    assert [e.name for e in mlflow_client(uri).search_experiments()] == ["Default"]

    # A reader that may not write beside the store (a read-only folder: EROFS; as root, a
    # chmod would not stop it) read it without the lock; before, it was refused with "lock
    # file ...: cannot be opened". The lock is for creating the store, which it cannot.
    import errno

    import puhui.registry_read

    real_open = os.open

    def read_only(path: object, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".puhui.mlflow_store.lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(puhui.registry_read, "_CREATED", set())
    monkeypatch.setattr(os, "open", read_only)
    assert [e.name for e in mlflow_client(uri).search_experiments()] == ["Default"]
