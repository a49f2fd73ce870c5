"""Round 8 of testing like an attacker: hostile configuration, hostile values, tampering.

Each test failed before its fix (the module docstring of each section says how).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import mlflow
import pytest
from sqlalchemy import func, select, update

from puhui.audit import events_of
from puhui.cli import main
from puhui.config import (
    CONFIG_MODELS,
    FeaturesConfig,
    PartnersConfig,
    check_feature_sources,
    load_config,
    load_config_file,
)
from puhui.errors import PuhuiError
from puhui.generate.hostile import MP_HEADER, HostileContext, csv_bytes
from puhui.ingest.batches import FileIngestor
from puhui.ingest.feeds import ingest_feed
from puhui.ingest.pseudonymize import pseudonym_key_bytes
from puhui.lifecycle.publish import write_evaluations
from puhui.registry import (
    ALIAS_REFUSED,
    CHAMPION,
    current_aliases,
    load_registered_pyfunc,
    mlflow_client,
    register_version,
    use_experiment,
)
from puhui.registry_read import metric_name
from puhui.runtime import open_runtime
from puhui.scheduling import load_deployment_specs
from puhui.settings import load_settings, repo_root
from puhui.validation import BatchValidator
from puhui.warehouse.schema import ingest_batches, model_evaluations
from tests import test_crash_model_changes as crash_tests
from tests.test_crash_model_changes import NAME, Ran

# That file's fixtures: four versions registered through the audited path (two passed, one
# failed, one ungated) in a fresh MLflow store; the CLI run in this process.
empty_mlflow_store = crash_tests.empty_mlflow_store
registry_env = crash_tests.registry_env
puhui = crash_tests.puhui

CONFIGS = repo_root() / "configs"

# --- hostile configuration -------------------------------------------------------------------
# Before: a key given twice kept the last value silently; a YAML `true` or "180" was read as a
# window of 1 or 180 days; a window of 10**20 days loaded (and was an OverflowError mid-run);
# an unquoted `expected_by: 10:30` (YAML 1.1 reads 630) became 00:10:30 UTC; a quote in a
# column or table name reached the quoted identifiers of CREATE INDEX statements; nested
# aliases in prefect.yaml's free-form parameters expanded to 10**8 nodes; a features source
# naming a table no feed stores passed `config check`.


def _edited(tmp_path: Path, name: str, old: str, new: str) -> Path:
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs, dirs_exist_ok=True)
    path = configs / name
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


_PAYMENT_WINDOWS = "windows: [30, 90, 180]"
_BOMB = "".join(
    f"x{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10 if i else ["1"] * 10) + "]\n"
    for i in range(9))


@pytest.mark.parametrize("name, old, new, error", [
    ("partners.yaml", "partners:", "late_lookback_days: 3\nlate_lookback_days: 40\npartners:",
     r"line \d+: duplicate key 'late_lookback_days'"),
    ("features.yaml", _PAYMENT_WINDOWS, "windows: [30, 90, true]",
     r"sources\.1\.windows\.2: Input should be a valid integer"),
    ("features.yaml", _PAYMENT_WINDOWS, "windows: [30, 90, '180']",
     r"sources\.1\.windows\.2: Input should be a valid integer"),
    ("features.yaml", _PAYMENT_WINDOWS, "windows: [30, 90, 100000000000000000000]",
     r"sources\.1\.windows\.2: Input should be less than or equal to 3660"),
    ("features.yaml", "max_age_days: 62", "max_age_days: -62",
     r"sources\.0\.latest\.max_age_days: Input should be greater than 0"),
    ("partners.yaml", 'expected_by: "08:00"', "expected_by: 10:30",
     r'partners\.1\.expected_by: .*write the time quoted, as "HH:MM"'),
    # A feature source may be spelled in any case or script (CustomerID, 信用分: see
    # tests/test_partitioned_features.py), never with what would end its quoting.
    ("features.yaml", "time: report_date", "time: 'report_date\") ; DROP TABLE audit_log; --'",
     r"sources\.0\.time: String should match pattern"),
    ("features.yaml", "- {column: bureau_score,", "- {column: 'score:x',",
     r"sources\.0\.latest\.columns\.0\.column: String should match pattern"),
    ("partners.yaml", "- {name: txn_id,", "- {name: 'txn\"id',",
     r"partners\.3\.columns\.0\.name: String should match pattern"),
    ("products.yaml", "products:", _BOMB + "products:",
     r"line \d+: alias \*l0 \(aliases are not allowed in config files\)"),
])
def test_hostile_config_values_fail_in_one_line_naming_file_and_key(
    tmp_path: Path, name: str, old: str, new: str, error: str
) -> None:
    path = _edited(tmp_path, name, old, new)
    with pytest.raises(PuhuiError, match=error) as caught:
        load_config_file(path, CONFIG_MODELS[name])
    message = str(caught.value)
    assert message.startswith(f"{path}:") and "\n" not in message
    assert "DROP TABLE" not in message, "the value is not echoed"


def test_shipped_configs_still_load_and_a_quoted_time_is_local() -> None:
    feed = load_config_file(CONFIGS / "partners.yaml", PartnersConfig).get("credit_bureau")
    assert feed.expected_by.isoformat() == "08:00:00"
    assert check_feature_sources(CONFIGS) == []


def test_an_alias_bomb_in_prefect_yaml_is_refused_before_it_expands(tmp_path: Path) -> None:
    path = tmp_path / "prefect.yaml"
    path.write_text(_BOMB + (repo_root() / "prefect.yaml").read_text(encoding="utf-8"))
    with pytest.raises(PuhuiError, match=r"prefect\.yaml: line 5: alias \*l3 expands"):
        load_deployment_specs(path)


def test_config_check_names_feature_tables_and_columns_no_feed_stores(tmp_path: Path) -> None:
    path = _edited(tmp_path, "features.yaml", "table: raw_credit_bureau", "table: raw_bureau")
    text = path.read_text(encoding="utf-8").replace("time: txn_time", "time: txn_when", 1)
    path.write_text(text, encoding="utf-8")
    load_config_file(path, FeaturesConfig)  # well formed: only the cross-check finds these
    table, column = check_feature_sources(path.parent)
    assert "sources.0 (bureau): table 'raw_bureau' is no feed's raw table" in table
    assert "sources.1 (payments): raw_mobile_payments stores no column 'txn_when'" in column


# --- tampering: MLflow changed behind the trail's back -----------------------------------------
# Before: `models promote` after a hand move of champion recorded the hand-set version as the
# "previous" one and moved on, and `audit verify` then passed: the next promotion erased the
# only trace of the tampering. `rollback` rolled back from whatever MLflow said.


def _champion() -> str | None:
    return current_aliases(mlflow_client(load_settings().mlflow_tracking_uri), NAME).get(
        CHAMPION)


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_a_champion_moved_outside_puhui_stops_promote_and_rollback(
    registry_env: dict[str, str], puhui: Callable[..., Ran],
) -> None:
    v1, v2, failed = registry_env["passed1"], registry_env["passed2"], registry_env["failed"]
    for version in (v1, v2):
        assert puhui("models", "promote", NAME, "--version", version, "--reason",
                     "r").returncode == 0
    client = mlflow_client(load_settings().mlflow_tracking_uri)
    client.set_registered_model_alias(NAME, CHAMPION, failed)  # by hand, in MLflow

    said = f"{NAME}@champion is v{failed} in MLflow but the trail's last move says v{v2}"
    for args in (("promote", NAME, "--version", v1, "--reason", "x"),
                 ("rollback", NAME, "--reason", "x")):
        refused = puhui("models", *args)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert said in refused.stderr and "nothing moved" in refused.stderr
        assert _champion() == failed
    verified = puhui("audit", "verify")
    assert verified.returncode == 1 and said in verified.stderr, "the difference stays reported"
    refusals = events_of(open_runtime().engine, [ALIAS_REFUSED])
    assert [e["details"]["found"] for e in refusals] == [failed, failed]

    client.delete_registered_model_alias(NAME, CHAMPION)
    refused = puhui("models", "rollback", NAME, "--reason", "x")
    assert refused.returncode == 1 and f"{NAME}@champion is unset in MLflow" in refused.stderr

    client.set_registered_model_alias(NAME, CHAMPION, v2)  # put back as the trail says
    back = puhui("models", "rollback", NAME, "--reason", "v2 misbehaves")
    assert back.returncode == 0 and f"to v{v1}" in back.stdout, back.stderr
    assert _champion() == v1 and puhui("audit", "verify").returncode == 0


# Before: a registered version's model files (a cloudpickle that scoring loads, a booster)
# could be edited or deleted in the artifact store with no trace: `audit verify` passed,
# `models promote` made the edited version champion and the profile refresh ran its code. Now
# the registration event records their SHA-256 (keyed into the chain), verify compares, a
# move to such a version is refused, and scoring loads only files that match.


def _model_folder(version: str) -> Path:
    client = mlflow_client(load_settings().mlflow_tracking_uri)
    uri = client.get_model_version_download_uri(NAME, version)
    return Path(uri.removeprefix("file://"))


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_model_files_edited_or_deleted_in_the_artifact_store_are_caught(
    registry_env: dict[str, str], puhui: Callable[..., Ran],
) -> None:
    v1, v2 = registry_env["passed1"], registry_env["passed2"]
    assert puhui("audit", "verify").returncode == 0
    pickle = _model_folder(v1) / "python_model.pkl"
    pickle.write_bytes(pickle.read_bytes() + b"\n# swapped")
    shutil.rmtree(_model_folder(v2))

    edited = f"{NAME} v{v1}: its model files differ from those registered"
    gone = f"{NAME} v{v2}: its model files are gone from the artifact store"
    for args in (("audit", "verify", "--deep"), ("audit", "verify", "--no-repair", "--deep")):
        verified = puhui(*args)
        assert verified.returncode == 1, verified.stdout
        assert edited in verified.stderr and gone in verified.stderr, verified.stderr
    for version, said in ((v1, edited), (v2, gone)):
        refused = puhui("models", "promote", NAME, "--version", version, "--reason", "x")
        assert refused.returncode == 1 and said in refused.stderr and \
            "nothing moved" in refused.stderr, refused.stderr
        with pytest.raises(PuhuiError, match=f"{said}.*: not loaded"):
            load_registered_pyfunc(open_runtime().engine, load_settings().mlflow_tracking_uri,
                                   NAME, version)
    assert _champion() is None

    # Scoring loads what matches, and nothing the trail never registered.
    engine, uri = open_runtime().engine, load_settings().mlflow_tracking_uri
    assert load_registered_pyfunc(engine, uri, NAME, registry_env["failed"]).predict([1.0]) \
        == [0.1]
    client = mlflow_client(uri)
    source = client.get_model_version(NAME, registry_env["failed"])
    outside = client.create_model_version(NAME, source.source, run_id=source.run_id).version
    with pytest.raises(PuhuiError, match=f"v{outside} has no registration event"):
        load_registered_pyfunc(engine, uri, NAME, str(outside))


# --- tampering: the ledger edited by hand ------------------------------------------------------
# Before: `audit verify` checked the chain and MLflow only. A held batch flipped to accepted, a
# ledger row deleted (its file is then ingested again as new) or a checksum rewritten in
# ingest_batches passed it, though each ledger write has its event in the same transaction.
# The values found are the editor's: printed masked (a phone, terminal escapes) when odd.

DAY = date(2026, 9, 30)


def _payments(case: int, rows: int = 3, header: list[str] = MP_HEADER) -> bytes:
    context = HostileContext(DAY, case, Path("."), set())
    return csv_bytes(header, context.payment_rows(rows))


# Both dialects: the comparison reads column types as each driver returns them.
def test_hand_edits_to_ingest_batches_are_reported_by_audit_verify(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    folder = tmp_path / "landing" / "mobile_payments" / DAY.isoformat()
    folder.mkdir(parents=True)
    monkeypatch.setenv("PUHUI_LANDING", str(tmp_path / "landing"))
    (folder / "mobile_payments_1.csv").write_bytes(_payments(1))
    (folder / "mobile_payments_2.csv").write_bytes(_payments(1))  # the same bytes again
    (folder / "mobile_payments_3.csv").write_bytes(_payments(3, header=MP_HEADER[:-1]))
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")
    ingestor = FileIngestor(
        runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
        pseudonym_key_bytes(runtime.settings.pseudonym_key))
    outcomes = {f.path.rsplit("/", 1)[-1]: f for f in
                ingest_feed(runtime, feed, ingestor, DAY).files}
    accepted, duplicate, held = (outcomes[f"mobile_payments_{i}.csv"] for i in (1, 2, 3))
    assert (accepted.status, duplicate.status, held.status) == \
        ("accepted", "duplicate", "quarantined")
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0
    assert "ingest_batches agrees with the trail: 3 batch(es)" in capsys.readouterr().out

    with runtime.engine.begin() as conn:
        conn.execute(ingest_batches.update().where(ingest_batches.c.batch_id == held.batch_id)
                     .values(status="accepted", rows_loaded=3))
        conn.execute(ingest_batches.update()
                     .where(ingest_batches.c.batch_id == duplicate.batch_id)
                     .values(checksum="0" * 64, status="13812345678\x1b[2J"))
        conn.execute(ingest_batches.delete().where(ingest_batches.c.batch_id ==
                                                   accepted.batch_id))
    assert main(["audit", "verify", "--no-repair"]) == 1
    err = capsys.readouterr().err
    assert f"batch {accepted.batch_id} is in the audit trail (accepted) but missing" in err
    assert f"batch {held.batch_id}: ingest_batches.status is 'accepted' but the audit trail " \
        "says 'quarantined'" in err
    assert f"batch {duplicate.batch_id}: ingest_batches.checksum is '000" in err
    # A value the editor chose is printed as its masked shape: no identifier, no escape.
    assert f"batch {duplicate.batch_id}: ingest_batches.status is 'ddddddddddd?[da' but" in err
    assert "13812345678" not in err and "\x1b" not in err
    assert "ingest_batches and the audit trail DISAGREE: 4 problem(s)" in err, err


# --- a suite broken by an edit -----------------------------------------------------------------
# Before: an expectation on a misspelt column held every partner file of the feed ("critical:
# ... could not be evaluated"), and a suite that is not JSON held each as "unreadable:
# unexpected SuiteLoadError" with no copy, i.e. reject-only: an operator's typo cost the
# partner a redelivery of the day. Now the feed stops before its first file, in one line.


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("broken, said", [
    ("column", r"expectation #0 \(expect_column_values_to_not_be_null\) on 'amountt': not a "
               r"column of feed 'mobile_payments'; no file of mobile_payments was read"),
    ("json", r"mobile_payments\.json is not readable JSON \(JSONDecodeError\)"),
    ("type", r"mobile_payments\.json: expectation #0 .*expect_column_values_to_be_nul"),
])
def test_a_broken_suite_stops_the_feed_before_any_file_is_held(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    broken: str, said: str,
) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    suites = tmp_path / "expectations"
    shutil.copytree(repo_root() / "expectations", suites)
    monkeypatch.setenv("PUHUI_EXPECTATIONS_DIR", str(suites))
    monkeypatch.setenv("PUHUI_LANDING", str(tmp_path / "landing"))
    folder = tmp_path / "landing" / "mobile_payments" / DAY.isoformat()
    folder.mkdir(parents=True)
    for case in (1, 2):
        (folder / f"mobile_payments_{case}.csv").write_bytes(_payments(case))
    path = suites / "mobile_payments.json"
    good = path.read_text(encoding="utf-8")
    suite = json.loads(good)
    if broken == "column":
        suite["expectations"][0]["kwargs"]["column"] = "amountt"
    elif broken == "type":
        suite["expectations"][0]["type"] = "expect_column_values_to_be_nul"
    path.write_text("{not json" if broken == "json" else json.dumps(suite), encoding="utf-8")

    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")

    def ingest() -> dict[str, str]:
        ingestor = FileIngestor(
            runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
            pseudonym_key_bytes(runtime.settings.pseudonym_key))
        return {f.path.rsplit("/", 1)[-1]: f.status
                for f in ingest_feed(runtime, feed, ingestor, DAY).files}

    with pytest.raises(PuhuiError, match=said) as caught:
        ingest()
    assert "\n" not in str(caught.value)
    with runtime.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ingest_batches)).scalar() == 0
    path.write_text(good, encoding="utf-8")  # fixed: the same files load as they are
    assert ingest() == {"mobile_payments_1.csv": "accepted", "mobile_payments_2.csv": "accepted"}


# Before: a metric logged on a version's run afterwards (the latest step is what `models list`
# shows) or a model_evaluations row edited in the warehouse (a segment's fairness figure) stood
# as the model's figure, though the registration event records the headline metrics and the
# run every figure.


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_headline_metrics_changed_after_registration_are_reported(
    registry_env: dict[str, str], puhui: Callable[..., Ran],
) -> None:
    runtime = open_runtime()
    uri = runtime.settings.mlflow_tracking_uri
    use_experiment(NAME, uri, runtime.settings.home / "mlartifacts")
    with mlflow.start_run() as run:
        mlflow.log_metrics({"auc_oot": 0.7312, "ks_oot": 0.41,
                            metric_name("air", "region_type=rural"): 0.83})
        info = mlflow.pyfunc.log_model(name="model", python_model=crash_tests._Constant(),
                                       pip_requirements=["mlflow"])
    version = register_version(runtime.engine, runtime.audit, name=NAME,
                               model_uri=info.model_uri, run_id=run.info.run_id, tags={},
                               details={"metrics": {"auc_oot": 0.7312, "ks_oot": 0.41}})
    write_evaluations(runtime.engine, NAME, version, DAY,
                      [{"metric": "auc_oot", "segment": "all", "value": 0.7312},
                       {"metric": "ks_oot", "segment": "all", "value": 0.41},
                       {"metric": "air", "segment": "region_type=rural", "value": 0.83}],
                      run.info.run_id)
    with runtime.engine.begin() as conn:  # a monitoring report's row: its own run, not held
        conn.execute(model_evaluations.insert().values(
            model_name=NAME, model_version=version, as_of_date=DAY, metric="monitor.auc",
            segment="all", value=0.5, mlflow_run_id="a-report-run",
            evaluated_at=datetime.now(UTC)))
    assert puhui("audit", "verify").returncode == 0

    mlflow_client(uri).log_metric(run.info.run_id, "auc_oot", 0.99, step=1)
    with runtime.engine.begin() as conn:
        conn.execute(update(model_evaluations).where(model_evaluations.c.metric == "ks_oot")
                     .values(value=0.6))
        conn.execute(update(model_evaluations).where(model_evaluations.c.metric == "air")
                     .values(value=0.95))
    verified = puhui("audit", "verify", "--no-repair")
    assert verified.returncode == 1
    assert f"{NAME} v{version}: auc_oot is 0.99 in MLflow's run but 0.7312 in its " \
        "registration event" in verified.stderr, verified.stderr
    assert f"{NAME} v{version}: ks_oot is 0.6 in model_evaluations but 0.41" in verified.stderr
    assert f"{NAME} v{version}: model_evaluations air (region_type=rural) is 0.95 but 0.83 in " \
        "MLflow's run (air.region_type.rural)" in verified.stderr
    assert "monitor.auc" not in verified.stderr
