"""Refreshing ``user_profiles`` with the champion models, one customer partition at a time.

Customers are split into partitions by key range of ``person_key`` (:mod:`puhui.partitioning`).
Each partition reads only its own people's rows from the warehouse (the partitioned reader of
:mod:`puhui.features.partitioned`), is scored on its own (point-in-time features, PD, grade
and decision through :func:`puhui.scoring.score_risk`, reason codes, segment tags, offers)
and staged as a Parquet file under ``PUHUI_HOME/profiles/staging/<as-of>/<run key>/``,
written to a temporary name and renamed, so a staged partition is either whole or absent.
The run key fingerprints the as-of date, the model versions, the configuration and the data
batches: a re-run after a failure reuses the partitions already staged for the same inputs
(restartable per partition) and scores the rest.

Peak memory is one partition's events plus the register (one row per customer). Only when
every partition is staged does one transaction replace the as-of date's rows in
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
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, delete, func, select

from puhui.audit import AuditWriter
from puhui.config import FeaturesConfig, RiskModelSpec, SegmentsConfig
from puhui.features.builder import apply_derived, feature_catalog
from puhui.features.partitioned import build_partition
from puhui.partitioning import Partition
from puhui.profiles.models import ModelSlot, RiskScoring
from puhui.profiles.offers import (
    OfferContext,
    offer_columns,
    popularity_columns,
)
from puhui.profiles.segments import age_years, segment_tags
from puhui.risk.reasons import top_reasons
from puhui.risk.training_set import age_band, application_catalog
from puhui.scoring import score_risk
from puhui.table_digests import (
    PROFILES_CURRENT,
    PROFILES_HISTORY,
    PROFILES_SWAPPED,
    ROWS_DIGESTS,
    RowsMac,
    UnheldValues,
    add_macs,
    digested_columns,
    held_rows_mac,
    recorded,
    recorded_macs,
    scope_of,
    writer_subkey,
)
from puhui.warehouse.bulk import bulk_insert
from puhui.warehouse.schema import ingest_batches, user_profile_history, user_profiles

JSON_COLUMNS = ("reasons", "recommended_products", "non_personalised_products",
                "segment_tags", "model_versions")
# Where each model slot's version goes in the profile row (besides ``model_versions``).
VERSION_COLUMNS = {"risk": "risk_model_version", "recommender": "recommender_model_version"}
PROFILE_COLUMNS = ("person_key", "as_of_date", "customer_id", "risk_score", "risk_grade",
                   *JSON_COLUMNS, "personalisation_opt_out", "risk_model_version",
                   "recommender_model_version")
LOADED = ("accepted", "released")  # batch statuses whose rows are in raw_<partner>
CUSTOMER_COLUMNS = ("customer_id", "region_type", "province", "occupation", "income_band",
                    "gender", "birth_date", "personalisation_opt_out")


@dataclass
class ScoringContext:
    """Everything a partition needs besides its own rows, shared read-only by every
    partition of one run: the register (one row per customer, with ``partition`` and
    ``owns_phone``, as :func:`puhui.features.sources.load_register` gives it) and the
    sources' first days; each partition reads its own rows from the warehouse (its product
    events from the offer context's staged file)."""

    as_of: date
    features: FeaturesConfig
    risk: RiskModelSpec
    segments: SegmentsConfig
    slots: dict[str, ModelSlot]
    scorer: RiskScoring | None
    offers: OfferContext | None = None
    product_codes: dict[str, str] = field(default_factory=dict)  # code -> kind
    register: pd.DataFrame = field(default_factory=pd.DataFrame)
    first_day: dict[str, int] = field(default_factory=dict)
    partitions: int = 1

    def partition(self, number: int) -> pd.DataFrame:
        """The register slice of partition ``number`` (the opt-out column always present)."""
        part = self.register[self.register["partition"] == number].reset_index(drop=True)
        if "personalisation_opt_out" not in part.columns:
            part["personalisation_opt_out"] = None
        return part


def _risk_columns(ctx: ScoringContext, frame: pd.DataFrame) -> dict[str, list[Any]]:
    slot = ctx.slots.get("risk")
    n = len(frame)
    if slot is None or not slot.available or ctx.scorer is None:
        reason = slot.reason if slot else "no risk model configured"
        empty = {"decision": None, "top": [], "reason": reason}
        return {"risk_score": [None] * n, "risk_grade": [None] * n, "reasons": [empty] * n}
    scorer = ctx.scorer
    cutoff = ctx.risk.policy_cutoff_pd
    scored = score_risk(frame, scorer, ctx.risk.grades, cutoff)
    infos = [*feature_catalog(ctx.features), *application_catalog(ctx.features)]
    reasons = top_reasons(scorer.contributions(frame), scorer.features, infos,
                          ctx.features.reasons, ctx.risk.reasons_per_decline)
    rows = [{"decision": d, "policy_cutoff_pd": cutoff, "top": r, "reason": None}
            for d, r in zip(scored["decision"], reasons, strict=True)]
    return {"risk_score": [float(p) for p in scored["pd"]],
            "risk_grade": list(scored["grade"]), "reasons": rows}


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


def _opt_out(frame: pd.DataFrame) -> list[bool]:
    """The register's flag; missing (a feed without the column) is not a refusal."""
    return [bool(v) if v is not None and v == v else False
            for v in frame["personalisation_opt_out"]]


def _recommender_columns(ctx: ScoringContext, number: int, frame: pd.DataFrame,
                         out: dict[str, list[Any]], opt_out: list[bool]) -> dict[str, list[Any]]:
    slot = ctx.slots.get("recommender")
    blocked = _not_eligible(ctx, out["reasons"])
    offers = ctx.offers
    if offers is not None and offers.ranker is not None and slot is not None:
        return offer_columns(offers, slot, frame, out["risk_grade"], blocked, opt_out,
                             ctx.as_of, offers.partition_events(number))
    if offers is not None:  # no champion: the non-personalised ranking needs no model
        return popularity_columns(offers, slot, frame, out["risk_grade"], blocked, opt_out)
    reason = (slot.reason if slot else None) or "no recommender configured"
    return {"recommended_products": [
        {"model": slot.name if slot else None, "version": None, "ranking": None,
         "products": [], "not_eligible": b, "reason": reason} for b in blocked],
        "non_personalised_products": [[] for _ in blocked]}


def _model_versions(slots: dict[str, ModelSlot]) -> dict[str, dict[str, str | None]]:
    return {k: {"name": s.name, "version": s.version, "reason": s.reason}
            for k, s in sorted(slots.items())}


def score_partition(ctx: ScoringContext, engine: Engine, number: int,
                    scattered: dict[str, Path] | None = None) -> pd.DataFrame:
    """Profile rows of partition ``number``'s customers as of ``ctx.as_of`` (not yet
    written anywhere), from that partition's own rows of the warehouse (its phone-keyed
    feeds' rows from the run's split, ``scattered``, if there is one)."""
    customers = ctx.partition(number)
    features = build_partition(engine, ctx.features, ctx.as_of, customers,
                               Partition(number, ctx.partitions), ctx.first_day,
                               scattered=scattered)
    frame = customers[["person_key", *CUSTOMER_COLUMNS]].merge(
        features.drop(columns="as_of_date"), on="person_key", how="left",
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
    opt_out = _opt_out(frame)
    out.update(_recommender_columns(ctx, number, frame, out, opt_out))
    out["personalisation_opt_out"] = opt_out
    out["segment_tags"] = segment_tags(frame, ctx.segments.segments)
    for slot_name, column in VERSION_COLUMNS.items():
        slot = ctx.slots.get(slot_name)
        out[column] = [slot.version if slot else None] * len(frame)
    out["model_versions"] = [_model_versions(ctx.slots)] * len(frame)
    rows = pd.DataFrame(out)[list(PROFILE_COLUMNS)]
    for column in JSON_COLUMNS:
        rows[column] = [json.dumps(v, ensure_ascii=False, sort_keys=True) for v in rows[column]]
    return rows


def loaded_batches(engine: Engine, as_of: date) -> set[str]:
    """Every batch loaded for delivery dates up to ``as_of`` (what a profile may read)."""
    b = ingest_batches
    with engine.connect() as conn:
        return set(conn.execute(select(b.c.batch_id).where(
            b.c.status.in_(LOADED), b.c.delivery_date <= as_of)).scalars())


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
    index = table.column_names.index("personalisation_opt_out")
    table = table.set_column(index, "personalisation_opt_out",
                             table["personalisation_opt_out"].cast(pa.bool_()))
    return table


def swap_profiles(engine: Engine, as_of: date, directory: Path, partitions: int,
                  flow_run_id: str | None, audit: AuditWriter) -> SwapResult:
    """Replace the as-of date's history and (if it is the newest) the current profiles, in
    one transaction, from every staged partition (read and inserted one at a time), with a
    ``profiles.swapped`` event recording their count and keyed digest (``audit verify``)."""
    missing = sorted(set(range(partitions)) - staged_partitions(directory))
    if missing:
        raise RuntimeError(f"partitions not staged: {missing[:10]}")
    refreshed_at = datetime.now(UTC)
    total, subkey = 0, writer_subkey(audit)
    mac: RowsMac | None = RowsMac()
    with engine.begin() as conn:
        newest = conn.execute(select(func.max(user_profiles.c.as_of_date))).scalar()
        replace_current = newest is None or as_of >= newest
        conn.execute(delete(user_profile_history).where(
            user_profile_history.c.as_of_date == as_of))
        if replace_current:
            conn.execute(delete(user_profiles))
        for partition in range(partitions):
            rows = pd.read_parquet(_part_path(directory, partition))
            rows["as_of_date"] = pd.to_datetime(rows["as_of_date"]).dt.date
            table = _frame_for(rows, refreshed_at, flow_run_id)
            bulk_insert(conn, user_profile_history, table)
            if replace_current:
                bulk_insert(conn, user_profiles, table)
            # From the rows it inserts, not read back (the date's history is exactly these
            # rows: deleted above): the current table holds the same rows and columns, so
            # one digest is recorded for both. Values it cannot vouch for: read back.
            if mac is not None:
                try:
                    add_macs(mac, held_rows_mac(user_profile_history, table, subkey))
                except UnheldValues:
                    mac = None
            total += len(rows)
        day = as_of.isoformat()
        history = (
            recorded(conn, PROFILES_HISTORY, subkey, user_profile_history.c.as_of_date == as_of,
                     [day])
            if mac is None
            else recorded_macs(digested_columns(user_profile_history), {day: mac})
        )
        digests = {PROFILES_HISTORY.name: history}
        if replace_current:
            digests[PROFILES_CURRENT.name] = {"columns": history["columns"],
                                              "scopes": {scope_of(()): history["scopes"][day]}}
        audit.append(conn, PROFILES_SWAPPED, f"profiles/{day}", {
            "as_of": day, "rows": total, "current_replaced": replace_current,
            ROWS_DIGESTS: digests}, flow_run_id=flow_run_id)
    return SwapResult(total, replace_current, as_of if replace_current else newest)


def clear_staging(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
