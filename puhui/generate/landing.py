"""Write a whole synthetic landing zone: partner files, ``faults.json``, ``truth.json`` and
``risk_truth.csv.gz`` (every application's true PD).

Layout (ingestion relies on it)::

    <out>/<partner>/<YYYY-MM-DD>/<partner>_<YYYYMMDD>.<ext>          one per delivery date
    <out>/<partner>/<first date>/<partner>_<YYYYMMDD>_h<YYYYMM>.<ext>  back history by month
    <out>/<partner>/<YYYY-MM-DD>/<partner>_<YYYYMMDD>_redelivery.<ext> planted duplicate

Daily feeds have a file on every delivery date, holding that calendar day's events
(Asia/Shanghai); monthly feeds (credit_bureau, agri_coop) have one on each 1st of the month
in the window. The first delivery date's folder also holds the back history, one file per
month (by event month; customers by onboarding month, the first history file holding
everyone onboarded before the history window; loan_outcomes by observation month).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from puhui.errors import PuhuiError
from puhui.generate import reference as ref
from puhui.generate.arguments import BadArgument
from puhui.generate.batch import Batch, batch_rows
from puhui.generate.faults import (
    FAULT_KINDS,
    MIN_DAYS_FOR_FAULTS,
    PlannedFault,
    apply_batch_fault,
    apply_byte_fault,
    plan_faults,
)
from puhui.generate.feeds import (
    FEED_ORDER,
    FEEDS,
    World,
    agri_coop_batch,
    credit_bureau_batch,
    customers_batch,
    ecommerce_batch,
    loan_applications_batch,
    loan_outcomes_batch,
    mobile_payments_batch,
    product_events_batch,
)
from puhui.generate.formatting import prefixed_ids
from puhui.generate.population import build_population
from puhui.generate.process import (
    PERFORMANCE_WINDOW_DAYS,
    SEGMENTS,
    Applications,
    RiskParameters,
    build_applications,
    build_bureau_history,
    roc_auc,
    segment_mask,
)
from puhui.generate.recommender_truth import recommender_truth
from puhui.generate.timeline import (
    Stream,
    Timeline,
    day_month_starts,
    epoch_day,
    from_epoch_day,
    month_key,
    month_start,
    rng_for,
)
from puhui.generate.truth import FAULTS_FILE, RISK_TRUTH_FILE, TRUTH_FILE
from puhui.generate.writer import FileSink

Progress = Callable[[str], None]
DAILY_EVENT_FEEDS: dict[str, Callable[[World, int], Batch]] = {
    "ecommerce_orders": ecommerce_batch,
    "mobile_payments": mobile_payments_batch,
    "product_events": product_events_batch,
}
MONTHLY_FEEDS: dict[str, Callable[[World, date], Batch]] = {
    "credit_bureau": credit_bureau_batch,
    "agri_coop": agri_coop_batch,
}


# Next to the partner folders, never inside one: nothing here is ever landed or ingested.
TRUTH_FILES = (FAULTS_FILE, TRUTH_FILE, RISK_TRUTH_FILE)


@dataclass(frozen=True)
class GenerateSummary:
    """What a generator run wrote."""

    out_dir: Path
    users: int
    days: int
    seed: int
    files: int  # data files (TRUTH_FILES not counted)
    rows_by_partner: dict[str, int]  # records generated per partner, before planted faults
    bytes_written: int  # all files, including TRUTH_FILES
    seconds: float
    faults: list[dict[str, str]] = field(default_factory=list)


def generate_landing_zone(
    out_dir: Path,
    users: int = 20000,
    days: int = 30,
    seed: int = 42,
    faults: bool = False,
    end_date: date = date(2026, 9, 30),
    history_days: int = 365,
    products: Sequence[str] = ref.DEFAULT_PRODUCTS,
    penalize_segment: str | None = None,
    progress: Progress | None = None,
    drift: bool = False,
    rural_agri_boost: float = 0.0,
) -> GenerateSummary:
    """Generate a deterministic synthetic partner landing zone under ``out_dir``.

    Same arguments give byte-identical files. ``out_dir`` must be empty or a landing zone
    written by this function before (its partner folders and JSON files are replaced).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    products = tuple(products)
    _validate(users, days, history_days, products, penalize_segment, end_date, faults)
    _validate_numbers(seed, rural_agri_boost)
    _check_out_dir(out_dir)
    say = progress or (lambda _message: None)

    timeline = Timeline(end_date, days, history_days)
    say(f"population: {users:,} people")
    pop = build_population(users, seed, timeline)
    bureau = build_bureau_history(pop, timeline, seed)
    params = RiskParameters()
    apps = build_applications(pop, bureau, timeline, seed, products, params, penalize_segment)
    say(f"loan applications: {len(apps):,} over {len(timeline.all_days)} days")
    world = World(pop, bureau, apps, timeline, seed, products, rural_agri_boost=rural_agri_boost,
                  drift=drift)

    planned: list[PlannedFault] = []
    if faults:
        planned = plan_faults(timeline.delivery_dates, _known_delivery_rows(world))
    # Only now, with every argument accepted (the fault plan can still refuse --days).
    _clear_out_dir(out_dir)
    writer = _LandingWriter(out_dir, world, planned, say)
    for partner in FEED_ORDER:
        writer.write_partner(partner)

    fault_entries = [
        {"path": writer.fault_paths[f], "fault": f.kind, "expect": f.expect} for f in planned
    ]
    _write_json(out_dir / FAULTS_FILE, fault_entries)
    truth = build_truth(world, params, penalize_segment, writer, planned, faults)
    _write_json(out_dir / TRUTH_FILE, truth)
    write_risk_truth(out_dir, apps)
    bytes_written = sum(p.stat().st_size for p in writer.paths) + sum(
        (out_dir / name).stat().st_size for name in TRUTH_FILES
    )
    return GenerateSummary(
        out_dir=out_dir, users=users, days=days, seed=seed, files=len(writer.paths),
        rows_by_partner=dict(writer.rows), bytes_written=bytes_written,
        seconds=round(time.perf_counter() - started, 3), faults=fault_entries,
    )


MAX_USERS = 10_000_000
HISTORY_EPOCH = date(2020, 1, 1)  # synthetic history starts no earlier


def _validate(
    users: int, days: int, history_days: int, products: tuple[str, ...],
    penalize_segment: str | None, end_date: date, faults: bool,
) -> None:
    if users < 1:
        raise BadArgument("users", "must be at least 1")
    if users > MAX_USERS:
        # 10^20 was numpy's OverflowError, naming nothing. A guard, not a tested size: every
        # customer is built in memory, and the bench measured up to 1M users (README).
        raise BadArgument("users", f"must be at most {MAX_USERS:,}")
    if days < 1:
        raise BadArgument("days", "must be at least 1")
    if history_days < 0:
        raise BadArgument("history_days", "must not be negative")
    # Counted, not dated: a 12-digit --days overflowed the timeline's date arithmetic.
    span = (end_date - HISTORY_EPOCH).days + 1
    if days > span:
        raise BadArgument("days", f"goes back before {HISTORY_EPOCH}")
    if days + history_days > span:
        raise BadArgument("history_days", "puts the history's start (the end date less the "
                          f"days and the history days) before {HISTORY_EPOCH}")
    unknown = [p for p in products if p not in ref.PRODUCT_SCENARIOS]
    if unknown or not products:
        raise BadArgument(
            "products", f"unknown: {unknown}; known: {', '.join(ref.PRODUCT_SCENARIOS)}"
        )
    if len(set(products)) != len(products):
        raise BadArgument("products", "must not repeat")
    if not set(products) & set(ref.LOAN_PRODUCTS):
        raise BadArgument(
            "products", "must include a loan product: " + ", ".join(ref.LOAN_PRODUCTS))
    if faults and days < MIN_DAYS_FOR_FAULTS:
        raise BadArgument(
            "days", f"must be at least {MIN_DAYS_FOR_FAULTS} with faults (one file per kind)")
    if penalize_segment is not None and penalize_segment not in SEGMENTS:
        raise BadArgument(
            "penalize_segment",
            f"{penalize_segment!r} is no segment; choose one of {', '.join(SEGMENTS)}")


def _validate_numbers(seed: int, rural_agri_boost: float) -> None:
    if seed < 0:  # numpy's SeedSequence raised a bare ValueError, naming no option
        raise BadArgument("seed", "must not be negative")
    if not math.isfinite(rural_agri_boost) or rural_agri_boost < 0:
        # inf passed the option's minimum and wrote Infinity (not JSON) into truth.json.
        raise BadArgument("rural_agri_boost", "must be a finite number, at least 0")


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to write into an unrelated non-empty folder or onto a file; create the folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PuhuiError(f"--out {out_dir} is not a folder; give a new or empty folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / TRUTH_FILE).exists():
        raise PuhuiError(f"--out {out_dir} is not empty and holds no generated landing "
                         "zone; give a new or empty folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a parent folder should be, no permission
        raise PuhuiError(f"--out {out_dir} cannot be created: {exc.strerror}") from exc


def _clear_out_dir(out_dir: Path) -> None:
    """Remove an earlier landing zone's partner folders and JSON files (``_check_out_dir``
    let only such a zone, or nothing, through)."""
    for partner in FEEDS:
        shutil.rmtree(out_dir / partner, ignore_errors=True)
    for name in TRUTH_FILES:
        (out_dir / name).unlink(missing_ok=True)


def write_risk_truth(out_dir: Path, apps: Applications) -> Path:
    """Every application's true PD, by ``application_id`` as the feed writes it: the model's
    evaluation scores its own test window against it (the AUC ceiling of exactly the rows it
    is evaluated on; truth.json's ``risk_auc_ceiling`` is over every labelled application)."""
    path = out_dir / RISK_TRUTH_FILE
    table = pa.table({"application_id": prefixed_ids("A", apps.number, 10),
                      "true_pd": pa.array(np.round(apps.pd, 6))})
    buffer = io.BytesIO()
    pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(quoting_style="none"))
    # mtime=0: the same arguments give byte-identical files.
    path.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    return path


def _known_delivery_rows(world: World) -> dict[str, dict[date, int]]:
    """Rows per delivery date of the feeds whose counts are known before writing."""
    counts: dict[str, dict[date, int]] = {}
    for name, days in (("customers", world.pop.onboard_day), ("loan_applications", world.apps.day)):
        values, n = np.unique(days, return_counts=True)
        counts[name] = {from_epoch_day(int(v)): int(c) for v, c in zip(values, n, strict=True)}
    return counts


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _ymd(d: date) -> str:
    return d.strftime("%Y%m%d")


class _LandingWriter:
    """Writes every partner's files in date order, planting the planned faults."""

    def __init__(
        self, out_dir: Path, world: World, planned: list[PlannedFault], say: Progress
    ) -> None:
        self.out_dir = out_dir
        self.world = world
        self.timeline = world.timeline
        self.say = say
        self.faults = {(f.partner, f.day): f for f in planned}
        self.fault_paths: dict[PlannedFault, str] = {}
        self.paths: list[Path] = []
        self.rows: dict[str, int] = {name: 0 for name in FEEDS}

    # -- file names ------------------------------------------------------------------
    def delivered_path(self, partner: str, day: date, suffix: str = "") -> Path:
        spec = FEEDS[partner]
        folder = self.out_dir / partner / day.isoformat()
        return folder / f"{partner}_{_ymd(day)}{suffix}.{spec.ext}"

    def history_path(self, partner: str, month: date) -> Path:
        return self.delivered_path(
            partner, self.timeline.first_delivery, f"_h{month_key(month)}"
        )

    def relative(self, path: Path) -> str:
        return path.relative_to(self.out_dir).as_posix()

    # -- partners --------------------------------------------------------------------
    def write_partner(self, partner: str) -> None:
        if partner in DAILY_EVENT_FEEDS:
            self._write_daily_events(partner, DAILY_EVENT_FEEDS[partner])
        elif partner in MONTHLY_FEEDS:
            self._write_monthly(partner, MONTHLY_FEEDS[partner])
        elif partner == "customers":
            self._write_grouped(partner, self.world.pop.onboard_day, _customer_rows(self.world))
        elif partner == "loan_applications":
            self._write_grouped(partner, self.world.apps.day, _application_rows(self.world))
        elif partner == "loan_outcomes":
            self._write_grouped(partner, self.world.apps.observation_day, _outcome_rows(self.world))
        else:  # pragma: no cover - FEEDS and this dispatch are kept in step
            raise ValueError(partner)

    def _write_daily_events(self, partner: str, make: Callable[[World, int], Batch]) -> None:
        timeline = self.timeline
        sink: FileSink | None = None
        sink_month: date | None = None
        for d in timeline.all_days:
            if timeline.is_history(d):
                if sink_month != month_start(d):
                    self._close_history(partner, sink, sink_month)
                    sink_month = month_start(d)
                    sink = self._open(self.history_path(partner, sink_month), partner)
                assert sink is not None
                sink.append(make(self.world, epoch_day(d)))
            else:
                self._close_history(partner, sink, sink_month)
                sink, sink_month = None, None
                self._write_delivered(partner, d, make(self.world, epoch_day(d)))
        self._close_history(partner, sink, sink_month)

    def _write_monthly(self, partner: str, make: Callable[[World, date], Batch]) -> None:
        for report_date in self.timeline.report_dates():
            batch = make(self.world, report_date)
            if self.timeline.is_history(report_date):
                sink = self._open(self.history_path(partner, report_date), partner)
                sink.append(batch)
                self._close_history(partner, sink, report_date)
            else:
                self._write_delivered(partner, report_date, batch)

    def _write_grouped(
        self, partner: str, event_days: np.ndarray,
        rows_for: Callable[[np.ndarray], Batch],
    ) -> None:
        """Feeds whose rows are known up front (customers, applications, outcomes): the
        history by month of ``event_days``, then each delivery date's rows."""
        timeline = self.timeline
        first = epoch_day(timeline.first_delivery)
        history_months = timeline.history_months()
        month_of = day_month_starts(event_days)
        earliest = epoch_day(history_months[0]) if history_months else first
        for month in history_months:
            m = epoch_day(month)
            in_month = (month_of == m) if m != earliest else (month_of <= m)
            rows = np.flatnonzero(in_month & (event_days < first))
            sink = self._open(self.history_path(partner, month), partner)
            sink.append(rows_for(rows))
            self._close_history(partner, sink, month)
        order = np.argsort(event_days, kind="stable")
        sorted_days = event_days[order]
        for d in timeline.delivery_dates:
            day = epoch_day(d)
            lo, hi = np.searchsorted(sorted_days, [day, day + 1])
            self._write_delivered(partner, d, rows_for(np.sort(order[lo:hi])))

    # -- files ------------------------------------------------------------------------
    def _open(self, path: Path, partner: str, encoding: str | None = None) -> FileSink:
        self.paths.append(path)
        return FileSink(path, FEEDS[partner], encoding)

    def _close_history(self, partner: str, sink: FileSink | None, month: date | None) -> None:
        if sink is None or month is None:
            return
        rows = sink.close()
        self.rows[partner] += rows
        self.say(f"{partner} history {month:%Y-%m}: {rows:,} rows")

    def _write_delivered(self, partner: str, day: date, batch: Batch) -> None:
        fault = self.faults.get((partner, day))
        path = self.delivered_path(partner, day)
        self.rows[partner] += batch_rows(batch)
        encoding = None
        if fault is not None:
            rng = rng_for(self.world.seed, Stream.FAULTS, FAULT_KINDS.index(fault.kind))
            batch = apply_batch_fault(fault, batch, rng)
            if fault.kind == "wrong_encoding":
                encoding = "gbk"
        sink = self._open(path, partner, encoding)
        sink.append(batch)
        rows = sink.close()
        note = ""
        if fault is not None:
            apply_byte_fault(fault, path)
            if fault.kind == "duplicate_delivery":
                assert fault.source_day is not None
                source = self.delivered_path(partner, fault.source_day)
                path = self.delivered_path(partner, day, "_redelivery")
                shutil.copyfile(source, path)
                self.paths.append(path)
                fault.detail["original"] = self.relative(source)
            self.fault_paths[fault] = self.relative(path)
            note = f" (fault: {fault.kind})"
        self.say(f"{partner} {day.isoformat()}: {rows:,} rows{note}")


def _customer_rows(world: World) -> Callable[[np.ndarray], Batch]:
    return lambda people: customers_batch(world, people)


def _application_rows(world: World) -> Callable[[np.ndarray], Batch]:
    return lambda rows: loan_applications_batch(world, rows)


def _outcome_rows(world: World) -> Callable[[np.ndarray], Batch]:
    approved = world.apps.approved

    def rows_for(rows: np.ndarray) -> Batch:
        return loan_outcomes_batch(world, rows[approved[rows]])

    return rows_for


def build_truth(
    world: World, params: RiskParameters, penalize_segment: str | None,
    writer: _LandingWriter, planned: list[PlannedFault], faults: bool,
) -> dict[str, object]:
    """Facts of the generating process for tests, model evaluation and fairness checks."""
    pop, apps, timeline = world.pop, world.apps, world.timeline
    end = epoch_day(timeline.end_date)
    labelled = apps.approved & (apps.observation_day <= end)
    auc = roc_auc(apps.pd[labelled], apps.default[labelled])
    thin_by_region = {
        name: _share(~pop.has_record[pop.region == i]) for i, name in enumerate(ref.REGION_TYPES)
    }
    ages = pop.age_at(end)
    thin_by_age = {
        name: _share(~pop.has_record[(ages >= lo) & (ages <= hi)])
        for name, lo, hi in ref.AGE_BANDS
    }
    by_segment: dict[str, dict[str, float | int | None]] = {}
    for segment in SEGMENTS:
        in_seg = segment_mask(segment, pop, apps.person, apps.day)
        seg_labelled = labelled & in_seg
        by_segment[segment] = {
            "applications": int(in_seg.sum()),
            "approval_rate": _share(apps.approved[in_seg]),
            "labelled": int(seg_labelled.sum()),
            "default_rate": _share(apps.default[seg_labelled]),
            "mean_true_pd": _mean(apps.pd[seg_labelled]),
        }
    reco = recommender_truth(world)
    ceiling = reco["ceiling"]
    assert isinstance(ceiling, dict)
    return {
        "risk_auc_ceiling": None if auc is None else round(auc, 6),
        "risk_truth_file": RISK_TRUTH_FILE,
        "recommender_ndcg3_ceiling": _round(ceiling["ndcg_every"]),
        "recommender_hit3_ceiling": _round(ceiling["hit_every"]),
        "recommender": reco,
        "seed": world.seed,
        "drift": world.drift,
        "users": pop.n,
        "days": timeline.days,
        "end_date": timeline.end_date.isoformat(),
        "first_delivery_date": timeline.first_delivery.isoformat(),
        "history_days": timeline.history_days,
        "history_start": timeline.history_start.isoformat(),
        "timezone": "+08:00",
        "performance_window_days": PERFORMANCE_WINDOW_DAYS,
        "default_definition": "max days past due >= 90 within 180 days of disbursement",
        "products": list(world.products),
        "applications": len(apps),
        "approval_rate": _share(apps.approved),
        "labelled_applications": int(labelled.sum()),
        "defaults": int(apps.default[labelled].sum()),
        "default_rate": _share(apps.default[labelled]),
        "mean_true_pd_labelled": _mean(apps.pd[labelled]),
        "thin_file_share": thin_by_region,
        "thin_file_share_by_age_band": thin_by_age,
        "thin_file_share_overall": _share(~pop.has_record),
        "wallet_share": _share(pop.has_wallet),
        "shopper_share": _share(pop.is_shopper),
        "coop_member_share": _share(pop.is_coop_member),
        "penalize_segment": penalize_segment,
        "segments": by_segment,
        "rows_by_partner": dict(writer.rows),
        "faults_planted": faults,
        "fault_details": [
            {
                "path": writer.fault_paths[f], "fault": f.kind, "expect": f.expect,
                "partner": f.partner, "delivery_date": f.day.isoformat(),
                **({"column": f.column} if f.column else {}), **f.detail,
            }
            for f in planned
        ],
        "process": {
            "pd_model": "sigmoid(intercept + sum of terms + penalty); "
            "see puhui/generate/process.py",
            "intercept": round(apps.intercept, 6),
            "coefficients": params.as_dict(),
            "mean_term_contribution": {
                name: _mean(values) for name, values in apps.terms.items()
            },
            "protected_attributes_in_pd": (
                "none directly; age only via thin_file x age<=25 x electronics_share; "
                "penalize_segment adds segment_penalty"
            ),
        },
    }


def _round(value: object) -> float | None:
    return None if value is None else round(float(value), 6)  # type: ignore[arg-type]


def _share(mask: np.ndarray) -> float | None:
    return None if len(mask) == 0 else round(float(np.mean(mask)), 6)


def _mean(values: np.ndarray) -> float | None:
    return None if len(values) == 0 else round(float(np.mean(values)), 6)
