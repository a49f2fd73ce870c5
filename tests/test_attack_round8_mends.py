"""Mends to round 8's fixes, found in review (each test failed before its mend)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import mlflow
import pytest
from sqlalchemy import delete, select

from puhui.cli import main
from puhui.config import PartnersConfig, load_config, load_config_file
from puhui.errors import PuhuiError
from puhui.generate.hostile import MP_HEADER, HostileContext, csv_bytes
from puhui.ingest.batches import FileIngestor
from puhui.ingest.feeds import ingest_feed
from puhui.ingest.pseudonymize import pseudonym_key_bytes
from puhui.ingest.raw_tables import raw_table
from puhui.lifecycle.publish import write_evaluations
from puhui.registry import (
    REGISTERED,
    load_registered_pyfunc,
    mlflow_client,
    register_version,
    use_experiment,
)
from puhui.runtime import open_runtime
from puhui.settings import load_settings, repo_root
from puhui.validation import BatchValidator
from puhui.warehouse.schema import ingest_batches, model_evaluations
from tasks.train import load_champion
from tests import test_crash_model_changes as crash_tests
from tests.test_crash_model_changes import NAME, Ran

# That file's fixtures: four versions registered through the audited path (two passed, one
# failed, one ungated) in a fresh MLflow store; the CLI run in this process.
empty_mlflow_store = crash_tests.empty_mlflow_store
registry_env = crash_tests.registry_env
puhui = crash_tests.puhui


def _model_folder(version: str) -> Path:
    client = mlflow_client(load_settings().mlflow_tracking_uri)
    return Path(client.get_model_version_download_uri(NAME, version).removeprefix("file://"))


# Before: every `audit verify` (read-only, and run by auditors) read and hashed the model files
# of every version ever registered, downloading each from a remote artifact store. Now only the
# versions an alias points to (what scoring loads) are hashed unless --deep.


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_verify_hashes_aliased_versions_and_every_version_only_with_deep(
    registry_env: dict[str, str], puhui: Callable[..., Ran],
) -> None:
    v1, v2 = registry_env["passed1"], registry_env["passed2"]
    assert puhui("models", "promote", NAME, "--version", v1, "--reason", "r").returncode == 0
    for version in (v1, v2):
        pickle = _model_folder(version) / "python_model.pkl"
        pickle.write_bytes(pickle.read_bytes() + b"\n# swapped")
    said = {v: f"{NAME} v{v}: its model files differ from those registered" for v in (v1, v2)}

    default = puhui("audit", "verify", "--no-repair")
    assert default.returncode == 1 and said[v1] in default.stderr, default.stderr
    assert said[v2] not in default.stderr, "an unaliased version is hashed only with --deep"
    deep = puhui("audit", "verify", "--no-repair", "--deep")
    assert deep.returncode == 1
    assert said[v1] in deep.stderr and said[v2] in deep.stderr, deep.stderr


# Before: training loaded the champion it compares with by alias through MLflow, unchecked: a
# pickle edited in the artifact store ran in the training flow.


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_training_loads_the_champion_only_from_its_registered_files(
    registry_env: dict[str, str], puhui: Callable[..., Ran],
) -> None:
    v1 = registry_env["passed1"]
    assert puhui("models", "promote", NAME, "--version", v1, "--reason", "r").returncode == 0
    pickle = _model_folder(v1) / "python_model.pkl"
    pickle.write_bytes(pickle.read_bytes() + b"\n# swapped")
    with pytest.raises(PuhuiError, match=f"{NAME} v{v1}: its model files differ.*not loaded"):
        load_champion(open_runtime().engine, load_settings().mlflow_tracking_uri, NAME)


# Before: a row inserted into ingest_batches by hand (no event) was reported with its batch id
# and status printed raw: a phone number or terminal escapes planted there reached the
# auditor's terminal and --json.


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_a_hand_inserted_ledger_row_is_reported_masked(
    puhui_env: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    runtime = open_runtime()
    plain_id = "mobile_payments-20260930-0123456789ab"
    row = {"partner": "mobile_payments", "source_path": "x.csv", "checksum": "0" * 64,
           "landed_at": datetime.now(UTC)}
    with runtime.engine.begin() as conn:
        conn.execute(ingest_batches.insert(), [
            {**row, "batch_id": plain_id, "status": "accepted"},
            {**row, "batch_id": "13812345678\x1b[2J", "status": "13900001111\x1b]0;"}])
    capsys.readouterr()
    for args in (("--json",), ()):
        assert main(["audit", "verify", "--no-repair", *args]) == 1
        out = capsys.readouterr()
        seen = out.out + out.err
        assert "13812345678" not in seen and "13900001111" not in seen and "\x1b" not in seen
    assert f"batch '{plain_id}' ('accepted') is in ingest_batches with no event" in out.err
    assert "batch 'ddddddddddd?[da' ('ddddddddddd?]d;') is in ingest_batches with no event" \
        in out.err, out.err


# prefect.yaml now takes aliases (Prefect's `definitions:`, see test_scheduling.py); configs/
# still refuses every alias, even a small one: none is needed there.


def test_an_alias_in_configs_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "partners.yaml"
    text = (repo_root() / "configs" / "partners.yaml").read_text(encoding="utf-8")
    path.write_text("lookback: &days 3\nlate_lookback_days: *days\n" + text, encoding="utf-8")
    with pytest.raises(PuhuiError, match=r"partners\.yaml: line 2: alias \*days \(aliases are "
                                         r"not allowed in config files\)$"):
        load_config_file(path, PartnersConfig)


# Before: a column name had to be a lower-case ASCII identifier, so a partner header such as
# `CustomerID` or `客户编号` could not be declared. Names are quoted wherever they reach SQL;
# only what breaks the quoting is refused.

_DECLARED = "      - {name: txn_id, type: string}\n"
_PARTNER_HEADERS = ["CustomerID", "客户编号"]


def _partners_with(tmp_path: Path, *names: str) -> Path:
    configs = tmp_path / "configs"
    shutil.copytree(repo_root() / "configs", configs)
    path = configs / "partners.yaml"
    text = path.read_text(encoding="utf-8")
    assert _DECLARED in text
    extra = "".join(f"      - {{name: '{n}', type: string, nullable: true}}\n" for n in names)
    path.write_text(text.replace(_DECLARED, _DECLARED + extra, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize("warehouse_url", ["sqlite", "postgres"], indirect=True)
def test_partner_headers_in_mixed_case_or_chinese_are_declared_and_loaded(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = _partners_with(tmp_path, *_PARTNER_HEADERS)
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(path.parent))
    day = date(2026, 9, 30)
    folder = tmp_path / "landing" / "mobile_payments" / day.isoformat()
    folder.mkdir(parents=True)
    monkeypatch.setenv("PUHUI_LANDING", str(tmp_path / "landing"))
    rows = [row + ["C-7", "甲"] for row in HostileContext(day, 1, Path("."), set()).payment_rows(3)]
    (folder / "mobile_payments_1.csv").write_bytes(csv_bytes(MP_HEADER + _PARTNER_HEADERS, rows))
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")
    ingestor = FileIngestor(
        runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
        pseudonym_key_bytes(runtime.settings.pseudonym_key))
    (done,) = ingest_feed(runtime, feed, ingestor, day).files
    assert done.status == "accepted", done
    table = raw_table(feed)
    with runtime.engine.connect() as conn:
        stored = conn.execute(select(table.c.CustomerID, table.c["客户编号"])).all()
    assert stored == [("C-7", "甲")] * 3


@pytest.mark.parametrize("name", ['customer"id', "id:x", " id", "id\u202e", "编" * 22])
def test_a_column_name_that_would_break_sql_quoting_is_refused(tmp_path: Path,
                                                               name: str) -> None:
    path = _partners_with(tmp_path, name)
    with pytest.raises(PuhuiError, match=r"partners\.yaml: partners\.3\.columns\.1\.name: ") \
            as caught:
        load_config_file(path, PartnersConfig)
    assert name.strip() not in str(caught.value), "the value is not echoed"


# Before: a model_evaluations row deleted was never reported (a missing row counted as
# agreeing), and the tolerance (5e-7) was the largest error of round(x, 6) itself: a figure
# such as 0.4100005, recorded as 0.41, was reported as changed.


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_a_deleted_evaluation_row_is_reported_and_rounding_is_not(
    registry_env: dict[str, str], puhui: Callable[..., Ran],
) -> None:
    runtime = open_runtime()
    uri = runtime.settings.mlflow_tracking_uri
    use_experiment(NAME, uri, runtime.settings.home / "mlartifacts")
    figures = {"auc_oot": 0.7312, "ks_oot": 0.4100005}
    with mlflow.start_run() as run:
        mlflow.log_metrics(figures)
        info = mlflow.pyfunc.log_model(name="model", python_model=crash_tests._Constant(),
                                       pip_requirements=["mlflow"])
    version = register_version(runtime.engine, runtime.audit, name=NAME,
                               model_uri=info.model_uri, run_id=run.info.run_id, tags={},
                               details={"metrics": {k: round(v, 6) for k, v in figures.items()}})
    write_evaluations(runtime.engine, NAME, version, date(2026, 9, 30),
                      [{"metric": k, "segment": "all", "value": v} for k, v in figures.items()],
                      run.info.run_id)
    verified = puhui("audit", "verify", "--no-repair")
    assert verified.returncode == 0, verified.stderr

    with runtime.engine.begin() as conn:
        conn.execute(delete(model_evaluations).where(model_evaluations.c.metric == "auc_oot"))
    verified = puhui("audit", "verify", "--no-repair")
    assert verified.returncode == 1
    assert f"{NAME} v{version}: auc_oot is missing from model_evaluations but 0.7312 in its " \
        "registration event" in verified.stderr, verified.stderr


# Before: every load through load_registered_pyfunc left a puhui-model-* directory behind in
# the temp folder (a remote store's copy of the model in it), one per profile or report run;
# and a version registered before model_sha256 existed passed verify silently, unchecked.


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_loading_leaves_no_temp_dir_and_verify_names_unfingerprinted_versions(
    registry_env: dict[str, str], puhui: Callable[..., Ran], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    runtime = open_runtime()
    uri = runtime.settings.mlflow_tracking_uri
    for _ in range(2):
        assert load_registered_pyfunc(runtime.engine, uri, NAME,
                                      registry_env["passed1"]).predict([1.0]) == [0.1]
    assert list(scratch.iterdir()) == []

    # A version as an earlier puhui registered it: its event has no model_sha256.
    client = mlflow_client(uri)
    source = client.get_model_version(NAME, registry_env["failed"])
    old = str(client.create_model_version(NAME, source.source, run_id=source.run_id).version)
    runtime.audit.record(runtime.engine, REGISTERED, f"{NAME}/v{old}",
                         {"model": NAME, "run_id": source.run_id, "version": old})
    verified = puhui("audit", "verify", "--no-repair")
    assert verified.returncode == 0, verified.stderr
    assert f"1 version(s) registered without a file fingerprint (model files not checkable): " \
        f"{NAME} v{old}" in verified.stdout, verified.stdout


def test_a_process_sees_a_column_its_contract_gained(tmp_path: Path) -> None:
    """A long-lived process (`puhui serve`) built raw_mobile_payments from the contract it
    read first; after a config edit added a column, every file of the feed was held as
    unreadable ("no such column") until the process restarted."""
    before = load_config(repo_root() / "configs", PartnersConfig).get("mobile_payments")
    after = load_config(_partners_with(tmp_path, "CustomerID").parent,
                        PartnersConfig).get("mobile_payments")
    assert "CustomerID" not in raw_table(before).c
    assert "CustomerID" in raw_table(after).c
    assert raw_table(after) is raw_table(after)  # unchanged contract: the same table
