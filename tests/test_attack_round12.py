"""Attack round 12 (see README, "Round 12"): Parquet's plain text pages, and surfaces not
attacked before. Each test failed before its fix unless its docstring says it was found sound.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from puhui.config import PartnersConfig, load_config
from puhui.settings import repo_root
from tests.test_attack_round10 import BLOCK, _peak_of_read

CONFIGS = repo_root() / "configs"
_TEXT = ["event_id", "customer_id", "product_code", "scenario", "event_type"]


# Before: a plain text column was read in rows sized from its row group's average, so a read
# of the last rows held every long value gathered there: product_events' five text columns,
# 20,000 rows of one byte then 150 of 100 KB each (a few KB of zstd), came as one read of
# ~75 MB against a 4 MB block. Now each read is sized from the pages its rows touch (their
# headers give each page's rows and decompressed bytes): where the pages are dense a read is
# a few rows.


def _late_long_values(path: Path) -> Path:
    """Three plain text columns, and two dictionary columns whose dictionaries overflow into
    plain pages (Arrow's fallback past its dictionary page limit), long values last."""
    rows, long_rows = 6_000, 150
    coded = ["scenario", "event_type"]

    def column(name: str) -> pa.Array:
        short = [f"{name[0]}{i}" for i in range(rows - long_rows)] if name in coded else (
            ["a"] * (rows - long_rows))
        return pa.array(short + [f"{i:05}" + name[0] * 100_000 for i in range(long_rows)])

    pq.write_table(pa.table({name: column(name) for name in _TEXT}), path, use_dictionary=coded,
                   dictionary_pagesize_limit=16 << 10, compression="zstd", write_batch_size=4,
                   data_page_size=256 << 10)
    return path


def test_parquet_plain_text_pages_dense_at_the_end_are_read_within_the_block(
    tmp_path: Path,
) -> None:
    path = _late_long_values(tmp_path / "late.parquet")
    assert path.stat().st_size < 200_000, "a small file..."
    read = _peak_of_read(path)
    assert read["rows"] == 6_000  # ...of 75 MB decoded, every row read
    assert read["widest"] <= BLOCK, read
    assert read["grew_mb"] < 50, read  # before: ~150 MB


def test_a_parquet_page_over_the_block_is_held_from_its_header(tmp_path: Path) -> None:
    """Arrow cuts pages every 1,024 values (or 20,000 rows), so 150 values of 100 KB are one
    page of 14.4 MB: reading any of its rows decompresses it whole, so no slicing keeps the
    read within a 4 MB block, and the file is held, naming the column, before a value is
    decoded."""
    from puhui.ingest.reading import UnreadableFile, iter_file_chunks, open_landed_file

    feed = load_config(CONFIGS, PartnersConfig).get("product_events")
    path = tmp_path / "page.parquet"
    pq.write_table(pa.table({"event_id": ["a"] * 20_000 + ["x" * 100_000] * 150}), path,
                   use_dictionary=False, compression="zstd")
    with pytest.raises(UnreadableFile, match=r"^a page of event_id of 14\.3 MB decompressed "
                                             r"\(its header says\): over the 4 MB read block$"):
        list(iter_file_chunks(open_landed_file(str(path)), feed, ["event_id"], BLOCK))


# Before: a landed file's name and any error line were shown with C0/C1 controls escaped, but
# Unicode's invisible format characters passed: a right-to-left override shows
# 'events_\u202egnp.exe' as 'events_exe.png' in the ingest's lines, zero-width characters hide
# text, and U+2028 is a line break to editors, browsers and Python's splitlines. Then (review
# of round 12) the list was hand-written: tag characters (U+E0000-E007F, invisible "ASCII
# smuggling"), musical format characters, private-use and unassigned code points passed.


@pytest.mark.parametrize("hidden", ["\u202e", "\u2066", "\u200b", "\ufeff", "\u2028", "\u00ad",
                                    "\u061c", "\U000e0041", "\U0001d173", "\ue000", "\u0378"])
def test_a_file_name_with_an_invisible_format_character_is_shown_escaped(hidden: str) -> None:
    from puhui.ingest.batches import FileOutcome
    from puhui.privacy import printable

    name = f"product_events_{hidden}gnp.exe.parquet"
    outcome = FileOutcome(batch_id="b", partner="product_events", path=f"/landing/{name}",
                          delivery_date="2026-09-30", status="accepted", rows=1)
    line = outcome.line()
    code = ord(hidden)
    escaped = (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF
               else f"\\U{code:08x}")
    assert hidden not in line and escaped in line, line
    assert printable("a\x1b[2J\nb\u00e9中文\u3000\u00a0") == (
        "a\\x1b[2J\\x0ab\u00e9中文\u3000\u00a0")  # text and visible spaces stay


# Before: puhui's error line (a PuhuiError's or any crash's) was scrubbed of identifiers but
# not of control characters: `puhui audit lineage $'x\e[2J\n[ok] promoted' --version 1`
# cleared the operator's screen and printed a second, forged line; a hostile --version went
# to MLflow (after opening its store), whose message quoted it whole, line break included.
# And `--as-of` was quoted by repr, whose escape glued to a phone typed after a control
# character ('\u202e13812345678'), so the mask missed it.

HOSTILE = "x\x1b[2J\n[ok] promoted \u202e"


def test_a_hostile_model_name_is_one_inert_error_line(
    puhui_env: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from puhui.cli import main
    from puhui.runtime import open_runtime

    open_runtime()  # a warehouse: a missing one is refused before the name is looked up
    assert main(["audit", "lineage", HOSTILE, "--version", "1"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "\x1b" not in err and "\u202e" not in err and "x\\x1b[2J\\x0a[ok]" in err


@pytest.mark.parametrize("version", ["1\n[ok] promoted", "0", "-1", "v2", "１"])
def test_a_hostile_version_is_refused_in_one_line_before_mlflow(
    puhui_env: Path, capsys: pytest.CaptureFixture[str], version: str,
) -> None:
    from puhui.cli import main

    assert main(["models", "promote", "credit_risk", "--version", version,
                 "--reason", "x"]) == 2  # a usage error since round 17
    err = capsys.readouterr().err
    assert err.startswith("puhui: error: Invalid value for '--version': must be a model "
                          "version number"), err
    assert len(err.splitlines()) == 1, err
    assert not (puhui_env / "mlflow.db").exists()  # refused before the store is opened


def test_a_hostile_as_of_is_one_line_with_its_phone_masked(
    puhui_env: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from puhui.cli import main
    from puhui.privacy import find_raw_identifiers

    for argv in (["run", "ingest", "--as-of", "2026-01-01\x1b[2J\u202e13812345678"],
                 ["audit", "log", "--since", "2026\u202e13812345678"]):
        assert main(argv) == 2  # a usage error since round 17
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "\x1b" not in err and "\u202e" not in err, err
        assert not find_raw_identifiers(err) and "13812345678" not in err, err


# Before: a Thrift container's element count in a page header was never checked against the
# bytes read, and a bool element reads none: an unknown field holding a list of 2**40 bools
# (Thrift readers skip unknown fields) spun the ingest worker for days, with no reason line.


def test_a_page_header_with_a_huge_list_of_bools_is_held_not_spun(tmp_path: Path) -> None:
    import signal

    from puhui.ingest.reading import UnreadableFile, iter_file_chunks, open_landed_file

    feed = load_config(CONFIGS, PartnersConfig).get("product_events")
    path = tmp_path / "bools.parquet"
    pq.write_table(pa.table({"event_id": [f"{i:0100}" for i in range(30_000)]}), path,
                   use_dictionary=False, compression="none")  # 3 MB: its pages are walked
    offset = pq.ParquetFile(path).metadata.row_group(0).column(0).data_page_offset
    hostile = b"\x19\xf1\x80\x80\x80\x80\x80\x80\x01"  # field 1: list<bool> of 2**42 elements
    with path.open("r+b") as raw:
        raw.seek(offset)
        raw.write(hostile)

    def spun(*_: object) -> None:
        raise TimeoutError("the page header was still being parsed after 30 s")

    before = signal.signal(signal.SIGALRM, spun)  # a regression fails rather than hangs
    signal.alarm(30)
    try:
        with pytest.raises(UnreadableFile,
                           match=r"^unreadable parquet: a page header of event_id is corrupt$"):
            list(iter_file_chunks(open_landed_file(str(path)), feed, ["event_id"], BLOCK))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


# Before: each page header is parsed in Python, and nothing bounded their number: one row
# group of 1M one-value pages (73 MB) took 12.6 s to plan against Arrow's 2.1 s to read, and
# a file may repeat it per column and row group. Writers cut pages at 1 MB or 1,024 values.


def test_a_chunk_of_far_too_many_tiny_pages_is_held_naming_its_column(tmp_path: Path) -> None:
    from puhui.ingest.reading import UnreadableFile, iter_file_chunks, open_landed_file

    feed = load_config(CONFIGS, PartnersConfig).get("product_events")
    path = tmp_path / "tiny_pages.parquet"
    pq.write_table(pa.table({"event_id": [f"{i:060}" for i in range(40_000)]}), path,
                   use_dictionary=False, compression="none", write_batch_size=8,
                   data_page_size=1)  # 5,000 pages of 8 values
    with pytest.raises(UnreadableFile, match=r"^the pages of event_id: over 4,280 for 40,000 "
                                             r"rows of 3\.2 MB decompressed"):
        list(iter_file_chunks(open_landed_file(str(path)), feed, ["event_id"], BLOCK))


# Before: a footer's data page offset was used unchecked: a negative one made fsspec's
# buffered files (and io.BytesIO) raise ValueError on the seek, which the reader does not
# turn into a reason line, so the operator saw a traceback.


@pytest.mark.parametrize("offset", [-4, 1 << 40])
def test_a_page_offset_outside_the_file_is_one_reason_line(offset: int) -> None:
    import io
    from types import SimpleNamespace

    from puhui.ingest.reading import UnreadableFile, _walk_pages

    # Arrow's column chunk metadata cannot be built with a bad offset, so its fields are given.
    column = SimpleNamespace(path_in_schema="event_id", data_page_offset=offset,
                             has_dictionary_page=False, dictionary_page_offset=None,
                             total_compressed_size=64, total_uncompressed_size=64)
    with pytest.raises(UnreadableFile, match=r"^unreadable parquet: the page offsets of "
                                             r"event_id are outside the file$"):
        _walk_pages(io.BytesIO(b"PAR1" + bytes(200)), column, 10)
