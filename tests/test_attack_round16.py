"""Attack round 16 (see README, "Round 16"): hostile input and tampering not covered by
rounds 7-15. Each test failed before its fix unless its docstring says it was found sound.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select, text

from puhui.audit import read_audit_events
from puhui.cli import main
from puhui.config import PartnersConfig, load_config
from puhui.errors import PuhuiError
from puhui.generate.hostile import HostileContext
from puhui.ingest.batches import FileIngestor
from puhui.ingest.feeds import ingest_all_feeds, ingest_feed
from puhui.ingest.ledger import list_batches
from puhui.ingest.pseudonymize import pseudonym_key_bytes
from puhui.ingest.quarantine import reject_batch, release_batch
from puhui.prefect_server import PORT_ENV, choose_port
from puhui.registry import promote, rollback
from puhui.runtime import open_runtime
from puhui.settings import load_settings
from puhui.validation import BatchValidator
from puhui.warehouse.schema import ingest_batches
from tests import test_attack_round7
from tests import test_crash_model_changes as crash_tests
from tests.conftest import use_test_home
from tests.test_attack_round7 import DAY, _ingest_payments, _payments
from tests.test_attack_round14 import _held_by_category
from tests.test_crash_model_changes import Ran

landing = test_attack_round7.landing  # the fixture: a landing zone with the payments folder
# Four versions registered through the audited path (two passed, one failed, one ungated).
empty_mlflow_store = crash_tests.empty_mlflow_store
registry_env = crash_tests.registry_env
puhui = crash_tests.puhui
model_commands = crash_tests.model_commands  # killed promote commands start there


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code  # type: ignore[assignment]
    out = capsys.readouterr()
    return code or 0, out.out, out.err


def _held_and_loaded(landing: Path) -> str:
    """One held and one loaded payments file; the held batch's id."""
    folder = landing / "mobile_payments" / DAY.isoformat()
    (folder / "mobile_payments_1.csv").write_bytes(_held_by_category(1))
    (folder / "mobile_payments_2.csv").write_bytes(_payments(2))
    outcomes = _ingest_payments()
    assert {o.status for o in outcomes.values()} == {"quarantined", "accepted"}
    return outcomes["mobile_payments_1.csv"].batch_id


def _edit(sql: str, **values: str) -> None:
    with open_runtime().engine.begin() as conn:
        conn.execute(text(sql), values)


def test_a_ledger_time_that_is_no_time_is_marked_listed_and_reported(
    landing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: SQLite keeps any text in a DateTime column, and SQLAlchemy parses it in the
    fetch: one `landed_at = 'garbage'` (or `decided_at`, or `delivery_date`) stopped
    `quarantine list`, `show` and `release` with `ValueError: Invalid isoformat string`,
    and `audit verify` passed (landed_at and decided_at are in no event)."""
    held = _held_and_loaded(landing)
    _edit("UPDATE ingest_batches SET landed_at = 'garbage\x1b[2J' WHERE batch_id = :b", b=held)
    _edit("UPDATE ingest_batches SET decided_at = '13812345678' WHERE batch_id <> :b", b=held)
    code, out, err = _cli(capsys, "quarantine", "list", "--all")
    assert code == 0, err
    assert out.count("[landed_at: unreadable]") == 1
    assert out.count("[decided_at: unreadable]") == 1
    assert "garbage" not in out and "13812345678" not in out
    code, out, err = _cli(capsys, "quarantine", "show", held)
    assert (
        code == 0
        and "unreadable (stored as none of its type, a hand edit): ingest_batches.landed_at" in out
    ), err
    code, out, err = _cli(capsys, "audit", "verify")
    assert code == 1
    problems = [
        line
        for line in (out + err).splitlines()
        if "no time (a hand edit)" in line and "DISAGREE" not in line
    ]
    assert len(problems) == 2, out + err
    assert "ingest_batches.landed_at is 'aaaaaaa?[da'" in problems[0] + problems[1]
    assert "13812345678" not in out + err and "\x1b" not in out + err
    # A release does not need landed_at: it goes on and loads the batch.
    code, out, err = _cli(capsys, "quarantine", "release", held, "--reason", "checked by hand")
    assert code == 0 and "released" in out, err


@pytest.mark.parametrize("stored", ["'soon'", "20260101", "'2026-W01-1'", "X'ff'"])
def test_a_delivery_date_that_is_no_date_is_listed_and_stops_a_release(
    landing: Path, capsys: pytest.CaptureFixture[str], stored: str
) -> None:
    """Before: `quarantine list` stopped with a ValueError ('soon') or sqlite3's "Could not
    decode to UTF-8" (a BLOB), and `fromisoformat` read 20260101 and the week date
    2026-W01-1 (2025-12-29) as days: a release went ahead with that day's end as the bound
    on event times. A release is refused (one line) until the date is put back; `show` says
    unreadable (it printed `delivered None`, and `--json` the string "None")."""
    held = _held_and_loaded(landing)
    _edit(f"UPDATE ingest_batches SET delivery_date = {stored} WHERE batch_id = :b", b=held)
    code, out, err = _cli(capsys, "quarantine", "list")
    assert code == 0 and "[delivery_date: unreadable]" in out, err
    code, out, err = _cli(capsys, "quarantine", "show", held)
    assert code == 0 and "delivered (unreadable)" in out and "None" not in out, err
    code, out, err = _cli(capsys, "quarantine", "show", held, "--json")
    assert code == 0 and json.loads(out)["delivery_date"] is None, err
    assert json.loads(out)["unreadable"] == ["ingest_batches.delivery_date"]
    code, out, err = _cli(capsys, "quarantine", "release", held, "--reason", "checked by hand")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "ingest_batches.delivery_date unreadable" in err
    with open_runtime().engine.connect() as conn:
        status = conn.execute(
            select(ingest_batches.c.status).where(ingest_batches.c.batch_id == held)
        ).scalar_one()
    assert status == "quarantined"


def test_a_blob_or_garbage_in_other_ledger_cells_is_marked_and_reported(
    landing: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: a BLOB that is no UTF-8 in `landed_at` stopped `audit verify` ("Could not
    decode to UTF-8 column 'landed_at'": one cell hid every other finding) and list, show
    and release; `warnings = 'garbage'` (JSON parsed in the fetch), `rows = 'abc'` (the
    listing's `{:,}`) and `validation_results.validated_at = 'garbage'` stopped list/show.
    And `printable` over whole `show` lines masked a digit run in our own paths (a home
    under /data/13812345678/ printed as `ddddddddddd`)."""
    home = use_test_home(tmp_path / "13812345678" / "home", monkeypatch)
    monkeypatch.setenv("PUHUI_LANDING", str(landing))
    held = _held_and_loaded(landing)
    _edit("UPDATE ingest_batches SET landed_at = X'1b5b324aff' WHERE batch_id = :b", b=held)
    _edit(
        "UPDATE ingest_batches SET warnings = 'garbage', rows = 'abc' WHERE batch_id <> :b", b=held
    )
    _edit("UPDATE validation_results SET validated_at = 'garbage' WHERE batch_id = :b", b=held)
    code, out, err = _cli(capsys, "quarantine", "list", "--all")
    assert code == 0, err
    assert out.count("[landed_at: unreadable]") == 1 and "\x1b" not in out
    assert out.count("[rows: unreadable] [warnings: unreadable]") == 1
    code, out, err = _cli(capsys, "quarantine", "show", held)
    assert code == 0, err
    assert (
        "unreadable (stored as none of its type, a hand edit): ingest_batches.landed_at, "
        "validation_results.validated_at"
    ) in out
    assert "at (unreadable)" in out and "\x1b" not in out
    assert f"  quarantine copy: {home}/quarantine/mobile_payments/{held}.parquet\n" in out
    loaded = next(r.batch_id for r in list_batches(open_runtime().engine) if r.batch_id != held)
    code, out, err = _cli(capsys, "quarantine", "show", loaded)
    assert code == 0 and "  rows ?: loaded" in out, err
    code, out, err = _cli(capsys, "audit", "verify")
    assert code == 1 and "decode" not in out + err
    assert "ingest_batches.landed_at is '?[da\ufffd', no time (a hand edit)" in out + err, out + err
    assert "\x1b" not in out + err
    code, out, err = _cli(capsys, "quarantine", "release", held, "--reason", "checked by hand")
    assert code == 0 and "released" in out, err


def test_text_that_is_no_utf8_in_any_ledger_cell_stops_no_listing_nor_verify(
    landing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: only the fragile columns were read as bytes; TEXT that is no UTF-8 (a CAST,
    not a BLOB) in `reason` or `status` stopped `quarantine list`, `show` and `audit
    verify` with sqlite3's "Could not decode to UTF-8 column 'status'"."""
    held = _held_and_loaded(landing)
    _edit("UPDATE ingest_batches SET reason = CAST(X'ff' AS TEXT) WHERE batch_id = :b", b=held)
    _edit("UPDATE ingest_batches SET status = CAST(X'ff' AS TEXT) WHERE batch_id <> :b", b=held)
    loaded = next(r.batch_id for r in list_batches(open_runtime().engine) if r.batch_id != held)
    for args in (("list", "--all"), ("show", held), ("show", loaded), ("show", held, "--json")):
        code, out, err = _cli(capsys, "quarantine", *args)
        assert code == 0 and "decode" not in out + err, (args, err)
    code, out, err = _cli(capsys, "audit", "verify")
    assert code == 1 and "decode" not in out + err
    assert f"batch {loaded}: ingest_batches.status is '\ufffd' but the audit" in out + err
    assert f"batch {held}: ingest_batches.reason is '\ufffd' but the audit" in out + err


def test_the_warehouse_reads_text_that_is_no_utf8_and_valid_text_as_before(
    tmp_path: Path,
) -> None:
    """The setting behind the test above is the warehouse engine's alone: an engine of
    SQLAlchemy's own (as MLflow's and Prefect's stores are) still decodes strictly."""
    from sqlalchemy import create_engine

    from puhui.warehouse.engine import create_warehouse_engine

    url = f"sqlite:///{tmp_path / 'w.db'}"
    query = text("SELECT 'ñandú 检查 \U0001f600', CAST(X'41ff' AS TEXT)")
    with create_warehouse_engine(url).connect() as conn:
        assert tuple(conn.execute(query).one()) == ("ñandú 检查 \U0001f600", "A\ufffd")
    with create_engine(url).connect() as conn, pytest.raises(Exception, match="decode"):
        conn.execute(query).one()


@pytest.mark.parametrize("command", ["release", "reject"])
def test_a_huge_reason_is_refused_in_one_line_before_anything_is_recorded(
    landing: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Before: a 200,000-character reason was accepted, kept whole in the ledger's reason
    and in the event (and printed whole by `audit log` and `quarantine show`)."""
    held = _held_and_loaded(landing)
    events = len(read_audit_events(open_runtime().engine))
    code, out, err = _cli(capsys, "quarantine", command, held, "--reason", "x" * 200_000)
    assert code == 1 and err.count("\n") == 1 and len(err) < 200
    assert "--reason is 200,000 characters; at most 500" in err
    # In the shared functions too (was only the CLI's), counted once trimmed.
    decide = {"release": release_batch, "reject": reject_batch}[command]
    with pytest.raises(PuhuiError, match="^--reason is 501 characters; at most 500$"):
        decide(open_runtime(), held, "z" * 501)
    with pytest.raises(PuhuiError, match="^--reason is 501 characters"):  # before MLflow
        if command == "release":
            promote(None, None, None, "risk", "1", "z" * 501)  # type: ignore[arg-type]
        else:
            rollback(None, None, None, "risk", "z" * 501)  # type: ignore[arg-type]
    assert len(read_audit_events(open_runtime().engine)) == events
    code, out, err = _cli(capsys, "quarantine", command, held, "--reason", f" {'y' * 500}  ")
    assert code == 0, err


def test_an_empty_puhui_home_is_the_default_not_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `PUHUI_HOME=` (an env file's empty line, an unset variable expanded) was
    `Path("")`, the working folder: the warehouse, the audit key and quarantine copies were
    written beside whatever was there (a checkout). Every other variable reads empty as unset."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"PUHUI_HOME": ""})
    assert settings.home == tmp_path / ".puhui"
    assert settings.warehouse_url == f"sqlite:///{tmp_path / '.puhui' / 'warehouse.db'}"


@pytest.mark.parametrize("kind", ["fifo", "file"])
def test_a_puhui_home_that_is_no_folder_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """Before: `FileExistsError: [Errno 17] File exists: '...'`, naming no setting."""
    home = tmp_path / "home"
    if kind == "fifo":
        os.mkfifo(home)
    else:
        home.write_text("x")
    monkeypatch.setenv("PUHUI_HOME", str(home))
    code, out, err = _cli(capsys, "quarantine", "list")
    assert code == 1 and err == f"puhui: error: PUHUI_HOME {home} is not a folder\n"


@pytest.mark.parametrize("value", ["abc", "99999", "-1", "0x50", "１２３", "0", "1" * 5000])
def test_a_prefect_port_that_is_no_port_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """Before: 'abc' was int's ValueError and 99999 or -1 bind's OverflowError, naming no
    setting; full-width '１２３' (an input method's full-width mode) was port 123, and the
    server started there (as root, a privileged port)."""
    monkeypatch.setenv(PORT_ENV, value)
    with pytest.raises(PuhuiError, match=f"^{PORT_ENV} must be a port number from 1 to 65535"):
        choose_port()
    with pytest.raises(PuhuiError, match="^--port must be a port number"):
        choose_port(70000)


def test_a_full_width_port_option_is_refused_like_the_variable(
    capsys: pytest.CaptureFixture[str], puhui_env: Path
) -> None:
    """Before: click's INT read `--port １２３４５６` (full width) as 123456, and
    `--port １２３` as port 123: only the variable was refused. `--port 0` (never documented;
    read as unset by accident) is refused with the way to get a free port."""
    code, out, err = _cli(capsys, "server", "start", "--port", "１２３４５６")
    assert code == 1 and err == (
        "puhui: error: --port must be a port number from 1 to 65535, not '１２３４５６'\n"
    )
    code, out, err = _cli(capsys, "server", "start", "--port", "0")
    assert code == 1 and "(leave it out to get 4200 or a free port)" in err


def test_a_json_key_whose_type_drifts_is_named_by_its_shape(
    landing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: Arrow's "Column(/KEY) changed from number to string" put the partner's key
    into the hold reason as it was: an escape sequence and a line break (a forged line in
    `quarantine show`, the terminal driven by `quarantine list`), a right-to-left override,
    a 5,000-character name. Now its masked shape, as every other column name read from a
    file; `quarantine list` and `show` print each line through `printable` too (a reason
    recorded before, or a hand edit). Found by review: `--json` printed a stored U+202E
    raw, and a nested key `meta/score` was masked as 'aaaa/aaaaa'."""
    orders = landing / "ecommerce_orders" / DAY.isoformat()
    orders.mkdir(parents=True)
    context = HostileContext(DAY, 1, Path("."), set())
    keys = {"escape": "x\x1b[2J\n2026-12-01 ops released", "bidi": "\u202eevil", "long": "a" * 5000}
    for name, key in keys.items():
        rows = [{**context.order(j), key: 1 if j < 2 else "text"} for j in range(4)]
        (orders / f"ecommerce_orders_{name}.jsonl").write_text(
            "\n".join(map(json.dumps, rows)) + "\n"
        )
    nested = [{**context.order(j), "meta": {"score": 1 if j < 2 else "text"}} for j in range(4)]
    (orders / "ecommerce_orders_nested.jsonl").write_text("\n".join(map(json.dumps, nested)))
    outcomes = {
        f.path.rsplit("/", 1)[-1]: f for r in ingest_all_feeds(open_runtime(), DAY) for f in r.files
    }
    assert outcomes["ecommerce_orders_nested.jsonl"].reason == (
        "type drift in meta/score: JSON values change from number to string within one block "
        "of lines"
    )
    reasons = {name: outcomes[f"ecommerce_orders_{name}.jsonl"].reason for name in keys}
    drift = ": JSON values change from number to string within one block of lines"
    assert reasons == {
        "escape": "type drift in 'a?[da\\\\ndddd-dd-dd aaa aaa...(+5 chars)'" + drift,
        "bidi": "type drift in '\\u202eaaaa'" + drift,
        "long": "type drift in '" + "a" * 24 + "...(+4976 chars)'" + drift,
    }
    # A hold recorded before (or edited by hand) is printed inert by list and show.
    batch = outcomes["ecommerce_orders_bidi.jsonl"].batch_id
    _edit(
        "UPDATE ingest_batches SET reason = :r WHERE batch_id = :b",
        r="held\x1b[2J\n2026-12-01 ops released \u202ex",
        b=batch,
    )
    for args in (("quarantine", "list"), ("quarantine", "show", batch)):
        code, out, err = _cli(capsys, *args)
        assert code == 0, err
        assert "\x1b" not in out and "\u202e" not in out and "\nheld" not in out
        assert "\n2026-12-01 ops released" not in out
    code, out, err = _cli(capsys, "quarantine", "show", batch, "--json")
    assert code == 0 and "\u202e" not in out and "\x1b" not in out, err
    assert json.loads(out)["reason"].endswith(" ops released \u202ex")
    code, out, err = _cli(capsys, "quarantine", "list", "--json")
    assert code == 0 and "\u202e" not in out, err


def test_a_delivery_folder_of_the_first_date_there_is_stops_no_feed(landing: Path) -> None:
    """Before: a folder named `0001-01-01` (a partner's placeholder date) is a date, and the
    day before it is none: the feed's first run raised OverflowError before any file was
    decided (the good files of 2026 too), and so did every run once the watermark was that
    day. Its batch id wrote the year as `1` (strftime), not the 8 digits verify reads."""
    first = landing / "mobile_payments" / "0001-01-01"
    first.mkdir()
    (first / "mobile_payments_first.csv").write_bytes(_payments(3))
    outcomes = _ingest_payments()
    assert [(o.status, o.batch_id[:25]) for o in outcomes.values()] == [
        ("accepted", "mobile_payments-00010101-")
    ]
    (landing / "mobile_payments" / DAY.isoformat() / "mobile_payments_1.csv").write_bytes(
        _payments(1)
    )
    outcomes = _ingest_payments()
    assert outcomes["mobile_payments_1.csv"].status == "accepted"
    with open_runtime().engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ingest_batches")).scalar_one() == 2


def test_a_run_a_few_days_after_the_first_date_there_is_still_sees_that_day(
    landing: Path,
) -> None:
    """Found by review: with `--as-of 0001-01-03` twice, the window's lower bound (the
    watermark's recent days) is before the first date there is; clamped to 0001-01-01, the
    strict "after" bound then dropped that day's folder, and a file landed there late was
    never considered (not ingested, not reported)."""
    as_of = date(1, 1, 3)
    first = landing / "mobile_payments" / "0001-01-01"
    first.mkdir()
    (first / "mobile_payments_first.csv").write_bytes(_payments(3))
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")

    def run() -> dict[str, str]:
        ingestor = FileIngestor(
            runtime,
            feed,
            BatchValidator(expectations_dir=runtime.settings.expectations_dir),
            pseudonym_key_bytes(runtime.settings.pseudonym_key),
        )
        return {
            f.path.rsplit("/", 1)[-1]: f.status
            for f in ingest_feed(runtime, feed, ingestor, as_of).files
        }

    assert run() == {"mobile_payments_first.csv": "accepted"}
    (first / "mobile_payments_late.csv").write_bytes(_payments(4))
    assert run()["mobile_payments_late.csv"] == "accepted"


def test_task_workers_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: `PUHUI_TASK_WORKERS=100000000000000000000` was taken as given (a Dask
    LocalCluster of 10^20 worker processes asked for; LightGBM's threads divided by it), and
    Dask training read it with int() (`abc` a traceback). One line naming the setting now."""
    from puhui.distributed_training import dask_client
    from puhui.task_runners import scoring_threads_from_env, task_runner_from_env

    assert task_runner_from_env({"PUHUI_TASK_WORKERS": "256"})._max_workers == 256
    for bad in ("257", "10" * 10, "9" * 5000):
        env = {"PUHUI_TASK_RUNNER": "dask", "PUHUI_TASK_WORKERS": bad}
        with pytest.raises(PuhuiError, match="^PUHUI_TASK_WORKERS must be .* 1 to 256$"):
            task_runner_from_env(env)
        with pytest.raises(PuhuiError, match="PUHUI_TASK_WORKERS"):
            scoring_threads_from_env(8, env, cores=2)
        with pytest.raises(PuhuiError, match="PUHUI_SCORING_THREADS"):
            task_runner_from_env({"PUHUI_SCORING_THREADS": bad})
    monkeypatch.setattr("puhui.distributed_training._CLIENT", None)
    monkeypatch.delenv("PUHUI_DASK_ADDRESS", raising=False)
    for bad in ("abc", "10" * 10):  # checked before any cluster starts
        monkeypatch.setenv("PUHUI_TASK_WORKERS", bad)
        with pytest.raises(PuhuiError, match="PUHUI_TASK_WORKERS"):
            dask_client()


def test_data_docs_print_a_suites_own_strings_and_tracebacks_as_text(tmp_path: Path) -> None:
    """Before: round 9 escaped each expectation's arguments and results, but GX also prints
    an expectation's `description` (a contributed feed's suite file: free text) and an
    exception's traceback (masked, so it keeps the punctuation it quotes) raw: `<!--` in a
    description hid the rest of the page, a tag stayed a tag."""
    import copy

    import pandas as pd

    from puhui.data_docs import _WARM_UP_RESULT, build_data_docs, render_validation_page
    from puhui.validation import BatchValidator

    hostile = '<b id="PWN">x</b><!--'
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "feedx.json").write_text(
        json.dumps(
            {
                "name": "feedx",
                "expectations": [
                    {
                        "type": "expect_column_values_to_be_between",
                        "description": "Amount " + hostile,
                        "kwargs": {"column": "amount", "min_value": 0, "max_value": 10},
                    }
                ],
            }
        )
    )
    validator = BatchValidator(expectations_dir=tmp_path / "exp", results_dir=tmp_path / "gx")
    validator.validate_frame(pd.DataFrame({"amount": [1.0, 50.0]}), "feedx", "feedx-20260101-a")
    build_data_docs(tmp_path / "gx")
    (page_path,) = (tmp_path / "gx" / "data_docs" / "validations").rglob("*.html")
    page = page_path.read_text(encoding="utf-8")
    assert "Amount &lt;b id=&quot;PWN&quot;&gt;" in page and 'id="PWN"' not in page

    result = copy.deepcopy(_WARM_UP_RESULT)
    result["results"][1]["exception_info"] = {
        "raised_exception": True,
        "exception_message": hostile,  # GX escapes it (we do not): a GX upgrade is caught
        "exception_traceback": hostile,
    }
    page = render_validation_page(result)
    # GX leaves the message's quotes as they are: text inside <code>, no attribute.
    assert "<b id=" not in page and "x</b><!--" not in page and "&lt;b id=" in page


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_scoring_refuses_a_champion_moved_by_hand_in_mlflow(
    registry_env: dict[str, str], puhui: Callable[..., Ran]
) -> None:
    """Before: round 8 made promote, rollback and verify refuse or report an alias moved in
    MLflow outside puhui, but the profile refresh and the recommender's risk grades resolved
    `@champion` from MLflow alone: a version whose gates failed, set champion by hand, scored
    every customer (its files match their registration, so the load passed)."""
    from puhui.profiles.models import resolve_models
    from puhui.recommender.risk_grades import champion_risk_grader
    from puhui.registry import CHAMPION, mlflow_client
    from tasks.profiles import resolve_profile_models
    from tests.test_crash_model_changes import NAME

    v1, failed = registry_env["passed1"], registry_env["failed"]
    assert puhui("models", "promote", NAME, "--version", v1, "--reason", "r").returncode == 0
    settings = load_settings()
    engine, uri = open_runtime().engine, settings.mlflow_tracking_uri
    assert resolve_models(uri, {"risk": NAME}, engine=engine)["risk"].version == v1
    mlflow_client(uri).set_registered_model_alias(NAME, CHAMPION, failed)  # by hand
    said = f"{NAME}@champion is v{failed} in MLflow but the trail's last move says v{v1}"
    refused = f"^{said}: changed outside puhui: not scored; put it back in MLflow as the trail"
    # The callers themselves (their engine= is the fix): the recommender's risk grades and
    # the profile refresh's step (its body: the refusal comes before its run logger).
    with pytest.raises(PuhuiError, match=refused) as e:
        champion_risk_grader(engine, uri, NAME)
    assert "\n" not in str(e.value) and "promote through puhui" not in str(e.value)
    with pytest.raises(PuhuiError, match=refused):
        resolve_profile_models.fn(settings, {"risk": NAME})


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_a_promote_between_the_champion_checks_two_reads_is_no_refusal(
    registry_env: dict[str, str], puhui: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the check read MLflow (v1), then the trail; a promote to v2 landing between
    the two (a training's auto-promote during a profile refresh) was refused as "changed
    outside puhui" and failed the refresh, for a move puhui itself recorded."""
    import puhui.profiles.models as models
    from tests.test_crash_model_changes import NAME

    v1, v2 = registry_env["passed1"], registry_env["passed2"]
    assert puhui("models", "promote", NAME, "--version", v1, "--reason", "r").returncode == 0
    real_events_of, promoted = models.events_of, []

    def promote_first(*args: object, **kwargs: object) -> list[dict]:
        # The trail read, which comes after the MLflow read: a promote lands just before it.
        if not promoted:
            promoted.append(puhui("models", "promote", NAME, "--version", v2, "--reason", "r"))
        return real_events_of(*args, **kwargs)

    monkeypatch.setattr(models, "events_of", promote_first)
    engine, uri = open_runtime().engine, load_settings().mlflow_tracking_uri
    # What the refresh and the risk grades resolve through (their wiring: the test above).
    slot = models.resolve_models(uri, {"risk": NAME}, engine=engine)["risk"]
    assert promoted[0].returncode == 0, promoted[0].stderr
    assert slot.version == v2  # what MLflow and the trail agree on, read again


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_an_open_puhui_move_is_agreement_for_scoring(
    model_commands: object, registry_env: dict[str, str], puhui: Callable[..., Ran]
) -> None:  # model_commands first: it starts before the registrations, as in the crash tests
    """Found sound (a claim with no test before): a promote killed after MLflow moved (no
    reconcile yet: its intent open) scores the version it moved to, and an open removal (its
    intent says version null, MLflow's alias deleted, the completion not written) is no
    champion, not a refusal."""
    from puhui.profiles.models import resolve_models
    from puhui.registry import ALIAS_INTENT, CHAMPION, mlflow_client
    from tests.test_crash_model_changes import NAME

    v1 = registry_env["passed1"]
    # First: a command run in this process first changes the environment the forked one checks.
    crashed = crash_tests._crash(
        model_commands, "models", "promote", NAME, "--version", v1, "--reason", "r",
        point="alias.after_mlflow",
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    runtime = open_runtime()
    engine, uri = runtime.engine, runtime.settings.mlflow_tracking_uri
    assert resolve_models(uri, {"risk": NAME}, engine=engine)["risk"].version == v1

    # The state a removal killed between MLflow's deletion and its completion leaves.
    v2 = registry_env["passed2"]  # this command reconciles the killed one first
    assert puhui("models", "promote", NAME, "--version", v2, "--reason", "r").returncode == 0
    details = {"model": NAME, "alias": CHAMPION, "version": None, "previous": v2,
               "reason": "r", "removed": True}  # fmt: skip
    runtime.audit.record(engine, ALIAS_INTENT, f"{NAME}/{CHAMPION}", details)
    mlflow_client(uri).delete_registered_model_alias(NAME, CHAMPION)
    slot = resolve_models(uri, {"risk": NAME}, engine=engine)["risk"]
    assert slot.version is None and slot.reason == f"no champion for {NAME}"


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_scoring_refuses_a_champion_whose_model_was_deleted_by_hand(
    registry_env: dict[str, str], puhui: Callable[..., Ran]
) -> None:
    """Before: a registered model deleted in MLflow (its champion with it) was "no champion
    (not registered)", and the profile refresh went on without risk grades, while removing
    only the alias by hand was refused."""
    from puhui.profiles.models import resolve_models
    from puhui.registry import mlflow_client
    from tests.test_crash_model_changes import NAME

    v1 = registry_env["passed1"]
    assert puhui("models", "promote", NAME, "--version", v1, "--reason", "r").returncode == 0
    engine, uri = open_runtime().engine, load_settings().mlflow_tracking_uri
    mlflow_client(uri).delete_registered_model(NAME)  # by hand
    said = f"{NAME}@champion is unset in MLflow but the trail's last move says v{v1}"
    with pytest.raises(PuhuiError, match=f"^{said}: changed outside puhui: not scored;"):
        resolve_models(uri, {"risk": NAME}, engine=engine)
    assert "(not registered)" in resolve_models(uri, {"risk": NAME})["risk"].reason
