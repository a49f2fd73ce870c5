"""SQL aggregates (PostgreSQL): the same features as the pandas builder, partition by partition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from puhui.config import FeaturesConfig
from puhui.features.builder import FeatureInfo, feature_catalog
from puhui.features.partitioned import build_partition, ensure_partition_indexes
from puhui.features.sources import first_event_days, load_register
from puhui.features.sql_aggregates import build_partition_sql
from puhui.partitioning import all_partitions, bucket_of
from puhui.warehouse.engine import get_engine
from tests.conftest import RiskTemplates, risk_env
from tests.test_features import AS_OF, _mutate_after, _requests, _spec

PARTITIONS = 3


@pytest.fixture
def pg_features_env(risk_templates: RiskTemplates, puhui_env: Path,
                    monkeypatch: pytest.MonkeyPatch) -> str:
    """A private PostgreSQL copy of the ingested demo data (4,000 customers, 540 days)."""
    if risk_templates.pg is None:
        pytest.skip("no PostgreSQL binaries on this machine")
    return risk_env(risk_templates, "clean", "postgres", puhui_env, monkeypatch)


def _float_sums(spec: FeaturesConfig) -> set[str]:
    """Features computed from sums of float columns (sums, means, and ratios of them):
    the server adds in another order than the running totals do. Everything else (counts,
    shares, latest values, register features) must be exact."""
    names: set[str] = set()
    for source in spec.sources:
        for agg in source.aggregates:
            if agg.agg in ("sum", "mean"):
                names.update(f"{agg.name}_{w}d" for w in source.windows)
    for item in spec.derived:  # a ratio involving a float sum is one too
        parts = [item.numerator] + ([item.denominator] if item.denominator else [])
        if any(any(n.startswith(p) for n in names) for p in parts):
            names.update(f"{item.name}_{w}d" for source in spec.sources
                         for w in source.windows)
            names.add(item.name)
    return names


def _assert_same(got: pd.DataFrame, want: pd.DataFrame, catalog: list[FeatureInfo],
                 float_sums: set[str]) -> None:
    assert list(got.columns) == list(want.columns)
    assert got["person_key"].tolist() == want["person_key"].tolist()
    assert got["as_of_date"].tolist() == want["as_of_date"].tolist()
    for info in catalog:
        a, b = want[info.name], got[info.name]
        assert a.dtype == b.dtype, info.name
        if info.name in float_sums:
            np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=1e-9, atol=1e-9,
                                       equal_nan=True, err_msg=info.name)
        else:
            pd.testing.assert_series_equal(b, a, check_exact=True, obj=info.name)


def _by_partition(engine, spec: FeaturesConfig, requests: pd.DataFrame,  # noqa: ANN001
                  pandas_too: bool = True):  # noqa: ANN202
    """(pandas or None, SQL) features of each partition's requests."""
    ensure_partition_indexes(engine, spec)
    first_day = first_event_days(engine, spec, AS_OF)
    register = load_register(engine, spec, AS_OF, PARTITIONS)
    buckets = bucket_of(requests["person_key"], PARTITIONS)
    for part in all_partitions(PARTITIONS):
        mine = requests[buckets == part.bucket]
        customers = register.part(part.bucket)
        want = (build_partition(engine, spec, AS_OF, customers, part, first_day, mine)
                if pandas_too else None)
        yield want, build_partition_sql(engine, spec, AS_OF, customers, part, first_day, mine)


def test_sql_aggregates_equal_the_pandas_builder(pg_features_env: str) -> None:
    """Every feature, every row, every partition: two as-of dates per customer (the
    earlier one before some customers' onboarding), on data that runs past the as-of date."""
    engine = get_engine(pg_features_env)
    spec = _spec()
    catalog = feature_catalog(spec)
    float_sums = _float_sums(spec)
    assert float_sums and len(float_sums) < len(catalog)
    requests = _requests(engine, spec)
    pieces = []
    for want, got in _by_partition(engine, spec, requests):
        _assert_same(got, want, catalog, float_sums)
        pieces.append(want)
    everything = pd.concat(pieces)
    assert len(everything) > 4000
    assert everything.drop(columns=["person_key", "as_of_date"]).notna().any().all(), \
        "every feature has values somewhere: the comparison covers real values"


def test_sql_aggregates_ignore_data_after_the_as_of_date(pg_features_env: str) -> None:
    """The point-in-time rule in SQL: rows after the as-of day, edited or added, change
    nothing."""
    engine = get_engine(pg_features_env)
    spec = _spec()
    requests = _requests(engine, spec)
    before = [got for _, got in _by_partition(engine, spec, requests, pandas_too=False)]
    changed = _mutate_after(engine, AS_OF)
    assert all(n > 0 for n in changed.values()), changed
    after = [got for _, got in _by_partition(engine, spec, requests, pandas_too=False)]
    for got, want in zip(after, before, strict=True):
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_sql_aggregates_refuse_sqlite(tmp_path: Path) -> None:
    from puhui.partitioning import Partition

    engine = get_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with pytest.raises(ValueError, match="PostgreSQL"):
        build_partition_sql(engine, _spec(), AS_OF, pd.DataFrame(), Partition(0, 1), {})
