"""Files under a delivery folder named like a date that is none are reported, not lost."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from flows.ingest import summarize_ingest
from puhui.config import ColumnContract, PartnerFeed
from puhui.landing import list_landed_files, undated_folders


def _feed() -> PartnerFeed:
    return PartnerFeed(
        name="keyed", description="one column", owner="partner", pattern="{date}/keyed_*.csv",
        format="csv", delivery="daily", suite="keyed", primary_key=["a"],
        columns=[ColumnContract(name="a", type="string", nullable=True)],
    )


def test_files_in_a_folder_that_is_no_date_are_named_in_the_ingest_summary(
        tmp_path: Path) -> None:
    for folder, names in {"2026-02-28": ["keyed_1.csv"],
                          "2026-02-30": ["keyed_1.csv", "keyed_2.csv", "notes.txt"],
                          "2026-13-01": [], "latest": ["keyed_1.csv"]}.items():
        (tmp_path / "keyed" / folder).mkdir(parents=True)
        for name in names:
            (tmp_path / "keyed" / folder / name).write_text("a\n1\n")
    feed = _feed()
    # No delivery date to file them under: the listing cannot take them ...
    assert [f.delivery_date for f in list_landed_files(feed, str(tmp_path))] == [
        date(2026, 2, 28)]
    # ... so they are counted by folder (only the feed's own files; empty folders left out).
    undated = undated_folders(feed, str(tmp_path))
    assert undated == {"2026-02-30": 2}

    feeds = [{"partner": "keyed", "late": False, "counts": {}, "files": [],
              "undated_folders": undated},
             {"partner": "other", "late": False, "counts": {}, "files": []}]
    line = summarize_ingest(date(2026, 2, 28), feeds, [])["line"]
    assert line.endswith("; NOT INGESTED, folder not a real date: keyed/2026-02-30/ (2)")
    assert "NOT INGESTED" not in summarize_ingest(date(2026, 2, 28), feeds[1:], [])["line"]
