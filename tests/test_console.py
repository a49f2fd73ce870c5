"""Quiet and visible: stage lines, --verbose details, progress bars only on a terminal, the
third-party noise filtered, and a demo that fits on a screen."""

from __future__ import annotations

import io
import logging
import os
import pty
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from rich.console import Console

from puhui import console as report
from puhui.settings import repo_root
from tests.conftest import DemoRun, demo_env

MAX_DEMO_LINES = 40
# The demo on a terminal is about what the screen shows, not the data: the smallest demo that
# still runs every step with both progress bars (generation, the LightGBM search's trials).
# Less history than 540 days leaves the risk model's train window without labelled loans;
# 100 users leave a fold with one class (the training raises). At 300 users and one delivery
# both models fail their gates, so this screen carries the longer failed-gate summary (the
# piped demo, DEMO_ARGS, is the larger run). Against 700 users x 2 days: 91 -> 67 s idle,
# 106 -> 82 s at load ~2.3 (-n 0, old and new back to back). The summary of a failed gate is
# tested apart (test_the_demo_summary_names_the_recommenders_failed_gate).
TERMINAL_DEMO_ARGS = ["--users", "300", "--days", "1", "--history-days", "540"]


@pytest.fixture(autouse=True)
def reporting_off() -> Iterator[None]:
    report.configure(None)  # whatever an earlier test module left on
    yield
    report.configure(None)


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=100), out


def test_unconfigured_reporting_prints_nothing() -> None:
    """Library code (tests, workers) may call it freely: nothing is printed."""
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        report.stage("a stage")
        report.detail("a detail")
        with report.progress("rows", total=10) as bar:
            bar.advance(5)
    assert out.getvalue() == ""


def test_the_cli_turns_reporting_off_when_it_returns() -> None:
    """Before: main() left the CLI's console on, so a later test in the process (this
    module's first, run after any CLI test) saw stage lines printed."""
    from puhui.cli import main

    # a malformed --version: a usage error (exit 2) since round 17
    assert main(["models", "promote", "m", "--version", "0", "--reason", "x"]) == 2
    test_unconfigured_reporting_prints_nothing()


def test_stage_lines_always_details_only_when_verbose() -> None:
    quiet, out = _console(terminal=False)
    report.configure(quiet, verbose=False)
    report.stage("features: done")
    report.detail("file a.csv: 4 rows")
    assert out.getvalue() == "features: done\n"
    loud, out = _console(terminal=False)
    report.configure(loud, verbose=True)
    report.detail("file a.csv: 4 rows")
    assert out.getvalue() == "file a.csv: 4 rows\n"


def test_json_output_gets_no_lines_and_no_bars() -> None:
    terminal, out = _console(terminal=True)
    report.configure(terminal, json_output=True)
    report.stage("features: done")
    with report.progress("rounds", total=3) as bar:
        bar.advance(3)
    assert out.getvalue() == ""


def test_progress_bars_only_on_a_terminal() -> None:
    piped, out = _console(terminal=False)
    report.configure(piped)
    with report.progress("LightGBM rounds", total=4) as bar:
        bar.advance(4)
    assert out.getvalue() == ""
    terminal, out = _console(terminal=True)
    report.configure(terminal)
    with report.progress("ingest mobile_payments", total=2) as outer:
        with report.progress("LightGBM rounds", total=4) as inner:  # bars nest
            inner.advance(4)
            report.stage("a stage line above the bars")
        outer.advance(2)
    assert "LightGBM rounds" in out.getvalue() and "ingest mobile_payments" in out.getvalue()
    assert "a stage line above the bars" in out.getvalue()
    assert report._state.progress is None  # the live display stopped with the last bar


def test_mlflow_registry_prints_are_dropped_unless_verbose() -> None:
    err = io.StringIO()
    with redirect_stderr(err), report.dropping_prints(report.MLFLOW_REGISTRY_PRINTS):
        print("Successfully registered model 'credit_risk'.", file=sys.stderr)
        print("Created version '1' of model 'credit_risk'.", file=sys.stderr)
        print("a real error", file=sys.stderr)
    assert err.getvalue() == "a real error\n"
    report.configure(_console(terminal=False)[0], verbose=True)
    err = io.StringIO()
    with redirect_stderr(err), report.dropping_prints(report.MLFLOW_REGISTRY_PRINTS):
        print("Created version '1' of model 'credit_risk'.", file=sys.stderr)
    assert "Created version" in err.getvalue()


def test_known_third_party_log_lines_are_filtered() -> None:
    report.filter_third_party_noise()
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("mlflow.pyfunc")
    handler = Collect()
    logger.addHandler(handler)
    try:
        logger.warning("Passing a Python object as `python_model` causes it to be serialized "
                       "using CloudPickle, ...")
        logger.warning("something else MLflow wants us to know")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else MLflow wants us to know"]
    assert all(reason for _, _, reason in report.FILTERED_LOG_MESSAGES)


# --------------------------------------------------------------------------- the demo
def _screen_lines(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: carriage returns, cursor-up and erase-line
    applied (Rich's live display redraws its bars in place with these)."""
    lines, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r|\n|[^\x1b\r\n]+",
                            raw):
        if token == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token.endswith("K"):
                lines[row] = lines[row][:col] if token[2:-1] in ("", "0") else ""
        elif not token.startswith("\x1b"):
            line = lines[row]
            lines[row] = line[:col] + token + line[col + len(token):]
            col += len(token)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _run_on_a_terminal(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, env=env, cwd=repo_root(), stdin=subprocess.DEVNULL,
                               stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready:
            process.kill()
            pytest.fail(f"no output for {timeout}s")
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the follower side closed: the process ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=60), b"".join(chunks).decode("utf-8", errors="replace")


@pytest.mark.slow
def test_demo_fits_on_a_screen_when_piped(piped_demo: DemoRun) -> None:
    output = piped_demo.output  # the run is shared with test_privacy.py (conftest)
    lines = output.splitlines()
    assert piped_demo.returncode == 0, output[-3000:]
    assert len(lines) <= MAX_DEMO_LINES, output
    assert "\x1b[" not in output  # no bars or colour codes in a pipe
    assert not [line for line in lines if "Finished in state" in line or "INFO" in line]
    assert any(line.startswith("train: ") and "LightGBM" in line for line in lines)  # a stage line
    assert "CloudPickle" not in output


@pytest.mark.slow
def test_demo_fits_on_a_screen_on_a_terminal_and_shows_training_progress(
        tmp_path: Path) -> None:
    code, raw = _run_on_a_terminal(
        [sys.executable, "-m", "puhui", "demo", *TERMINAL_DEMO_ARGS],
        demo_env(tmp_path / "home"), timeout=900)
    screen = _screen_lines(raw)
    assert code == 0, "\n".join(screen[-30:])
    assert len(screen) <= MAX_DEMO_LINES, "\n".join(screen)
    assert "LightGBM trial 1/" in raw  # a progress bar was drawn while training ran
    # ... and cleared after (the train step's own line says "5 LightGBM trial(s)")
    assert not any(re.search(r"LightGBM trial \d+/\d+", line) for line in screen)
    assert any(line.startswith("demo done in") for line in screen)


def test_the_demo_summary_names_the_recommenders_failed_gate() -> None:
    from puhui.demo import recommender_summary

    ranked = {"skipped": False, "name": "product_recommender", "version": "2",
              "metrics": {"ndcg_at_3_oot": 0.1137, "ndcg_at_3_oot_segment_popularity": 0.1059},
              "gates": {"passed": False,
                        "failed": ["segment_ndcg occupation=retired 0.036 < 0.05"]},
              "line": "train recommender ..."}
    (line,) = recommender_summary(ranked)
    assert "product_recommender v2" in line and "FAILED 1 gate(s)" in line
    assert "segment_ndcg occupation=retired 0.036 < 0.05" in line and "no offers" in line
    ranked["gates"] = {"passed": True, "failed": []}
    assert recommender_summary(ranked)[0].endswith("passed every gate")
