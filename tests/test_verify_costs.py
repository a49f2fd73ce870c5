"""What `audit verify` reads on each call: the model files of an aliased version are hashed
again only when what the store says about them changed (a same-size rewrite with its mtime
put back included), and the versions' run metrics come in one query, not one per version."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest

from puhui import registry as registry_module
from puhui.audit import events_of
from puhui.landing import CONTENT_MARKER_KEYS, change_marker
from puhui.model_fingerprints import VerifiedFiles, files_signature
from puhui.registry import REGISTERED, _registered_digests, mlflow_client
from puhui.registry_read import SqlRegistry, download_uri
from puhui.runtime import open_runtime
from puhui.settings import load_settings
from puhui.throwaway_mlflow_server import requests_logged, running_mlflow_server
from tests import test_crash_model_changes as crash_tests
from tests.test_attack_round8_mends import _model_folder
from tests.test_crash_model_changes import NAME, Ran

empty_mlflow_store = crash_tests.empty_mlflow_store
registry_env = crash_tests.registry_env
puhui = crash_tests.puhui


def _hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folders ``audit verify`` hashes from now on."""
    hashed: list[Path] = []
    real = registry_module.model_files_digest

    def counted(folder: Path) -> str:
        hashed.append(folder)
        return real(folder)

    monkeypatch.setattr(registry_module, "model_files_digest", counted)
    return hashed


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_verify_rehashes_model_files_only_when_they_changed(
    registry_env: dict[str, str], puhui: Callable[..., Ran],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1 = registry_env["passed1"]
    assert puhui("models", "promote", NAME, "--version", v1, "--reason", "r").returncode == 0
    hashed = _hashes(monkeypatch)
    for expected in (1, 0):  # hashed once, then known by the files' signature
        assert puhui("audit", "verify").returncode == 0
        assert len(hashed) == expected, hashed
        hashed.clear()

    # Same size, same bytes count, its mtime put back: only the kernel's ctime tells.
    pickle = _model_folder(v1) / "python_model.pkl"
    before, content = pickle.stat(), pickle.read_bytes()
    pickle.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    os.utime(pickle, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert pickle.stat().st_size == before.st_size
    verified = puhui("audit", "verify", "--no-repair")
    assert verified.returncode == 1, verified.stdout
    assert f"{NAME} v{v1}: its model files differ from those registered" in verified.stderr
    assert len(hashed) == 1


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_verify_reads_every_version_s_metrics_in_one_query(
    registry_env: dict[str, str], puhui: Callable[..., Ran],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def one_run(self: SqlRegistry, run_id: str) -> None:
        raise AssertionError("a run read one at a time")

    monkeypatch.setattr(SqlRegistry, "get_run", one_run)
    verified = puhui("audit", "verify", "--no-repair")
    assert verified.returncode == 0, verified.stderr
    assert "MLflow agrees with the trail: 4 version(s)" in verified.stdout


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_verify_through_a_tracking_server_reads_the_runs_in_one_search(
    registry_env: dict[str, str], puhui: Callable[..., Ran], puhui_env: Path,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With an http tracking URI (a real ``mlflow server`` over the registry's store) the
    versions' run metrics came one ``runs/get`` request per version, and their gate tags one
    ``model-versions/get`` each; one ``runs/search`` and the versions' search read them."""
    log = tmp_path / "mlflow-server.log"
    with running_mlflow_server(f"sqlite:///{puhui_env / 'mlflow.db'}", tmp_path / "art",
                               log) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        since = len(log.read_text())
        verified = puhui("audit", "verify", "--no-repair")
        assert verified.returncode == 0, verified.stderr
        assert "MLflow agrees with the trail: 4 version(s)" in verified.stdout
        requests = requests_logged(log, url, since)
        since = len(log.read_text())
        deep = puhui("audit", "verify", "--no-repair", "--deep")
        assert deep.returncode == 0, deep.stderr
        deep_requests = requests_logged(log, url, since)
        # A swapped file is still caught: the URI asked is where the hash reads.
        pickle = _model_folder(registry_env["failed"]) / "python_model.pkl"
        content = pickle.read_bytes()
        pickle.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
        swapped = puhui("audit", "verify", "--no-repair", "--deep")
    assert swapped.returncode == 1, swapped.stdout
    assert f"{NAME} v{registry_env['failed']}: its model files differ" in swapped.stderr
    # --deep: one download-URI request per version; MlflowClient's own call read the
    # registered model first, a second request per version (left: one, for its aliases).
    assert deep_requests.count("/model-versions/get-download-uri") == 4, deep_requests
    assert deep_requests.count("/registered-models/get?") == 1, deep_requests
    assert "/runs/search" in requests
    assert (requests.count("/runs/get"), requests.count("/runs/search")) == (0, 1), requests
    # Over the model's own experiment, not a list of every experiment on the server.
    assert "/experiments/search" not in requests, requests
    # The reconcile's check of each gated version's tags: one search, not a get per version.
    assert requests.count("/model-versions/get") == 0, requests


def test_a_remote_signature_is_a_content_tag_never_a_settable_time() -> None:
    """A listing's time (mtime, LastModified, updated, modify, created) is what a store's
    writer can put back (SFTP utime, HDFS setTimes; ``created`` outlives an in-place
    rewrite): files listed with no content tag get no signature, so verify hashes them each
    time. The memory filesystem lists ``created`` only."""
    fs = fsspec.filesystem("memory")
    fs.pipe("/verify-costs/model/MLmodel", b"flavors: {}")
    try:
        assert "created" in fs.info("/verify-costs/model/MLmodel")
        assert files_signature("memory://verify-costs/model") is None
    finally:
        fs.rm("/verify-costs", recursive=True)
    times = {"mtime": 1, "LastModified": "x", "last_modified": "x", "updated": "x",
             "modify": "x", "created": 1}
    assert change_marker(times, CONTENT_MARKER_KEYS) is None
    assert change_marker({**times, "md5Hash": "q1"}, CONTENT_MARKER_KEYS) == "md5Hash=q1"


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_verify_with_an_anchor_hashes_every_file_whatever_the_cache_says(
    registry_env: dict[str, str], puhui: Callable[..., Ran],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cache's entries are keyed with the audit key, which the local profile keeps in
    PUHUI_HOME beside the cache: its holder can swap a model file and write an entry for the
    new files. ``--anchor`` (for not trusting that holder) must not take the cache's word."""
    v1 = registry_env["passed1"]
    assert puhui("models", "promote", NAME, "--version", v1, "--reason", "r").returncode == 0
    anchor = puhui("audit", "anchor").stdout.strip()
    assert puhui("audit", "verify").returncode == 0  # the cache now holds v1's files

    pickle = _model_folder(v1) / "python_model.pkl"
    content = pickle.read_bytes()
    pickle.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    runtime = open_runtime()
    expected = _registered_digests(events_of(runtime.engine, [REGISTERED]))[(NAME, v1)]
    uri = mlflow_client(runtime.settings.mlflow_tracking_uri).get_model_version_download_uri(
        NAME, v1)
    forged = VerifiedFiles(load_settings().home, runtime.audit.key)
    forged.remember(NAME, v1, expected, files_signature(uri))
    forged.save()
    assert puhui("audit", "verify", "--no-repair").returncode == 0  # the key holder's forgery

    hashed = _hashes(monkeypatch)
    verified = puhui("audit", "verify", "--no-repair", "--anchor", anchor)
    assert verified.returncode == 1, verified.stdout
    assert f"{NAME} v{v1}: its model files differ from those registered" in verified.stderr
    assert len(hashed) == 4  # every version, as --deep


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_every_version_s_gate_tags_are_checked_past_the_first_page(
    registry_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow answers a version search a page at a time (its default page 10,000, here 2):
    a version past the first page was skipped as "missing from MLflow", its gate tags never
    checked. Every gated version's tags, made to disagree with the trail, are reported, and
    every version is compared."""
    from mlflow import MlflowClient

    from puhui import registry_read
    from puhui.registry import GATES_PASSED_TAG, reconcile_model_changes, registry_problems

    monkeypatch.setattr(MlflowClient.search_model_versions, "__defaults__",
                        (None, 2, None, None))
    monkeypatch.setattr(registry_read, "VERSIONS_PAGE", 2)
    runtime = open_runtime()
    client = mlflow_client(runtime.settings.mlflow_tracking_uri)
    assert isinstance(client, MlflowClient)
    wrong = {"passed1": "false", "passed2": "false", "failed": "true"}
    for key, tag in wrong.items():
        client.set_model_version_tag(NAME, registry_env[key], GATES_PASSED_TAG, tag)
    settled = reconcile_model_changes(client, runtime.engine, runtime.audit, repair=False)
    assert sorted(settled.open) == sorted(
        f"{NAME} v{registry_env[key]}: gate tags do not match the trail's verdict"
        for key in wrong)
    problems, n_versions, _ = registry_problems(client, runtime.engine)
    assert n_versions == 4 and not any("missing" in p for p in problems), problems


class _PublicOnly:
    """A real ``MlflowClient`` seen through its public names only: as a later MLflow without
    the private ``_get_registry_client`` would be."""

    def __init__(self, client: object) -> None:
        self._client = client
        self.public_calls = 0

    def __getattr__(self, name: str) -> object:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._client, name)

    def get_model_version_download_uri(self, name: str, version: str) -> str:
        self.public_calls += 1
        return self._client.get_model_version_download_uri(name, version)


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_download_uri_is_the_public_call_s_answer(registry_env: dict[str, str]) -> None:
    """``download_uri`` skips MlflowClient's prompt check through a private MLflow call; its
    URI is the public call's for every version, and a client without that private call
    gets the public one."""
    from mlflow import MlflowClient

    client = mlflow_client(load_settings().mlflow_tracking_uri)
    assert isinstance(client, MlflowClient)
    public_only = _PublicOnly(client)
    for version in registry_env.values():
        public = client.get_model_version_download_uri(NAME, version)
        assert download_uri(client, NAME, version) == public
        assert download_uri(public_only, NAME, version) == public
    assert public_only.public_calls == len(registry_env)


def test_a_database_with_other_tables_leaves_no_pooled_connection_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database ``SqlRegistry`` reached but cannot read (not MLflow's tables) is handed to
    ``MlflowClient``; the connection its reachability check pooled is closed first."""
    import sqlite3

    from mlflow import MlflowClient

    from puhui.registry_read import read_only_registry

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE other (name TEXT)")
    made: list[SqlRegistry] = []
    init = SqlRegistry.__init__

    def kept(self: SqlRegistry, tracking_uri: str) -> None:
        init(self, tracking_uri)
        made.append(self)

    monkeypatch.setattr(SqlRegistry, "__init__", kept)
    assert isinstance(read_only_registry(f"sqlite:///{path}"), MlflowClient)
    assert [r._engine.pool.checkedin() for r in made] == [0]


def test_verify_through_a_dead_tracking_server_fails_without_the_model_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's versions are read before the model lock is taken: a tracking server that
    does not answer fails verify while a promotion holds the lock, not after it lets go (and
    never holds the lock through MLflow's retries itself)."""
    import socket
    import threading

    from mlflow import MlflowClient
    from sqlalchemy import create_engine

    from puhui.registry import MODEL_LOCK, registry_problems
    from puhui.warehouse.engine import held_lock

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    dead = f"http://127.0.0.1:{port}"
    client = MlflowClient(tracking_uri=dead, registry_uri=dead)
    engine = create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    failed: list[BaseException] = []

    def verify() -> None:
        try:
            registry_problems(client, engine)
        except Exception as exc:  # noqa: BLE001 - the refused connection, whatever MLflow wraps
            failed.append(exc)

    with held_lock(engine, MODEL_LOCK):
        reader = threading.Thread(target=verify, daemon=True)
        reader.start()
        reader.join(timeout=20)
        done_under_the_lock = not reader.is_alive()
    reader.join(timeout=60)
    assert done_under_the_lock, "verify waited for the model lock before reading MLflow"
    assert failed
