"""Ingesting a feed up to an as-of date: discovery, freshness and the watermark.

The watermark is the latest delivery date a run finished for the feed; the next run looks at
delivery folders after ``watermark - LOOKBACK_DAYS`` (late files into recent folders are
still found) up to the as-of date. Files already in the ledger are skipped cheaply by their
batch id, so overlapping windows cost a checksum, not a reload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

from puhui.config import PartnerFeed
from puhui.ingest import ledger
from puhui.ingest.batches import FileIngestor, FileOutcome
from puhui.landing import LandedFile, is_delivery_expected, list_landed_files
from puhui.runtime import Runtime

LOOKBACK_DAYS = 3


@dataclass(frozen=True)
class FeedResult:
    partner: str
    as_of: str
    late: bool
    files: list[FileOutcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Files decided by this run, by status; files an earlier run decided are "skipped"."""
        counts: dict[str, int] = {}
        for outcome in self.files:
            key = "skipped" if outcome.skipped else outcome.status
            counts[key] = counts.get(key, 0) + 1
        return counts


def files_to_consider(
    feed: PartnerFeed, landing: str, as_of: date, watermark: date | None
) -> list[LandedFile]:
    """Landed files of ``feed`` in the window (watermark - lookback, as_of], oldest first."""
    start = watermark - timedelta(days=LOOKBACK_DAYS) if watermark else None
    files = [
        f
        for f in list_landed_files(feed, landing)
        if f.delivery_date <= as_of and (start is None or f.delivery_date > start)
    ]
    return sorted(files, key=lambda f: (f.delivery_date, f.path))


def ingest_feed(
    runtime: Runtime,
    feed: PartnerFeed,
    ingestor: FileIngestor,
    as_of: date,
    on_file: Callable[[FileOutcome], None] | None = None,
) -> FeedResult:
    """Ingest every new file of ``feed`` up to ``as_of``; report a missing expected delivery."""
    engine = runtime.engine
    watermark = ledger.get_watermark(engine, feed.name)
    files = files_to_consider(feed, runtime.settings.landing, as_of, watermark)
    outcomes = []
    for landed in files:
        outcome = ingestor.ingest(landed)
        outcomes.append(outcome)
        if on_file:
            on_file(outcome)
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
    ledger.advance_watermark(engine, feed.name, as_of, ingestor.flow_run_id)
    return FeedResult(feed.name, as_of.isoformat(), late, outcomes)
