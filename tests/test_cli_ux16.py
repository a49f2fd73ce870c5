"""A new user's walk through the README (round 16): what the commands said or did that the
README and ``--help`` did not (``audit lineage`` listing every batch without
``--batches``, ``audit log --limit 0`` printing the whole trail, read-only commands
creating an empty warehouse under a mistyped ``PUHUI_HOME`` and calling it intact, help
texts whose ``[default: ...]`` Rich swallowed)."""

from __future__ import annotations

import socket
import sqlite3
import uuid
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pytest
from sqlalchemy import make_url

from puhui.cli import main
from puhui.ingest.ledger import insert_batch
from puhui.registry import register_version, use_experiment
from puhui.runtime import open_runtime
from puhui.settings import load_settings, repo_root
from tests.test_lifecycle import _Constant


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_audit_log_limit_must_be_positive(puhui_env: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    """``--limit 0`` took the last -0 events: all of them (``--limit -3``: all but the
    first three). It is a usage error naming the option now."""
    runtime = open_runtime()
    for n in range(4):
        runtime.audit.record(runtime.engine, "pipeline.daily", f"daily/{n}", {"n": n})
    code, out, _ = _run(capsys, "audit", "log", "--limit", "2")
    assert code == 0 and "2 event(s)" in out and "daily/3" in out and "daily/1" not in out
    for bad in ("0", "-3"):
        code, out, err = _run(capsys, "audit", "log", "--limit", bad)
        assert code == 2 and "'--limit'" in err and len(err.strip().splitlines()) == 1, err
        assert "event(s)" not in out


@pytest.mark.parametrize("argv", [
    ["audit", "verify"], ["audit", "anchor"], ["audit", "log"], ["quarantine", "list"],
    ["quarantine", "show", "customers-"], ["models", "show", "credit_risk", "--version", "1"],
    ["models", "compare", "credit_risk"], ["audit", "lineage", "credit_risk", "--version", "1"],
    ["profiles", "explain", "0" * 64], ["data-docs"]])
def test_a_missing_sqlite_warehouse_is_refused_not_created(
        argv: list[str], puhui_env: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistyped PUHUI_HOME: ``audit verify`` created an empty warehouse (and an audit key)
    there and said "audit trail intact: 0 events", exit 0 (the others: 0 events, 0 batches
    held). The reads whose answer there was an error (no such batch, version, profile;
    data-docs: 0 pages) created it too, and the first ones took it for a warehouse then.
    Now one line naming the file, and nothing is created. (conftest sets PUHUI_AUDIT_KEY for
    every test, and a set key is never written to a file: unset here.)"""
    monkeypatch.delenv("PUHUI_AUDIT_KEY")
    warehouse = puhui_env / "warehouse.db"
    code, out, err = _run(capsys, *argv)
    assert code == 1 and not out, (out, err)
    assert err.strip() == (
        f"puhui: error: no warehouse at {warehouse}: nothing has run with this PUHUI_HOME or "
        "PUHUI_WAREHOUSE_URL (check them; 'puhui db upgrade', 'puhui demo' or 'puhui run "
        "ingest' creates it)")
    assert not warehouse.exists() and not (puhui_env / "audit.key").exists()


def test_db_status_says_there_is_no_warehouse_without_making_one(
        puhui_env: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """``db status`` connected, which made an empty file ("revision none ... needs upgrade"),
    and ``audit verify`` then called that empty warehouse intact."""
    from puhui.warehouse.engine import head_revision

    warehouse = puhui_env / "warehouse.db"
    code, out, _ = _run(capsys, "db", "status")
    assert code == 0 and out.strip() == (
        f"no warehouse at {warehouse}, code {head_revision()}: 'puhui db upgrade', 'puhui "
        "demo' or 'puhui run ingest' creates it"), out
    assert not warehouse.exists()
    code, _, err = _run(capsys, "audit", "verify")
    assert code == 1 and "no warehouse at" in err, err
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", "postgresql+psycopg://app:s3cret@127.0.0.1:abc/wh")
    code, _, err = _run(capsys, "db", "status")  # a port not a number: ValueError's line
    assert code == 1 and err.startswith("puhui: error: PUHUI_WAREHOUSE_URL is not a usable "), err


def test_verify_with_an_anchor_calls_a_missing_warehouse_a_missing_trail(
        puhui_env: Path, capsys: pytest.CaptureFixture) -> None:
    """With ``--anchor`` the auditor knows a trail existed: its file gone is the trail
    deleted, not the fresh home the plain line suggests ('puhui demo' creates it)."""
    code, out, err = _run(capsys, "audit", "verify", "--anchor", "12:" + "ab" * 32)
    assert code == 1 and not out
    assert err.strip() == (
        f"puhui: error: no warehouse at {puhui_env / 'warehouse.db'}: the trail anchored at "
        "seq 12 is missing (deleted, or PUHUI_HOME or PUHUI_WAREHOUSE_URL now points "
        "elsewhere: check them)"), err


def test_lineage_lists_each_batch_only_with_batches(puhui_env: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """The per-partner table's loop variable was named ``batches`` and shadowed the flag:
    every ``audit lineage`` printed one line per batch (131 lines for a 300-user demo)."""
    runtime = open_runtime()
    batch_id = "customers-20260930-0123456789ab"
    with runtime.engine.begin() as conn:
        insert_batch(conn, batch_id=batch_id, partner="customers",
                     source_path="customers/2026-09-30/part-0.csv", checksum="ab" * 32,
                     content_key="ab" * 32, rows=3, rows_loaded=3, status="accepted",
                     landed_at=datetime.now(UTC))
    settings = load_settings()
    use_experiment("credit_risk", runtime.settings.mlflow_tracking_uri,
                   settings.home / "mlartifacts")
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(),
                                       pip_requirements=["mlflow"])
    version = register_version(runtime.engine, runtime.audit, name="credit_risk",
                               model_uri=info.model_uri, run_id=run.info.run_id, tags={},
                               details={"as_of": "2026-09-30", "ingest_batches": [batch_id]})

    code, out, _ = _run(capsys, "audit", "lineage", "credit_risk", "--version", version)
    assert code == 0 and "customers" in out and batch_id not in out, out
    code, out, _ = _run(capsys, "audit", "lineage", "credit_risk", "--version", version,
                        "--batches")
    assert code == 0 and batch_id in out and "ab" * 32 in out, out


@pytest.mark.parametrize(("argv", "shown"), [
    (["demo", "--help"], "[default: 730]"),
    (["models", "compare", "--help"], "[default: the champion]"),
    (["server", "start", "--help"], "[default: PUHUI_PREFECT_PORT"),
    (["--help"], "--verbose"),
    (["run", "--help"], "Exits 1 when the new version fails a gate"),
    (["models", "--help"], "lineage tags, per-segment figures"),
    (["models", "promote", "--help"], "Promote a version that failed its gates"),
    (["models", "promote", "--help"], "The version number to promote"),
])
def test_help_shows_what_it_says(argv: list[str], shown: str,
                                 capsys: pytest.CaptureFixture,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich read ``[default: ...]`` in a help text as markup and dropped it ("Back history
    in the first delivery ."), and kept a docstring's source line breaks ("Exits 1 when the"
    ending a line of `run --help`); the top-level help now names --verbose and --debug."""
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = _run(capsys, *argv)
    # `in` alone matched "\\[default: 730]": the escape showing is a failure too.
    assert code == 0 and shown in out and "\\[" not in out, out


def test_reflowed_help_keeps_click_marks() -> None:
    """The reflow joined every paragraph's lines, so text after ``\\f`` (hidden from help
    by click's convention) was published, and a ``\\b`` block or a list was flattened."""
    import typer

    from puhui.cli import _reflowed_help

    sub = typer.Typer()

    @sub.command()
    def cmd() -> None:
        """First line
        continues here.

        \b
        keep
        as is

        - one
        - two
        \f
        internal: not for help."""

    _reflowed_help(sub)
    [info] = sub.registered_commands
    assert info.help == ("First line continues here.\n\n\b\nkeep\nas is\n\n- one\n- two"), (
        info.help)


@pytest.mark.parametrize(("url", "line"), [
    ("not a url", "puhui: error: PUHUI_WAREHOUSE_URL is not a usable SQLAlchemy URL: "),
    ("postgresql+psycopg://app:s3cret@127.0.0.1:{port}/wh",
     "puhui: error: cannot reach the warehouse postgresql+psycopg://app:***@127.0.0.1:{port}/wh: "),
    # make_url's ValueError for the port: it printed "puhui: error: ValueError: invalid
    # literal for int() ..." (missing_sqlite_file caught only ArgumentError).
    ("postgresql+psycopg://app:s3cret@127.0.0.1:abc/wh",
     "puhui: error: PUHUI_WAREHOUSE_URL is not a usable SQLAlchemy URL: "),
])
def test_a_bad_or_silent_warehouse_url_is_one_line_for_the_auditor(
        url: str, line: str, puhui_env: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`audit verify` against them printed SQLAlchemy's ``ArgumentError`` or psycopg's
    ``OperationalError`` with its escaped line breaks and sqlalche.me link; the flow commands
    already said it as the one line of ``check_settings``, now shared (``check_warehouse``)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed when the block ends: refused
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", url.format(port=port))
    code, out, err = _run(capsys, "audit", "verify")
    assert code == 1 and not out
    [shown] = err.strip().splitlines()
    assert shown.startswith(line.format(port=port)) and "s3cret" not in shown, shown
    assert "Error:" not in shown and "sqlalche.me" not in shown, shown


def test_config_check_names_a_missing_or_incomplete_folder(
        tmp_path: Path, puhui_env: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``config check`` is the command for this, yet it said "/x/products.yaml: config file is
    missing" for a folder that does not exist; now the flow commands' line."""
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(tmp_path / "nowhere"))
    code, _, err = _run(capsys, "config", "check")
    assert code == 1 and err.strip() == (
        f"puhui: error: PUHUI_CONFIG_DIR {tmp_path / 'nowhere'}: no such folder; point it at "
        "a copy of the repository's configs/ folder (or unset it for that one)")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "models.yaml").write_bytes((repo_root() / "configs" / "models.yaml").read_bytes())
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(partial))
    code, _, err = _run(capsys, "config", "check")
    assert code == 1 and f"PUHUI_CONFIG_DIR {partial}: lacks " in err, err
    assert "features.yaml" in err and "products.yaml" in err, err


def test_a_wrong_format_is_a_usage_error_naming_the_option(
        puhui_env: Path, capsys: pytest.CaptureFixture) -> None:
    """It was "--format must be table, json or csv" with exit 1: the README's usage errors
    (a wrong value of an option) exit 2 and name the option as click does."""
    for extra in ([], ["--json"]):  # --json overrode --format before it was checked
        code, out, err = _run(capsys, "audit", "log", "--format", "xml", *extra)
        assert code == 2 and not out, (extra, out)
        assert err.strip() == ("puhui: error: Invalid value for '--format': must be table, "
                               "json or csv, not 'xml'"), (extra, err)


@pytest.mark.parametrize(("argv", "line"), [
    (["models", "rollback", "nosuch", "--reason", "r"],
     "no model named nosuch: configs/models.yaml has credit_risk and product_recommender, "
     "and the registry has no other by that name"),
    (["models", "promote", "nosuch", "--version", "1", "--reason", "r"],
     "no model named nosuch: configs/models.yaml has credit_risk and product_recommender, "
     "and the registry has no other by that name"),
    (["models", "rollback", "credit_risk", "--reason", "r"],
     "credit_risk has no previous champion to roll back to"),
    (["models", "promote", "credit_risk", "--version", "1", "--reason", "x"],
     "credit_risk has no version 1 (no model is registered with this MLFLOW_TRACKING_URI "
     "yet: no store at {home}/mlflow.db)"),
])
def test_model_changes_refused_without_mlflow_create_nothing(
        argv: list[str], line: str, puhui_env: Path, capsys: pytest.CaptureFixture) -> None:
    """On an empty PUHUI_HOME these imported MLflow first (10-20 s under load), then made an
    MLflow store, a warehouse and an audit key before refusing; an unknown model name was
    "nosuch has no previous champion". Now decided before MLflow, and nothing is created."""
    code, out, err = _run(capsys, *argv)
    assert code == 1 and not out
    assert err.strip() == "puhui: error: " + line.format(home=puhui_env), err
    assert not puhui_env.exists() or not any(puhui_env.iterdir())


def test_a_missing_mlflow_store_is_named_not_created(puhui_env: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """A warehouse but no MLflow store (a mistyped MLFLOW_TRACKING_URI): rollback made an
    empty store and then reported on it."""
    open_runtime()
    code, _, err = _run(capsys, "models", "rollback", "credit_risk", "--reason", "r")
    assert code == 1 and err.strip() == (
        f"puhui: error: no MLflow store at {puhui_env / 'mlflow.db'}: check PUHUI_HOME, "
        "MLFLOW_TRACKING_URI and PUHUI_WAREHOUSE_URL"), err
    assert not (puhui_env / "mlflow.db").exists()


def test_a_rollback_with_a_store_but_no_warehouse_names_the_warehouse(
        puhui_env: Path, capsys: pytest.CaptureFixture) -> None:
    """An MLflow store but no warehouse (a mistyped PUHUI_HOME or PUHUI_WAREHOUSE_URL):
    rollback said "no previous champion to roll back to", of a registry that may have a
    champion history; the trail is elsewhere. (Only the store's file is checked first.)"""
    puhui_env.mkdir(parents=True, exist_ok=True)
    (puhui_env / "mlflow.db").touch()
    code, out, err = _run(capsys, "models", "rollback", "credit_risk", "--reason", "r")
    assert code == 1 and not out
    assert err.strip() == (
        f"puhui: error: no warehouse at {puhui_env / 'warehouse.db'}: check PUHUI_HOME, "
        "MLFLOW_TRACKING_URI and PUHUI_WAREHOUSE_URL"), err
    assert sorted(p.name for p in puhui_env.iterdir()) == ["mlflow.db"]


def test_a_registered_name_the_config_no_longer_has_still_reaches_the_lifecycle(
        puhui_env: Path, capsys: pytest.CaptureFixture) -> None:
    """The name check must not refuse a model registered under a name since renamed in
    configs/models.yaml: the registry has it, so the lifecycle decides (here: no champion
    yet to roll back from, and v1 is ungated)."""
    runtime = open_runtime()
    use_experiment("renamed_model", runtime.settings.mlflow_tracking_uri,
                   runtime.settings.home / "mlartifacts")
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(),
                                       pip_requirements=["mlflow"])
    version = register_version(runtime.engine, runtime.audit, name="renamed_model",
                               model_uri=info.model_uri, run_id=run.info.run_id, tags={},
                               details={"as_of": "2026-09-30"})
    code, _, err = _run(capsys, "models", "rollback", "renamed_model", "--reason", "r")
    assert code == 1 and "renamed_model has no previous champion" in err, err
    code, _, err = _run(capsys, "models", "promote", "renamed_model", "--version", version,
                        "--reason", "r")
    assert code == 1 and f"renamed_model v{version} is ungated" in err, err


def test_quarantine_show_imports_neither_pandas_nor_arrow(puhui_env: Path) -> None:
    """``quarantine show`` imported puhui.ingest.quarantine (the release path: pandas,
    Arrow, the loaders), 0.9 s of its 1.4 s of CPU, to read a ledger row and a few events;
    Arrow is imported now only to mask a held copy's failing values. (A process of its own
    to tell: this one has imported them.)"""
    import subprocess
    import sys

    runtime = open_runtime()
    with runtime.engine.begin() as conn:
        insert_batch(conn, batch_id="customers-20260930-0123456789ab", partner="customers",
                     source_path="customers/2026-09-30/part-0.csv", checksum="ab" * 32,
                     content_key="ab" * 32, rows=3, rows_loaded=0, status="quarantined",
                     reason="critical: column age", landed_at=datetime.now(UTC))
    script = ("import sys; from puhui.cli import main; rc = main(sys.argv[1:]); "
              "print(rc, *(m in sys.modules for m in ('pandas', 'pyarrow')))")
    done = subprocess.run([sys.executable, "-c", script, "quarantine", "show", "customers-"],
                          capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    assert "reason: critical: column age" in done.stdout and lines[-1] == "0 False False", (
        done.stdout, done.stderr)


def test_verify_with_an_anchor_calls_an_empty_warehouse_a_missing_trail(
        puhui_env: Path, capsys: pytest.CaptureFixture) -> None:
    """A warehouse file (or database) with no puhui tables: ``--anchor`` got "nothing has
    run against it ('puhui db upgrade' ... creates them)", advice to start a new trail, to
    an auditor whose anchored trail is gone. Untouched, as without the anchor."""
    puhui_env.mkdir(parents=True, exist_ok=True)
    (puhui_env / "warehouse.db").touch()
    code, out, err = _run(capsys, "audit", "verify", "--anchor", "12:" + "ab" * 32)
    assert code == 1 and not out
    assert err.strip() == (
        f"puhui: error: the warehouse sqlite:///{puhui_env / 'warehouse.db'} has no puhui "
        "tables: the trail anchored at seq 12 is missing (emptied, or PUHUI_HOME or "
        "PUHUI_WAREHOUSE_URL now points elsewhere: check them)"), err
    with closing(sqlite3.connect(puhui_env / "warehouse.db")) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_a_relative_warehouse_url_is_named_by_its_absolute_path(
        tmp_path: Path, puhui_env: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``sqlite:///warehouse.db`` is relative to the working directory, which a worker's
    may not share: "no warehouse at warehouse.db" did not say where it was looked for."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", "sqlite:///warehouse.db")
    code, _, err = _run(capsys, "audit", "log")
    assert code == 1 and err.startswith(
        f"puhui: error: no warehouse at {tmp_path.resolve() / 'warehouse.db'}: "), err


def test_plain_audit_verify_imports_neither_arrow_nor_numpy(puhui_env: Path) -> None:
    """Round 16's raw rows digest put NumPy and Arrow at the top of puhui.table_digests,
    which every ``audit verify`` imports for its counts: +0.17-0.19 s of CPU on a 0.75-1.1 s
    command. Only ``--deep`` and the loaders digest raw rows now (a process of its own:
    this one has imported them)."""
    import subprocess
    import sys

    open_runtime()
    script = ("import sys; from puhui.cli import main; rc = main(sys.argv[1:]); "
              "print(rc, *(m in sys.modules for m in ('numpy', 'pyarrow')))")
    for extra in ([], ["--json"]):
        done = subprocess.run([sys.executable, "-c", script, "audit", "verify", *extra],
                              capture_output=True, text=True, check=False)
        assert done.stdout.strip().splitlines()[-1] == "0 False False", (
            extra, done.stdout, done.stderr)


def test_an_unmigrated_postgresql_warehouse_is_refused_not_migrated(
        puhui_env: Path, pg_server: Any, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The missing-warehouse refusal covered SQLite only: `audit verify` migrated an empty
    PostgreSQL database (a mistyped database name in PUHUI_WAREHOUSE_URL) and said "audit
    trail intact: 0 events"."""
    from sqlalchemy import create_engine, inspect

    url = pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", url)
    shown = make_url(url).render_as_string(hide_password=True)
    for argv in (["audit", "verify"], ["audit", "anchor"], ["audit", "log"],
                 ["quarantine", "list"]):
        code, out, err = _run(capsys, *argv)
        assert code == 1 and not out, (argv, out, err)
        assert err.strip() == (
            f"puhui: error: the warehouse {shown} has no puhui tables: nothing has run "
            "against it (check PUHUI_WAREHOUSE_URL; 'puhui db upgrade', 'puhui demo' or "
            "'puhui run ingest' creates them)"), err
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert inspect(conn).get_table_names() == []
    finally:
        engine.dispose()
    assert not (puhui_env / "audit.key").exists()


def test_model_changes_refuse_an_unmigrated_postgresql_warehouse(
        puhui_env: Path, pg_server: Any, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """promote and rollback opened the runtime, which migrated an empty PostgreSQL database
    (a mistyped database name) and recorded the move there, while the alias moved in the
    shared MLflow store. Refused now as the reads refuse it, before MLflow (the store's
    file here is empty: MLflow would have made its tables in it)."""
    from sqlalchemy import create_engine, inspect

    url = pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", url)
    shown = make_url(url).render_as_string(hide_password=True)
    puhui_env.mkdir(parents=True, exist_ok=True)
    (puhui_env / "mlflow.db").touch()
    for argv in (["models", "rollback", "credit_risk", "--reason", "r"],
                 ["models", "promote", "credit_risk", "--version", "1", "--reason", "r"]):
        code, out, err = _run(capsys, *argv)
        assert code == 1 and not out, (argv, out, err)
        assert err.strip() == (
            f"puhui: error: the warehouse {shown} has no puhui tables: nothing has run "
            "against it (check PUHUI_WAREHOUSE_URL; 'puhui db upgrade', 'puhui demo' or "
            "'puhui run ingest' creates them)"), (argv, err)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert inspect(conn).get_table_names() == []
    finally:
        engine.dispose()
    assert (puhui_env / "mlflow.db").stat().st_size == 0


def test_a_lookup_without_the_pseudonym_key_says_what_it_needs(
        puhui_env: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """``profiles explain abc`` without the key said "refusing to ingest personal data": the
    ingest's line, for a lookup that ingests nothing."""
    monkeypatch.delenv("PUHUI_PSEUDONYM_KEY", raising=False)
    open_runtime()  # a warehouse (a missing one is refused first)
    code, out, err = _run(capsys, "profiles", "explain", "abc")
    assert code == 1 and not out
    assert err.strip() == (
        "puhui: error: PUHUI_PSEUDONYM_KEY is not set: KEY is not a person_key (64 hex), and a "
        "raw national ID or phone is looked up by its keyed hash; set the key the warehouse "
        "was built with, or give the person_key"), err


def test_a_failed_verify_says_each_problem_once(puhui_env: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """The problems were listed, then the error line repeated the first ("first: seq 2:
    content ..."): a single problem read twice. The JSON, listed on stdout, keeps it."""
    from sqlalchemy import text

    runtime = open_runtime()
    for n in range(3):
        runtime.audit.record(runtime.engine, "pipeline.daily", f"daily/{n}", {"n": n})
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET details = '{\"n\": 9}' WHERE seq = 2"))
    code, _, err = _run(capsys, "audit", "verify")
    [problem] = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    assert code == 1 and "seq 2: content" in problem and err.count(problem) == 1, err
    assert err.strip().endswith("audit trail ALTERED: 1 problem(s) (listed above)"), err
    code, out, err = _run(capsys, "audit", "verify", "--json")
    assert code == 1 and problem in out and f"first: {problem}" in err, (out, err)
