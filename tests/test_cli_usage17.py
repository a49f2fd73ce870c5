"""Usage errors exit 2 (round 17): a malformed date in any command's date option, an unknown
``run train`` model and a malformed ``--version`` exited 1, like a failure of the work.
They are usage errors now, as click's own: one line naming the option and the form it takes,
no traceback even with ``--debug``, nothing started or created."""

from __future__ import annotations

from pathlib import Path

import pytest

from puhui.cli import main

_DATE = "must be a date YYYY-MM-DD, not "
_TIME = (
    "must be a date YYYY-MM-DD or a time YYYY-MM-DDTHH:MM[:SS] (UTC unless it has an offset), not "
)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["run", "train", "risk", "--as-of", "2026-13-40"], f"'--as-of': {_DATE}'2026-13-40'"),
        (["run", "daily", "--as-of", "notadate"], f"'--as-of': {_DATE}'notadate'"),
        (["run", "ingest", "--as-of", "2026-02-30"], f"'--as-of': {_DATE}'2026-02-30'"),
        (["run", "profiles", "--as-of", "30/09/2026"], f"'--as-of': {_DATE}'30/09/2026'"),
        (["run", "report", "--as-of", "x"], f"'--as-of': {_DATE}'x'"),
        (
            ["backfill", "--start", "2026-13-01", "--end", "2026-01-02"],
            f"'--start': {_DATE}'2026-13-01'",
        ),
        (["backfill", "--start", "2026-01-01", "--end", "soon"], f"'--end': {_DATE}'soon'"),
        (["profiles", "explain", "0" * 64, "--as-of", "today"], f"'--as-of': {_DATE}'today'"),
        (["audit", "verify", "--deep", "--since", "notadate"], f"'--since': {_DATE}'notadate'"),
        (["audit", "log", "--since", "yesterday"], f"'--since': {_TIME}'yesterday'"),
        (["audit", "log", "--until", "2026-09-31"], f"'--until': {_TIME}'2026-09-31'"),
        (
            ["generate", "--out", "{home}/zone", "--end-date", "2026-9-1"],
            f"'--end-date': {_DATE}'2026-9-1'",
        ),
        (["run", "train", "foo"], "'MODEL': must be 'risk' or 'recommender', not 'foo'"),
        (
            ["run", "train", "foo\x1b[2J"],
            "'MODEL': must be 'risk' or 'recommender', not 'foo\\x1b[2J'",
        ),
        (
            ["models", "show", "credit_risk", "--version", "v2"],
            "'--version': must be a model version number (1, 2, ...), not 'v2'",
        ),
        (
            ["models", "promote", "credit_risk", "--version", "0", "--reason", "r"],
            "'--version': must be a model version number (1, 2, ...), not '0'",
        ),
        # Round 17's mend: the UTC conversion was outside the parser's try (OverflowError,
        # exit 1, a traceback with --debug) ...
        (
            ["audit", "log", "--since", "0001-01-01T00:00+01:00"],
            f"'--since': {_TIME}'0001-01-01T00:00+01:00'",
        ),
        (
            ["audit", "log", "--until", "9999-12-31T23:59-01:00"],
            f"'--until': {_TIME}'9999-12-31T23:59-01:00'",
        ),
        # ... fromisoformat took forms other than YYYY-MM-DD (2026-W01-1 ran for 2025-12-29) ...
        (["run", "report", "--as-of", "20260101"], f"'--as-of': {_DATE}'20260101'"),
        (["run", "daily", "--as-of", "2026-W01-1"], f"'--as-of': {_DATE}'2026-W01-1'"),
        (["audit", "log", "--since", "2026-W01-1"], f"'--since': {_TIME}'2026-W01-1'"),
        (["audit", "log", "--until", "20260101T0000"], f"'--until': {_TIME}'20260101T0000'"),
        # ... compare's versions reached MLflow, and a malformed anchor exited 1.
        (
            ["models", "compare", "credit_risk", "v2", "x"],
            "'A': must be a model version number (1, 2, ...), not 'v2'",
        ),
        (
            ["models", "compare", "credit_risk", "2", "x"],
            "'B': must be a model version number (1, 2, ...), not 'x'",
        ),
        (
            ["audit", "verify", "--anchor", "garbage"],
            "'--anchor': must be SEQ:HASH as printed by 'puhui audit anchor', not 'garbage'",
        ),
    ],
)
def test_a_malformed_value_is_a_usage_error_naming_the_option(
    argv: list[str], line: str, puhui_env: Path, capsys: pytest.CaptureFixture
) -> None:
    _assert_usage_error(argv, line, puhui_env, capsys)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["run", "report", "--as-of", "x"], f"'--as-of': {_DATE}'x'"),
        (
            ["models", "show", "credit_risk", "--version", "v2"],
            "'--version': must be a model version number (1, 2, ...), not 'v2'",
        ),
        (
            ["audit", "log", "--since", "0001-01-01T00:00+01:00"],
            f"'--since': {_TIME}'0001-01-01T00:00+01:00'",
        ),
    ],
)
def test_a_usage_error_is_one_line_even_with_debug(
    argv: list[str], line: str, puhui_env: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--debug`` matters only at ``_run``'s one ``except UsageError``: a date, a version
    and the converted time stand for the rest (all of them twice cost the suite's budget)."""
    _assert_usage_error([*argv, "--debug"], line, puhui_env, capsys)


def _assert_usage_error(
    argv: list[str], line: str, puhui_env: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [a.format(home=puhui_env) for a in argv]
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (argv, code, err)
    assert err == f"puhui: error: Invalid value for {line}\n" and not out, err
    assert not puhui_env.exists() or not any(puhui_env.iterdir()), "nothing is created"
