"""Refreshing ``user_profiles`` with the champion models, one customer partition at a time.

Customers are split into partitions by a stable hash of ``person_key``. Each partition is
scored on its own (point-in-time features, PD, grade, reason codes, segment tags, offers)
and staged as a Parquet file under ``PUHUI_HOME/profiles/staging/<as-of>/<run key>/``,
written to a temporary name and renamed, so a staged partition is either whole or absent.
The run key fingerprints the as-of date, the model versions, the configuration and the data
batches: a re-run after a failure reuses the partitions already staged for the same inputs
(restartable per partition) and scores the rest.

Only when every partition is staged does one transaction replace the as-of date's rows in
``user_profile_history`` and, unless a later date is already current, all of
``user_profiles``. Readers therefore see the old profiles or the new ones, never a mix (on
PostgreSQL under MVCC; on SQLite the write lock serializes the swap), a refresh that fails
midway leaves the old profiles in place, and a re-run of the same as-of date replaces rather
than duplicates.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, delete, func, select

from puhui.config import FeaturesConfig, RiskModelSpec, SegmentsConfig
from puhui.features.builder import apply_derived, build_features, feature_catalog
from puhui.features.sources import SourceFrames
from puhui.profiles.models import ModelSlot, RiskScoring
from puhui.profiles.segments import age_years, segment_tags
from puhui.risk.metrics import assign_grades
from puhui.risk.reasons import top_reasons
from puhui.risk.training_set import age_band, application_catalog
from puhui.warehouse.bulk import bulk_insert
from puhui.warehouse.schema import user_profile_history, user_profiles

JSON_COLUMNS = ("reasons", "recommended_products", "segment_tags")
# Where each model slot's version goes in the profile row.
VERSION_COLUMNS = {"risk": "risk_model_version", "recommender": "recommender_model_version"}
PROFILE_COLUMNS = ("person_key", "as_of_date", "customer_id", "risk_score", "risk_grade",
                   *JSON_COLUMNS, "risk_model_version", "recommender_model_version")
CUSTOMER_COLUMNS = ("customer_id", "region_type", "province", "occupation", "income_band",
                    "gender", "birth_date", "personalisation_opt_out")


@dataclass
class ScoringContext:
    """Everything a partition needs, shared read-only by every partition of one run."""

    as_of: date
    frames: SourceFrames
    features: FeaturesConfig
    risk: RiskModelSpec
    segments: SegmentsConfig
    slots: dict[str, ModelSlot]
    scorer: RiskScoring | None
    product_codes: dict[str, str] = field(default_factory=dict)  # code -> kind
    customers: pd.DataFrame = field(default_factory=pd.DataFrame)  # with "partition"

    def partition(self, number: int) -> pd.DataFrame:
        part = self.customers[self.customers["partition"] == number]
        return part.drop(columns="partition").reset_index(drop=True)


def customers_of(frames: SourceFrames) -> pd.DataFrame:
    """The register's customers known on the as-of date, one row per person."""
    customers = frames.customers.copy()
    if "personalisation_opt_out" not in customers.columns:
        customers["personalisation_opt_out"] = None
    return customers[["person_key", *CUSTOMER_COLUMNS]].reset_index(drop=True)


def _risk_columns(ctx: ScoringContext, frame: pd.DataFrame) -> dict[str, list[Any]]:
    slot = ctx.slots.get("risk")
    n = len(frame)
    if slot is None or not slot.available or ctx.scorer is None:
        reason = slot.reason if slot else "no risk model configured"
        empty = {"decision": None, "top": [], "reason": reason}
        return {"risk_score": [None] * n, "risk_grade": [None] * n, "reasons": [empty] * n}
    scorer = ctx.scorer
    pd_ = scorer.predict_pd(frame)
    grades = assign_grades(pd_, ctx.risk.grades)
    infos = [*feature_catalog(ctx.features), *application_catalog(ctx.features)]
    reasons = top_reasons(scorer.contributions(frame), scorer.features, infos,
                          ctx.features.reasons, ctx.risk.reasons_per_decline)
    cutoff = ctx.risk.policy_cutoff_pd
    rows = [{"decision": "decline" if p >= cutoff else "approve", "policy_cutoff_pd": cutoff,
             "top": r, "reason": None} for p, r in zip(pd_, reasons, strict=True)]
    return {"risk_score": [float(p) for p in pd_], "risk_grade": list(grades),
            "reasons": rows}


def _not_eligible(ctx: ScoringContext, decisions: list[dict]) -> list[dict[str, str]]:
    """Products a customer cannot be offered and why (credit: the risk decision)."""
    loans = [c for c, kind in ctx.product_codes.items() if kind == "loan"]
    out = []
    for d in decisions:
        if d.get("decision") == "decline":
            out.append({c: "probability of default above the policy cut-off" for c in loans})
        elif d.get("decision") is None:
            out.append({c: d.get("reason") or "no risk decision" for c in loans})
        else:
            out.append({})
    return out


def _recommender_columns(ctx: ScoringContext, frame: pd.DataFrame,
                         decisions: list[dict]) -> dict[str, list[Any]]:
    slot = ctx.slots.get("recommender")
    opt_out = frame["personalisation_opt_out"].map(
        lambda v: bool(v) if v is not None and v == v else False).tolist()
    filler = RECOMMENDER_FILLERS.get(slot.name) if slot and slot.available else None
    if slot is not None and slot.available and filler is not None:
        return filler(ctx, frame, slot, opt_out)
    reason = (slot.reason if slot and not slot.available else
              f"no profile scorer for {slot.name} yet" if slot else "no recommender configured")
    blocked = _not_eligible(ctx, decisions)
    return {"recommended_products": [
        {"model": slot.name if slot else None, "version": None, "personalised": [],
         "non_personalised": [], "personalisation_opt_out": o, "not_eligible": b,
         "reason": reason} for o, b in zip(opt_out, blocked, strict=True)]}


# A recommender champion fills the offer columns through a function registered here by its
# model name (issue 12): (context, partition frame, slot, opt-out flags) -> columns.
RECOMMENDER_FILLERS: dict[str, Callable[..., dict[str, list[Any]]]] = {}


def frames_of(frames: SourceFrames, keys: pd.Series) -> SourceFrames:
    """Only the rows of ``keys``' people: a partition's features then cost its own events.
    (Each source's first event day stays global: it is when the feed began.)"""
    wanted = set(keys)
    return replace(frames, customers=frames.customers[frames.customers["person_key"].isin(
        wanted)], events={name: frame[frame["person_key"].isin(wanted)]
                          for name, frame in frames.events.items()})


def score_partition(ctx: ScoringContext, customers: pd.DataFrame) -> pd.DataFrame:
    """Profile rows of ``customers`` as of ``ctx.as_of`` (not yet written anywhere)."""
    requests = pd.DataFrame({"person_key": customers["person_key"], "as_of_date": ctx.as_of})
    features = build_features(frames_of(ctx.frames, customers["person_key"]), requests,
                              ctx.features)
    frame = customers.merge(features.drop(columns="as_of_date"), on="person_key", how="left",
                            suffixes=("", "_feature"))
    for name, value in ctx.segments.profile.reference_application.items():
        frame[name] = value
    apply_derived(frame, ctx.features.application.derived, {})
    frame["age"] = age_years(frame["birth_date"], ctx.as_of)
    frame["age_band"] = age_band(frame["birth_date"], pd.Series(ctx.as_of, index=frame.index),
                                 ctx.risk.fairness.age_bands)
    out = {"person_key": frame["person_key"].tolist(), "as_of_date": [ctx.as_of] * len(frame),
           "customer_id": frame["customer_id"].tolist()}
    out.update(_risk_columns(ctx, frame))
    out.update(_recommender_columns(ctx, frame, out["reasons"]))
    out["segment_tags"] = segment_tags(frame, ctx.segments.segments)
    for slot_name, column in VERSION_COLUMNS.items():
        slot = ctx.slots.get(slot_name)
        out[column] = [slot.version if slot else None] * len(frame)
    rows = pd.DataFrame(out)[list(PROFILE_COLUMNS)]
    for column in JSON_COLUMNS:
        rows[column] = [json.dumps(v, ensure_ascii=False, sort_keys=True) for v in rows[column]]
    return rows


def run_key(as_of: date, slots: dict[str, ModelSlot], config_hash: str,
            batch_ids: set[str], partitions: int) -> str:
    """Same inputs, same key: staged partitions of a failed run are reused only for them."""
    payload = json.dumps({"as_of": as_of.isoformat(), "config": config_hash,
                          "partitions": partitions,
                          "models": {k: [s.name, s.version] for k, s in sorted(slots.items())},
                          "batches": sorted(batch_ids)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def staging_dir(home: Path, as_of: date, key: str) -> Path:
    return home / "profiles" / "staging" / as_of.isoformat() / key


def _part_path(directory: Path, partition: int) -> Path:
    return directory / f"part-{partition:04d}.parquet"


def stage_partition(directory: Path, partition: int, rows: pd.DataFrame) -> Path:
    """Write a partition's rows whole or not at all (temporary name, then rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = _part_path(directory, partition)
    tmp = path.with_suffix(".tmp")
    table = pa.Table.from_pandas(rows, preserve_index=False)
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def staged_partitions(directory: Path) -> set[int]:
    return {int(p.stem.split("-")[1]) for p in directory.glob("part-*.parquet")}


@dataclass(frozen=True)
class SwapResult:
    rows: int
    current_replaced: bool
    current_as_of: date | None


def _frame_for(table_rows: pd.DataFrame, refreshed_at: datetime,
               flow_run_id: str | None) -> pa.Table:
    frame = table_rows.copy()
    frame["refreshed_at"] = refreshed_at
    frame["flow_run_id"] = flow_run_id
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for column in (*JSON_COLUMNS, "person_key", "customer_id", "risk_grade",
                   "risk_model_version", "recommender_model_version", "flow_run_id"):
        index = table.column_names.index(column)
        table = table.set_column(index, column, table[column].cast(pa.string()))
    return table


def swap_profiles(engine: Engine, as_of: date, directory: Path, partitions: int,
                  flow_run_id: str | None) -> SwapResult:
    """Replace the as-of date's history and (if it is the newest) the current profiles, in
    one transaction, from every staged partition."""
    missing = sorted(set(range(partitions)) - staged_partitions(directory))
    if missing:
        raise RuntimeError(f"partitions not staged: {missing[:10]}")
    rows = pd.concat([pd.read_parquet(_part_path(directory, p)) for p in range(partitions)],
                     ignore_index=True)
    rows["as_of_date"] = pd.to_datetime(rows["as_of_date"]).dt.date
    table = _frame_for(rows, datetime.now(UTC), flow_run_id)
    with engine.begin() as conn:
        newest = conn.execute(select(func.max(user_profiles.c.as_of_date))).scalar()
        conn.execute(delete(user_profile_history).where(
            user_profile_history.c.as_of_date == as_of))
        bulk_insert(conn, user_profile_history, table)
        replace_current = newest is None or as_of >= newest
        if replace_current:
            conn.execute(delete(user_profiles))
            bulk_insert(conn, user_profiles, table)
    return SwapResult(len(rows), replace_current, as_of if replace_current else newest)


def clear_staging(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
