"""The staged path's phone-keyed feeds: split once per run into the staging directory.

PostgreSQL only (the split is not made on SQLite), and only when the feeds' on-disk size
reaches ``partitioning.split_phone_feeds_min_mib``: the tests' warehouse is far below the
configured threshold, so the tests that need a split set it to 0 (``split_always``, or a
config override for the flow). After the split, the tests move every phone-keyed row to a
phone nobody owns: a partition that probed the warehouse, or a split made again, would then
find none of them, so features equal to the whole-table builder's (computed before) show
the partitions read the split that was there.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pandas as pd
import pyarrow as pa
import pytest
import yaml
from rich.console import Console
from sqlalchemy import create_engine, text

from puhui import console
from puhui.errors import PuhuiError
from puhui.features.partitioned import (
    MIB,
    PHONE_FEEDS,
    SPLIT_DONE,
    build_features_partitioned,
    build_staged_partition,
    phone_feeds_bytes,
    read_staged_features,
    register_path,
    stage_phone_feeds,
    stage_register,
    staged_phone_feeds,
    write_atomic,
)
from puhui.features.sources import scattered_file, source_columns
from puhui.partitioning import Partition, all_partitions
from puhui.settings import load_settings
from puhui.warehouse.engine import get_engine
from tests.conftest import RiskTemplates, risk_env, use_test_home
from tests.test_features import AS_OF, _spec
from tests.test_partitioned_features import split_always

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


@pytest.fixture
def split_always_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private copy of configs/ whose phone-feed split threshold is 0 (for the flows,
    which read the config themselves; direct calls take ``split_always(spec)``)."""
    configs = tmp_path / "configs"
    shutil.copytree(load_settings().config_dir, configs)
    features = yaml.safe_load((configs / "features.yaml").read_text())
    features["partitioning"]["split_phone_feeds_min_mib"] = 0
    (configs / "features.yaml").write_text(yaml.safe_dump(features, allow_unicode=True))
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(configs))


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
    split = stage_phone_feeds(sqlite, split_always(spec), AS_OF, tmp_path, 4)
    assert not split.split and not split.made
    assert not any(tmp_path.glob(f"{PHONE_FEEDS}*"))
    customers = pd.DataFrame({"phone_key": [], "partition": [], "owns_phone": []})
    # Partitions read the warehouse.
    assert staged_phone_feeds(spec, tmp_path, Partition(0, 4), customers) is None


def test_below_the_size_threshold_partitions_probe_and_nothing_is_split(
        pg_env: str, want: pd.DataFrame, tmp_path: Path) -> None:
    """The configured threshold against the tests' small feeds: the staged path writes no
    split and its features equal the whole-table builder's; the in-process build says
    (``--verbose``) that it probes, and why; at threshold 0 (a config override) it splits."""
    engine = get_engine(pg_env)
    spec = _spec()
    threshold = spec.partitioning.split_phone_feeds_min_mib
    staging = tmp_path / "stage"
    parts = stage_register(engine, spec, AS_OF, staging, partitions=4)  # builds the indexes
    size = phone_feeds_bytes(engine, _phone_tables())
    assert 0 < size < threshold * MIB
    split = stage_phone_feeds(engine, spec, AS_OF, staging, 4)
    assert (split.split, split.made) == (False, False)
    assert split.line == (f"phone-keyed feeds probed per partition ({size / MIB:,.0f} MiB "
                          f"on disk < the {threshold:,} MiB threshold)")
    assert not list(staging.glob(f"{PHONE_FEEDS}*"))
    for part in parts:
        build_staged_partition(engine, spec, AS_OF, staging, part)
    pd.testing.assert_frame_equal(_sorted(read_staged_features(staging, parts)), want,
                                  check_exact=True)

    screen = io.StringIO()
    console.configure(Console(file=screen, width=200), verbose=True)
    try:
        got = build_features_partitioned(engine, spec, AS_OF, None, 4)
    finally:
        console.configure(None)
    assert f"4 partitions: {split.line}" in screen.getvalue()
    pd.testing.assert_frame_equal(_sorted(got), want, check_exact=True)

    above = stage_phone_feeds(engine, split_always(spec), AS_OF, staging, 4)
    assert (above.split, above.made) == (True, True)
    assert above.reason.endswith(">= the 0 MiB threshold")
    # A resumed run that decides otherwise (the threshold raised, the feeds shrank, older
    # code always split) removes the earlier try's split: its partitions would read it.
    (staging / f"{PHONE_FEEDS}.999999.partial").mkdir()
    assert stage_phone_feeds(engine, spec, AS_OF, staging, 4).split is False
    assert not list(staging.glob(f"{PHONE_FEEDS}*"))
    assert staged_phone_feeds(spec, staging, parts[0],
                              pd.read_parquet(register_path(staging, parts[0]))) is None


def test_staged_partitions_read_the_split_and_a_partial_split_is_redone(
        pg_env: str, want: pd.DataFrame, tmp_path: Path) -> None:
    engine = get_engine(pg_env)
    spec = split_always(_spec())
    staging = tmp_path / "stage"
    parts = stage_register(engine, spec, AS_OF, staging, partitions=4)
    # What a split killed part-way leaves: its temporary directory, and (say, a copy by
    # hand) a split directory without its marker. Neither is used; both are replaced.
    (staging / f"{PHONE_FEEDS}.999999.partial" / "x").mkdir(parents=True)
    junk = scattered_file(staging / PHONE_FEEDS / spec.sources[0].name, parts[0])
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"ARROW1 cut short")
    assert staged_phone_feeds(spec, staging, parts[0],
                              pd.read_parquet(register_path(staging, parts[0]))) is None
    assert stage_phone_feeds(engine, spec, AS_OF, staging, 4).made is True
    assert _marker(staging).exists() and not junk.exists()
    assert not list(staging.glob(f"{PHONE_FEEDS}.*.partial"))
    marker = _marker(staging).stat()
    # Complete: a second call (a retried task, a resumed run) keeps it as it is.
    assert stage_phone_feeds(engine, spec, AS_OF, staging, 4).made is False
    assert _marker(staging).stat().st_ino == marker.st_ino

    split = staged_phone_feeds(spec, staging, parts[0],
                               pd.read_parquet(register_path(staging, parts[0])))
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
    _marker(staging).write_text(json.dumps({"partitions": 4, "owners": ["another"] * 4}))
    assert stage_phone_feeds(engine, spec, AS_OF, staging, 4).made is True


def _task_runs(flow_run_id: UUID) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(r.name.rsplit("-", 1)[0] for r in runs)


def test_flow_splits_once_per_run_and_a_resumed_run_keeps_the_split(
        pg_env: str, want: pd.DataFrame, tmp_path: Path, prefect_harness: None,
        split_always_config: None) -> None:
    """A run killed after its split and one partition, resumed on the same staging
    directory: one split task, which keeps the split (the rows it holds are no longer in
    the warehouse), before the three partition tasks; then the split is dropped. The
    flow's line says it split, and why (threshold 0 here)."""
    from flows.features import partitioned_features_flow

    engine = get_engine(pg_env)
    spec = _spec()
    parts = all_partitions(3)
    resumed = tmp_path / "resumed"
    stage_register(engine, spec, AS_OF, resumed, partitions=3)
    assert stage_phone_feeds(engine, spec, AS_OF, resumed, 3).made is True
    build_staged_partition(engine, spec, AS_OF, resumed, parts[0])
    _disown_phone_rows(engine)
    state = partitioned_features_flow(as_of=AS_OF, partitions=3, staging=str(resumed),
                                      return_state=True)
    assert state.is_completed()
    line = state.result()["line"]
    assert "3 partition(s); phone-keyed feeds split once (" in line
    assert ">= the 0 MiB threshold)" in line
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
    import dataclasses

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

    directory = staging_dir(settings.home, AS_OF, "run")
    # the configured threshold: too small to pay
    below = split_phone_feeds.fn(settings, ctx, "run")
    assert (below.split, below.made) == (False, False)
    assert not list(directory.glob(f"{PHONE_FEEDS}*"))
    ctx = dataclasses.replace(ctx, features=split_always(spec))
    assert split_phone_feeds.fn(settings, ctx, "run").made is True
    _disown_phone_rows(engine)
    assert split_phone_feeds.fn(settings, ctx, "run").made is False  # a resumed run keeps it
    assert score_and_stage.fn(settings, ctx, "run", 1) == len(probed)
    staged = pd.read_parquet(directory / "part-0001.parquet")
    pd.testing.assert_series_equal(staged["risk_score"], probed["risk_score"], check_exact=True)
    assert staged["reasons"].tolist() == probed["reasons"].tolist()


def test_two_splits_of_one_staging_directory_at_once_make_one_split(
        pg_env: str, tmp_path: Path) -> None:
    """A retried task beside its first try: the second waits, then finds the split complete,
    instead of deleting the first one's partial directory while it is written."""
    from concurrent.futures import ThreadPoolExecutor

    engine = get_engine(pg_env)
    spec = split_always(_spec())
    staging = tmp_path / "stage"
    stage_register(engine, spec, AS_OF, staging, partitions=4)
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(stage_phone_feeds, engine, spec, AS_OF, staging, 4)
                for _ in range(2)]
        made = sorted(run.result().made for run in runs)  # raises what a split raised
    assert made == [False, True]
    assert _marker(staging).exists()
    assert not list(staging.glob(f"{PHONE_FEEDS}.*.partial"))


def test_a_partition_refuses_a_split_made_for_other_phone_owners(pg_env: str,
                                                                  tmp_path: Path) -> None:
    """The register re-staged after the split (a phone changed hands) without splitting
    again: the partition whose owners differ fails with one line naming the split, instead
    of reading files that miss its rows; the others still read it."""
    engine = get_engine(pg_env)
    spec = split_always(_spec())
    staging = tmp_path / "stage"
    parts = stage_register(engine, spec, AS_OF, staging, partitions=4)
    assert stage_phone_feeds(engine, spec, AS_OF, staging, 4).made is True
    path = register_path(staging, parts[1])
    customers = pd.read_parquet(path)
    customers.loc[customers.index[customers["owns_phone"]][0], "owns_phone"] = False
    write_atomic(customers, path)
    with pytest.raises(PuhuiError) as refused:
        build_staged_partition(engine, spec, AS_OF, staging, parts[1])
    message = str(refused.value)
    assert "\n" not in message and f"split in {staging / PHONE_FEEDS} was made" in message
    assert build_staged_partition(engine, spec, AS_OF, staging, parts[0]) > 0
    # A split of another partition count is not this register's either.
    with pytest.raises(PuhuiError, match="other phone owners"):
        staged_phone_feeds(spec, staging, Partition(0, 3), customers)
    # Nor a marker of the format before one fingerprint per partition (one string).
    _marker(staging).write_text(json.dumps({"partitions": 4, "owners": "ab"}))
    with pytest.raises(PuhuiError, match="other phone owners"):
        build_staged_partition(engine, spec, AS_OF, staging, parts[3])


def test_the_split_is_on_disk_before_it_is_renamed(pg_env: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Marker last, then rename, holds after a power loss only if the files, the marker
    and their directories are flushed before the rename (and the rename after it)."""
    engine = get_engine(pg_env)
    spec = split_always(_spec())
    staging = (tmp_path / "stage").resolve()
    stage_register(engine, spec, AS_OF, staging, partitions=4)
    events: list[tuple[str, ...]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: str, dst: str) -> None:
        events.append(("rename", str(src), str(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    assert stage_phone_feeds(engine, spec, AS_OF, staging, 4).made is True
    monkeypatch.undo()
    final = staging / PHONE_FEEDS
    renamed = [e for e in events if e[0] == "rename" and e[2] == str(final)]
    assert len(renamed) == 1
    at = events.index(renamed[0])
    partial = Path(renamed[0][1])
    flushed = {Path(e[1]) for e in events[:at] if e[0] == "fsync"}
    written = {partial / p.relative_to(final) for p in final.rglob("*")}
    assert partial / SPLIT_DONE in written and len(written) > 4
    assert written | {partial} <= flushed
    assert ("fsync", str(staging)) in events[at + 1:]
