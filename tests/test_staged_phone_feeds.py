"""The staged path's phone-keyed feeds: split once per run into the staging directory.

PostgreSQL only (the split is not made on SQLite). After the split, the tests move every
phone-keyed row to a phone nobody owns: a partition that probed the warehouse, or a split
made again, would then find none of them, so features equal to the whole-table builder's
(computed before) show the partitions read the split that was there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy import create_engine, text

from puhui.features.partitioned import (
    PHONE_FEEDS,
    SPLIT_DONE,
    build_features_partitioned,
    build_staged_partition,
    read_staged_features,
    stage_phone_feeds,
    stage_register,
    staged_phone_feeds,
)
from puhui.features.sources import scattered_file, source_columns
from puhui.partitioning import all_partitions
from puhui.warehouse.engine import get_engine
from tests.conftest import RiskTemplates, risk_env, use_test_home
from tests.test_features import AS_OF, _spec

ORDER = ["person_key", "as_of_date"]


@pytest.fixture
def pg_env(risk_templates: RiskTemplates, puhui_env: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private PostgreSQL copy of the ingested risk data (a template copy: cheap)."""
    if risk_templates.pg is None:
        pytest.skip("NO POSTGRESQL SERVER BINARIES ON THIS MACHINE")
    url = risk_env(risk_templates, "clean", "postgres", puhui_env, monkeypatch)
    yield url
    get_engine(url).dispose()


@pytest.fixture(scope="module")
def want(risk_templates: RiskTemplates, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Every customer's features as of AS_OF from the whole tables (one partition), once for
    the module: every test's warehouse is a copy of the same template."""
    if risk_templates.pg is None:
        pytest.skip("NO POSTGRESQL SERVER BINARIES ON THIS MACHINE")
    with pytest.MonkeyPatch.context() as monkeypatch:
        home = use_test_home(tmp_path_factory.mktemp("want"), monkeypatch)
        engine = get_engine(risk_env(risk_templates, "clean", "postgres", home, monkeypatch))
        frame = _sorted(build_features_partitioned(engine, _spec(), AS_OF, None, 1))
        engine.dispose()
    return frame


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(ORDER).reset_index(drop=True)


def _phone_tables() -> list[str]:
    tables = [s.table for s in _spec().sources if s.key == "phone_key"]
    assert tables, "the configured features read phone-keyed feeds"
    return tables


def _disown_phone_rows(engine) -> None:  # noqa: ANN001
    """Every phone-keyed row now carries a phone no customer owns (first days unchanged)."""
    with engine.begin() as conn:
        for table in _phone_tables():
            # Reversed: still 64 hex digits (the column's width), owned by nobody.
            assert conn.execute(text(
                f'UPDATE "{table}" SET phone_key = reverse(phone_key)')).rowcount > 0


def _marker(staging: Path) -> Path:
    return staging / PHONE_FEEDS / SPLIT_DONE


def test_no_split_on_sqlite_or_one_partition(tmp_path: Path) -> None:
    spec = _spec()
    sqlite = create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    assert stage_phone_feeds(sqlite, spec, AS_OF, tmp_path, 4) is False
    assert not any(tmp_path.glob(f"{PHONE_FEEDS}*"))
    assert staged_phone_feeds(spec, tmp_path, 4) is None  # partitions read the warehouse


def test_staged_partitions_read_the_split_and_a_partial_split_is_redone(
        pg_env: str, want: pd.DataFrame, tmp_path: Path) -> None:
    engine = get_engine(pg_env)
    spec = _spec()
    staging = tmp_path / "stage"
    parts = stage_register(engine, spec, AS_OF, staging, partitions=4)
    # What a split killed part-way leaves: its temporary directory, and (say, a copy by
    # hand) a split directory without its marker. Neither is used; both are replaced.
    (staging / f"{PHONE_FEEDS}.999999.partial" / "x").mkdir(parents=True)
    junk = scattered_file(staging / PHONE_FEEDS / spec.sources[0].name, parts[0])
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"ARROW1 cut short")
    assert staged_phone_feeds(spec, staging, 4) is None
    assert stage_phone_feeds(engine, spec, AS_OF, staging, 4) is True
    assert _marker(staging).exists() and not junk.exists()
    assert not list(staging.glob(f"{PHONE_FEEDS}.*.partial"))
    marker = _marker(staging).stat()
    # Complete: a second call (a retried task, a resumed run) keeps it as it is.
    assert stage_phone_feeds(engine, spec, AS_OF, staging, 4) is False
    assert _marker(staging).stat().st_ino == marker.st_ino

    split = staged_phone_feeds(spec, staging, 4)
    assert split is not None and set(split) == {s.name for s in spec.sources
                                                 if s.key == "phone_key"}
    register = pd.concat(pd.read_parquet(p) for p in staging.glob("register-*.parquet"))
    owners = register[register["owns_phone"]]
    pseudonym = re.compile(r"^[0-9a-f]{64}$")
    for source in (s for s in spec.sources if s.key == "phone_key"):
        rows = 0
        for part in parts:
            with pa.ipc.open_file(scattered_file(split[source.name], part)) as reader:
                frame = reader.read_all().to_pandas()
            # The warehouse's columns for the features, nothing more; phones only as the
            # pseudonymized keys the warehouse holds, each owned by this partition's people.
            assert list(frame.columns) == source_columns(source)
            assert frame["phone_key"].map(lambda k: bool(pseudonym.match(k))).all()
            mine = set(owners.loc[owners["partition"] == part.bucket, "phone_key"])
            assert set(frame["phone_key"]) <= mine, (source.name, part)
            rows += len(frame)
        with engine.connect() as conn:
            owned = conn.execute(text(
                f'SELECT count(*) FROM "{source.table}" WHERE phone_key = ANY(:phones)'),
                {"phones": list(owners["phone_key"])}).scalar()
        assert rows == owned > 0, source.name  # every owned row, once

    _disown_phone_rows(engine)
    assert [build_staged_partition(engine, spec, AS_OF, staging, p) for p in parts] \
        == [int((register["partition"] == p.bucket).sum()) for p in parts]
    pd.testing.assert_frame_equal(_sorted(read_staged_features(staging, parts)), want,
                                  check_exact=True)
    # A marker from another register (re-staged on other data) is not this run's split.
    _marker(staging).write_text(json.dumps({"partitions": 4, "owners": "another"}))
    assert stage_phone_feeds(engine, spec, AS_OF, staging, 4) is True


def _task_runs(flow_run_id: UUID) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(r.name.rsplit("-", 1)[0] for r in runs)


def test_flow_splits_once_per_run_and_a_resumed_run_keeps_the_split(
        pg_env: str, want: pd.DataFrame, tmp_path: Path, prefect_harness: None) -> None:
    """A run killed after its split and one partition, resumed on the same staging
    directory: one split task, which keeps the split (the rows it holds are no longer in
    the warehouse), before the three partition tasks; then the split is dropped."""
    from flows.features import partitioned_features_flow

    engine = get_engine(pg_env)
    spec = _spec()
    parts = all_partitions(3)
    resumed = tmp_path / "resumed"
    stage_register(engine, spec, AS_OF, resumed, partitions=3)
    assert stage_phone_feeds(engine, spec, AS_OF, resumed, 3) is True
    build_staged_partition(engine, spec, AS_OF, resumed, parts[0])
    _disown_phone_rows(engine)
    state = partitioned_features_flow(as_of=AS_OF, partitions=3, staging=str(resumed),
                                      return_state=True)
    assert state.is_completed()
    assert _task_runs(state.state_details.flow_run_id) == [
        "drop-phone-feeds", "feature-partition", "feature-partition", "feature-partition",
        "split-phone-feeds", "stage-feature-partitions"]
    pd.testing.assert_frame_equal(_sorted(read_staged_features(resumed, parts)), want,
                                  check_exact=True)
    assert not (resumed / PHONE_FEEDS).exists()


def test_profile_partitions_read_the_runs_split(pg_env: str, want: pd.DataFrame) -> None:
    """The profile refresh's tasks: one split into the run's staging directory, kept when
    asked again; a partition's profile rows (PD from a booster on the phone-keyed features
    only) equal those it computes from the warehouse before the split. One partition of
    four: the profile rows (reasons, JSON per customer) are the slow part, the glue is the
    same for every partition."""
    import lightgbm as lgb
    import numpy as np

    from puhui.config import ModelsConfig, SegmentsConfig, load_config
    from puhui.features.sources import first_event_days, load_register
    from puhui.profiles.models import ModelSlot
    from puhui.profiles.refresh import ScoringContext, score_partition, staging_dir
    from puhui.risk.model import RiskScorer, encode_features
    from puhui.settings import load_settings
    from tasks.profiles import score_and_stage, split_phone_feeds

    engine = get_engine(pg_env)
    spec, settings = _spec(), load_settings()
    phone_keyed = [c for c in want.columns if c.startswith(("pay_", "shop_"))]
    activity = want[next(c for c in phone_keyed if c.startswith("pay_txn"))].fillna(0)
    activity = activity.to_numpy(dtype=float)
    label = (activity + np.random.default_rng(0).normal(0, activity.std(), len(activity))
             > np.median(activity)).astype(int)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                        lgb.Dataset(encode_features(want, phone_keyed, {}), label),
                        num_boost_round=20)
    scorer = RiskScorer(booster, phone_keyed, {})
    scorer.categorical = []  # type: ignore[attr-defined]  # the profiles' scorer interface
    ctx = ScoringContext(
        as_of=AS_OF, features=spec,
        risk=load_config(settings.config_dir, ModelsConfig).credit_risk,
        segments=load_config(settings.config_dir, SegmentsConfig),
        slots={"risk": ModelSlot("risk", "credit_risk", "1")}, scorer=scorer,
        register=load_register(engine, spec, AS_OF, 4).customers,
        first_day=first_event_days(engine, spec, AS_OF), partitions=4)
    probed = score_partition(ctx, engine, 1)
    assert probed["risk_score"].nunique() > 10

    assert split_phone_feeds.fn(ctx, "run") is True
    _disown_phone_rows(engine)
    assert split_phone_feeds.fn(ctx, "run") is False  # a resumed run keeps it
    directory = staging_dir(settings.home, AS_OF, "run")
    assert score_and_stage.fn(ctx, "run", 1) == len(probed)
    staged = pd.read_parquet(directory / "part-0001.parquet")
    pd.testing.assert_series_equal(staged["risk_score"], probed["risk_score"], check_exact=True)
    assert staged["reasons"].tolist() == probed["reasons"].tolist()


def test_two_splits_of_one_staging_directory_at_once_make_one_split(
        pg_env: str, tmp_path: Path) -> None:
    """A retried task beside its first try: the second waits, then finds the split complete,
    instead of deleting the first one's partial directory while it is written."""
    from concurrent.futures import ThreadPoolExecutor

    engine = get_engine(pg_env)
    spec = _spec()
    staging = tmp_path / "stage"
    stage_register(engine, spec, AS_OF, staging, partitions=4)
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(stage_phone_feeds, engine, spec, AS_OF, staging, 4)
                for _ in range(2)]
        made = sorted(run.result() for run in runs)  # raises what a split raised
    assert made == [False, True]
    assert _marker(staging).exists()
    assert not list(staging.glob(f"{PHONE_FEEDS}.*.partial"))
