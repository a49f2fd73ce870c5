"""`puhui config check` catches what ingest would trip on; weak keys and bad dates are refused.

Each case failed before issue 10: an unknown pattern placeholder passed the check and then
broke ingest with ``KeyError: 'dat'``; a missing suite and an expectation on the raw name
of a pseudonymized column passed; a key of 32 spaces was accepted in production;
``backfill`` with ``--start`` after ``--end`` printed ``ValueError: ...``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from puhui.config import PartnersConfig, check_feed_suites, check_keys, load_config_file
from puhui.errors import PuhuiError
from puhui.settings import load_settings, repo_root, weak_key_reason

CONFIGS = repo_root() / "configs"
EXPECTATIONS = repo_root() / "expectations"
GOOD_KEY = "k3y-" + "0123456789abcdef" * 2


def _copy(tmp_path: Path) -> tuple[Path, Path]:
    configs, suites = tmp_path / "configs", tmp_path / "expectations"
    shutil.copytree(CONFIGS, configs)
    shutil.copytree(EXPECTATIONS, suites)
    return configs, suites


def test_the_shipped_configs_and_suites_agree() -> None:
    assert check_feed_suites(CONFIGS, EXPECTATIONS) == []


@pytest.mark.parametrize("pattern", ["{dat}/customers_*.csv", "{date:%Y}/c.csv", "{}/c.csv"])
def test_unknown_pattern_placeholders_fail_the_config_load(tmp_path: Path, pattern: str) -> None:
    configs, _ = _copy(tmp_path)
    path = configs / "partners.yaml"
    path.write_text(path.read_text().replace('"{date}/customers_*.csv"', f'"{pattern}"'))
    with pytest.raises(PuhuiError, match=r"partners\.0\.pattern: .*unknown placeholder"):
        load_config_file(path, PartnersConfig)


def test_a_missing_suite_file_is_reported(tmp_path: Path) -> None:
    configs, suites = _copy(tmp_path)
    (suites / "agri_coop.json").unlink()
    [problem] = check_feed_suites(configs, suites)
    assert "(agri_coop)" in problem and "no suite file" in problem


def test_expectations_on_raw_identifier_names_are_reported(tmp_path: Path) -> None:
    configs, suites = _copy(tmp_path)
    path = suites / "customers.json"
    suite = json.loads(path.read_text())
    suite["expectations"].append(
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "phone"}}
    )
    suite["expectations"].append(
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "nickname"}}
    )
    path.write_text(json.dumps(suite))
    problems = check_feed_suites(configs, suites)
    assert len(problems) == 2
    assert "'phone'" in problems[0] and "stores this column as 'phone_key'" in problems[0]
    assert "'nickname'" in problems[1] and "not a column of feed 'customers'" in problems[1]


@pytest.mark.parametrize(
    "key, weakness",
    [
        (" " * 32, "blank"),
        ("", "blank"),
        ("short-key", "shorter than 32"),
        ("ab" * 20, "distinct"),
        (GOOD_KEY, None),
    ],
)
def test_weak_keys(key: str, weakness: str | None) -> None:
    reason = weak_key_reason(key)
    assert (reason is None) if weakness is None else (weakness in reason)
    problems = check_keys({"PUHUI_PSEUDONYM_KEY": key})
    assert bool(problems) == (weakness is not None)


def test_production_refuses_a_key_of_32_spaces() -> None:
    env = {
        "PUHUI_PROFILE": "production",
        "PUHUI_PSEUDONYM_KEY": " " * 32,
        "PUHUI_WAREHOUSE_URL": "postgresql+psycopg://u@localhost/db",
        "PUHUI_AUDIT_KEY": "audit-" + GOOD_KEY[::-1],
    }
    with pytest.raises(PuhuiError, match="weak"):
        load_settings(env)
    assert load_settings({**env, "PUHUI_PSEUDONYM_KEY": GOOD_KEY}).pseudonym_key == GOOD_KEY


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "puhui", *args],
        env={**os.environ, "PUHUI_HOME": str(tmp_path / "home"), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_config_check_and_backfill_dates_fail_in_one_line(tmp_path: Path) -> None:
    done = _cli(tmp_path, "config", "check", PUHUI_PSEUDONYM_KEY=" " * 32)
    assert done.returncode == 1
    assert "PUHUI_PSEUDONYM_KEY is weak (blank)" in done.stderr
    assert "Traceback" not in done.stderr

    done = _cli(tmp_path, "backfill", "--start", "2026-09-30", "--end", "2026-09-01")
    assert done.returncode == 2  # a usage error: the two options disagree
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "is after --end" in lines[0] and "ValueError" not in lines[0]


def test_a_missing_or_incomplete_config_folder_is_one_line_before_any_flow(
        tmp_path: Path) -> None:
    """An empty or missing PUHUI_CONFIG_DIR failed only inside the flow, after Prefect
    started (~40 s, ~100 s on a loaded machine), with Prefect's error lines before puhui's."""
    empty, partial = tmp_path / "empty", tmp_path / "partial"
    empty.mkdir()
    shutil.copytree(CONFIGS, partial)
    (partial / "models.yaml").unlink()
    cases = [(("run", "daily"), tmp_path / "nowhere", "no such folder"),
             (("run", "daily"), empty, "holds none of the config files"),
             (("run", "ingest", "--partner", "mobile_payments"), empty,
              "holds none of the config files"),
             (("run", "report"), partial, "lacks models.yaml")]
    for args, config_dir, says in cases:
        done = _cli(tmp_path, *args, "--as-of", "2026-09-30",
                    PUHUI_CONFIG_DIR=str(config_dir), PUHUI_PSEUDONYM_KEY="k" * 40)
        assert done.returncode == 1, done.stderr
        [line] = (done.stdout + done.stderr).strip().splitlines()  # no Prefect line before it
        assert line.startswith(f"puhui: error: PUHUI_CONFIG_DIR {config_dir}: {says}"), line


def test_an_unreadable_config_folder_is_said_to_be_unreadable() -> None:
    """A config folder this user cannot read (another user's, mode 700) was reported as one
    that "holds none of the config files". Checked as the nobody user."""
    import tempfile

    from tests.test_temp_dirs import _as_nobody

    configs = Path(tempfile.mkdtemp(prefix="configs-", dir="/tmp"))
    try:
        shutil.copytree(CONFIGS, configs, dirs_exist_ok=True)
        configs.chmod(0o700)  # another user's (this one's, root's, to nobody)
        code = ("from pathlib import Path; from puhui.config import check_config_dir\n"
                f"try:\n    check_config_dir(Path({str(configs)!r}))\n"
                "except Exception as error:\n    print(error)")
        done = _as_nobody(code, dict(os.environ))
        if done is None:
            pytest.skip("cannot run puhui as another user here (needs root and setpriv)")
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == (
            f"PUHUI_CONFIG_DIR {configs}: not readable by this user; give it read access "
            "(chmod) or point it at a readable copy")
    finally:
        shutil.rmtree(configs, ignore_errors=True)


def test_run_train_refuses_a_mistyped_lightgbm_value_in_one_line_before_the_flow(
        tmp_path: Path) -> None:
    """``num_threads: two`` was taken by the config and failed inside LightGBM, after the
    features were built, as a flow run's failure."""
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    models = configs / "models.yaml"
    text = models.read_text(encoding="utf-8")
    assert text.count("\n    num_threads: 2\n") == 1  # the recommender's block
    models.write_text(text.replace("\n    num_threads: 2\n", "\n    num_threads: two\n"),
                      encoding="utf-8")
    done = _cli(tmp_path, "run", "train", "recommender", "--as-of", "2026-09-30",
                PUHUI_CONFIG_DIR=str(configs), PUHUI_PSEUDONYM_KEY="k" * 40)
    assert done.returncode == 1, done.stderr
    # The whole output: the Prefect server line was printed before it.
    [line] = (done.stdout + done.stderr).strip().splitlines()
    assert line.endswith(
        "product_recommender.lightgbm: Value error, num_threads: expected an integer")
