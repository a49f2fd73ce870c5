"""Atomic text writes: what a writer killed mid-write leaves is swept by a later write."""

from __future__ import annotations

import os
import time
from pathlib import Path

from puhui.files import STALE_TEMP_SECONDS, write_text_atomically


def test_a_killed_writer_s_temporary_file_is_swept_by_a_later_write(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    old = time.time() - STALE_TEMP_SECONDS - 60
    stale = reports / ".report_2026-01-01.html.4242.139876.tmp"  # another report's, killed
    fresh = reports / ".report_2026-01-02.html.4243.139877.tmp"  # a write under way
    other = reports / ".keep.tmp"  # not a writer's name
    for leftover in (stale, fresh, other):
        leftover.write_text("<html>half")
    for leftover in (stale, other):
        os.utime(leftover, (old, old))
    write_text_atomically(reports / "report_2026-01-03.html", "<html>whole</html>")
    assert sorted(p.name for p in reports.iterdir()) == sorted(
        [fresh.name, other.name, "report_2026-01-03.html"])
