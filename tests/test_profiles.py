"""User profiles: refresh through real Prefect flow runs with a real MLflow champion, atomic
swap under failure, re-runs, a concurrent reader on PostgreSQL, and `profiles explain`."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from puhui.audit import read_audit_events
from puhui.cli import main
from puhui.config import SegmentsConfig, load_config
from puhui.profiles import refresh
from puhui.profiles.segments import segment_tags
from puhui.registry import mlflow_client
from puhui.settings import load_settings
from puhui.warehouse.engine import dispose_engines, get_engine
from puhui.warehouse.schema import user_profile_history, user_profiles
from tests.conftest import (
    RISK_AS_OF,
    RiskTemplates,
    build_once,
    dump_database,
    mark_whole,
    no_search_config,
    restore_database,
    risk_env,
    use_test_home,
)

AS_OF = date.fromisoformat(RISK_AS_OF)
EARLIER = date(2026, 9, 15)


def test_segment_rules_from_config() -> None:
    rules = load_config(load_settings().config_dir, SegmentsConfig).segments
    frame = pd.DataFrame({
        "region_type": ["rural", "urban"], "occupation": ["farmer", "gig_worker"],
        "income_band": ["low", "middle"], "age": [64.0, 24.0],
        "bureau_has_record": [0.0, 1.0], "agri_coop_member": [1.0, 0.0],
    })
    tags = segment_tags(frame, rules)
    assert tags[0] == ["rural_farmer", "thin_file", "elderly", "low_income", "coop_member"]
    assert tags[1] == ["gig_worker", "young_adult"]


def train_and_promote(as_of: date = AS_OF, allow_gate_failure: bool = False) -> str:
    """A champion credit_risk version, trained by the real flow (search off for speed) and
    promoted forced; with ``allow_gate_failure`` also a version that failed its gates."""
    from flows.train import train_risk_flow
    from puhui.registry import promote
    from puhui.runtime import open_runtime

    result = train_risk_flow(as_of=as_of, allow_gate_failure=allow_gate_failure)
    runtime = open_runtime()
    client = mlflow_client(runtime.settings.mlflow_tracking_uri)
    promote(client, runtime.engine, runtime.audit, "credit_risk", result["version"],
            "tests: champion for profiles", force=True)
    return result["version"]


def champion_env(templates: RiskTemplates, home: Path, monkeypatch: pytest.MonkeyPatch,
                 tmp_path: Path, dialect: str = "sqlite") -> str:
    """What ``risk_env`` (clean, ``dialect``), ``no_search_config`` and
    ``train_and_promote()`` leave, as a private copy under ``home``: warehouse, MLflow store
    (credit_risk v1 the champion) and the rest of the home. The training runs once per run
    on either dialect (the xdist workers share it, as they share the templates): on
    PostgreSQL, each worker has its own server, where the database of the champion is the
    template of the copies; the worker that trained it dumps it and the others restore the
    dump. It is ~20 s of each test that only needs *a* champion. Each caller gets its own
    copy, so what a test changes stays in its test."""
    postgres = dialect == "postgres"
    built = templates.shared / f"champion-clean-{dialect}"

    def build() -> None:
        with pytest.MonkeyPatch.context() as patch:
            # The repo's own configs, not the caller's: the champion must not depend on
            # which test reaches it first in a run.
            patch.delenv("PUHUI_CONFIG_DIR", raising=False)
            url = risk_env(templates, "clean", dialect, use_test_home(built / "home", patch),
                           patch)
            no_search_config(built, patch)
            assert train_and_promote() == "1"
            dispose_engines()  # a template database takes no connections
            (built / "database").write_text(url.rsplit("/", 1)[-1])
            if postgres:
                dump_database(templates.pg, (built / "database").read_text(), built / "pg")
                mark_whole(templates.pg, (built / "database").read_text())

    build_once(built, build)
    shutil.copytree(built / "home", home, dirs_exist_ok=True)
    _relocate_mlflow_store(home / "mlflow.db", str(built / "home"), str(home))
    if postgres:
        assert templates.pg is not None
        database = (built / "database").read_text()
        restore_database(templates.pg, database, built / "pg")  # built on another worker
        url = templates.pg.create_database(f"t_{uuid.uuid4().hex[:12]}", template=database)
    else:
        url = f"sqlite:///{home / 'warehouse.db'}"
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", url)
    monkeypatch.setenv("PUHUI_LANDING", str(templates._landing("clean")))
    no_search_config(tmp_path, monkeypatch)
    return url


def _relocate_mlflow_store(store: Path, old: str, new: str) -> None:
    """MLflow records artifact locations as absolute paths (experiments, runs, logged
    models, versions): point every one in the store at the copy, so the copy never reads or
    writes the original's artifacts. A location not spelt as ``old`` (percent-encoded, or
    resolved differently) would be missed silently, so no column may still hold ``old``."""
    import sqlite3

    with sqlite3.connect(store) as conn:
        columns = [(table, row[1])
                   for (table,) in conn.execute(
                       "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
                   for row in conn.execute(f'PRAGMA table_info("{table}")').fetchall()
                   if "CHAR" in row[2].upper() or "TEXT" in row[2].upper()]
        for table, column in columns:
            conn.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                         f'WHERE instr("{column}", ?) > 0', (old, new, old))
        left = {f"{table}.{column}" for table, column in columns
                if conn.execute(f'SELECT count(*) FROM "{table}" '
                                f'WHERE instr(CAST("{column}" AS TEXT), ?) > 0',
                                (old,)).fetchone()[0]}
        moved = conn.execute("SELECT count(*) FROM runs WHERE instr(artifact_uri, ?) > 0",
                             (new,)).fetchone()[0]
    conn.close()
    assert not left, f"the copy's MLflow store still points at the original in {sorted(left)}"
    assert moved, "no run's artifact_uri was relocated to the copy"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def profiled(request: pytest.FixtureRequest, risk_templates: RiskTemplates,
             tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Iterator[str]:
    """A private copy of the ingested risk data with a credit_risk champion (search off),
    one per dialect for the whole file (copied from ``champion_env``):
    the training is the expensive part (~30 s each), and
    every test here only needs *a* champion. The tests run in file order on it: the first
    asserts on a warehouse with no profiles yet; the later ones refresh it again."""
    if request.param == "postgres":
        request.getfixturevalue("pg_server")  # skips loudly without PostgreSQL binaries
    root = tmp_path_factory.mktemp(f"profiled-{request.param}")
    with pytest.MonkeyPatch.context() as monkeypatch:
        home = use_test_home(root / "home", monkeypatch)
        url = champion_env(risk_templates, home, monkeypatch, root, request.param)
        yield url
        dispose_engines()


def _profiles(engine, table=user_profiles) -> pd.DataFrame:  # noqa: ANN001
    with engine.connect() as conn:
        return pd.read_sql(select(table), conn)


def _j(value: object) -> object:
    """A JSON column's value (a dict from SQLAlchemy, text from the CLI)."""
    return json.loads(value) if isinstance(value, str) else value


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_refresh_fails_midway_keeps_old_profiles_and_rerun_completes(
    profiled: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
) -> None:
    from flows.profiles import profiles_flow

    engine = get_engine(profiled)
    first = profiles_flow(as_of=EARLIER)
    assert first["models"] == {"credit_risk": "1", "product_recommender": None}
    assert "no champion for product_recommender" in first["missing_models"][
        "product_recommender"]
    old = _profiles(engine)
    assert len(old) == first["rows"] > 1000 and old["person_key"].is_unique
    assert set(old["as_of_date"]) == {EARLIER}
    assert old["risk_score"].notna().all() and old["risk_grade"].notna().all()
    assert (old["risk_model_version"] == "1").all()
    offers = [_j(v) for v in old["recommended_products"]]
    fallback = [_j(v) for v in old["non_personalised_products"]]
    refused = old["personalisation_opt_out"].astype(bool).tolist()
    # No champion: no personalised offers, with the reason; the non-personalised ranking
    # needs no model and is filled for everyone, and is what an opted-out customer is offered.
    assert all(o["reason"] == "no champion for product_recommender (not registered)"
               and o["products"] == [] for o, r in zip(offers, refused, strict=True) if not r)
    assert all(o["ranking"] == "non_personalised" and o["products"] == f and o["version"] is None
               for o, f, r in zip(offers, fallback, refused, strict=True) if r)
    assert all(len(f) == 3 for f in fallback)  # savings, bill_pay, insurance: no rules
    # The contract's columns (migration 0004), not keys buried in JSON.
    opted = int(old["personalisation_opt_out"].astype(bool).sum())
    assert old["personalisation_opt_out"].notna().all() and 0 < opted < 0.15 * len(old)
    versions = _j(old["model_versions"].iloc[0])
    assert versions["risk"] == {"name": "credit_risk", "version": "1", "reason": None}
    assert versions["recommender"]["version"] is None
    tags = [t for v in old["segment_tags"] for t in _j(v)]
    assert {"rural_farmer", "thin_file", "elderly", "gig_worker", "small_business"} <= set(tags)

    # A partition raises midway: the flow fails, the old profiles stay whole.
    calls = {"n": 0}
    real = refresh.build_partition

    def failing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("planted failure in partition 3")
        return real(*args, **kwargs)

    monkeypatch.setattr(refresh, "build_partition", failing)
    with pytest.raises(RuntimeError, match="planted failure"):
        profiles_flow(as_of=AS_OF)
    after = _profiles(engine)
    pd.testing.assert_frame_equal(after.sort_values("person_key").reset_index(drop=True),
                                  old.sort_values("person_key").reset_index(drop=True))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).where(
            user_profile_history.c.as_of_date == AS_OF)).scalar() == 0

    # The re-run reuses the three staged partitions and completes.
    monkeypatch.setattr(refresh, "build_partition", real)
    second = profiles_flow(as_of=AS_OF)
    assert second["reused"] == 3 and second["current_replaced"]
    current = _profiles(engine)
    assert set(current["as_of_date"]) == {AS_OF} and len(current) >= len(old)
    # Same as-of again: replaced, never duplicated; an older as-of leaves current alone.
    profiles_flow(as_of=AS_OF)
    history = _profiles(engine, user_profile_history)
    assert history.groupby("as_of_date").size().to_dict() == {EARLIER: len(old),
                                                              AS_OF: len(current)}
    older = profiles_flow(as_of=EARLIER)
    assert not older["current_replaced"]
    assert set(_profiles(engine)["as_of_date"]) == {AS_OF}
    # Each swap recorded its rows' count and keyed digest (the failed run's none): after the
    # re-runs and the older date's refresh, none differs and none is unrecorded.
    from puhui.audit import AuditWriter
    from puhui.table_digests import (
        PROFILES_CURRENT,
        PROFILES_HISTORY,
        SPECS,
        WRITERS,
        table_problems,
        writer_subkey,
    )

    subkey = writer_subkey(AuditWriter("verify", ""))
    assert table_problems(engine, SPECS, WRITERS, subkey).problems == []
    checked = table_problems(engine, (PROFILES_CURRENT, PROFILES_HISTORY), WRITERS, subkey)
    assert (checked.problems, checked.notes) == ([], [])
    assert checked.rows == 2 * len(current) + len(old)

    # Explain a declined customer: the same top reasons as the profile row.
    declined = current[current["reasons"].map(
        lambda v: _j(v)["decision"] == "decline")]
    assert len(declined) > 0
    row = declined.iloc[0]
    code, out, err = _cli(capsys, "profiles", "explain", row["person_key"], "--json")
    assert code == 0, err
    shown = _j(out)
    stored = [r["code"] for r in _j(row["reasons"])["top"]]
    assert [r["code"] for r in shown["reasons"]] == stored and stored
    assert shown["decision"] == "decline" and shown["grade"] == row["risk_grade"]
    assert shown["lineage_command"] == "puhui audit lineage credit_risk --version 1"
    code, out, _ = _cli(capsys, "profiles", "explain", row["person_key"])
    for text in (r["text"] for r in _j(row["reasons"])["top"]):
        assert text in out
    assert "no champion for product_recommender" in out
    access = read_audit_events(engine, action="profiles.explain")
    assert access[-1]["subject"] == f"profile/{row['person_key']}"
    refreshes = read_audit_events(engine, action="profiles.refresh")
    assert refreshes[-1]["details"]["models"] == {"credit_risk": "1",
                                                  "product_recommender": None}


@pytest.mark.slow
def test_explain_by_raw_national_id_hashes_it_and_never_records_it(
    profiled: str, capsys: pytest.CaptureFixture,
) -> None:
    from flows.profiles import profiles_flow
    from puhui.runtime import open_runtime

    profiles_flow(as_of=AS_OF)
    landing = Path(load_settings().landing)
    customers = pd.read_csv(next(landing.glob("customers/*/customers_*.csv")), dtype=str)
    raw_id = customers["national_id"].iloc[0]
    code, out, err = _cli(capsys, "profiles", "explain", raw_id, "--json")
    assert code == 0, err
    assert raw_id not in out
    engine = open_runtime().engine
    event = read_audit_events(engine, action="profiles.explain")[-1]
    assert raw_id not in json.dumps(event)
    code, _, err = _cli(capsys, "profiles", "explain", "not-an-id")
    assert code == 1 and "neither a person_key" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("profiled", ["postgres"], indirect=True)  # SQLite has one writer
def test_concurrent_reader_sees_one_version_during_refresh(profiled: str) -> None:
    from flows.profiles import profiles_flow

    url = profiled
    engine = get_engine(url)
    profiles_flow(as_of=EARLIER)
    seen: list[tuple] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            with engine.connect() as conn:
                seen.append(tuple(conn.execute(select(
                    func.count(), func.count(func.distinct(user_profiles.c.flow_run_id)),
                    func.min(user_profiles.c.as_of_date),
                    func.max(user_profiles.c.as_of_date))).one()))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        profiles_flow(as_of=AS_OF)
    finally:
        stop.set()
        reader.join()
    states = {s for s in seen}
    assert len(seen) > 5
    # The refresh made the partition-read indexes, product events' customer_id one too.
    with engine.connect() as conn:
        indexes = set(conn.exec_driver_sql(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'raw_product_events'").scalars())
    assert "ix_raw_product_events_partition_read" in indexes
    assert all(s[1] == 1 and s[2] == s[3] for s in seen), states
    assert {s[2] for s in seen} <= {EARLIER, AS_OF}
