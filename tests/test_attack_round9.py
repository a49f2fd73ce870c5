"""Round 9 of testing like an attacker: what landed in round 8 (free-text column names), the
landing zone, failure paths and settings.

Each test failed before its fix (the comment above each section says how).
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select

from puhui.config import MAX_FEED_NAME, PartnersConfig, load_config, load_config_file
from puhui.errors import PuhuiError
from puhui.generate.hostile import MP_HEADER, HostileContext, csv_bytes
from puhui.ingest.batches import FileIngestor
from puhui.ingest.feeds import ingest_feed
from puhui.ingest.pseudonymize import pseudonym_key_bytes
from puhui.ingest.quarantine import release_batch
from puhui.ingest.raw_tables import raw_table
from puhui.runtime import open_runtime
from puhui.settings import repo_root
from puhui.validation import BatchValidator

DAY = date(2026, 9, 30)
_DECLARED = "      - {name: txn_id, type: string}\n"


def _partners_with(tmp_path: Path, *names: str) -> Path:
    """configs/ with mobile_payments declaring ``names`` as extra nullable text columns."""
    configs = tmp_path / "configs"
    shutil.copytree(repo_root() / "configs", configs)
    path = configs / "partners.yaml"
    text = path.read_text(encoding="utf-8")
    assert _DECLARED in text
    extra = "".join(f"      - {{name: '{n}', type: string, nullable: true}}\n" for n in names)
    path.write_text(text.replace(_DECLARED, _DECLARED + extra, 1), encoding="utf-8")
    return path


def _land_payments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, header: list[str],
                   rows: list[list[str]], name: str = "mobile_payments_1.csv") -> Path:
    folder = tmp_path / "landing" / "mobile_payments" / DAY.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("PUHUI_LANDING", str(tmp_path / "landing"))
    path = folder / name
    path.write_bytes(csv_bytes(header, rows))
    return path


def _ingest_payments(config_dir: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN202
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(config_dir))
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")
    ingestor = FileIngestor(runtime, feed, BatchValidator(),
                            pseudonym_key_bytes(runtime.settings.pseudonym_key))
    return runtime, feed, ingest_feed(runtime, feed, ingestor, DAY).files


# Before: a partner column whose name starts with "_" (allowed since round 8) was taken for a
# check column when a held batch's quarantine copy was read back: release loaded every row
# with that column NULL, the values gone.


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_a_held_batch_with_an_underscore_column_keeps_it_on_release(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    path = _partners_with(tmp_path, "_note")
    rows = [row + [f"n{i}"] for i, row in
            enumerate(HostileContext(DAY, 1, Path("."), set()).payment_rows(3))]
    rows[1][4] = "-5.00"  # out of range: the batch is held
    _land_payments(tmp_path, monkeypatch, MP_HEADER + ["_note"], rows)
    runtime, feed, (done,) = _ingest_payments(path.parent, monkeypatch)
    assert done.status == "quarantined", done
    released = release_batch(runtime, done.batch_id, "partner confirmed the refund")
    assert released.rows_loaded == 3
    table = raw_table(feed)
    with runtime.engine.connect() as conn:
        notes = conn.execute(select(table.c["_note"]).order_by(table.c.row_number)).scalars()
        assert list(notes) == ["n0", "n1", "n2"]


# Before: a feed name was unbounded, and its batch ids (<feed>-<YYYYMMDD>-<12 hex>) go into
# VARCHAR(40) columns: on PostgreSQL every file of a feed named with 19 or more characters
# failed to load AND to be held (value too long for the ledger row), so no ledger row at all;
# SQLite, which ignores the length, loaded them. Raw column names equal to the raw table's own
# (`row_number`, `Batch_Id`: SQLite's names ignore case) passed `config check` and then broke
# every file of the feed (DuplicateColumnError).


def _renamed_payments(tmp_path: Path, name: str) -> Path:
    path = _partners_with(tmp_path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("name: mobile_payments\n", f"name: {name}\n")
                    .replace('"{date}/mobile_payments_*.csv"', '"{date}/*.csv"'), encoding="utf-8")
    return path


@pytest.mark.parametrize("warehouse_url", ["postgres"], indirect=True)
def test_a_feed_named_at_the_length_limit_loads_on_postgres(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    name = "mobile_payments_b2"
    assert len(name) == MAX_FEED_NAME
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(_renamed_payments(tmp_path, name).parent))
    folder = tmp_path / "landing" / name / DAY.isoformat()
    folder.mkdir(parents=True)
    monkeypatch.setenv("PUHUI_LANDING", str(tmp_path / "landing"))
    rows = HostileContext(DAY, 1, Path("."), set()).payment_rows(3)
    (folder / "p.csv").write_bytes(csv_bytes(MP_HEADER, rows))
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get(name)
    ingestor = FileIngestor(runtime, feed, BatchValidator(),
                            pseudonym_key_bytes(runtime.settings.pseudonym_key))
    (done,) = ingest_feed(runtime, feed, ingestor, DAY).files
    assert done.status == "accepted", done


def test_a_feed_name_too_long_for_its_batch_ids_is_refused_in_one_line(tmp_path: Path) -> None:
    path = _renamed_payments(tmp_path, "mobile_payments_b23")
    with pytest.raises(PuhuiError, match=r"partners\.yaml: partners\.3\.name: .*longer than 18 "
                                         r"characters \(a batch id") as caught:
        load_config_file(path, PartnersConfig)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["row_number", "Batch_Id", "_valid_phone_key",
                                  "_after_delivery"])
def test_a_column_stored_under_a_name_the_raw_table_keeps_is_refused(
    tmp_path: Path, name: str
) -> None:
    path = _partners_with(tmp_path, name)
    with pytest.raises(PuhuiError, match=r"partners\.yaml: partners\.3: .*a name the raw table "
                                         r"keeps for itself") as caught:
        load_config_file(path, PartnersConfig)
    assert "\n" not in str(caught.value)
