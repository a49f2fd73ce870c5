"""Attack round 14 (see README, "Round 14"): file names that are not UTF-8, first-generation
(15-digit) national IDs and phone numbers written with brackets, ledger columns edited by
hand, files replaced at the same size and time, NUL characters in JSON and Parquet text.
Each test failed before its fix, except the false-alarm checks (15-digit numbers that are
not IDs) and what a docstring says was found sound.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select, text

from puhui.cli import main
from puhui.generate.hostile import HostileContext
from puhui.identifiers import national_id_check_digit
from puhui.ingest import batches, ledger, quarantine, reading
from puhui.ingest.feeds import ingest_all_feeds
from puhui.ingest.quarantine import reject_batch, release_batch, revalidate_batch
from puhui.landing import local_change_marker as landing_marker
from puhui.privacy import count_identifiers_in_column, find_raw_identifiers, scrub_text
from puhui.runtime import open_runtime
from puhui.settings import repo_root
from puhui.warehouse.schema import ingest_batches
from tests import test_attack_round7
from tests.test_attack_round7 import DAY, MP_HEADER, _ingest_payments, _payments

landing = test_attack_round7.landing  # the fixture: a landing zone with the payments folder

_OLD_ID = "110105800101123"  # area 110105, born 1980-01-01, sequence 123


def test_a_file_name_that_is_not_utf8_is_one_ledger_row(landing: Path) -> None:
    """Before: a name holding bytes that are not UTF-8 (a partner's GBK or Latin-1 name,
    listed by Python as surrogate escapes) raised UnicodeEncodeError while hashing its batch
    id: the feed stopped at that file, every later file unread, on every run. Now the ledger
    keeps those bytes as `\\xNN`.

    Found sound (kept): a hard link to a loaded file (a duplicate), a zero-byte file (held), a
    UTF-8 BOM at the start of a row (held by the key's pattern, its shape escaped), a link to
    /dev/zero (held unread), a 255-byte name of Chinese characters (accepted)."""
    folder = landing / "mobile_payments" / DAY.isoformat()
    (folder / "mobile_payments_1_clean.csv").write_bytes(_payments(1))
    (Path(os.fsdecode(os.fsencode(folder) + b"/mobile_payments_2_\xff\xfe\xb2\xe2.csv"))
     .write_bytes(_payments(2)))
    (folder / "mobile_payments_3_clean.csv").write_bytes(_payments(3))
    os.link(folder / "mobile_payments_1_clean.csv", folder / "mobile_payments_4_hard.csv")
    (folder / "mobile_payments_5_empty.csv").write_bytes(b"")
    (folder / "mobile_payments_6_bom.csv").write_bytes(
        _payments(6).replace(b"\n", b"\n\xef\xbb\xbf", 2))
    os.symlink("/dev/zero", folder / "mobile_payments_7_dev.csv")
    long_name = "mobile_payments_8_" + "长" * 75 + ".csv"  # 255 bytes, the usual limit
    (folder / long_name).write_bytes(_payments(8))
    latin1 = os.fsdecode(os.fsencode(folder) + b"/mobile_payments_9_caf\xe9")
    Path(latin1 + "_empty.csv").write_bytes(b"")  # held, and a link: not the happy path only
    os.symlink("/etc/passwd", latin1 + "_link.csv")
    # GBK: 三 ends in byte FD, which touched the phone once escaped (\xfd13812345678) and hid
    # it from the guard, so the raw number reached the ledger and the outcome line.
    gbk = "mobile_payments_10_张三13812345678.csv".encode("gbk")
    Path(os.fsdecode(os.fsencode(folder) + b"/" + gbk)).write_bytes(_payments(10))

    outcomes = _ingest_payments()
    gbk_outcome = [o for name, o in outcomes.items() if name.startswith("mobile_payments_10_")]
    assert not [name for name in outcomes if "13812345678" in name]
    assert [(o.status, o.rows_loaded) for o in gbk_outcome] == [("accepted", 5)]
    outcomes = {n: o for n, o in outcomes.items() if not n.startswith("mobile_payments_10_")}

    assert {name: (o.status, o.rows_loaded) for name, o in outcomes.items()} == {
        "mobile_payments_1_clean.csv": ("accepted", 5),
        "mobile_payments_2_\\xff\\xfe\\xb2\\xe2.csv": ("accepted", 5),
        "mobile_payments_3_clean.csv": ("accepted", 5),
        "mobile_payments_4_hard.csv": ("duplicate", 0),
        "mobile_payments_5_empty.csv": ("quarantined", 0),
        "mobile_payments_6_bom.csv": ("quarantined", 0),
        "mobile_payments_7_dev.csv": ("quarantined", 0),
        long_name: ("accepted", 5),
        "mobile_payments_9_caf\\xe9_empty.csv": ("quarantined", 0),
        "mobile_payments_9_caf\\xe9_link.csv": ("quarantined", 0),
    }
    assert "\\ufeff" in (outcomes["mobile_payments_6_bom.csv"].reason or "")
    with open_runtime().engine.connect() as conn:
        paths = conn.execute(select(ingest_batches.c.source_path)).scalars().all()
    assert len(paths) == 11 and all(p.isprintable() for p in paths)
    assert not [p for p in paths if "13812345678" in p or find_raw_identifiers(p)]
    assert all(o.skipped for o in _ingest_payments().values()), "a re-run is a no-op"


def test_an_escaped_name_and_one_holding_a_backslash_are_two_ledger_paths(landing: Path) -> None:
    """Before: the backslash was not escaped, so byte FF and a UTF-8 name spelling `\\xff`
    shared one ledger path; the second file was held as rewritten after the first's load.
    A UTF-8 name keeps its backslash unescaped (its rows from before still match) unless it
    spells an escape itself."""
    folder = landing / "mobile_payments" / DAY.isoformat()
    Path(os.fsdecode(os.fsencode(folder) + b"/mobile_payments_2_\xff.csv")).write_bytes(
        _payments(1))
    (folder / "mobile_payments_2_\\xff.csv").write_bytes(_payments(2))  # a literal backslash
    (folder / "mobile_payments_3_a\\b.csv").write_bytes(_payments(3))

    _ingest_payments()

    with open_runtime().engine.connect() as conn:
        rows = conn.execute(select(ingest_batches.c.source_path, ingest_batches.c.status,
                                   ingest_batches.c.rows_loaded)).all()
    assert sorted((p.rsplit("/", 1)[-1], s, n) for p, s, n in rows) == [
        ("mobile_payments_2_\\x5cxff.csv", "accepted", 5),
        ("mobile_payments_2_\\xff.csv", "accepted", 5),
        ("mobile_payments_3_a\\b.csv", "accepted", 5),  # as stored before the escape
    ]
    assert all(o.skipped for o in _ingest_payments().values()), "a re-run is a no-op"


@pytest.mark.parametrize("text_, kind", [
    (_OLD_ID, "national ID"),
    ("老身份证110105800101123号", "national ID"),
    ("ID 110105 800101 123", "national ID"),
    ("１１０１０５８００１０１１２３", "national ID"),  # full width
    ("+86(139)87654321", "phone number"),
    ("电话+86 (139) 8765 4321", "phone number"),
    ("tel （139）8765-4321", "phone number"),  # full-width brackets
])
def test_old_ids_and_bracketed_phones_are_identifier_shaped(text_: str, kind: str) -> None:
    """Before: a first-generation 15-digit ID and a phone with its first group in brackets
    (as normalize_phone reads one) were plain text to the guard: not refused in reasons or
    actors, not masked in logs, error lines, column names or file names."""
    assert kind in find_raw_identifiers(text_)
    assert find_raw_identifiers(scrub_text(text_)) == []


@pytest.mark.parametrize("text_", [
    "123456789012345",  # 15 digits, no birth date in them: an order number
    "110105801301123",  # month 13
    "910105800101123",  # no area code starts with 9
    "161234800101123",  # 16 is no province (flagged by the first version)
    "102584070110001",  # a UnionPay-style merchant number (acquirer 102, MCC 7011)
    "T001101058001011",  # letters touch the digits
])
def test_fifteen_digit_numbers_that_are_not_ids_are_not_flagged(text_: str) -> None:
    """In the guard and in ingestion's RE2 count alike (a float's fraction, 0.110105800101123,
    is counted by RE2, which has no look-behind: masked, not a miss)."""
    assert find_raw_identifiers(text_) == []
    assert count_identifiers_in_column(pa.array([text_])) == 0


def test_old_ids_and_bracketed_phones_in_free_text_and_file_names_are_masked(
    landing: Path,
) -> None:
    """Before: loaded raw into raw_agri_coop.coop_name (GBK, as a Chinese co-operative sends
    it), and kept raw in the ledger's source_path of a file named after an old ID."""
    coop = landing / "agri_coop" / DAY.isoformat()
    coop.mkdir(parents=True)
    notes = ["老身份证110105800101123", "电话+86 (139) 8765 4321", "联系（139）8765-4321"]
    rows = []
    for i, note in enumerate(notes):
        body = f"11010519800101{i:03d}"
        rows.append(f"{body}{national_id_check_digit(body)},{note},玉米,12.5,1000,50,2026-09")
    header = ("member_national_id,coop_name,crop,acreage_mu,harvest_sales_yuan,subsidy_yuan,"
              "record_month")
    (coop / "agri_coop_1.csv").write_bytes("\n".join([header, *rows, ""]).encode("gbk"))
    (landing / "mobile_payments" / DAY.isoformat() / f"mobile_payments_{_OLD_ID}.csv"
     ).write_bytes(_payments(1))

    runtime = open_runtime()
    outcomes = {f.path.rsplit("/", 1)[-1]: f for r in ingest_all_feeds(runtime, DAY)
                for f in r.files}

    loaded = outcomes["agri_coop_1.csv"]
    assert (loaded.status, loaded.rows_loaded) == ("accepted", 3)
    assert loaded.warnings == ["identifier-shaped text masked in coop_name: 3 value(s)"]
    with runtime.engine.connect() as conn:
        names = conn.execute(text("SELECT coop_name FROM raw_agri_coop")).scalars().all()
        paths = conn.execute(select(ingest_batches.c.source_path)).scalars().all()
    assert sorted(names) == ["电话[identifier masked]", "老身份证[identifier masked]",
                             "联系[identifier masked]"]
    assert len(paths) == 2 and not [p for p in paths if _OLD_ID in p]
    [payments] = [o for name, o in outcomes.items() if name.startswith("mobile_payments_~")]
    assert (payments.status, payments.rows_loaded) == ("accepted", 5)


def _held_by_category(case: int, category: str = "UNHEARD_OF") -> bytes:
    """A payments file held by one value outside merchant_category's set (releasable)."""
    header, first, *rest = _payments(case).decode().splitlines()
    fields = first.split(",")
    fields[MP_HEADER.index("merchant_category")] = category
    return ("\n".join([header, ",".join(fields), *rest]) + "\n").encode()


def test_hand_edits_of_recorded_ledger_columns_are_reported_by_verify(
    landing: Path, tmp_path: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: `audit verify` compared status, checksum, rows and rows_loaded only, though
    the events record more: a held batch's reason rewritten to read harmless (which invites
    its release), a released batch's decision reason, a batch moved to another partner, a
    duplicate pointed at another owner and rows_duplicate edited all passed. On both
    backends: the rebuilt reason must round-trip PostgreSQL's text and JSON exactly."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    folder = landing / "mobile_payments" / DAY.isoformat()
    (folder / "mobile_payments_1.csv").write_bytes(_payments(1))
    (folder / "mobile_payments_2.csv").write_bytes(_payments(1))  # a duplicate of 1
    (folder / "mobile_payments_3.csv").write_bytes(_held_by_category(3, "STILL_ODD"))
    (folder / "mobile_payments_4.csv").write_bytes(_held_by_category(4))
    (folder / "mobile_payments_5.csv").write_bytes(_held_by_category(5))
    (folder / "mobile_payments_6.csv").write_bytes(_held_by_category(6))
    outcomes = _ingest_payments()
    accepted, duplicate, held, released, rejected, revalidated = (
        outcomes[f"mobile_payments_{i}.csv"] for i in range(1, 7))
    assert [o.status for o in (accepted, duplicate, held, released, rejected, revalidated)] == [
        "accepted", "duplicate", "quarantined", "quarantined", "quarantined", "quarantined"]
    runtime = open_runtime()
    release_batch(runtime, released.batch_id, "partner confirmed the new category")
    reject_batch(runtime, rejected.batch_id, "partner resends it")
    suites = tmp_path / "expectations"  # the new category is legitimate: the suite is fixed
    shutil.copytree(repo_root() / "expectations", suites)
    suite = suites / "mobile_payments.json"
    suite.write_text(suite.read_text().replace('"GROCERY",', '"GROCERY", "UNHEARD_OF",'))
    monkeypatch.setenv("PUHUI_EXPECTATIONS_DIR", str(suites))
    runtime = open_runtime()
    assert revalidate_batch(runtime, revalidated.batch_id).record.status == "accepted"
    assert revalidate_batch(runtime, held.batch_id).record.status == "quarantined"
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0, capsys.readouterr().err
    assert "ingest_batches agrees with the trail: 6 batch(es)" in capsys.readouterr().out

    edits = {held.batch_id: {"reason": "extra column(s) ignored: note"},
             released.batch_id: {"reason": "critical: x | released: approved by the CRO"},
             rejected.batch_id: {"reason": f"rejected: call {_OLD_ID}"},
             revalidated.batch_id: {"reason": "revalidated"},
             accepted.batch_id: {"partner": "agri_coop", "rows_duplicate": 2},
             duplicate.batch_id: {"duplicate_of": held.batch_id}}
    with runtime.engine.begin() as conn:
        for batch_id, values in edits.items():
            conn.execute(ingest_batches.update()
                         .where(ingest_batches.c.batch_id == batch_id).values(**values))
    assert main(["audit", "verify", "--no-repair"]) == 1
    err = capsys.readouterr().err
    for batch_id, values in edits.items():
        for column in values:
            assert f"batch {batch_id}: ingest_batches.{column} is " in err, (column, err)
    assert "ingest_batches and the audit trail DISAGREE: 7 problem(s)" in err, err
    assert _OLD_ID not in err


def test_verify_compares_no_reason_it_cannot_rebuild(
    landing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a decision event without `held_for` (an older writer's) left the hold's
    reason in place, compared with the ledger's "<held> | released: ..." (a false alarm);
    and a passing revalidation recorded the reason it read before its transaction, so a
    "still held" one rewriting the reason in between made verify report a hand edit."""
    folder = landing / "mobile_payments" / DAY.isoformat()
    (folder / "mobile_payments_1.csv").write_bytes(_held_by_category(1))
    (folder / "mobile_payments_2.csv").write_bytes(_held_by_category(2))
    outcomes = _ingest_payments()
    old_style, raced = outcomes["mobile_payments_1.csv"], outcomes["mobile_payments_2.csv"]
    runtime = open_runtime()
    with runtime.engine.begin() as conn:  # a release as a writer without held_for left it
        ledger.update_batch(conn, old_style.batch_id, status="released",
                            reason=f"{old_style.reason} | released: approved")
        runtime.audit.append(conn, "quarantine.released", old_style.batch_id,
                             {"partner": "mobile_payments", "reason": "approved"})
    suites = tmp_path / "expectations"
    shutil.copytree(repo_root() / "expectations", suites)
    suite = suites / "mobile_payments.json"
    suite.write_text(suite.read_text().replace('"GROCERY",', '"GROCERY", "UNHEARD_OF",'))
    monkeypatch.setenv("PUHUI_EXPECTATIONS_DIR", str(suites))
    runtime = open_runtime()
    real_table = quarantine.ensure_raw_table

    def another_revalidation_first(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with runtime.engine.begin() as conn:  # a "still held" one commits in between
            ledger.update_batch(conn, raced.batch_id, reason="critical: other")
            runtime.audit.append(conn, quarantine.REVALIDATED, raced.batch_id, {
                "partner": "mobile_payments", "outcome": "still held",
                "reason": "critical: other", "held_for": raced.reason})
        return real_table(*args, **kwargs)

    monkeypatch.setattr(quarantine, "ensure_raw_table", another_revalidation_first)
    assert revalidate_batch(runtime, raced.batch_id).record.status == "accepted"
    assert ledger.ledger_problems(runtime.engine)[0] == []


def test_a_file_replaced_between_its_hash_and_its_read_is_deferred(
    landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a file renamed over by another of the same size and modification time
    (`rsync -t`, `cp -p`, or on purpose) after it was hashed and before it was read had the
    new rows loaded under the old bytes' checksum, and the ledger then matched the new file
    for good. The stamp compared size and time only; now the inode and the kernel's change
    time too (neither can be put back)."""
    path = landing / "mobile_payments" / DAY.isoformat() / "mobile_payments_1.csv"
    path.write_bytes(_payments(1))
    other = _payments(2)
    assert len(other) == len(path.read_bytes())
    real_open = batches.open_landed_file

    def hash_then_partner_replaces(url: str) -> reading.FileHandle:
        handle = real_open(url)
        before = path.stat()
        spare = path.with_name(".incoming")
        spare.write_bytes(other)
        os.utime(spare, ns=(before.st_atime_ns, before.st_mtime_ns))
        spare.rename(path)
        return handle

    monkeypatch.setattr(batches, "open_landed_file", hash_then_partner_replaces)
    during = _ingest_payments()[path.name]
    assert during.status == "deferred" and "changed while being read" in (during.reason or "")
    monkeypatch.setattr(batches, "open_landed_file", real_open)
    after = _ingest_payments()[path.name]
    assert after.status == "accepted"
    record = ledger.get_batch(open_runtime().engine, after.batch_id)
    assert record is not None and record.checksum == hashlib.sha256(other).hexdigest()


def test_a_file_replaced_after_its_load_with_its_size_and_time_is_read_again(
    landing: Path,
) -> None:
    """Before: a corrected file sent again under its name at the same size with the first
    one's modification time (`rsync -t`, `cp -p`) was skipped by discovery for good (it
    compared path, size and time): nobody saw it, nothing said. A local file's listing now
    gives its change time as its change marker (the inode is only in the read-time stamp):
    the file is read and held as a rewrite after a load."""
    path = landing / "mobile_payments" / DAY.isoformat() / "mobile_payments_1.csv"
    path.write_bytes(_payments(1))
    first = _ingest_payments()[path.name]
    assert (first.status, first.rows_loaded) == ("accepted", 5)
    assert all(o.skipped for o in _ingest_payments().values()), "a re-run is a no-op"
    before = path.stat()
    spare = path.with_name(".incoming")
    spare.write_bytes(_payments(2))
    os.utime(spare, ns=(before.st_atime_ns, before.st_mtime_ns))
    spare.rename(path)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    again = _ingest_payments()[path.name]  # held for a person, as any rewrite after a load
    assert (again.status, again.rows) == ("quarantined", 5)
    assert (again.reason or "").startswith(f"rewritten after batch {first.batch_id} loaded")
    assert all(o.skipped for o in _ingest_payments().values()), "then a no-op again"


def test_a_chmod_while_a_held_file_is_copied_keeps_its_quarantine_copy(
    landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the change time in the stamp made a chmod (or a new link) while a held
    file's quarantine copy was written count as "changed while being read": the copy was
    dropped, and since the bytes and so the batch id were the same, no later run read the
    file again; a releasable hold was reject-only for good. Now the file is hashed again
    and its copy kept when its bytes are the same."""
    path = landing / "mobile_payments" / DAY.isoformat() / "mobile_payments_1.csv"
    path.write_bytes(_held_by_category(1))
    real = batches.FileIngestor._write_quarantine_copy

    def copy_then_chmod(self, *args):  # noqa: ANN001, ANN002, ANN202
        written = real(self, *args)
        os.chmod(path, 0o640)  # metadata only: the bytes are the same
        return written

    monkeypatch.setattr(batches.FileIngestor, "_write_quarantine_copy", copy_then_chmod)
    held = _ingest_payments()[path.name]
    assert held.status == "quarantined"
    assert "no quarantine copy" not in (held.reason or "")
    release_batch(open_runtime(), held.batch_id, "category added to the contract")
    record = ledger.get_batch(open_runtime().engine, held.batch_id)
    assert record is not None and record.status == "released"


@pytest.mark.parametrize("cut", ["at_a_row_end", "mid_row", "after_the_header"])
def test_a_same_content_reupload_while_a_held_file_is_copied_keeps_no_partial_copy(
    landing: Path, monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    """Before: the copy was kept when the file re-hashed to its checksum afterwards. A
    re-upload of the same bytes in place (`cp`, an SFTP `put`: both truncate first) could
    let the copy's reader stop early at a row boundary; the file then hashed the same again,
    the prefix was kept, and a release loaded it with the ledger agreeing. Now the bytes the
    copy's reader took are hashed: the copy is dropped and the file read again next run.
    Before the final review's mend, a read cut mid-row (Arrow raises) or after the header (no
    rows) recorded the hold without a copy under the whole file's batch id: reject-only."""
    path = landing / "mobile_payments" / DAY.isoformat() / "mobile_payments_1.csv"
    whole = _held_by_category(1)
    path.write_bytes(whole)
    lines = whole.splitlines(keepends=True)
    prefix = {
        "at_a_row_end": b"".join(lines[:3]),  # the header and two rows
        "mid_row": b"".join(lines[:3]) + lines[3][:5],
        "after_the_header": lines[0],
    }[cut]
    real = batches.FileIngestor._write_quarantine_copy

    def copy_during_reupload(self, *args):  # noqa: ANN001, ANN002, ANN202
        path.write_bytes(prefix)  # truncated, partly written again when the reader runs
        try:
            return real(self, *args)
        finally:
            path.write_bytes(whole)

    monkeypatch.setattr(batches.FileIngestor, "_write_quarantine_copy", copy_during_reupload)
    during = _ingest_payments()[path.name]
    assert during.status == "deferred" and "changed while being read" in (during.reason or "")
    assert not list((open_runtime().settings.home / "quarantine").rglob("*.parquet"))
    monkeypatch.setattr(batches.FileIngestor, "_write_quarantine_copy", real)
    held = _ingest_payments()[path.name]
    assert (held.status, held.rows) == ("quarantined", 5)
    release_batch(open_runtime(), held.batch_id, "category added to the contract")
    record = ledger.get_batch(open_runtime().engine, held.batch_id)
    assert record is not None and (record.status, record.rows_loaded) == ("released", 5)


def test_a_held_file_written_again_while_validated_is_deferred(
    landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before (final review): a hold's verdict could come from a prefix (validation read
    while the same bytes were uploaded again), and was kept because the file hashed the
    same again afterwards. A stamp moved by the end of validation now defers the file."""
    path = landing / "mobile_payments" / DAY.isoformat() / "mobile_payments_1.csv"
    whole = _held_by_category(1)
    path.write_bytes(whole)
    real = batches.FileIngestor._load

    def validated_during_reupload(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        try:
            return real(self, *args, **kwargs)
        finally:
            path.write_bytes(whole)  # truncated and written again, the same bytes

    monkeypatch.setattr(batches.FileIngestor, "_load", validated_during_reupload)
    during = _ingest_payments()[path.name]
    assert during.status == "deferred" and "changed while being read" in (during.reason or "")
    monkeypatch.setattr(batches.FileIngestor, "_load", real)
    assert _ingest_payments()[path.name].status == "quarantined"


def test_a_file_unreadable_when_hashed_again_is_not_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: only a missing file counted as "not the same bytes"; a chmod to 0600 by an
    upload tool raised PermissionError out of the hold, leaving its quarantine copy on disk
    with no ledger row."""
    path = tmp_path / "f.parquet"
    path.write_bytes(b"PAR1")
    handle = reading.open_landed_file(str(path))

    def refused(*_: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(reading, "_hashed", refused)
    assert reading.holds_hashed_bytes(handle) is False


def test_a_held_file_failing_its_copy_check_leaves_no_copy_on_disk(
    landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: an error while the written copy was checked against the file (a stat or a
    read refused) left the copy on disk with no ledger row naming it."""
    path = landing / "mobile_payments" / DAY.isoformat() / "mobile_payments_1.csv"
    path.write_bytes(_held_by_category(1))
    quarantined = open_runtime().settings.home / "quarantine"
    real = batches.changed_since_opened

    def refused_once_copied(handle: reading.FileHandle) -> bool:
        if list(quarantined.rglob("*.parquet")):  # the hold also checks before its copy
            raise PermissionError(13, "Permission denied")
        return real(handle)

    monkeypatch.setattr(batches, "changed_since_opened", refused_once_copied)
    with pytest.raises(PermissionError):
        _ingest_payments()
    assert not list(quarantined.rglob("*.parquet"))


def test_a_copy_failing_part_way_leaves_no_partial_file(
    landing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before (final review): the copy's `.partial` file, pseudonymized rows, stayed in
    quarantine/ with no ledger row naming it when the copy failed after its first write."""
    path = landing / "mobile_payments" / DAY.isoformat() / "mobile_payments_1.csv"
    path.write_bytes(_held_by_category(1))

    class FailingWriter(pq.ParquetWriter):
        def write_table(self, *_: object, **__: object) -> None:
            raise ValueError("the disk gave up")

    monkeypatch.setattr(batches.pq, "ParquetWriter", FailingWriter)
    held = _ingest_payments()[path.name]
    assert held.status == "quarantined" and "no quarantine copy" in (held.reason or "")
    assert not [p.name for p in (open_runtime().settings.home / "quarantine").rglob("*.*")]


def test_metadata_changes_renew_marks_in_one_event_per_run(landing: Path) -> None:
    """Before: the marker was the inode and the change time, and each renewal its own event:
    every chmod, hard-link snapshot (rsnapshot, `cp -al`) or remount (FUSE makes inodes up)
    re-hashed each file and wrote an event per file, run after run. Now the change time
    alone (a rename-over sets it too) and one event per feed run counting its renewals."""
    folder = landing / "mobile_payments" / DAY.isoformat()
    files = [folder / f"mobile_payments_{i}.csv" for i in range(1, 6)]
    for i, path in enumerate(files, 1):
        path.write_bytes(_payments(i))
    _ingest_payments()
    assert landing_marker(os.lstat(files[0])) == f"ctime_ns={files[0].stat().st_ctime_ns}"
    engine = open_runtime().engine

    def renewals() -> list[dict]:
        with engine.connect() as conn:
            return [json.loads(d) for d in conn.execute(text(
                "SELECT details FROM audit_log WHERE action = 'ingest.marks_renewed' "
                "ORDER BY seq")).scalars()]

    before = len(renewals())
    snapshot = landing.parent / "snapshot"
    snapshot.mkdir()
    for path in files:
        os.link(path, snapshot / path.name)  # a nightly hard-link backup
        os.chmod(path, 0o640)
    assert all(o.skipped for o in _ingest_payments().values()), "nothing loaded twice"
    new = renewals()[before:]
    assert [(d["partner"], d["renewed"], len(d["batches"])) for d in new] == [
        ("mobile_payments", 5, 5)]
    assert all(o.skipped for o in _ingest_payments().values())
    assert len(renewals()) == before + 1, "a run with nothing renewed writes no event"
    assert ledger.ledger_problems(engine)[0] == []
    with engine.begin() as conn:  # the renewed marks are still compared with the trail
        conn.execute(text("UPDATE ingest_batches SET change_marker = 'ctime_ns=1'"))
    problems = ledger.ledger_problems(engine)[0]
    assert len(problems) == 5 and all("change_marker" in p for p in problems)


@pytest.mark.parametrize("warehouse_url", ["postgres"], indirect=True)
def test_a_nul_character_in_json_or_parquet_text_is_held_naming_the_column(
    landing: Path, warehouse_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the NUL bytes check reads a text file's raw bytes, so a JSON `\\u0000` and a
    Parquet string holding NUL reached PostgreSQL, which refused them mid-hold: each file
    held as `unreadable: unexpected CharacterNotInRepertoire ... (message withheld)`, naming
    no column (SQLite stored them)."""
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    orders = landing / "ecommerce_orders" / DAY.isoformat()
    events = landing / "product_events" / DAY.isoformat()
    orders.mkdir(parents=True)
    events.mkdir(parents=True)
    context = HostileContext(DAY, 1, Path("."), set())
    lines = [json.dumps(context.order(i), ensure_ascii=False) for i in range(3)]
    lines[1] = lines[1].replace("北京", "北\\u0000京")
    (orders / "ecommerce_orders_1.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    table = context.events_table(5)
    at = table.schema.get_field_index("scenario")
    pq.write_table(table.set_column(at, "scenario", pa.array(["WAL\0LET"] * 5)),
                   events / "product_events_1.parquet")

    runtime = open_runtime()
    outcomes = {f.path.rsplit("/", 1)[-1]: f for r in ingest_all_feeds(runtime, DAY)
                for f in r.files}

    for name, column in (("ecommerce_orders_1.jsonl", "province"),
                         ("product_events_1.parquet", "scenario")):
        held = outcomes[name]
        assert held.status == "quarantined", (name, held.reason)
        assert (held.reason or "").startswith(f"NUL character(s) in {column}:"), held.reason
