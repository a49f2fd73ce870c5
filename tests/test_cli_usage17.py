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
    ],
)
@pytest.mark.parametrize("debug", [False, True])
def test_a_malformed_value_is_a_usage_error_naming_the_option(
    argv: list[str], line: str, debug: bool, puhui_env: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [a.format(home=puhui_env) for a in argv]
    capsys.readouterr()
    code = main([*argv, *(["--debug"] if debug else [])])
    out, err = capsys.readouterr()
    assert code == 2, (argv, code, err)
    assert err == f"puhui: error: Invalid value for {line}\n" and not out, err
    assert not puhui_env.exists() or not any(puhui_env.iterdir()), "nothing is created"
