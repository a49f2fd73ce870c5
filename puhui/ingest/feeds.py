"""Ingesting a feed up to an as-of date: discovery, freshness and the watermark.

Discovery is by what the ledger has not seen. Every landed file in the feed's delivery
folders from ``as_of - late_lookback_days`` (configs/partners.yaml) up to the as-of date is
compared with the ledger by path, size and change marker: a local file's modification time
and change time (``landing.local_change_marker``), a remote file's marker as its listing
gives it (``landing.change_marker``). A file it has seen is not read again, any other (a
late file landed in an old folder, for a date long past the watermark; a file rewritten in
place) is ingested. The watermark (the latest delivery date a run finished) only widens the
window when runs fell behind by more than the look-back. A file seen before whose delivery
folder is recent (``watermark - RECENT_DAYS`` on) is reported as skipped; older ones
silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

from puhui.config import PartnerFeed, PartnersConfig, load_config
from puhui.errors import PuhuiError
from puhui.ingest import ledger
from puhui.ingest.batches import (
    CHANGED_WHILE_READ,
    ChangedWhileRead,
    FileIngestor,
    FileOutcome,
)
from puhui.ingest.pseudonym_check import ensure_pseudonym_key
from puhui.ingest.reading import landed_fs
from puhui.landing import LandedFile, is_delivery_expected, list_landed_files
from puhui.runtime import Runtime

RECENT_DAYS = 3  # seen files of the last days are reported ("already ingested")
DEFAULT_LOOKBACK_DAYS = 35


@dataclass(frozen=True)
class FeedResult:
    partner: str
    as_of: str
    late: bool
    files: list[FileOutcome] = field(default_factory=list)
    # Said once, by the run that adopted the key of pseudonyms made before its check value.
    key_note: str | None = None

    def counts(self) -> dict[str, int]:
        """Files decided by this run, by status; files an earlier run decided are "skipped"."""
        counts: dict[str, int] = {}
        for outcome in self.files:
            key = "skipped" if outcome.skipped else outcome.status
            counts[key] = counts.get(key, 0) + 1
        return counts


def days_before(day: date, days: int) -> date | None:
    """``day`` minus ``days``, or None (no lower bound) when that is before the first date
    there is. A delivery folder named ``0001-01-01`` is a date too: the subtraction raised
    OverflowError on a feed's first run (and every run after its watermark became that day),
    and not one file of the feed was ingested; clamped to 0001-01-01, a strict "after" bound
    then dropped that day's folder, though the window reaches before it."""
    return day - timedelta(days=days) if day.toordinal() > days else None


def files_to_consider(
    feed: PartnerFeed,
    landing: str,
    as_of: date,
    watermark: date | None,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
) -> list[LandedFile]:
    """Landed files of ``feed`` that may be new, delivered up to ``as_of``, oldest first.

    From ``as_of - lookback_days`` on (or from after the watermark's recent days, if runs
    fell further behind); everything up to ``as_of`` on a feed's first run.
    """
    start = None
    if watermark is not None:
        bounds = [days_before(watermark, RECENT_DAYS), days_before(as_of, lookback_days)]
        start = None if None in bounds else min(b for b in bounds if b is not None)
    files = [
        f
        for f in list_landed_files(feed, landing)
        if f.delivery_date <= as_of and (start is None or f.delivery_date > start)
    ]
    return sorted(files, key=lambda f: (f.delivery_date, f.path))


def _lookback_days(runtime: Runtime, feed: PartnerFeed) -> int:
    if feed.late_lookback_days is not None:
        return feed.late_lookback_days
    try:
        return load_config(runtime.settings.config_dir, PartnersConfig).late_lookback_days
    except PuhuiError:  # a feed built in code, with no config directory behind it
        return DEFAULT_LOOKBACK_DAYS


def _partners_to_settle(runtime: Runtime, feed: PartnerFeed, unsettled: list[str]) -> list[str]:
    """Of the ``unsettled`` partners, ``feed``'s and those no longer configured: no feed
    run of theirs would ever settle a retired partner's rows (the settle needs only the
    key)."""
    try:
        configured = {f.name for f in load_config(runtime.settings.config_dir,
                                                  PartnersConfig).partners}
    except PuhuiError:  # a feed built in code, with no config directory behind it
        configured = None
    return [partner for partner in unsettled if partner == feed.name
            or (configured is not None and partner not in configured)]


DEFERRED = "deferred"  # not readable now: no ledger row yet, tried again by the next run


def _is_the_landed_file(exc: OSError, landed: LandedFile) -> bool:
    return exc.filename is not None and str(exc.filename) == landed_fs(landed.path)[1]


def _deferred(ingestor: FileIngestor, landed: LandedFile, why: str) -> FileOutcome:
    """One file the pipeline cannot take now: one it may not read (a partner's upload left
    mode 0600), one that went away after it was listed, or one that changed while it was
    read (still being uploaded). The feed's other files go on, and it is reported and tried
    again by the next run. Holding it would record its path and size as decided: a fixed
    permission would never be seen, and a finished upload would sit beside a hold of its
    partial bytes that nobody needs to decide."""
    return FileOutcome(
        batch_id="-",
        partner=landed.partner,
        path=ingestor.stored_path(landed.path),
        delivery_date=landed.delivery_date.isoformat(),
        status=DEFERRED,
        rows=0,
        reason=f"not readable now ({why}): nothing recorded; the next run tries it again",
    )


def ingest_feed(
    runtime: Runtime,
    feed: PartnerFeed,
    ingestor: FileIngestor,
    as_of: date,
    on_file: Callable[[FileOutcome], None] | None = None,
) -> FeedResult:
    """Ingest every new file of ``feed`` up to ``as_of``; report a missing expected delivery.

    Refuses, before it writes anything, a pseudonym key that is not the warehouse's
    (:func:`ensure_pseudonym_key`; the ledger's paths are pseudonymized too)."""
    engine = runtime.engine
    key_note = ensure_pseudonym_key(engine, ingestor.key, runtime.audit, ingestor.flow_run_id)
    with engine.begin() as conn:
        # Rows settled before the finder's current shapes, or never: the ledger (read by BI)
        # keeps no raw identifier, and discovery finds those files under their stored names.
        for partner in _partners_to_settle(runtime, feed, ledger.unsettled_partners(conn)):
            ledger.settle_ledger_paths(conn, runtime.audit, partner, ingestor.settled_path,
                                       ingestor.flow_run_id)
    watermark = ledger.get_watermark(engine, feed.name)
    files = files_to_consider(
        feed, runtime.settings.landing, as_of, watermark, _lookback_days(runtime, feed)
    )
    # None for a folder of the first date there is: every ledger row of the feed is seen.
    since = days_before(files[0].delivery_date, 1) if files else None
    seen = ledger.seen_files(engine, feed.name, since) if files else {}
    recent = days_before(watermark, RECENT_DAYS) if watermark else None
    # Each file with the ledger row that decided it (None: new, or changed since).
    plan = []
    for landed in files:
        known = seen.get(ingestor.stored_path(landed.path))
        matched = known is not None and (
            landed.kind != "file"
            or known.matches(landed.size, landed.mtime_ns, landed.change_marker)
        )
        plan.append((landed, known if matched else None, known))
    if any(known is None for _, known, _ in plan):
        # A broken suite stops the feed before any file is decided or reported: checked at
        # the first new file, the files decided earlier had been reported (on_file) and
        # their outcomes were then lost with the error.
        ingestor.check_suite()
    outcomes = []
    for landed, known, at_path in plan:
        if known is not None:
            if landed.kind == "file":
                # A row from before 0005/0007 holds no time or marker: it takes the ones it
                # is seen with, or a later same-size rewrite would match on size for ever.
                ingestor.renewals.add(known, landed.mtime_ns, landed.change_marker)
            if recent is not None and landed.delivery_date <= recent:
                continue  # decided long ago: not worth a line
            outcome = ingestor.decided_earlier(landed, known.batch_id)
        else:
            try:
                outcome = ingestor.ingest(landed, at_path.batch_id if at_path else None)
            except (PermissionError, FileNotFoundError) as exc:
                if not _is_the_landed_file(exc, landed):
                    raise  # the machinery (a store, a folder of ours): stop and retry
                why = "permission denied" if isinstance(exc, PermissionError) else \
                    "gone since listed"
                outcome = _deferred(ingestor, landed, why)
            except ChangedWhileRead:
                outcome = _deferred(ingestor, landed, CHANGED_WHILE_READ)
        outcomes.append(outcome)
        if on_file:
            on_file(outcome)
    ingestor.renewals.write(engine, runtime.audit, feed.name, ingestor.flow_run_id)
    arrived_today = any(f.delivery_date == as_of for f in files)
    late = is_delivery_expected(feed, as_of) and not arrived_today
    if late:
        runtime.audit.record(
            engine,
            "ingest.late",
            f"{feed.name}/{as_of}",
            {
                "partner": feed.name,
                "expected_by": feed.expected_by.isoformat(),
                "as_of": as_of.isoformat(),
            },
            flow_run_id=ingestor.flow_run_id,
        )
    ledger.advance_watermark(engine, feed.name, as_of, ingestor.flow_run_id, runtime.audit)
    return FeedResult(feed.name, as_of.isoformat(), late, outcomes, key_note)


def ingest_all_feeds(runtime: Runtime, as_of: date) -> list[FeedResult]:
    """Every configured feed up to ``as_of``, in plain Python, without a flow run.

    What tests and benchmarks need to fill a warehouse through the real ingest path (the
    ingest flow wraps the same per-feed call in Prefect tasks).
    """
    from puhui.ingest.pseudonymize import pseudonym_key_bytes
    from puhui.validation import BatchValidator  # imports GX: only when ingesting

    settings = runtime.settings
    validator = BatchValidator(results_dir=settings.home / "gx",
                               expectations_dir=settings.expectations_dir)
    key = pseudonym_key_bytes(settings.pseudonym_key)
    return [
        ingest_feed(runtime, feed, FileIngestor(runtime, feed, validator, key, flow_run_id=None),
                    as_of)
        for feed in load_config(settings.config_dir, PartnersConfig).partners
    ]
