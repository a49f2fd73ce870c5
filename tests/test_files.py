"""Atomic text writes: what a writer killed mid-write leaves is swept by a later write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from puhui.crashpoints import CRASH_ENV
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


def test_a_writer_killed_between_its_write_and_the_rename_leaves_the_old_report(
        tmp_path: Path) -> None:
    # A real process (the reports' own function, without the flow around it: a report run
    # would cost the suite half a minute for the same two lines) killed as kill -9 would,
    # with the new page written aside and not yet renamed.
    reports = tmp_path / "reports"
    report = reports / "report_2026-01-03.html"
    write_text_atomically(report, "<html>old, whole</html>")
    write = ("import sys; from pathlib import Path; from puhui.files import "
             "write_text_atomically; write_text_atomically(Path(sys.argv[1]), '<html>new')")
    killed = subprocess.run([sys.executable, "-c", write, str(report)], capture_output=True,
                            text=True, env={**os.environ, CRASH_ENV: "files.before_rename"},
                            timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert report.read_text() == "<html>old, whole</html>"  # readers still see the old one
    [left] = [p for p in reports.iterdir() if p != report]
    assert left.name.startswith(f".{report.name}.") and left.read_text() == "<html>new"

    # The next run completes; the killed writer's file stays while it could be a live
    # writer's (younger than STALE_TEMP_SECONDS), and goes with the first write after that.
    write_text_atomically(report, "<html>next run</html>")
    assert report.read_text() == "<html>next run</html>"
    assert sorted(reports.iterdir()) == sorted([report, left])
    old = time.time() - STALE_TEMP_SECONDS - 1
    os.utime(left, (old, old))
    write_text_atomically(reports / "report_2026-01-04.html", "<html>a day later</html>")
    assert sorted(p.name for p in reports.iterdir()) == [report.name, "report_2026-01-04.html"]
