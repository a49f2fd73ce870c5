"""Partner ingestion end to end on the generator's faulty landing zone (SQLite and PostgreSQL).

Every landed file must end as faults.json says, rows must reconcile, re-runs and concurrent
runs must load each file exactly once, and held batches must be releasable exactly once.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import subprocess
import sys
import uuid
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select, text

from puhui.audit import read_audit_events, verify_audit_chain
from puhui.config import ColumnContract, PartnerFeed, PartnersConfig, load_config
from puhui.errors import PuhuiError
from puhui.generate import generate_landing_zone
from puhui.ingest import ledger
from puhui.ingest.batches import PreparedChunk, SeenKeys, drop_duplicate_keys, read_ahead
from puhui.ingest.held_batches import list_quarantined
from puhui.ingest.pseudonymize import PseudonymCache, pseudonymize_ids
from puhui.ingest.quarantine import reject_batch, release_batch
from puhui.ingest.raw_tables import raw_table
from puhui.pipeline import run_ingest_flow
from puhui.runtime import open_runtime
from puhui.settings import load_settings
from puhui.warehouse.engine import dispose_engines
from puhui.warehouse.schema import ingest_batches, validation_results

END = date(2026, 9, 30)
# What a reason or warning must say for each planted fault (it names the fault).
FAULT_WORDS = {
    "wrong_encoding": "encoding",
    "missing_column": "missing column",
    "renamed_column": "renamed",
    "type_drift": "type drift",
    "null_burst": "missing",
    "out_of_range": "outside",
    "truncated_file": "truncated",
    "empty_file": "empty",
    "extra_column": "extra column",
    "duplicate_rows": "duplicate rows",
    "future_timestamp": "future timestamp",
    "duplicate_delivery": "duplicate delivery",
    "bom": "",
}


@pytest.fixture(scope="module")
def faulty_landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faulty-landing")
    generate_landing_zone(
        out, users=1500, days=8, seed=11, faults=True, end_date=END, history_days=60
    )
    return out


@pytest.fixture
def ingest_env(
    puhui_env: Path, warehouse_url: str, faulty_landing: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    monkeypatch.setenv("PUHUI_LANDING", str(faulty_landing))
    return warehouse_url


@pytest.fixture(scope="module")
def first_ingests(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The first ingest of the faulty landing zone, one per dialect: (summary, template
    PUHUI_HOME, template warehouse URL), filled by ``ingested``."""
    return {"root": tmp_path_factory.mktemp("first-ingest")}


@pytest.fixture
def ingested(ingest_env: str, puhui_env: Path, first_ingests: dict, prefect_harness: None,
             request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict:
    """``ingest_env`` after a first real ingest flow run; returns that run's summary.

    The run is made once per dialect (a template: its PUHUI_HOME and warehouse) and each test
    gets its own copy of both, so the tests that start from it share one ~30 s run per
    dialect instead of each making its own, and still never share state."""
    dialect = "sqlite" if ingest_env.startswith("sqlite") else "postgres"
    if dialect not in first_ingests:
        home = first_ingests["root"] / dialect / "home"
        if dialect == "sqlite":
            url = f"sqlite:///{first_ingests['root'] / dialect / 'warehouse.db'}"
        else:
            url = request.getfixturevalue("pg_server").create_database(f"tpl_ingest_{END:%m%d}")
        with monkeypatch.context() as env:
            env.setenv("PUHUI_HOME", str(home))
            env.setenv("PUHUI_WAREHOUSE_URL", url)
            summary = run_ingest_flow(END)
        dispose_engines()  # nobody may be connected to a PostgreSQL template ...
        if dialect == "postgres":  # ... GX's table checks keep their own engine's sessions
            import psycopg

            pg = request.getfixturevalue("pg_server")
            with psycopg.connect(pg.libpq_url(), autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid()",
                             (url.rsplit("/", 1)[-1],))
        first_ingests[dialect] = (summary, home, url)
    summary, home, url = first_ingests[dialect]
    shutil.rmtree(puhui_env, ignore_errors=True)
    shutil.copytree(home, puhui_env)
    if dialect == "sqlite":
        source = Path(url.removeprefix("sqlite:///"))
        target = Path(ingest_env.removeprefix("sqlite:///"))
        for suffix in ("", "-wal"):  # a WAL left behind holds committed pages too
            if Path(f"{source}{suffix}").exists():
                shutil.copy(f"{source}{suffix}", f"{target}{suffix}")
    else:
        name = url.rsplit("/", 1)[-1]
        clone = request.getfixturevalue("pg_server").create_database(
            f"{name}_{uuid.uuid4().hex[:8]}", template=name)
        monkeypatch.setenv("PUHUI_WAREHOUSE_URL", clone)
    return copy.deepcopy(summary)  # a test may not change what the next one is given


def _faults(landing: Path) -> dict[str, dict]:
    return {str(landing / f["path"]): f for f in json.loads((landing / "faults.json").read_text())}


def _landed_paths(landing: Path) -> list[str]:
    partners = load_config(load_settings().config_dir, PartnersConfig)
    names = {f.name for f in partners.partners}
    return sorted(
        str(p)
        for p in landing.rglob("*.*")
        if p.is_file() and p.relative_to(landing).parts[0] in names
    )


def _ledger_by_path(url: str) -> dict[str, ledger.BatchRecord]:
    records = ledger.list_batches(open_runtime().engine)
    by_path: dict[str, ledger.BatchRecord] = {}
    for record in records:
        assert record.source_path not in by_path, f"{record.source_path} has two ledger rows"
        by_path[record.source_path] = record
    return by_path


@pytest.mark.slow
def test_every_landed_file_ends_as_faults_json_says(
    ingest_env: str, faulty_landing: Path, ingested: dict
) -> None:
    summary = ingested  # run_ingest_flow(END), once per dialect
    assert summary["line"].startswith(f"ingest {END}:")
    table_checks = {t["table"]: t for t in summary["tables"]}
    assert set(table_checks) == {"ingest_batches", "raw_loan_outcomes"}
    assert all(t["success"] for t in table_checks.values()), table_checks
    faults = _faults(faulty_landing)
    assert set(f["fault"] for f in faults.values()) >= set(FAULT_WORDS), "generator lost a kind"
    by_path = _ledger_by_path(ingest_env)
    landed = _landed_paths(faulty_landing)
    assert sorted(by_path) == landed, "every landed file gets exactly one ledger row"

    for path, record in by_path.items():
        fault = faults.get(path)
        messages = " | ".join([record.reason or ""] + [w["message"] for w in record.warnings])
        if fault is None:
            assert record.status == "accepted" and not record.warnings, (path, messages)
            continue
        expect, word = fault["expect"], FAULT_WORDS[fault["fault"]]
        if expect == "held":
            assert record.status in ledger.HELD_STATUSES, (fault, record)
            assert word in messages.lower(), (fault, messages)
        elif expect == "duplicate":
            assert record.status == "duplicate" and record.duplicate_of, (fault, record)
            assert by_path_owner(by_path, record.duplicate_of).status != "duplicate"
        elif expect == "warned":
            assert record.status == "accepted" and word in messages.lower(), (fault, messages)
        else:  # tolerated
            assert record.status == "accepted" and not record.warnings, (fault, messages)

    # Warnings are also in the batch's validation result, naming the fault.
    runtime = open_runtime()
    with runtime.engine.connect() as conn:
        details = {r.batch_id: r.details for r in conn.execute(select(validation_results))}
    for path, fault in faults.items():
        if fault["expect"] == "warned":
            record = by_path[path]
            text_ = json.dumps(details[record.batch_id], ensure_ascii=False).lower()
            assert FAULT_WORDS[fault["fault"]] in text_, (fault, text_)
    assert verify_audit_chain(runtime.engine).ok


def by_path_owner(by_path: dict[str, ledger.BatchRecord], batch_id: str) -> ledger.BatchRecord:
    return next(r for r in by_path.values() if r.batch_id == batch_id)


def _independent_row_count(path: Path, fmt: str) -> int:
    """Rows counted without the ingestion code: data lines, or Parquet metadata."""
    if path.stat().st_size == 0:
        return 0
    if fmt == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    lines = [line for line in path.read_bytes().split(b"\n") if line.strip()]
    return len(lines) - (1 if fmt == "csv" else 0)


@pytest.mark.slow
def test_rows_reconcile_and_raw_tables_hold_exactly_the_loaded_rows(
    ingest_env: str, faulty_landing: Path, ingested: dict
) -> None:
    runtime = open_runtime()
    partners = load_config(runtime.settings.config_dir, PartnersConfig)
    by_path = _ledger_by_path(ingest_env)
    total_landed = total_accounted = 0
    with runtime.engine.connect() as conn:
        for feed in partners.partners:
            loaded_by_batch = dict(
                conn.execute(
                    select(raw_table(feed).c.batch_id, func.count()).group_by(
                        raw_table(feed).c.batch_id
                    )
                ).all()
            )
            for record in [r for r in by_path.values() if r.partner == feed.name]:
                assert record.rows == record.rows_loaded + record.rows_held + record.rows_duplicate
                assert loaded_by_batch.get(record.batch_id, 0) == record.rows_loaded, record
                if record.status != "duplicate" and "truncated" not in (record.reason or ""):
                    counted = _independent_row_count(Path(record.source_path), feed.format)
                    assert record.rows == counted, (record.source_path, record.rows, counted)
                total_landed += record.rows
                total_accounted += record.rows_loaded + record.rows_held + record.rows_duplicate
    assert total_landed == total_accounted > 0


@pytest.mark.slow
def test_second_run_loads_nothing_again(ingested: dict, prefect_harness: None) -> None:
    first = ingested  # run_ingest_flow(END), once per dialect
    runtime = open_runtime()
    with runtime.engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(ingest_batches)).scalar()
    second = run_ingest_flow(END)
    assert second["rows"] == 0 and first["rows"] > 0
    assert set(second["statuses"]) == {"skipped"}
    assert "already ingested by an earlier run" in second["line"]
    with runtime.engine.connect() as conn:
        after = conn.execute(select(func.count()).select_from(ingest_batches)).scalar()
    assert before == after


_CONCURRENT_INGEST = """
import sys
from datetime import date
from puhui.config import PartnersConfig, load_config
from puhui.ingest.batches import FileIngestor
from puhui.ingest.feeds import ingest_feed
from puhui.ingest.pseudonymize import pseudonym_key_bytes
from puhui.runtime import open_runtime
from puhui.validation import BatchValidator

runtime = open_runtime()
validator = BatchValidator(expectations_dir=runtime.settings.expectations_dir)
key = pseudonym_key_bytes(runtime.settings.pseudonym_key)
for feed in load_config(runtime.settings.config_dir, PartnersConfig).partners:
    ingest_feed(runtime, feed, FileIngestor(runtime, feed, validator, key), date(2026, 9, 30))
print("done")
"""


@pytest.mark.slow
def test_two_ingests_at_once_load_each_file_exactly_once(
    ingest_env: str, faulty_landing: Path
) -> None:
    env = {**os.environ}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT_INGEST],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and "done" in out, err[-2000:]
    by_path = _ledger_by_path(ingest_env)  # asserts one ledger row per file
    assert sorted(by_path) == _landed_paths(faulty_landing)
    runtime = open_runtime()
    partners = load_config(runtime.settings.config_dir, PartnersConfig)
    with runtime.engine.connect() as conn:
        for feed in partners.partners:
            table = raw_table(feed)
            counts = dict(
                conn.execute(
                    select(table.c.batch_id, func.count()).group_by(table.c.batch_id)
                ).all()
            )
            for record in (r for r in by_path.values() if r.partner == feed.name):
                assert counts.get(record.batch_id, 0) == record.rows_loaded


@pytest.mark.slow
def test_release_loads_once_and_reject_is_final(
    ingest_env: str, faulty_landing: Path, ingested: dict
) -> None:
    runtime = open_runtime()
    held = list_quarantined(runtime.engine)
    faults = {
        str(faulty_landing / f["path"]): f["fault"]
        for f in json.loads((faulty_landing / "faults.json").read_text())
    }
    releasable = next(r for r in held if faults.get(r.source_path) == "out_of_range")
    unreadable = next(r for r in held if faults.get(r.source_path) == "truncated_file")

    released = release_batch(runtime, releasable.batch_id, "partner confirmed the values")
    assert released.status == "released"
    assert released.rows_loaded + released.rows_duplicate == released.rows > 0
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get(released.partner)
    with runtime.engine.connect() as conn:
        count = conn.execute(
            select(func.count())
            .select_from(raw_table(feed))
            .where(raw_table(feed).c.batch_id == released.batch_id)
        ).scalar()
    assert count == released.rows_loaded
    with pytest.raises(PuhuiError, match="released, not quarantined"):
        release_batch(runtime, releasable.batch_id, "second time")
    with pytest.raises(PuhuiError, match="can only be rejected"):
        release_batch(runtime, unreadable.batch_id, "try anyway")
    rejected = reject_batch(runtime, unreadable.batch_id, "partner will redeliver")
    assert rejected.status == "rejected" and rejected.rows_held == rejected.rows
    with pytest.raises(PuhuiError, match="rejected, not quarantined"):
        reject_batch(runtime, unreadable.batch_id, "again")

    decisions = read_audit_events(runtime.engine, action="quarantine.released") + read_audit_events(
        runtime.engine, action="quarantine.rejected"
    )
    assert {e["subject"] for e in decisions} == {releasable.batch_id, unreadable.batch_id}
    assert all(e["actor"] == "test-runner" and e["details"]["reason"] for e in decisions)


def test_crash_mid_load_leaves_nothing_and_rerun_completes(
    ingest_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from puhui.ingest import batches
    from puhui.ingest.batches import FileIngestor
    from puhui.ingest.feeds import ingest_feed
    from puhui.ingest.pseudonymize import pseudonym_key_bytes
    from puhui.validation import BatchValidator

    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("credit_bureau")
    ingestor = FileIngestor(
        runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
        pseudonym_key_bytes(runtime.settings.pseudonym_key)
    )
    real_insert = batches.bulk_insert

    def insert_then_crash(conn, table, data, constants=None):  # noqa: ANN001, ANN202
        real_insert(conn, table, data, constants)
        raise ConnectionError("machine lost power mid-load")

    monkeypatch.setattr(batches, "bulk_insert", insert_then_crash)
    with pytest.raises(ConnectionError):
        ingest_feed(runtime, feed, ingestor, END)
    with runtime.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ingest_batches)).scalar() == 0
        assert conn.execute(text(f"SELECT count(*) FROM {feed.raw_table}")).scalar() == 0
    monkeypatch.setattr(batches, "bulk_insert", real_insert)
    result = ingest_feed(runtime, feed, ingestor, END)
    assert result.files and all(f.status == "accepted" for f in result.files)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "puhui", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_data_engineer_workflow_through_the_cli(
    puhui_env: Path, faulty_landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUHUI_LANDING", str(faulty_landing))
    monkeypatch.delenv("PREFECT_HOME", raising=False)  # the CLI keeps Prefect under PUHUI_HOME
    ingest = _cli("run", "ingest", "--partner", "mobile_payments", "--as-of", END.isoformat())
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    lines = ingest.stdout.strip().splitlines()
    assert lines[-1].startswith(f"ingest {END}:") and "quarantined" in lines[-1]
    assert any("renamed column(s): payer_phone -> payer_mobile" in line for line in lines)
    assert "Traceback" not in ingest.stderr
    # The run rendered its GX results as Data Docs; the command finds nothing new to render.
    index = puhui_env / "gx" / "data_docs" / "index.html"
    assert index.exists() and 'class="bad"' in index.read_text()
    docs = _cli("data-docs")
    assert docs.returncode == 0 and "(0 new," in docs.stdout and str(index) in docs.stdout

    listed = _cli("quarantine", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    held = json.loads(listed.stdout)
    assert held and all(b["partner"] == "mobile_payments" and b["reason"] for b in held)
    null_burst = next(b for b in held if "missing" in b["reason"])
    assert null_burst["warnings"][0]["sample_rows"], "sample failing rows are kept"

    released = _cli(
        "quarantine",
        "release",
        null_burst["batch_id"],
        "--reason",
        "partner says these are refunds without a payer",
    )
    assert released.returncode == 0 and "released" in released.stdout, released.stderr
    again = _cli("quarantine", "release", null_burst["batch_id"], "--reason", "twice?")
    assert again.returncode == 1
    assert again.stderr.strip().count("\n") == 0 and "not quarantined" in again.stderr
    log = json.loads(_cli("audit", "log", "--action", "quarantine.released", "--json").stdout)
    assert [e["subject"] for e in log] == [null_burst["batch_id"]]
    assert log[0]["actor"] == "test-runner"
    assert _cli("audit", "verify").returncode == 0


# --- chunk-level building blocks (no database) -----------------------------------------------


def _keyed_feed() -> PartnerFeed:
    return PartnerFeed(
        name="keyed",
        description="two-column primary key",
        owner="partner",
        pattern="{date}/keyed_*.csv",
        format="csv",
        delivery="daily",
        suite="keyed",
        primary_key=["a", "b"],
        columns=[
            ColumnContract(name="a", type="string", nullable=True),
            ColumnContract(name="b", type="string", nullable=True),
        ],
    )


def _awkward_keys(count: int, seed: int) -> list[tuple[str | None, str | None]]:
    """Keys that repeat within and across chunks: NULLs, "", non-ASCII, and long keys that
    differ only in the middle (the hash reads their first 64 and last 8 bytes: collisions)."""
    rng = random.Random(seed)
    pool_a = [None, "", "é", "中文", "x", *("p" * 64 + m + "s" * 8 for m in "ABCDEFG")]
    pool_b = [None, "", "1", "2", "长" * 30]
    return [(rng.choice(pool_a), rng.choice(pool_b)) for _ in range(count)]


def _dedupe_in_chunks(keys: list[tuple], sizes: list[int]) -> list[int]:
    feed, seen, kept, start = _keyed_feed(), SeenKeys(), [], 1
    for size in sizes:
        part = keys[start - 1 : start - 1 + size]
        chunk = PreparedChunk(
            pa.table({"a": [k[0] for k in part], "b": [k[1] for k in part]}, schema=_AB),
            {},
            np.arange(start, start + len(part)),
        )
        chunk, dropped = drop_duplicate_keys(chunk, feed, seen)
        assert dropped == len(part) - len(chunk.row_numbers)
        kept += chunk.row_numbers.tolist()
        start += size
    return kept


_AB = pa.schema([("a", pa.string()), ("b", pa.string())])


def _first_occurrences(keys: list[tuple]) -> list[int]:
    firsts: dict[tuple, int] = {}
    for row, key in enumerate(keys, start=1):
        firsts.setdefault(key, row)
    return sorted(firsts.values())


@pytest.mark.parametrize("sizes", [[400], [100, 100, 100, 100], [1, 250, 0, 149]])
def test_duplicate_keys_keep_the_first_row_across_chunks(sizes: list[int]) -> None:
    keys = _awkward_keys(sum(sizes), seed=len(sizes))
    assert _dedupe_in_chunks(keys, sizes) == _first_occurrences(keys)


def test_duplicate_check_is_exact_even_when_every_hash_collides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from puhui.ingest import batches

    monkeypatch.setattr(batches, "string_hashes", lambda keys: np.zeros(len(keys), np.uint64))
    keys = [(f"k{i % 150}", "") for i in range(300)] + [("new", None)]
    assert _dedupe_in_chunks(keys, [120, 120, 61]) == _first_occurrences(keys)


def test_string_hashes_depend_on_bytes_and_length() -> None:
    from puhui.hashing import string_hashes

    values = ["", "a", "a\0", "ab", "ba", "é", "x" * 8, "x" * 9, "y" * 100, "y" * 101]
    hashes = string_hashes(pa.array(values))
    assert len(set(hashes.tolist())) == len(values)
    sliced = pa.array(["zz", *values]).slice(1)  # an offset into the buffers
    assert string_hashes(sliced).tolist() == hashes.tolist()
    for index, value in enumerate(values):  # a key's hash ignores the rest of its chunk
        assert string_hashes(pa.array([value])).tolist() == [hashes[index]]


def test_string_hashes_of_equal_length_keys_are_the_general_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keys all of one length (up to 64 bytes) take a path of their own; each must hash as
    it does among keys of other lengths (the general path), whatever its bytes: random bytes
    (NUL, 4-byte UTF-8 among them), every length 1-80 (exact multiples of 8, past 64), each
    array also read through an offset into its buffers. The path's function is watched (and
    still run), so the comparison is not the general path against itself: taken for every
    equal-length array of 1-64 bytes, never for 65-80 or mixed lengths."""
    from puhui import hashing
    from puhui.hashing import string_hashes

    taken: list[int] = []
    equal_length_state = hashing.equal_length_state

    def watched(data: pa.Buffer, start: int, count: int, length: int) -> np.ndarray:
        taken.append(length)
        return equal_length_state(data, start, count, length)

    monkeypatch.setattr(hashing, "equal_length_state", watched)
    rng = np.random.default_rng(15)
    alphabet = ["a", "\0", "é", "中", "😀", "\x01", "Z"]
    for length in range(1, 81):
        for rows in (1, 7, 300):
            values = [bytes(rng.integers(0, 256, length, dtype=np.uint8)) for _ in range(rows)]
            text = "".join(rng.choice(alphabet, length))
            values.append(text.encode()[:length].ljust(length, b"\0"))
            equal = pa.array(values, pa.binary())
            mixed = pa.array([*values, b"x" * (length + 1)], pa.binary())  # general path
            expected = string_hashes(mixed).tolist()[:-1]
            assert string_hashes(equal).tolist() == expected, length
            shifted = pa.array([b"yz" * length, *values], pa.binary()).slice(1)
            assert string_hashes(shifted).tolist() == expected, length
    # equal and shifted, 3 row counts each; mixed never
    assert taken == [n for n in range(1, 65) for _ in range(6)]
    texts = pa.array(["😀" * 4, "中文ab" + "\0" * 8, "a" * 16])  # str: 16 UTF-8 bytes each
    mixed = pa.array([*texts.to_pylist(), ""])
    assert string_hashes(texts).tolist() == string_hashes(mixed).tolist()[:-1]
    assert taken[-1] == 16


# Inputs and their hashes as main computed them before round 15's equal-length path.
_PINNED_KEY_HASHES = {
    "one_byte": (
        ["a", "\0", "z"],
        [15946935871909544242, 5002112130088718028, 17409452278740266810],
    ),
    "eight": (["abcdefgh", "12345678"], [5382433078708633169, 920624533107408639]),
    "seventeen": (
        ["T2026093000000001", "T2026093000000002", "中文中文中ab"],
        [2622648197033696171, 2042199615414305601, 14837607154233845465],
    ),
    "sixty_four": (
        [
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
            "fd61a03af4f77d870fc21e05e7e80678095c92d808cfb3b5c279ee04c74aca13",
        ],
        [7689327049847423858, 6139399191105806982, 2722912758338263048],
    ),
    "sixty_five": (["k" * 65, "a" * 65], [9124463172038968711, 10637858960547921614]),
    "mixed": (
        ["", "a", "é", "😀" * 3, "x" * 64, "y" * 80, "\0null"],
        [
            0,
            15946935871909544242,
            3163174431196789403,
            16278540939377851169,
            18429985893325236795,
            14973345537496251424,
            5173053835810921858,
        ],
    ),
}


def test_value_hashes_stay_what_the_index_holds() -> None:
    """``ingest_keys.value_hash`` (``row_hashes(...).value``) is stored: a redelivered row
    is a repeat when its value hash equals the stored one, a correction otherwise. So its
    values are pinned as main computed them before the equal-length path (round 15): a
    mobile_payments table with a 64-hex pseudonym column (hashed directly, equal lengths),
    equal-length codes and mixed ones (hashed per distinct value), non-ASCII, NULLs; and
    ``string_hashes`` itself for lengths 1, 8, 17, 64, 65 and mixed (a change to the shared
    mixing, or a pyarrow change, moves both of its paths: a comparison of the two misses it).
    """
    from datetime import datetime

    from puhui.hashing import string_hashes
    from puhui.ingest.key_index import row_hashes

    configs = Path(__file__).resolve().parents[1] / "configs"
    feed = load_config(configs, PartnersConfig).get("mobile_payments")
    persons = [
        *_PINNED_KEY_HASHES["sixty_four"][0],
        _PINNED_KEY_HASHES["sixty_four"][0][0],
        "0" * 64,
    ]
    stored = pa.table(
        {
            "txn_id": pa.array(["T1", "T2", "T3", "T4", "T5"]),
            "phone_key": pa.array(persons, pa.string()),
            "txn_time": pa.array(
                [datetime(2026, 9, 30, 8, 0, s) for s in range(5)], pa.timestamp("us")
            ),
            "txn_type": pa.array(["P2P", "BIL", "MER", "P2P", "BIL"]),
            "amount": pa.array([1.5, 2000.0, None, 0.01, -3.0]),
            "merchant_category": pa.array(["超市", None, "grocery", "é😀", ""]),
            "days_past_due": pa.array([0, None, 30, 7, 1], pa.int64()),
            "status": pa.array(["ok", "failed", "ok", "pending", "ok"]),
        }
    )
    assert row_hashes(stored, feed).value.tolist() == [
        6479000244779833406,
        -4948977685696959054,
        -8462812300499040609,
        9062997177099598386,
        -4789547593898333650,
    ]
    for name, (values, expected) in _PINNED_KEY_HASHES.items():
        assert string_hashes(pa.array(values, pa.string())).tolist() == expected, name


def test_string_hashes_of_large_and_chunked_arrays_are_their_string_forms() -> None:
    """``large_string`` / ``large_binary`` keys (64-bit offsets) hash as their 32-bit forms
    do (read as 32-bit offsets they hashed wrongly, the first key as 0), a chunked array as
    its chunks combined (it raised), sliced too; a type without offsets and bytes is a
    one-line TypeError naming the type."""
    from puhui.hashing import string_hashes

    for values, expected in _PINNED_KEY_HASHES.values():
        for large in (pa.large_string(), pa.large_binary()):
            keys = pa.array(values, pa.large_string()).cast(large)
            assert string_hashes(keys).tolist() == expected, large
            assert string_hashes(pa.array(["-", *values], large).slice(1)).tolist() == expected
        chunked = pa.chunked_array([values[:1], values[1:]], pa.string())
        assert string_hashes(chunked).tolist() == expected
    with pytest.raises(TypeError, match="not int64"):
        string_hashes(pa.array([1, 2]))


def test_read_ahead_raises_where_the_producer_failed_and_stops_it_early() -> None:
    def failing():  # noqa: ANN202
        yield 1
        yield 2
        raise ValueError("bad block")

    got = []
    with pytest.raises(ValueError, match="bad block"):
        for item in read_ahead(failing()):
            got.append(item)
    assert got == [1, 2]

    closed = []

    def endless():  # noqa: ANN202
        try:
            n = 0
            while True:
                n += 1
                yield n
        finally:
            closed.append(True)

    ahead = read_ahead(endless())
    assert [next(ahead), next(ahead)] == [1, 2]
    ahead.close()
    assert closed == [True]


def test_pseudonym_cache_gives_the_hmac_and_one_key_per_identifier() -> None:
    key = b"k" * 32
    phones = pa.array(["13812345678", "+86 138 1234 5678", None, "123", "138-1234-5678"])
    fresh, valid = pseudonymize_ids(phones, "phone", key)
    assert fresh[0] == fresh[1] == fresh[4] and fresh[2].as_py() is None
    assert fresh[3].as_py() is None and valid.to_pylist() == [True, True, None, False, True]
    cache = PseudonymCache(limit=1)  # full after one entry: the rest is hashed every time
    for _ in range(2):
        cached, _valid = pseudonymize_ids(phones, "phone", key, cache)
        assert cached.to_pylist() == fresh.to_pylist()
    other, _valid = pseudonymize_ids(phones, "phone", b"another key", cache)
    assert other[0] != fresh[0]


def test_paced_csv_reader_returns_every_row_across_small_blocks(tmp_path: Path) -> None:
    import pyarrow.csv as pa_csv

    from puhui.ingest.reading import iter_file_chunks, open_landed_file

    feed = load_config(load_settings().config_dir, PartnersConfig).get("mobile_payments")
    names = [c.name for c in feed.columns]
    rows = [
        [f"T{i:016d}", "13812345678", "2026-09-30T08:00:00+08:00", "BILL_PAY",
         '"1,234.50"', '"comma, ""quote"""' if i % 7 == 0 else "", str(i % 3), "SUCCESS"]
        for i in range(5_000)
    ]
    path = tmp_path / "payments.csv"
    path.write_text(",".join(names) + "\n" + "".join(",".join(r) + "\n" for r in rows))
    handle = open_landed_file(str(path))
    chunks = list(iter_file_chunks(handle, feed, names, block_bytes=16 << 10))
    assert len(chunks) > 10, "the file should span many blocks"
    expected = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        strings_can_be_null=True, quoted_strings_can_be_null=True))
    assert pa.concat_tables(chunks).equals(expected)

    started = iter_file_chunks(handle, feed, names, block_bytes=16 << 10)
    next(started)
    started.close()  # abandoning the reader midway must not leave its I/O thread waiting


def _payments_csv(path: Path, rows: int, *, bad_row: int | None = None) -> None:
    """A valid mobile_payments file whose row 2500 repeats row 5's txn_id (a later chunk);
    ``bad_row`` gets a transaction type outside the suite's set (a critical failure)."""
    lines = ["txn_id,payer_phone,txn_time,txn_type,amount,merchant_category,days_past_due,status"]
    for row in range(1, rows + 1):
        txn = 2026093000000000 + (5 if row == 2500 else row)
        kind = "BOGUS" if row == bad_row else "MERCHANT"
        lines.append(
            f'T{txn},+86 138 {row % 10000:04d} 5678,2026-09-30T08:00:00+08:00,{kind},'
            f'"1,234.50",GROCERY,,SUCCESS'
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_a_file_of_many_chunks_loads_whole_or_not_at_all(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from puhui.ingest import reading
    from puhui.ingest.batches import FileIngestor
    from puhui.ingest.pseudonymize import pseudonym_key_bytes
    from puhui.landing import list_landed_files
    from puhui.validation import BatchValidator

    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    monkeypatch.setattr(reading.iter_file_chunks, "__defaults__", (64 << 10,))  # ~6 chunks
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")
    ingestor = FileIngestor(
        runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
        pseudonym_key_bytes(runtime.settings.pseudonym_key)
    )
    landing = tmp_path / "landing"
    good_day, bad_day = date(2026, 9, 30), date(2026, 10, 1)
    _payments_csv(landing / "mobile_payments" / "2026-09-30" / "mobile_payments_1.csv", 4000)
    _payments_csv(
        landing / "mobile_payments" / "2026-10-01" / "mobile_payments_2.csv", 4000, bad_row=10
    )

    (good,) = list_landed_files(feed, str(landing), good_day)
    outcome = ingestor.ingest(good)
    assert (outcome.status, outcome.rows, outcome.rows_loaded, outcome.rows_duplicate) == (
        "accepted", 4000, 3999, 1
    )
    count = text(f"SELECT count(*), count(DISTINCT txn_id) FROM {feed.raw_table}")
    with runtime.engine.connect() as conn:
        assert tuple(conn.execute(count).one()) == (3999, 3999)

    # The critical failure is in the first chunk; later chunks were already loading.
    (bad,) = list_landed_files(feed, str(landing), bad_day)
    held = ingestor.ingest(bad)
    assert held.status == "quarantined" and "txn_type" in (held.reason or "")
    with runtime.engine.connect() as conn:
        assert tuple(conn.execute(count).one()) == (3999, 3999)


@pytest.mark.parametrize("key", [b"", b"short", b"k" * 64, b"long" * 40])
def test_precomputed_hmac_is_hmac_sha256(key: bytes) -> None:
    import hmac

    from puhui.ingest.pseudonymize import hmac_sha256_hex

    keyed = hmac_sha256_hex(key, b"phone:")
    for message in [b"", b"13812345678", "中文".encode(), b"x" * 200]:
        assert keyed(message) == hmac.digest(key, b"phone:" + message, "sha256").hex()


def test_jsonl_reader_streams_blocks_and_each_block_is_typed_by_the_contract(
    tmp_path: Path,
) -> None:
    from puhui.ingest.contract import coerce_to_contract
    from puhui.ingest.reading import file_columns, iter_file_chunks, open_landed_file

    feed = load_config(load_settings().config_dir, PartnersConfig).get("ecommerce_orders")
    lines = []
    for i in range(3_000):
        # Early lines carry plain numbers, later ones text amounts and omitted null fields:
        # a reader that fixes types from its first block would fail on them.
        amount = 12.5 if i < 1_500 else f"{i}.25"
        row = {"order_id": f"O{i:08d}", "buyer_phone": "13812345678",
               "order_time": "2026-09-30T08:00:00+08:00", "amount_yuan": amount,
               "category_code": "AGRI", "province": None if i % 5 else "Yunnan"}
        if i >= 2_000 and row["province"] is None:
            del row["province"]
        lines.append(json.dumps(row))
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join(lines))  # no newline after the last line
    handle = open_landed_file(str(path))
    header = file_columns(handle, feed)
    chunks = list(iter_file_chunks(handle, feed, header, block_bytes=8 << 10))
    assert len(chunks) > 20, "the file should span many blocks"
    typed = pa.concat_tables(coerce_to_contract(c, feed) for c in chunks)
    assert typed["order_id"].to_pylist() == [f"O{i:08d}" for i in range(3_000)]
    assert typed["amount_yuan"].to_pylist()[1_499:1_501] == [12.5, 1500.25]
    assert typed["province"].null_count == 2_400

    # Streaming, not read whole: the first blocks arrive before the reader meets a broken
    # last line, which then holds the file with a reason.
    from puhui.ingest.reading import UnreadableFile

    path.write_text("\n".join(lines) + '\n{"order_id": "O-broken", \n')
    handle = open_landed_file(str(path))
    stream = iter_file_chunks(handle, feed, header, block_bytes=8 << 10)
    assert next(stream).num_rows > 0
    with pytest.raises(UnreadableFile, match="a line is not valid JSON"):
        list(stream)

    # Numbers and text mixed in one block of lines: named as type drift, by column.
    path.write_text('{"order_id": "O1", "amount_yuan": 1}\n'
                    '{"order_id": "O2", "amount_yuan": "x"}\n')
    with pytest.raises(UnreadableFile, match="type drift in amount_yuan: .*number to string"):
        list(iter_file_chunks(open_landed_file(str(path)), feed, header))


def _land_payments(landing: Path, day: date, name: str, case: int) -> Path:
    from puhui.generate.hostile import MP_HEADER, HostileContext, csv_bytes

    folder = landing / "mobile_payments" / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"mobile_payments_{name}.csv"
    path.write_bytes(csv_bytes(MP_HEADER, HostileContext(day, case, folder, set()).payment_rows()))
    return path


def test_late_files_in_past_folders_are_found_by_what_the_ledger_has_not_seen(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file landed in an earlier date's folder after that date ran is still ingested.

    Before: discovery looked only at folders after ``watermark - 3 days``, so ``run ingest
    --as-of`` and ``backfill`` said "no new files" for it (issue 10).
    """
    from datetime import timedelta

    from puhui.ingest.batches import FileIngestor
    from puhui.ingest.feeds import ingest_feed
    from puhui.ingest.pseudonymize import pseudonym_key_bytes
    from puhui.validation import BatchValidator

    landing = tmp_path / "landing"
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    monkeypatch.setenv("PUHUI_LANDING", str(landing))
    for back in range(7):
        _land_payments(landing, END - timedelta(days=back), f"day{back}", back + 1)
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")
    ingestor = FileIngestor(
        runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
        pseudonym_key_bytes(runtime.settings.pseudonym_key)
    )
    first = ingest_feed(runtime, feed, ingestor, END)
    assert [f.status for f in first.files] == ["accepted"] * 7

    late = _land_payments(landing, END - timedelta(days=5), "late", 50)
    again = ingest_feed(runtime, feed, ingestor, END)  # `run ingest --as-of END`
    new = [f for f in again.files if not f.skipped]
    assert [(f.path, f.status) for f in new] == [(str(late), "accepted")]

    # A backfill of an earlier date (before the watermark) finds a late file too.
    later = _land_payments(landing, END - timedelta(days=4), "later", 51)
    backfilled = ingest_feed(runtime, feed, ingestor, END - timedelta(days=3))
    assert [(f.path, f.status) for f in backfilled.files if not f.skipped] == [
        (str(later), "accepted")
    ]
    # Past the configured look-back a folder is not searched.
    short = feed.model_copy(update={"late_lookback_days": 10})
    _land_payments(landing, END - timedelta(days=20), "too_late", 52)
    ingestor = FileIngestor(runtime, short, ingestor.validator, ingestor.key)
    assert [f for f in ingest_feed(runtime, short, ingestor, END).files if not f.skipped] == []
    records = ledger.list_batches(runtime.engine, partner="mobile_payments")
    assert len(records) == 9 and {r.status for r in records} == {"accepted"}


def test_empty_files_of_two_feeds_are_each_held_not_duplicates(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: an empty CSV was recorded as a duplicate of another feed's empty Parquet."""
    from puhui.ingest.batches import FileIngestor
    from puhui.ingest.feeds import ingest_feed
    from puhui.ingest.pseudonymize import pseudonym_key_bytes
    from puhui.validation import BatchValidator

    landing = tmp_path / "landing"
    for partner, name in (("product_events", "product_events_a.parquet"),
                          ("mobile_payments", "mobile_payments_a.csv"),
                          ("mobile_payments", "mobile_payments_b.csv")):
        folder = landing / partner / END.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    monkeypatch.setenv("PUHUI_LANDING", str(landing))
    runtime = open_runtime()
    partners = load_config(runtime.settings.config_dir, PartnersConfig)
    key = pseudonym_key_bytes(runtime.settings.pseudonym_key)
    for name in ("product_events", "mobile_payments"):
        feed = partners.get(name)
        validator = BatchValidator(expectations_dir=runtime.settings.expectations_dir)
        ingest_feed(runtime, feed, FileIngestor(runtime, feed, validator, key), END)
    records = ledger.list_batches(runtime.engine)
    assert len(records) == 3
    assert all(r.status == "quarantined" and r.reason == "empty file (0 bytes)" for r in records)


def test_an_unexpected_error_holds_the_file_without_its_message_and_the_run_goes_on(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any failure on a file's content holds that file; only infrastructure errors escape."""
    from sqlalchemy.exc import OperationalError

    from puhui.ingest import batches
    from puhui.ingest.batches import FileIngestor
    from puhui.ingest.feeds import ingest_feed
    from puhui.ingest.pseudonymize import pseudonym_key_bytes
    from puhui.validation import BatchValidator

    landing = tmp_path / "landing"
    first = _land_payments(landing, END, "a", 1)
    second = _land_payments(landing, END, "b", 2)
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    monkeypatch.setenv("PUHUI_LANDING", str(landing))
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")
    ingestor = FileIngestor(
        runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
        pseudonym_key_bytes(runtime.settings.pseudonym_key)
    )
    real = batches.coerce_to_contract
    calls = {"n": 0}

    def fail_on_first_file(table, feed_):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError('Field "amount" exists 2 times; row 138-1234-5678')
        return real(table, feed_)

    monkeypatch.setattr(batches, "coerce_to_contract", fail_on_first_file)
    result = ingest_feed(runtime, feed, ingestor, END)
    by_path = {f.path: f for f in result.files}
    held = by_path[str(first)]
    assert held.status == "quarantined" and "unexpected KeyError" in held.reason
    assert "138" not in held.reason and "amount" not in held.reason
    assert by_path[str(second)].status == "accepted"

    # The database failing is not the file's fault: it stops the run (and the task retries).
    third = _land_payments(landing, END, "c", 3)

    def database_down(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OperationalError("COPY", {}, Exception("server closed the connection"))

    monkeypatch.setattr(batches, "bulk_insert", database_down)
    with pytest.raises(OperationalError):
        ingest_feed(runtime, feed, ingestor, END)
    assert ledger.get_batch(runtime.engine, ledger.make_batch_id(
        "mobile_payments", END, str(third), batches.open_landed_file(str(third)).checksum
    )) is None
