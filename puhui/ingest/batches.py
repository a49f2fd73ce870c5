"""Ingesting one landed file: fingerprint, contract, pseudonymize, validate, load or hold.

Every file ends as exactly one ledger row:

- ``duplicate``: the same bytes were landed before (the earlier batch is named);
- ``quarantined``: unreadable, schema drift, type drift or a critical expectation failed;
  held with the reason, and (when it could be read) a pseudonymized copy to release later;
- ``accepted``: loaded into ``raw_<partner>``; warnings (extra columns, duplicate rows
  dropped, warning-level expectations) are recorded, not hidden.

The ledger row, the records, the validation result and the audit event are written in one
transaction, so a crash leaves nothing behind and the re-run does the whole file again.
Rows always reconcile: rows = rows_loaded + rows_held + rows_duplicate.

A file goes through in chunks, in three overlapping stages: a worker thread reads, types,
pseudonymizes and deduplicates chunk k+1 while the main thread COPYs chunk k and the GX
thread validates it. Every chunk's validation is checked before the transaction commits.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import sqlite3
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy.exc import (
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)

from puhui.config import PartnerFeed, feed_suite_problems
from puhui.crashpoints import crash_point
from puhui.hashing import string_hashes
from puhui.ingest import ledger
from puhui.ingest.contract import (
    ContractViolation,
    check_columns,
    coerce_to_contract,
    end_of_delivery_day,
)
from puhui.ingest.held_batches import quarantine_copy_path
from puhui.ingest.key_digest import digest_subkey
from puhui.ingest.key_index import (
    KeyIndex,
    RowHashes,
    ensure_key_index,
    key_strings,
    row_hashes,
)
from puhui.ingest.pseudonymize import (
    PseudonymCache,
    pseudonymize_ids,
    pseudonymize_text_identifiers,
)
from puhui.ingest.raw_tables import ensure_raw_table, stored_columns
from puhui.ingest.reading import (
    ChangedWhileRead,
    FileHandle,
    UnreadableFile,
    changed_since_opened,
    check_text_bytes,
    count_parsed_rows,
    file_columns,
    holds_hashed_bytes,
    iter_file_chunks,
    landed_fs,
    open_landed_file,
)
from puhui.landing import LandedFile
from puhui.privacy import (
    count_identifier_numbers,
    count_identifiers_in_column,
    mask_identifiers_in_column,
    printable,
    safe_name,
    scrub_text,
)
from puhui.raw_rows_digest import arrow_rows_mac
from puhui.runtime import Runtime
from puhui.table_digests import (
    ROWS_DIGESTS,
    RowsMac,
    add_macs,
    batch_rows_digest,
    writer_subkey,
)
from puhui.validation import BatchValidator, FailedExpectation, SuiteLoadError, ValidationOutcome
from puhui.warehouse.bulk import bulk_insert


@dataclass(frozen=True)
class FileOutcome:
    """What became of one landed file."""

    batch_id: str
    partner: str
    path: str
    delivery_date: str
    status: str
    rows: int
    rows_loaded: int = 0
    rows_held: int = 0
    rows_duplicate: int = 0
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False  # already in the ledger from an earlier run

    def line(self) -> str:
        name = printable(self.path.rsplit("/", 1)[-1])  # the name is the sender's choice
        state = self.status + (" (earlier run)" if self.skipped else "")
        text = (
            f"{self.partner:<18} {name:<44} {self.rows:>9,} rows  {state:<24} {self.seconds:5.2f}s"
        )
        if self.reason:
            text += f"  {self.reason}"
        if self.warnings:
            text += "  warnings: " + "; ".join(self.warnings)
        return text


@dataclass
class PreparedChunk:
    """A typed, pseudonymized chunk under stored column names, with its check columns."""

    stored: pa.Table
    checks: dict[str, pa.Array]
    row_numbers: np.ndarray
    masked: dict[str, int] = field(default_factory=dict)  # identifier-shaped values masked
    hashes: RowHashes | None = None  # for the feed's key index, made by the reader thread

    def take(self, mask: np.ndarray) -> PreparedChunk:
        selector = pa.array(mask)
        return PreparedChunk(
            self.stored.filter(selector),
            {k: v.filter(selector) for k, v in self.checks.items()},
            self.row_numbers[mask],
            self.masked,
            None if self.hashes is None else self.hashes.take(mask),
        )


# One validation at a time per process: a GX context is not meant for concurrent runs.
_VALIDATION_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="puhui-gx")


_log = logging.getLogger("puhui.ingest")

_INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # the landing zone's filesystem, a lost connection (ConnectionError)
    MemoryError,
    OperationalError,
    InterfaceError,
    DisconnectionError,
    sqlite3.OperationalError,
    sqlite3.InterfaceError,
)
try:  # psycopg's own errors reach us unwrapped from the COPY path
    import psycopg

    _INFRASTRUCTURE_ERRORS += (psycopg.OperationalError, psycopg.InterfaceError)
except ImportError:  # pragma: no cover - psycopg is a dependency
    pass


def is_infrastructure_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the machinery failing (stop and retry), not the file being bad.

    Everything else that goes wrong while reading, typing, validating or loading a file is
    the file's problem: it is held with a reason and the run moves on to the next file.
    """
    return isinstance(exc, _INFRASTRUCTURE_ERRORS)


# A file name's undecodable bytes, as os and fsspec list them (surrogateescape), and what
# makes a name escaped: one of those, or a UTF-8 name that spells an escape itself.
_NEEDS_ESCAPE = re.compile("[\udc80-\udcff]|\\\\x[0-9A-Fa-f]{2}")
_ESCAPED = re.compile("[\\\\\udc80-\udcff]")


def _escaped_byte(found: re.Match[str]) -> str:
    return f"\\x{ord(found.group()) & 0xFF:02x}"  # U+DCNN is byte NN; a backslash 5c


# A stored path in escaped form: each backslash starts an escape ``_escaped_byte`` writes.
_ESCAPED_FORM = re.compile(r"(?:[^\\]|\\x(?:5c|[89a-f][0-9a-f]))*")
_ESCAPE = re.compile(r"\\x(5c|[89a-f][0-9a-f])")


def _unescaped_byte(found: re.Match[str]) -> str:
    byte = int(found.group(1), 16)
    return "\\" if byte == 0x5C else chr(0xDC00 + byte)


def content_key(partner: str, checksum: str) -> str:
    """The ledger's unique content key: duplicate detection is per feed.

    Two feeds may land the same bytes (two empty-day files of different partners are not a
    redelivery of each other); the same bytes twice in one feed are.
    """
    return hashlib.sha256(f"{partner}\0{checksum}".encode()).hexdigest()


def check_header(columns: list[str], feed: PartnerFeed) -> None:
    """Refuse headers that no contract check can read: repeated names, or no header at all."""
    repeated = sorted(name for name, n in Counter(columns).items() if n > 1)
    if repeated:
        raise ContractViolation(
            "duplicate column name(s) in the header: "
            + ", ".join(safe_name(c) for c in repeated[:10])
        )
    declared = {c.name for c in feed.columns}
    if columns and not declared.intersection(columns):
        padded = sorted(declared.intersection(c.strip() for c in columns))
        if padded:  # a header after all, its names wrapped in spaces (not a data line)
            raise ContractViolation(
                "header names padded with spaces (" + ", ".join(padded[:5])
                + "): names must match the contract exactly"
            )
        # The first line is data: its fields are values (they may be IDs), never printed.
        raise ContractViolation(
            f"no header line: none of the {len(columns)} field(s) of the first line "
            "names a contract column"
        )


def unexpected_failure_reason(exc: BaseException) -> str:
    """A hold reason for an error nobody planned for: its type and where, never its message.

    Library messages quote what they choke on (a CSV row, a value), which may be personal.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return (
        f"unreadable: unexpected {type(exc).__name__}{where} while reading, typing, "
        "validating or loading the file (message withheld: it may quote the file)"
    )


CHANGED_WHILE_READ = "changed while being read (still being written, or replaced)"


class _Held(Exception):
    """Critical validation failures: the batch is quarantined, not loaded."""

    def __init__(self, failures: list[FailedExpectation], summary: dict[str, Any]) -> None:
        super().__init__("critical expectations failed")
        self.failures, self.summary = failures, summary


def prepare_chunk(
    raw: pa.Table,
    feed: PartnerFeed,
    key: bytes,
    delivery_end: Any,
    first_row: int,
    cache: PseudonymCache | None = None,
) -> PreparedChunk:
    """Type ``raw`` per contract, replace identifiers by pseudonyms, add check columns.

    ``cache`` (one per file) reuses the pseudonyms of identifiers met in earlier chunks.
    Identifier-shaped text in any other text column (a phone typed into a co-operative's
    name) is masked at the door, counted in ``masked``; in a key column it cannot be
    masked without merging rows, so the file is held.
    """
    typed = coerce_to_contract(raw, feed)
    arrays, names, checks, masked = [], [], {}, {}
    for stored_name, column in stored_columns(feed):
        values = typed[column.name]
        if column.treatment == "pseudonymize":
            values, valid = pseudonymize_ids(values, column.pii, key, cache)
            checks[f"_valid_{stored_name}"] = valid
        elif feed.format != "csv" and pa.types.is_string(values.type) and _holds_nul(values):
            # A JSON `\u0000` or a Parquet string: the NUL bytes check sees only a text file's
            # raw bytes (a CSV's). PostgreSQL refused the rows mid-hold (the file held as an
            # unexpected CharacterNotInRepertoire, naming nothing) and SQLite stored them.
            raise ContractViolation(
                f"NUL character(s) in {column.name}: binary or corrupt content, which the "
                "warehouse cannot store as text"
            )
        elif pa.types.is_string(values.type) and (found := count_identifiers_in_column(values)):
            if column.name in feed.primary_key:
                raise ContractViolation(
                    f"identifier-shaped value(s) in key column {column.name}: a key cannot "
                    "be masked without merging rows"
                )
            values = mask_identifiers_in_column(values)
            masked[stored_name] = found
        elif column.type in ("int", "float") and count_identifier_numbers(values):
            # Held like a phone written 138-1234-5678 there (type drift): a number cannot be
            # masked, and a quarantine copy or a GX result would keep it as it is.
            raise ContractViolation(
                f"identifier-shaped number(s) in {column.name}: a phone number or national ID "
                "where a number belongs"
            )
        arrays.append(values)
        names.append(stored_name)
    if feed.event_time:
        event = typed[feed.event_time]
        if pa.types.is_date(event.type):
            late = pc.greater_equal(event, pa.scalar(delivery_end.date(), pa.date32()))
        else:
            late = pc.greater_equal(event, pa.scalar(delivery_end, pa.timestamp("us", tz="UTC")))
        checks["_after_delivery"] = late
    row_numbers = np.arange(first_row, first_row + raw.num_rows, dtype=np.int64)
    return PreparedChunk(pa.table(arrays, names=names), checks, row_numbers, masked)


def _holds_nul(values: pa.Array | pa.ChunkedArray) -> bool:
    """Whether a string array's values hold a NUL character: its data bytes scanned at
    memory speed (~5 ms per 1M short values; Arrow's match_substring took ~70 ms)."""
    for chunk in values.chunks if isinstance(values, pa.ChunkedArray) else [values]:
        offsets_buffer, data = chunk.buffers()[1:3]
        if data is None or len(chunk) == 0:
            continue
        offsets = np.frombuffer(offsets_buffer, dtype=np.int32)
        start, end = offsets[chunk.offset], offsets[chunk.offset + len(chunk)]
        if not np.frombuffer(data, dtype=np.uint8)[start:end].all():
            return True
    return False


class SeenKeys:
    """The primary keys kept from the earlier chunks of one file.

    Sorted 64-bit hashes answer "maybe seen" with a binary search, so a chunk costs the same
    however much of the file came before (a hash set rebuilt per chunk would not). The keys
    themselves (Arrow, ~20 bytes each, not Python objects) settle every maybe exactly.
    """

    def __init__(self) -> None:
        self._hashes = np.empty(0, dtype=np.uint64)
        self._keys: list[pa.Array] = []

    def contains(self, keys: pa.Array, hashes: np.ndarray, ordered: np.ndarray) -> np.ndarray:
        """Whether each of ``keys`` (``hashes``; ``ordered``: the same, sorted) was added.

        Sorted needles make the binary searches walk the table in order (cache-friendly).
        """
        if not self._hashes.size:
            return np.zeros(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(self._hashes, ordered), self._hashes.size - 1)
        hits = self._hashes[at] == ordered
        found = np.isin(hashes, ordered[hits]) if hits.any() else np.zeros(len(keys), bool)
        if found.any():
            candidates = keys.filter(pa.array(found))
            earlier = [k.filter(pc.is_in(k, value_set=candidates)) for k in self._keys]
            matches = pa.concat_arrays(earlier)
            found[found] = pc.is_in(candidates, value_set=matches).to_numpy(zero_copy_only=False)
        return found

    def add(self, keys: pa.Array, ordered: np.ndarray) -> None:
        """Remember ``keys`` (distinct, none added before) with their hashes, sorted."""
        self._keys.append(keys)
        merged = np.concatenate([self._hashes, ordered])
        merged.sort(kind="stable")  # two sorted runs: a linear merge
        self._hashes = merged


def drop_duplicate_keys(
    chunk: PreparedChunk, feed: PartnerFeed, seen: SeenKeys
) -> tuple[PreparedChunk, int]:
    """Keep the first row of each primary key (within the file); returns rows dropped."""
    keys = key_strings(chunk.stored, feed)
    hashes = string_hashes(keys)
    ordered = np.sort(hashes)
    earlier = seen.contains(keys, hashes, ordered)
    # All hashes distinct means all keys distinct; equal hashes get the exact check below.
    if not earlier.any() and not (ordered[1:] == ordered[:-1]).any():
        seen.add(keys, ordered)  # the usual case: nothing repeats, nothing to select
        return chunk, 0
    encoded = keys.dictionary_encode()
    _, first = np.unique(encoded.indices.to_numpy(zero_copy_only=False), return_index=True)
    keep = np.zeros(len(keys), dtype=bool)
    keep[first] = True
    keep &= ~earlier
    seen.add(keys.filter(pa.array(keep)), np.sort(hashes[keep]))
    dropped = int(len(keys) - keep.sum())
    return (chunk.take(keep) if dropped else chunk), dropped


_PANDAS_TYPES = {
    pa.int64(): pd.Int64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
    pa.string(): pd.StringDtype("pyarrow", na_value=np.nan),
}


def batch_frame(chunk: PreparedChunk) -> pd.DataFrame:
    """The pandas frame GX validates: stored and check columns, indexed by source row number."""
    table = chunk.stored
    for name, values in chunk.checks.items():
        table = table.append_column(name, values)
    for index, column in enumerate(table.schema):
        if pa.types.is_date(column.type):
            table = table.set_column(
                index, column.name, table[column.name].cast(pa.timestamp("ns"))
            )
    frame = table.to_pandas(types_mapper=_PANDAS_TYPES.get, split_blocks=True)
    frame.index = pd.Index(chunk.row_numbers, name="row_number")
    return frame


def failure_dicts(failures: list[FailedExpectation]) -> list[dict[str, Any]]:
    return [
        {
            "severity": f.severity,
            "expectation": f.expectation,
            "column": f.column,
            "message": f.description,
            "sample_rows": f.sample_rows,
        }
        for f in failures
    ]


_Item = TypeVar("_Item")


class ReadAhead(Generic[_Item]):
    """Iterates ``items`` while a worker thread already produces the next one.

    Reading, typing and pseudonymizing chunk k+1 then overlaps the load and validation of
    chunk k (Arrow and numpy release the GIL, and the server parses COPY in its own process).
    The worker starts at construction, so the first item is being made while the caller
    still sets up. It starts an item only once the previous one was taken, so at most two
    items are alive: the one in use and the one being made (memory stays bounded). An
    exception from ``items`` is raised by ``next``, at the item where it happened. ``close``
    (or leaving a ``with`` block) stops the worker, which then closes ``items``.
    """

    def __init__(self, items: Iterator[_Item], name: str = "puhui-prepare") -> None:
        self._items = items
        self._ready: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
        self._taken = threading.Semaphore(0)
        self._stop = threading.Event()
        self._finished = False
        self._worker = threading.Thread(target=self._work, name=name, daemon=True)
        self._worker.start()

    def _hand_over(self, entry: tuple[bool, Any]) -> bool:
        self._ready.put(entry)  # never blocks: the previous entry was taken
        while not self._stop.is_set():
            if self._taken.acquire(timeout=0.05):
                return True
        return False

    def _work(self) -> None:
        try:
            for item in self._items:
                if not self._hand_over((False, item)):
                    return
            self._hand_over((True, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._hand_over((True, exc))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> ReadAhead[_Item]:
        return self

    def __next__(self) -> _Item:
        if self._finished:
            raise StopIteration
        done, value = self._ready.get()
        self._taken.release()
        if done:
            self.close()
            if value is not None:
                raise value
            raise StopIteration
        return value

    def close(self) -> None:
        """Stop the worker (it finishes the item in hand) and wait for it."""
        self._finished = True
        self._stop.set()
        self._worker.join()

    def __enter__(self) -> ReadAhead[_Item]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_ahead(items: Iterator[_Item], name: str = "puhui-prepare") -> ReadAhead[_Item]:
    """``items``, produced one ahead by a worker thread (see :class:`ReadAhead`)."""
    return ReadAhead(items, name)


class BytesHash(Protocol):
    """What a quarantine copy's reader feeds the bytes it takes: a ``hashlib`` object."""

    def update(self, data: memoryview, /) -> None: ...


class FileIngestor:
    """Ingests the files of one feed; holds the validator and the pseudonym key."""

    def __init__(
        self,
        runtime: Runtime,
        feed: PartnerFeed,
        validator: BatchValidator,
        key: bytes,
        flow_run_id: str | None = None,
    ) -> None:
        self.runtime, self.feed, self.validator, self.key = runtime, feed, validator, key
        self.flow_run_id = flow_run_id
        self._suite_checked = False
        self.renewals = ledger.MarkRenewals()  # written by the feed run (ingest_feed)

    @cached_property
    def digest_key(self) -> bytes:
        """The keys' keyed digest's (:func:`digest_subkey`), once per ingestor."""
        return digest_subkey(self.runtime.audit.key)

    def check_suite(self) -> None:
        """Load the feed's suite and check its columns, once, before the first file: a
        suite broken by an edit is the operator's error, raised here in one line naming the
        file and expectation, not a hold of every partner file (no ledger row is written)."""
        if self._suite_checked:
            return
        problems = feed_suite_problems(self.feed, self.validator.expectations_dir)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise SuiteLoadError(f"{problems[0]}{more}; no file of {self.feed.name} was read "
                                 "(puhui config check lists every problem)")
        self.validator.load(self.feed.suite)  # builds every expectation: raises in one line
        self._suite_checked = True

    # ----------------------------------------------------------------------- entry point
    def ingest(self, landed: LandedFile, seen_batch: str | None = None) -> FileOutcome:
        """Decide one landed file: exactly one ledger row, whatever its bytes.

        ``seen_batch`` is the batch of the ledger's newest row at the file's path (its
        marks not matching), if any. Only infrastructure errors
        (:func:`is_infrastructure_error`) escape; anything else holds the file with a
        reason that names no value.
        """
        started = time.monotonic()
        if landed.kind != "file":
            handle = self._not_regular_handle(landed)
        else:
            handle = open_landed_file(landed.path)
        stored_path = self.stored_path(landed.path)
        batch_id = ledger.make_batch_id(
            self.feed.name, landed.delivery_date, stored_path, handle.checksum
        )
        if seen_batch is not None and seen_batch != batch_id:
            # A row renamed by the settle keeps the id of its old path: the same bytes at
            # its path are that batch (marks renewed), not a duplicate of it.
            at_path = ledger.get_batch(self.runtime.engine, seen_batch)
            if at_path is not None and at_path.checksum == handle.checksum:
                batch_id = seen_batch
        base = {
            "batch_id": batch_id,
            "partner": self.feed.name,
            "path": stored_path,
            "delivery_date": landed.delivery_date.isoformat(),
        }
        outcome = None
        for _attempt in range(3):
            try:
                outcome = self._ingest_new(handle, landed, base)
                break
            except IntegrityError:
                # Another run claimed this file or this content first: decide again, now
                # that its ledger row is visible (a skip, or a duplicate of its batch).
                continue
        if outcome is None:
            outcome = self._decided_by_earlier_run(base)
        crash_point("after-file")
        return FileOutcome(**{**outcome.__dict__, "seconds": time.monotonic() - started})

    def decided_earlier(self, landed: LandedFile, batch_id: str) -> FileOutcome:
        """The outcome an earlier run recorded for ``landed`` (not read again)."""
        return self._decided_by_earlier_run(
            {
                "batch_id": batch_id,
                "partner": self.feed.name,
                "path": self.stored_path(landed.path),
                "delivery_date": landed.delivery_date.isoformat(),
            }
        )

    def stored_path(self, path: str) -> str:
        """``path`` as the ledger, outcomes and output keep it: an identifier in a file's
        name is replaced by its keyed hash (the ledger is read by BI; output is logged), and
        bytes of the name that are not UTF-8 (Python's surrogate escapes) by ``\\xNN``: no
        database stores a lone surrogate, and hashing one for the batch id raised, which
        stopped the feed at that file on every run."""
        # Pseudonymized first: an escape ends in a hex digit or letter (``\xfd``, GBK's 三),
        # which touched a phone number after it and hid it from the guard. An escaped name
        # has its backslashes escaped too (``\x5c``), else byte FF and a UTF-8 name spelling
        # ``\xff`` shared one ledger path (the second held as a rewrite of the first). Other
        # UTF-8 names are kept as they are, so rows from before still match their files;
        # one spelling ``\xNN`` itself (none seen) is read once more, a duplicate of its row.
        named = pseudonymize_text_identifiers(path, self.key)
        return _ESCAPED.sub(_escaped_byte, named) if _NEEDS_ESCAPE.search(named) else named

    def settled_path(self, stored: str, level: int | None = ledger.PATH_SETTLED) -> str:
        """A ledger ``source_path`` settled at ``level`` (a path ``stored_path`` wrote, with
        an older finder) as ``stored_path`` stores its file now; one in today's form comes
        out unchanged (idempotent). A row never settled (``level`` None, written before
        names were pseudonymized or escaped) holds its file's name as listed:
        ``stored_path`` of it is discovery's form (un-escaping it would read a literal
        ``\\xff`` in the name as an escape).

        ``stored_path`` itself would escape an escaped path's ``\\xNN`` again, so an
        escaped path is unescaped to the name it was made from first (pseudonymized names
        are pseudonymized again to themselves). A path that only looks escaped (a row from
        before round 14 named ``a\\b\\xff``, its backslashes not all escapes) is only
        pseudonymized: which file it names cannot be told, so its form is kept.
        """
        if level is None:
            return self.stored_path(stored)
        if _NEEDS_ESCAPE.search(stored) and _ESCAPED_FORM.fullmatch(stored):
            return self.stored_path(_ESCAPE.sub(_unescaped_byte, stored))
        return pseudonymize_text_identifiers(stored, self.key)

    def _not_regular_handle(self, landed: LandedFile) -> FileHandle:
        """A handle for an entry that is never opened (a symlink may point anywhere)."""
        fs, path = landed_fs(landed.path)
        named = self.stored_path(path)
        fingerprint = hashlib.sha256(f"{landed.kind}\0{named}".encode()).hexdigest()
        return FileHandle(fs, path, 0, fingerprint)

    def _ingest_new(
        self, handle: FileHandle, landed: LandedFile, base: dict[str, Any]
    ) -> FileOutcome | None:
        engine = self.runtime.engine
        if (decided := ledger.get_batch(engine, base["batch_id"])) is not None:
            # The same bytes, touched: the row takes the new time (or marker), so
            # discovery skips the file again instead of hashing it on every run.
            self.renewals.add(decided, handle.mtime_ns, landed.change_marker)
            return None
        if landed.kind != "file":
            kind = {"symlink": "symbolic link", "directory": "directory"}.get(
                landed.kind, "special file"
            )
            reason = f"not a regular file ({kind}): not followed, not read"
            return self._hold(handle, landed, base, reason, copy_rows=False, rows=0)
        if handle.size == 0:
            # No content to own: every empty file is held as empty, never a duplicate.
            return self._hold(
                handle, landed, base, "empty file (0 bytes)", copy_rows=False, rows=0
            )
        owner = ledger.get_content_owner(
            engine, content_key(self.feed.name, handle.checksum), self.feed.name, handle.checksum
        )
        if owner is not None:
            return self._record_duplicate(handle, landed, base, owner)
        try:
            check_text_bytes(handle, self.feed)
            columns = file_columns(handle, self.feed)
            check_header(columns, self.feed)
            check = check_columns(columns, self.feed)
            if check.missing or (check.extra and self.feed.extra_columns == "hold"):
                raise ContractViolation(check.describe())
            warnings = [check.describe_extra()] if check.extra else []
            earlier = ledger.loaded_batch_at_path(engine, self.feed.name, base["path"])
            if earlier is not None:
                # Appended to or replaced after its rows were loaded: loading this version
                # too would load those rows twice. Held whole, for a person to decide.
                reason = (
                    f"rewritten after batch {earlier.batch_id} loaded this path "
                    f"({earlier.rows:,} rows): held for a person to decide; release "
                    "loads its rows whose keys were not loaded before, reject drops it"
                )
                return self._hold(handle, landed, base, reason, copy_rows=True)
            return self._load(handle, landed, base, columns, warnings)
        except (UnreadableFile, ContractViolation) as exc:
            return self._hold(handle, landed, base, str(exc), copy_rows=False)
        except ChangedWhileRead:
            raise  # nothing recorded: deferred by the caller, read again by the next run
        except _Held as held:
            reason = "critical: " + "; ".join(f.description for f in held.failures)
            return self._hold(
                handle,
                landed,
                base,
                reason,
                copy_rows=True,
                failures=held.failures,
                validation=held.summary,
            )
        except IntegrityError:
            raise  # a concurrent run's ledger row: decided again by the caller
        except Exception as exc:  # noqa: BLE001 - a bad file must not stop the other files
            if is_infrastructure_error(exc):
                raise
            reason = unexpected_failure_reason(exc)
            _log.warning("%s held: %s", base["batch_id"], reason)
            return self._hold(handle, landed, base, reason, copy_rows=False)

    def _identity(self, handle: FileHandle, landed: LandedFile, base: dict[str, Any]) -> dict:
        """The ledger columns that say which file this batch is."""
        return {
            "batch_id": base["batch_id"],
            "partner": self.feed.name,
            "source_path": base["path"],
            "path_settled": ledger.PATH_SETTLED,
            "delivery_date": landed.delivery_date,
            "checksum": handle.checksum,
            "bytes": handle.size,
            "mtime_ns": handle.mtime_ns,
            # From the listing, as discovery compares it (an older marker than the bytes
            # hashed at worst, so a rewrite in between is read again next run).
            "change_marker": landed.change_marker,
            "flow_run_id": self.flow_run_id,
        }

    # ----------------------------------------------------------------------- paths
    def _chunks(
        self, handle: FileHandle, landed: LandedFile, columns: list[str],
        on_bytes: Callable[[memoryview], object] | None = None,
    ) -> Iterator[PreparedChunk]:
        delivery_end = end_of_delivery_day(landed.delivery_date)
        first_row = 1
        cache = PseudonymCache()
        for raw in iter_file_chunks(handle, self.feed, columns, on_bytes=on_bytes):
            yield prepare_chunk(raw, self.feed, self.key, delivery_end, first_row, cache)
            first_row += raw.num_rows
            del raw  # the raw text goes before the next block is read

    def _deduplicated(
        self, handle: FileHandle, landed: LandedFile, columns: list[str]
    ) -> Iterator[tuple[PreparedChunk, int, int]]:
        """Prepared chunks without repeated primary keys: (chunk, rows read, rows dropped)."""
        seen = SeenKeys()
        for chunk in self._chunks(handle, landed, columns):
            rows = len(chunk.row_numbers)
            chunk, dropped = drop_duplicate_keys(chunk, self.feed, seen)
            chunk.hashes = row_hashes(chunk.stored, self.feed, digest_key=self.digest_key)
            yield chunk, rows, dropped

    def _load(
        self,
        handle: FileHandle,
        landed: LandedFile,
        base: dict[str, Any],
        columns: list[str],
        warnings: list[str],
    ) -> FileOutcome:
        # The next chunk is read and prepared while this one loads and validates (the first
        # one while the table and the ledger row are set up); leaving the block stops that
        # worker at once when a chunk fails (held, or an error). A chunk's validation may
        # still run while the next chunk loads: every outcome is checked before anything
        # commits, and a critical failure rolls the whole load back.
        with read_ahead(self._deduplicated(handle, landed, columns)) as ahead:
            return self._load_chunks(handle, landed, base, warnings, ahead)

    def _load_chunks(
        self,
        handle: FileHandle,
        landed: LandedFile,
        base: dict[str, Any],
        warnings: list[str],
        ahead: ReadAhead[tuple[PreparedChunk, int, int]],
    ) -> FileOutcome:
        table = ensure_raw_table(self.runtime.engine, self.feed)
        rows = loaded = dropped = expectations_run = 0
        masked: Counter[str] = Counter()
        failures: list[FailedExpectation] = []
        checked_by: str | None = None  # the hash of the suite that ran (none: no rows)
        identity = self._identity(handle, landed, base)
        # A first use's backfill or a rebuild commits on its own (its audit event must not
        # hold the audit chain's lock through the load); the load checks again, under the
        # feed's key lock.
        ensure_key_index(self.runtime, self.feed)
        with self.runtime.engine.begin() as conn:
            ensure_key_index(self.runtime, self.feed, conn)
            inserted = ledger.insert_batch(
                conn,
                **identity,
                content_key=content_key(self.feed.name, handle.checksum),
                status="accepted",
            )
            validations: deque[Future[ValidationOutcome]] = deque()
            keys = KeyIndex(conn, self.feed, base["batch_id"], self.digest_key)
            constants = {"batch_id": base["batch_id"]}
            raw_mac, rows_key = RowsMac(), writer_subkey(self.runtime.audit)

            def settle(keep: int) -> None:
                nonlocal expectations_run, failures, checked_by
                while len(validations) > keep:
                    outcome = validations.popleft().result()
                    expectations_run = max(expectations_run, outcome.expectations_run)
                    checked_by = outcome.suite_hash
                    if outcome.critical:
                        raise _Held(outcome.critical, outcome.summary())
                    failures += outcome.warnings

            try:
                for chunk, chunk_rows, chunk_dropped in ahead:
                    rows += chunk_rows
                    dropped += chunk_dropped
                    masked.update(chunk.masked)
                    validations.append(
                        _VALIDATION_POOL.submit(
                            self.validator.validate_frame,
                            batch_frame(chunk),
                            self.feed.suite,
                            base["batch_id"],
                        )
                    )
                    # Validated whole (the file's content), loaded without the rows whose
                    # key an earlier batch loaded.
                    chunk, _ = keys.claim(chunk)
                    records = chunk.stored.add_column(0, "row_number", pa.array(chunk.row_numbers))
                    loaded += bulk_insert(conn, table, records, constants)
                    # From the data written, not read back: raw tables have no index on
                    # batch_id, so a read-back would scan the whole table on every load.
                    add_macs(raw_mac, arrow_rows_mac(conn.dialect, table, records, constants,
                                                     rows_key))
                    crash_point("mid-load")
                    del chunk, records  # the reader's next chunk may take their memory
                    settle(keep=1)  # at most one chunk's validation outstanding
                settle(keep=0)
                if changed_since_opened(handle):
                    raise ChangedWhileRead()  # rolls the load back with the transaction
            finally:
                for pending in validations:
                    pending.cancel()  # the load is failing: queued validations are moot
            if dropped:
                warnings.append(
                    f"duplicate rows: {dropped:,} row(s) repeat a primary key "
                    f"({', '.join(self.feed.primary_key)}); first kept"
                )
            if repeated := keys.repeats.warning(self.feed):
                warnings.append(repeated)
            dropped += keys.repeats.rows
            warnings += [
                f"identifier-shaped text masked in {name}: {count:,} value(s)"
                for name, count in sorted(masked.items())
            ]
            warnings += [f.description for f in failures]
            warnings = [scrub_text(w) for w in warnings]
            warning_items = [{"message": w} for w in warnings]
            # A header-only file owns no content: two empty days are not a redelivery.
            decided = ledger.update_batch(
                conn,
                base["batch_id"],
                rows=rows,
                rows_loaded=loaded,
                rows_held=0,
                rows_duplicate=dropped,
                content_key=content_key(self.feed.name, handle.checksum) if rows else None,
                warnings=warning_items or None,
                decided_at=ledger.now_utc(),
            )
            validated = ledger.record_validation(
                conn,
                base["batch_id"],
                self.feed.suite,
                success=not warnings,
                expectations_run=expectations_run,
                critical_failed=0,
                warning_failed=len(warnings),
                flow_run_id=self.flow_run_id,
                details={"failures": failure_dicts(failures), "warnings": warnings,
                         "suite_hash": checked_by},
                audit=self.runtime.audit,
            )
            self.runtime.audit.append(
                conn,
                "ingest.accepted",
                base["batch_id"],
                {
                    "partner": self.feed.name,
                    "rows": rows,
                    "rows_loaded": loaded,
                    "rows_duplicate": dropped,
                    "rows_repeating_earlier_batches": keys.repeats.rows,
                    **keys.details(),
                    "checksum": handle.checksum,
                    "warnings": warnings,
                    "suite_hash": checked_by,
                    **ledger.discovery_facts(identity),
                    **ledger.ledger_facts(inserted, decided),
                    **validated,
                    ROWS_DIGESTS: {**validated.get(ROWS_DIGESTS, {}),
                                   **batch_rows_digest(table, base["batch_id"], raw_mac)},
                },
                flow_run_id=self.flow_run_id,
            )
            crash_point("load-before-commit")
        return FileOutcome(
            **base,
            status="accepted",
            rows=rows,
            rows_loaded=loaded,
            rows_duplicate=dropped,
            warnings=warnings,
        )

    @staticmethod
    def _copied_checksummed_bytes(handle: FileHandle, consumed: str | None) -> bool:
        """Whether the quarantine copy was made from the bytes ``handle``'s checksum names, and
        the file still holds them. ``consumed`` is the SHA-256 of the bytes the copy's reader
        took (None for Parquet, read by offsets: its footer fixes the rows, so a truncation
        fails the read instead of ending it early)."""
        if consumed is not None and consumed != handle.checksum:
            return False
        # A stamp moved while the copy was read (the hold defers one moved before): the file
        # must hash the same again, not the stamp alone (a chmod or a link moves the change
        # time only). For Parquet this is the only check.
        return not changed_since_opened(handle) or holds_hashed_bytes(handle)

    def _write_quarantine_copy(
        self, handle: FileHandle, landed: LandedFile, batch_id: str, consumed: BytesHash | None
    ) -> tuple[Path | None, int]:
        """Keep the held batch intact, pseudonymized, for a later release; returns the copy
        (None when no rows were read) and its rows. ``consumed`` (None for Parquet) is fed
        the bytes read for it."""
        target = quarantine_copy_path(self.runtime.settings.home, self.feed.name, batch_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        writer = None
        rows = 0
        try:
            columns = file_columns(handle, self.feed)
            on_bytes = consumed.update if consumed is not None else None
            for chunk in self._chunks(handle, landed, columns, on_bytes):
                records = chunk.stored.add_column(0, "row_number", pa.array(chunk.row_numbers))
                # The check columns too: revalidating the copy must see what ingestion saw
                # (they are booleans, no personal data; a release drops them).
                for name, values in chunk.checks.items():
                    records = records.append_column(name, values)
                writer = writer or pq.ParquetWriter(partial, records.schema)
                writer.write_table(records)
                rows += records.num_rows
        except BaseException:
            partial.unlink(missing_ok=True)  # no ledger row will name it (closed below)
            raise
        finally:
            if writer:
                writer.close()
        if writer is None:
            return None, 0  # no rows: nothing to release
        partial.replace(target)
        return target, rows

    def _hold(
        self,
        handle: FileHandle,
        landed: LandedFile,
        base: dict[str, Any],
        reason: str,
        *,
        copy_rows: bool,
        failures: list[FailedExpectation] | None = None,
        validation: dict[str, Any] | None = None,
        rows: int | None = None,
    ) -> FileOutcome:
        # Fail closed: whatever built the reason, identifier-shaped text leaves it masked.
        reason = scrub_text(reason)
        copy = None
        if copy_rows:
            if changed_since_opened(handle):
                # What held it (validation, the header) may have read a prefix of a same-bytes
                # re-upload: hashing the same afterwards does not say it saw all the bytes. A
                # chmod costs one deferral here, not a hold whose reason describes a prefix.
                raise ChangedWhileRead()
            # Hashed as read, here so the hash outlives a failed or empty read: the file
            # hashing the same afterwards does not say the reader saw all of it (a
            # same-bytes re-upload truncates first).
            consumed = hashlib.sha256() if self.feed.format != "parquet" else None
            try:
                copy, rows = self._write_quarantine_copy(
                    handle, landed, base["batch_id"], consumed)
            except Exception as exc:  # noqa: BLE001 - the hold stands, without a copy
                if is_infrastructure_error(exc):
                    raise
                # A read cut mid-row by a re-upload raises too. Its hash is of a prefix
                # even for an unchanged file, so only the stamp tells: comparing the hash
                # would defer a file whose copy fails the same way on every run.
                if changed_since_opened(handle):
                    raise ChangedWhileRead() from exc
                reason += f" (no quarantine copy: {unexpected_failure_reason(exc)})"
                copy = None
            else:
                if copy is not None and not copy.exists():
                    copy = None
                digest = consumed.hexdigest() if consumed is not None else None
                try:
                    same = self._copied_checksummed_bytes(handle, digest)
                except BaseException:
                    if copy is not None:
                        copy.unlink(missing_ok=True)  # no ledger row will name it
                    raise
                if not same:
                    # A release would load bytes the checksum does not name (another file,
                    # or a prefix read while the same bytes were uploaded again, down to the
                    # header alone): no copy, nothing recorded; the next run reads the file
                    # as it is then. A hold without its copy under the same bytes' batch id
                    # would be reject-only for good.
                    if copy is not None:
                        copy.unlink(missing_ok=True)
                    raise ChangedWhileRead()
        if rows is None:
            rows = count_parsed_rows(handle, self.feed)  # records, as the parser reads them
        failures = failures or []
        details = {
            "reason": reason,
            "failures": failure_dicts(failures),
            "quarantine_copy": str(copy) if copy else None,
            # None: held before the suite ran (unreadable file, contract violation).
            "suite_hash": (validation or {}).get("suite_hash"),
        }
        owns_content = handle.size > 0 and landed.kind == "file"
        identity = self._identity(handle, landed, base)
        with self.runtime.engine.begin() as conn:
            held = ledger.insert_batch(
                conn,
                **identity,
                content_key=content_key(self.feed.name, handle.checksum) if owns_content else None,
                rows=rows,
                rows_loaded=0,
                rows_held=rows,
                rows_duplicate=0,
                status="quarantined",
                reason=reason,
                warnings=[
                    {
                        "message": scrub_text(f.description),
                        "severity": f.severity,
                        "sample_rows": f.sample_rows,
                    }
                    for f in failures
                ]
                or None,
            )
            validated = ledger.record_validation(
                conn,
                base["batch_id"],
                self.feed.suite,
                success=False,
                expectations_run=(validation or {}).get("expectations_run", 0),
                critical_failed=max(1, len([f for f in failures if f.severity == "critical"])),
                warning_failed=len([f for f in failures if f.severity == "warning"]),
                flow_run_id=self.flow_run_id,
                details=details,
                audit=self.runtime.audit,
            )
            self.runtime.audit.append(
                conn,
                "ingest.quarantined",
                base["batch_id"],
                {
                    "partner": self.feed.name,
                    "rows": rows,
                    "reason": reason,
                    "checksum": handle.checksum,
                    **ledger.discovery_facts(identity),
                    **ledger.ledger_facts(held),
                    **validated,
                },
                flow_run_id=self.flow_run_id,
            )
            crash_point("hold-before-commit")
        return FileOutcome(**base, status="quarantined", rows=rows, rows_held=rows, reason=reason)

    def _record_duplicate(
        self,
        handle: FileHandle,
        landed: LandedFile,
        base: dict[str, Any],
        owner: ledger.BatchRecord,
    ) -> FileOutcome:
        reason = f"duplicate delivery: same content as batch {owner.batch_id}"
        identity = self._identity(handle, landed, base)
        with self.runtime.engine.begin() as conn:
            recorded = ledger.insert_batch(
                conn,
                **identity,
                content_key=None,
                duplicate_of=owner.batch_id,
                rows=owner.rows,
                rows_loaded=0,
                rows_held=0,
                rows_duplicate=owner.rows,
                status="duplicate",
                reason=reason,
                decided_at=ledger.now_utc(),
            )
            self.runtime.audit.append(
                conn,
                "ingest.duplicate",
                base["batch_id"],
                {
                    "partner": self.feed.name,
                    "duplicate_of": owner.batch_id,
                    "checksum": handle.checksum,
                    **ledger.discovery_facts(identity),
                    **ledger.ledger_facts(recorded),
                },
                flow_run_id=self.flow_run_id,
            )
        return FileOutcome(
            **base, status="duplicate", rows=owner.rows, rows_duplicate=owner.rows, reason=reason
        )

    def _decided_by_earlier_run(self, base: dict[str, Any]) -> FileOutcome:
        record = ledger.get_batch(self.runtime.engine, base["batch_id"])
        assert record is not None, f"batch {base['batch_id']} vanished from the ledger"
        return FileOutcome(
            **base,
            status=record.status,
            rows=record.rows,
            rows_loaded=record.rows_loaded,
            rows_held=record.rows_held,
            rows_duplicate=record.rows_duplicate,
            reason=record.reason,
            warnings=[w["message"] for w in record.warnings],
            skipped=True,
        )
