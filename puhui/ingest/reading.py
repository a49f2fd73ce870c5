"""Reading landed partner files: checksums, headers and streamed Arrow chunks.

Files are read through fsspec, in bounded chunks, so a file larger than memory still
ingests: CSV through Arrow's streaming reader paced to stay two blocks ahead of the ingest,
JSON lines in blocks cut at line ends, Parquet by row batches. CSV columns come back as
text; typing is the contract's job, not the reader's guess. Read failures become
``UnreadableFile`` with a reason that never quotes the file's content (a malformed line may
hold a national ID).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import stat
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from puhui.config import PartnerFeed
from puhui.errors import PuhuiError
from puhui.privacy import safe_name

# ~330k payment rows per chunk: the ingest pipelines chunks (prepare the next while one loads),
# so small chunks start the COPY sooner and bound memory; each costs ~0.1 s of GX overhead.
READ_BLOCK_BYTES = 32 << 20
_HASH_BLOCK = 8 << 20


class UnreadableFile(PuhuiError):
    """The file cannot be read as its contract says (held with this reason)."""


class ChangedWhileRead(Exception):
    """The file changed between its fingerprint and the end of its load (the load is rolled
    back with its ledger row), or a held file changed before its quarantine copy, or the copy
    was not read from the checksummed bytes, or the entry listed as a regular file is not one
    any more (nothing is recorded). The caller defers the file (a partner still uploading it),
    so the next run reads it whole as one batch, or holds what the entry has become."""


def open_bytes(fs: fsspec.AbstractFileSystem, path: str,
               stamp: tuple[Any, ...] | None = None) -> BinaryIO:
    """A landed file's bytes, opened for reading.

    A local file is opened without following a link and without waiting (``O_NOFOLLOW``,
    ``O_NONBLOCK``), and must be a regular file, the one ``stamp`` (its inode) names if
    given: the listing saw a regular file, but it may have been replaced since by a
    symbolic link (followed, a file outside the landing zone was loaded; ``/dev/zero`` was
    hashed for good) or a FIFO (its open waited for a writer for good, and every later file
    and feed with it). Such an entry raises :class:`ChangedWhileRead`.
    """
    if not isinstance(fs, LocalFileSystem):
        return fs.open(path, "rb")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP or not _still_regular(path):
            # A symbolic link now, or another entry (a socket's open fails with ENXIO).
            raise ChangedWhileRead() from None
        raise
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or (stamp is not None and len(stamp) > 2
                                            and status.st_ino != stamp[2]):
        os.close(fd)
        raise ChangedWhileRead()
    return os.fdopen(fd, "rb")


def _still_regular(path: str) -> bool:
    """Whether ``path`` names a regular file (True if it is gone: the caller's error says)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class FileHandle:
    """An opened landed file: its filesystem, path and content fingerprint."""

    fs: fsspec.AbstractFileSystem
    path: str
    size: int
    checksum: str
    head: bytes = b""  # the first bytes (byte-order marks)
    has_nul: bool = False  # a NUL byte anywhere: never text, and PostgreSQL refuses it
    # Size, modification time, inode and change time (a local file's from its opened
    # descriptor): ``open_bytes`` checks the inode, ``changed_since_opened`` the whole.
    stamp: tuple[Any, ...] | None = None
    mtime_ns: int | None = None  # local files: the ledger's record of this version's time

    @property
    def local_path(self) -> str | None:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        return self.path if "file" in protocol or "local" in protocol else None


def landed_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of a landed file's ``url``.

    A local path is taken literally: fsspec would read ``::`` in a file name as a chain of
    filesystems (and ``mobile_payments_a::b.csv`` as a missing file, an error that stops
    the run instead of holding the file).
    """
    if "://" not in url:
        return LocalFileSystem(), url
    return fsspec.core.url_to_fs(url)


def file_stamp(fs: fsspec.AbstractFileSystem, path: str) -> tuple[Any, ...]:
    """Size and modification time as the filesystem reports them (what changes when a
    partner is still writing the file, or rewrites it), and for a local file its inode and
    change time: a file renamed over by another of the same size and modification time
    (`rsync -t`, `cp -p`) between the hash and the read had its rows loaded under the old
    bytes' checksum. Neither can be set back (the change time is the kernel's)."""
    if isinstance(fs, LocalFileSystem):
        return _local_stamp(os.lstat(path))  # a link put in the file's place is not the file
    info = fs.info(path)
    modified = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    return (info.get("size"), str(modified))


def _local_stamp(status: os.stat_result) -> tuple[Any, ...]:
    return (status.st_size, status.st_mtime_ns, status.st_ino, status.st_ctime_ns)


def changed_since_opened(handle: FileHandle) -> bool:
    """Whether the file's size or modification time differ from before its fingerprint:
    the rows read may not be the bytes the checksum names."""
    if handle.stamp is None:
        return False
    try:
        return file_stamp(handle.fs, handle.path) != handle.stamp
    except FileNotFoundError:
        return True  # deleted (or moved away) while being read


def open_landed_file(url: str) -> FileHandle:
    """Resolve ``url`` and fingerprint its bytes (SHA-256, streamed)."""
    fs, path = landed_fs(url)
    local = isinstance(fs, LocalFileSystem)
    with open_bytes(fs, path) as stream:
        # First: a rewrite from here on makes the recorded time older than the bytes hashed,
        # so the next run reads the file again (never newer, which would hide the rewrite).
        # A local file's stamp is the opened file's own: the path may name another by now.
        stamp = _local_stamp(os.fstat(stream.fileno())) if local else file_stamp(fs, path)
        checksum, size, head, has_nul = _hashed_stream(stream)
    mtime_ns = stamp[1] if local else None  # one stat for both
    return FileHandle(fs, path, size, checksum, head, has_nul, stamp, mtime_ns)


def _hashed(fs: fsspec.AbstractFileSystem, path: str,
            stamp: tuple[Any, ...] | None = None) -> tuple[str, int, bytes, bool]:
    """SHA-256, size, first bytes and whether a NUL byte is in ``path``'s bytes (streamed)."""
    with open_bytes(fs, path, stamp) as stream:
        return _hashed_stream(stream)


def _hashed_stream(handle: BinaryIO) -> tuple[str, int, bytes, bool]:
    digest, size, head, has_nul = hashlib.sha256(), 0, b"", False
    while block := handle.read(_HASH_BLOCK):
        digest.update(block)
        head = head or block[:4]
        # memchr speed (GB/s): found while the bytes are in hand, not in a second pass.
        has_nul = has_nul or b"\0" in block
        size += len(block)
    return digest.hexdigest(), size, head, has_nul


def holds_hashed_bytes(handle: FileHandle) -> bool:
    """Whether the file's bytes are still the ones ``handle``'s checksum names (hashed
    again; False if it is gone). For a stamp that moved on metadata alone: a chmod or a new
    hard link sets a local file's change time without touching its bytes."""
    try:
        return _hashed(handle.fs, handle.path, handle.stamp)[0] == handle.checksum
    except (OSError, ChangedWhileRead):  # gone, unreadable now (a chmod by an upload tool),
        return False  # or another entry in its place: not known same


_UTF16_BOMS = {b"\xff\xfe": "UTF-16 LE", b"\xfe\xff": "UTF-16 BE"}


def check_text_bytes(handle: FileHandle, feed: PartnerFeed) -> None:
    """Refuse bytes no text feed can be: a UTF-16 byte-order mark, NUL bytes."""
    if feed.format == "parquet":
        return
    for mark, name in _UTF16_BOMS.items():
        if handle.head.startswith(mark):
            raise UnreadableFile(
                f"wrong encoding: a {name} byte-order mark; the feed is {feed.encoding}"
            )
    if handle.has_nul:
        raise UnreadableFile("NUL byte(s) in a text file: binary or corrupt content")


class _Teed(io.RawIOBase):
    """A binary stream that hands each byte its reader takes to ``on_bytes`` too."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[memoryview], object]) -> None:
        super().__init__()
        self._raw = raw
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(buffer) or 0
        self._on_bytes(memoryview(buffer).cast("B")[:count])
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()


def _opened(handle: FileHandle, on_bytes: Callable[[memoryview], object] | None) -> BinaryIO:
    stream = open_bytes(handle.fs, handle.path, handle.stamp)
    return stream if on_bytes is None else _Teed(stream, on_bytes)  # type: ignore[return-value]


@contextmanager
def _parquet_source(handle: FileHandle) -> Iterator[Any]:
    """The checked file for Arrow to read: its descriptor, open for the whole read.

    Arrow reads a local path itself, once per reader and per row group's page walk: by the
    path, a link swapped in since the check was followed and a FIFO waited on for good (the
    feed and every later one with it). ``/proc/self/fd/N`` names the opened file even
    after its path names another entry, and keeps Arrow's native reads; without ``/proc``
    (or for a remote store) the file object itself is read.
    """
    stream = open_bytes(handle.fs, handle.path, handle.stamp)
    try:
        if handle.local_path is not None and os.path.isdir(_OWN_FDS):
            yield f"{_OWN_FDS}/{stream.fileno()}"
        else:
            yield stream
    finally:
        stream.close()


_OWN_FDS = "/proc/self/fd"


def count_parsed_rows(handle: FileHandle, feed: PartnerFeed) -> int:
    """Records in the file as the parser reads them (a quoted newline is not a new row).

    For a file that cannot be parsed to the end, the count from its bytes (an estimate:
    nobody can load such a file, so it is only ever held and rejected as a whole).
    """
    if handle.size == 0:
        return 0
    if feed.format == "parquet":
        # The footer's count: the read step decodes only the contract's columns, so a file
        # holding none of them (all renamed) read as 0 rows.
        return count_data_rows(handle, feed)
    try:
        check_text_bytes(handle, feed)
        header = file_columns(handle, feed)
        return sum(table.num_rows for table in iter_file_chunks(handle, feed, header))
    except (UnreadableFile, ValueError, KeyError, pa.ArrowException):
        return count_data_rows(handle, feed)


def count_data_rows(handle: FileHandle, feed: PartnerFeed) -> int:
    """Data rows in the file, counted from its bytes (for held files that cannot be parsed)."""
    if handle.size == 0:
        return 0
    if feed.format == "parquet":
        try:
            with _parquet_source(handle) as source, pq.ParquetFile(source) as parquet:
                return parquet.metadata.num_rows
        except (pa.ArrowException, OSError):
            return 0
    # Line ends as Arrow reads them: LF, CRLF and a bare CR (a CR-only file's held batch
    # counted 0 rows); a CRLF split across two blocks is one.
    lines, last = 0, b"\n"
    with open_bytes(handle.fs, handle.path, handle.stamp) as stream:
        while block := stream.read(_HASH_BLOCK):
            lines += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
            lines -= last == b"\r" and block[:1] == b"\n"
            last = block[-1:]
    lines += last not in (b"\n", b"\r")  # a last line without its end (e.g. a truncated file)
    return max(lines - 1, 0) if feed.format == "csv" else lines


def _python_encoding(feed: PartnerFeed) -> str:
    # utf-8-sig tolerates a byte-order mark, which some partners' tools write.
    return "utf-8-sig" if feed.encoding == "utf-8" else feed.encoding


def read_csv_header(handle: FileHandle, feed: PartnerFeed) -> list[str]:
    """The CSV header's column names (decoded with the feed's encoding)."""
    with open_bytes(handle.fs, handle.path, handle.stamp) as stream:
        first = stream.readline(1 << 20)
    # A bare CR ends a line too (Arrow reads it so): a CR-only file ("CSV (Macintosh)") is
    # one \n-line, and csv.reader raised on its CRs, out of the hold path too, which stopped
    # the feed at that file on every run. A CR inside quotes is part of a name, as Arrow
    # reads it. No multi-byte character of UTF-8 or GBK holds 0x0D or 0x22.
    first = _UNQUOTED_LINE.match(first).group()
    try:
        text = first.decode(_python_encoding(feed)).rstrip("\n")
    except UnicodeDecodeError:
        raise UnreadableFile(f"wrong encoding: the header is not valid {feed.encoding}") from None
    if not text.strip():
        raise UnreadableFile("empty file: no header line")
    try:
        return next(csv.reader([text]))
    except csv.Error:
        # Non-strict csv.reader raises on one line only for a field over its limit.
        raise UnreadableFile(
            f"malformed header: a name over {csv.field_size_limit():,} characters") from None


# The line up to its first CR outside quotes ("" inside quotes is two quoted runs); an
# unclosed quote runs to the end. Always matches, so it never backtracks.
_UNQUOTED_LINE = re.compile(rb'(?:[^"\r]+|"[^"]*"?)*')


_COLUMN_COUNT = re.compile(r"Expected (\d+) columns, got (\d+)")
_JSON_TYPE_CHANGE = re.compile(r"Column\(/([^)]*)\) changed from (\w+) to (\w+)")


def _key_path(path: str) -> str:
    """A JSON key's path as Arrow names it (``a/b`` for ``{"a": {"b": ...}}``), as a reason
    prints it: as it is when each key on it is a plain name, else its masked shape
    (``safe_name`` alone masked the slash: ``a/b`` read 'a/a')."""
    keys = path.split("/")
    if len(path) <= 128 and all(safe_name(k) == k for k in keys):
        return path
    return safe_name(path)


def _explain(exc: Exception, feed: PartnerFeed) -> UnreadableFile:
    """A reason naming what is wrong, without quoting file content (it may be personal)."""
    message = str(exc)
    if isinstance(exc, UnicodeDecodeError) or re.search(r"invalid UTF8|codec", message, re.I):
        return UnreadableFile(f"wrong encoding: the file is not valid {feed.encoding}")
    if match := _COLUMN_COUNT.search(message):
        expected, got = match.groups()
        return UnreadableFile(
            f"truncated or malformed: a row has {got} fields where the header has {expected}"
        )
    if match := _JSON_TYPE_CHANGE.search(message):
        column, before, after = match.groups()
        declared = next((c for c in feed.columns if c.name == column), None)
        if declared is not None and declared.type in _JSON_TEXT_TYPES and before == "string":
            kind = {"array": "list"}.get(after, after)  # as `coerce_column` names it
            return UnreadableFile(
                f"type drift in {column}: a JSON {kind} where {declared.type} is declared")
        # The key is the partner's: any text (an escape, a line break, 5,000 characters).
        return UnreadableFile(
            f"type drift in {_key_path(column)}: JSON values change from {before} to {after} "
            "within one block of lines"
        )
    if "JSON parse error" in message:
        return UnreadableFile("truncated or malformed: a line is not valid JSON")
    return UnreadableFile(f"unreadable {feed.format}: {type(exc).__name__}")


class _PacedStream(io.RawIOBase):
    """A binary stream that a background reader may read only ``ahead`` bytes past what
    its consumer has taken (``advance``).

    Arrow's streaming CSV reader fetches blocks on an I/O thread into a queue of up to 32
    blocks, whatever the consumer does: at 64 MB blocks that is the whole of a 500 MB file
    in memory. Pacing the reads bounds the file's share of memory to a few blocks.
    """

    def __init__(self, raw: BinaryIO, ahead: int) -> None:
        super().__init__()
        self._raw = raw
        self._position = 0
        self._allowed = ahead
        self._stopped = False
        self._turn = threading.Condition()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with self._turn:
            while self._position >= self._allowed and not self._stopped:
                self._turn.wait()
            if self._stopped:
                return 0
        count = self._raw.readinto(buffer) or 0
        self._position += count
        return count

    def tell(self) -> int:
        return self._position

    def advance(self, nbytes: int) -> None:
        """The consumer took ``nbytes`` more: the reader may go that much further."""
        with self._turn:
            self._allowed += nbytes
            self._turn.notify_all()

    def close(self) -> None:
        with self._turn:
            self._stopped = True  # a read blocked in readinto returns end-of-file
            self._turn.notify_all()
        self._raw.close()
        super().close()


def _iter_csv(
    handle: FileHandle, feed: PartnerFeed, header: list[str], block_bytes: int,
    on_bytes: Callable[[memoryview], object] | None = None,
) -> Iterator[pa.Table]:
    # One parsing thread: Arrow's multi-threaded CSV parsing took ~2.5x the CPU time for
    # the same wall time here, and the ingest already overlaps reading with other work.
    read_options = pa_csv.ReadOptions(
        block_size=block_bytes,
        use_threads=False,
        encoding=_python_encoding(feed) if feed.encoding != "utf-8" else "utf8",
    )
    convert = pa_csv.ConvertOptions(
        column_types={name: pa.string() for name in header},
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    # Two blocks ahead of what was handed out: enough for a row that straddles blocks.
    stream = _PacedStream(_opened(handle, on_bytes), 2 * block_bytes)
    try:
        reader = pa_csv.open_csv(stream, read_options=read_options, convert_options=convert)
        for batch in reader:
            stream.advance(block_bytes)
            yield pa.Table.from_batches([batch])
    finally:
        stream.close()


# Contract columns are flat, so no JSON line needs nesting; Arrow's JSON parser recurses per
# level and crashed the process (SIGSEGV: no exception, no ledger row, the next run crashed on
# the same file) somewhere between 5,000 and 20,000 levels.
MAX_JSON_NESTING = 500


# An object as a value: with no array either, nothing in a block can nest.
_OBJECT_VALUE = re.compile(rb":[ \t\r]*\{")


def _check_nesting(block: bytes) -> None:
    """Refuse a block holding a line nested deeper than ``MAX_JSON_NESTING``, before Arrow
    parses it. A block of flat lines costs one scan (~45 ms per 32 MB block, a tenth of
    Arrow's parse); only a line with that many brackets is parsed to know its depth."""
    if b"[" not in block and not _OBJECT_VALUE.search(block):
        return
    for line in block.split(b"\n"):
        # A line no longer than the limit cannot hold more brackets than that: its length is
        # read, not counted, so a block whose strings hold brackets ("[urgent]" in a note)
        # costs a split (~60 ms per 32 MB) instead of two counts per line (0.11-0.25 s).
        if len(line) <= MAX_JSON_NESTING or (
                line.count(b"[") + line.count(b"{") <= MAX_JSON_NESTING):
            continue
        if _too_deep(line):
            raise UnreadableFile(
                f"a JSON line nested more than {MAX_JSON_NESTING} levels deep (the contract's "
                "columns are flat)")


def _too_deep(line: bytes) -> bool:
    try:
        json.loads(line)
    except RecursionError:  # Python's parser counts its depth (about 1,000 levels)
        return True
    except ValueError:
        # Malformed for Python is not for Arrow, which recurses before it meets the fault:
        # invalid UTF-8 in a string (only the first line's encoding is checked) let a line
        # nested 20,000 deep through, and Arrow crashed on it.
        pass
    return _depth(line) > MAX_JSON_NESTING


def _depth(line: bytes) -> int:
    """Bracket depth of ``line`` outside strings, well-formed or not (a byte scan: invalid
    UTF-8 does not stop it)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            escaped, in_string = (False, True) if escaped else (byte == 0x5C, byte != 0x22)
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth = max(depth - 1, 0)  # a stray closer must not hide the opening that follows
    return deepest


# Declared types JSON writes as text: read as text, as a CSV's cells are. Arrow's JSON reader
# otherwise infers timestamps from text: a time without an offset (the lender's local time
# in a CSV) became a UTC time 8 hours off, one with an offset a naive UTC one, a number in a
# time column epoch microseconds (1970), and "2026-03-02" in a text column was rewritten as
# "2026-03-02 00:00:00".
_JSON_TEXT_TYPES = frozenset({"string", "date", "timestamp"})


def _json_text_schema(feed: PartnerFeed) -> pa.Schema:
    """The contract's columns that JSON must send as strings, typed as strings."""
    return pa.schema([(c.name, pa.string()) for c in feed.columns if c.type in _JSON_TEXT_TYPES])


def _parse_jsonl_block(block: bytes, header: list[str], text: pa.Schema,
                       strings: frozenset[str]) -> pa.Table:
    _check_nesting(block)
    try:
        table = _read_json_block(block, text)
    except pa.ArrowInvalid:
        # A JSON number or bool in a declared text column (a numeric order_id, a phone
        # written as a number) is its text, as before text columns were read as text.
        quoted = _numbers_quoted(block, strings)
        if quoted is None:
            raise
        table = _read_json_block(quoted, text)
    # JSON lines may omit a null field: a block where no line carries it still has the column.
    for name in header:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    return table


def _read_json_block(block: bytes, text: pa.Schema) -> pa.Table:
    return pa_json.read_json(
        pa.py_buffer(block),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=len(block) + 1),
        parse_options=pa_json.ParseOptions(explicit_schema=text,
                                           unexpected_field_behavior="infer"),
    )


def _numbers_quoted(block: bytes, strings: frozenset[str]) -> bytes | None:
    """``block`` with every JSON number or bool in a field of ``strings`` (the declared text
    columns) written as its text: a number's exact digits (``12345``, ``1.50``, digits past
    2^63 kept), ``true``/``false``. None if none is found (Arrow's own error is then the
    reason). Only for a block Arrow refused. A byte pattern, not Python's parser (15 times
    the offset-time read per block, bench/bench_json_times.py): a key opens after ``{`` or
    ``,``, which a quote inside a JSON string (always escaped) cannot follow."""
    if not strings:
        return None
    names = b"|".join(re.escape(json.dumps(name, ensure_ascii=False).encode())
                      for name in sorted(strings))
    pattern = re.compile(rb'([{,]\s*(?:' + names + rb')\s*:\s*)'
                         rb'(-?\d[0-9.eE+-]*|true|false)(?=\s*[,}])')
    quoted, count = pattern.subn(rb'\1"\2"', block)
    return quoted if count else None


def _iter_jsonl(
    handle: FileHandle, feed: PartnerFeed, header: list[str], block_bytes: int,
    on_bytes: Callable[[memoryview], object] | None = None,
) -> Iterator[pa.Table]:
    # Cut the byte stream at line ends and parse each block on its own: Arrow's streaming
    # JSON reader fixes each column's type from the first block and fails when a later block
    # differs (a number column that later holds "1,234.50"); per block, the contract types it.
    carry, text = b"", _json_text_schema(feed)
    strings = frozenset(c.name for c in feed.columns if c.type == "string")
    with _opened(handle, on_bytes) as stream:
        while True:
            data = stream.read(block_bytes)
            block = carry + data
            if not data:
                if block.strip():
                    yield _parse_jsonl_block(block, header, text, strings)
                return
            cut = block.rfind(b"\n") + 1
            carry = block[cut:]
            if cut and block[:cut].strip():
                yield _parse_jsonl_block(block[:cut], header, text, strings)


def _iter_parquet(handle: FileHandle, block_bytes: int,
                  wanted: Collection[str]) -> Iterator[pa.Table]:
    """Tables of the file's columns named in ``wanted`` (the contract's; the ingest drops any
    other), of at most ``block_bytes`` decoded, each read sized from the footer and the
    schema before it is decoded. Other columns are never decoded: a column chunk is bounded
    only by ``_CHUNK_BLOCKS`` blocks, so a file of 12 columns of plain text, 0.97 MB on disk,
    grew the reader by 346 MB at a 4 MB block (11 of them extra, ignored afterwards).

    A file of a megabyte can hold gigabytes of repetitive text (1.3 MB of zstd held 400 MB),
    and the footer's sizes are after encoding (a million copies of one 400-byte string: 43 KB
    on disk, ~42 KB in the footer, 400 MB decoded; a constant int64 column: bytes in the
    footer, 8 MB decoded per million rows), so a read is sized from the widest of: the
    footer's average row, the schema's fixed widths (8 bytes an int64, 4 a text value's
    offset) and, per row group, the longest value of each dictionary page (decoded alone).
    When those longest values would make reads small, the row group's dictionary columns are
    read as dictionaries and cut by their values' lengths before they are decoded. A column
    chunk over ``_CHUNK_BLOCKS`` blocks decompressed (the footer says), a nested column, or
    a value or a row over the block is held, named by its column, before it is decoded.
    """
    readers: dict[tuple[str, ...], pq.ParquetFile] = {}
    with _parquet_source(handle) as source:
        try:
            readers[()] = pq.ParquetFile(source)
            meta, schema = readers[()].metadata, readers[()].schema_arrow
            _refuse_nested(schema)
            read = [index for index, name in enumerate(schema.names) if name in wanted]
            names = [schema.names[index] for index in read]
            utc = _utc_instants(readers[()], read)
            pending: list[pa.Table] = []
            pending_bytes = pending_rows = 0
            for group in range(meta.num_row_groups):
                rows, coded = _plan_read(readers, source, meta, schema, group, block_bytes, read)
                if not rows:
                    continue
                if coded not in readers:
                    readers[coded] = pq.ParquetFile(source, metadata=meta, read_dictionary=coded)
                # One thread: decoding the columns at once held 125-200 MB (varying run to run)
                # for a 26 MB read of 60 int64 columns, one thread 125 MB every time.
                batches = readers[coded].iter_batches(batch_size=rows, row_groups=[group],
                                                      columns=names, use_threads=False)
                for batch in batches if coded else _gathered(batches, block_bytes):
                    for piece, width in _decoded_slices(batch, block_bytes):
                        # Joined up to the block: a file of 20-row groups came as 20-row chunks,
                        # each paying the ingest's per-chunk costs.
                        if pending and (pending_bytes + width > block_bytes
                                        or pending_rows + piece.num_rows > _PARQUET_MAX_ROWS):
                            yield _as_utc(_joined(pending), utc)
                            pending, pending_bytes, pending_rows = [], 0, 0
                        pending.append(piece)
                        pending_bytes += width
                        pending_rows += piece.num_rows
                        if pending_bytes + width > block_bytes:
                            # Another piece like it would not fit: handed on now, not kept
                            # through the next read (a third block alive at once).
                            yield _as_utc(_joined(pending), utc)
                            pending, pending_bytes, pending_rows = [], 0, 0
            if pending:
                yield _as_utc(_joined(pending), utc)
        finally:
            for reader in readers.values():
                reader.close()


def _utc_instants(parquet: pq.ParquetFile, read: list[int]) -> list[str]:
    """The columns (of ``read``, flat) whose zoneless timestamps are UTC instants by the
    file's own schema: INT96 (Spark's, Hive's and Impala's default, written as UTC) and a
    timestamp whose logical type says isAdjustedToUTC. Arrow reads INT96 without a zone,
    so the ingest took it as the lender's local time, 8 hours early."""
    utc = []
    for index in read:
        column = parquet.schema.column(index)
        logical = column.logical_type.to_json() if column.logical_type else ""
        if column.physical_type == "INT96" or '"isAdjustedToUTC": true' in logical:
            utc.append(column.name)
    return utc


def _as_utc(table: pa.Table, utc: list[str]) -> pa.Table:
    """``table`` with the zoneless timestamps of ``utc`` zoned UTC (their instants)."""
    for name in utc:
        index = table.schema.get_field_index(name)
        kind = table.schema.field(index).type
        if pa.types.is_timestamp(kind) and kind.tz is None:
            zoned = table.column(index).cast(pa.timestamp(kind.unit, tz="UTC"))
            table = table.set_column(index, name, zoned)
    return table


_PARQUET_MAX_ROWS = 1_000_000
# A column chunk's decompressed size (in the footer) bounds what any read of it decodes,
# plain pages and dictionary page alike; over this many blocks it is held unread.
_CHUNK_BLOCKS = 4
# Reads of fewer rows than this (a rare long value sets the width) read the row group's
# dictionary columns as dictionaries instead, cut by their values' lengths.
_PLAIN_MIN_ROWS = 10_000
_OFFSET = 4  # bytes of a text value's offset
_LEVELS = 2  # bytes per row of every column while Arrow decodes it (its definition levels)
_INDEX = 8  # bytes per row of a column read as a dictionary (index, and its offset decoded)


# Small reads gathered before they are measured and cut: a row group read a few rows at a time
# (where its pages are dense) paid the slicing per read, 16 s and 220 MB of per-piece objects
# for 40,000 reads of 5 rows.
_GATHER_READS = 512


def _gathered(batches: Iterator[pa.RecordBatch], block_bytes: int) -> Iterator[pa.RecordBatch]:
    """Small ``batches`` concatenated by up to ``_GATHER_READS`` while they hold under half
    the block; a batch of an eighth of the block or more comes as it is (concatenating two
    of 13 MB cost the 1M-row benchmark a 26 MB copy, 1.17-1.33 times main's time)."""
    held: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        if held and (size + batch.nbytes > block_bytes // 2 or len(held) >= _GATHER_READS
                     or batch.nbytes >= block_bytes // 8):
            yield held[0] if len(held) == 1 else pa.concat_batches(held)
            held, size = [], 0
        if batch.nbytes >= block_bytes // 8:
            yield batch
            continue
        held.append(batch)
        size += batch.nbytes
    if held:
        yield held[0] if len(held) == 1 else pa.concat_batches(held)


def _joined(tables: list[pa.Table]) -> pa.Table:
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables).combine_chunks()


def _value_type(kind: pa.DataType) -> pa.DataType:
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _is_text(kind: pa.DataType) -> bool:
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_binary(kind) or pa.types.is_large_binary(kind))


def _refuse_nested(schema: pa.Schema) -> None:
    """Contract columns are flat (string, int, float, bool, date, timestamp): a list, struct
    or map column can be no contract's, and its decoded size is not bounded by its rows."""
    for field in schema:
        if pa.types.is_nested(_value_type(field.type)):
            raise UnreadableFile(f"{safe_name(field.name)} is a nested column "
                                 "(list, struct or map): the contract's columns are flat")


def _fixed_width(kind: pa.DataType) -> int:
    try:
        return max(kind.bit_width // 8, 1)
    except ValueError:  # null: no values
        return 0


def _too_wide(
    what: str, size: float, block_bytes: int, how: str = "once decoded"
) -> UnreadableFile:
    return UnreadableFile(f"{what} of {size / (1 << 20):,.1f} MB {how}: over the "
                          f"{block_bytes / (1 << 20):,.0f} MB read block")


def _plan_read(
    readers: dict[tuple[str, ...], pq.ParquetFile], source: Any, meta: pq.FileMetaData,
    schema: pa.Schema, group: int, block_bytes: int, read: list[int],
) -> tuple[int, tuple[str, ...]]:
    """Rows per read of row group ``group`` (its columns ``read``), and the columns to read
    as dictionaries."""
    part = meta.row_group(group)
    if not part.num_rows or not read:
        return 0, ()
    fixed = _LEVELS * len(read)
    dictionaries: list[str] = []
    for index in read:
        column, kind = part.column(index), _value_type(schema.field(index).type)
        if column.total_uncompressed_size > _CHUNK_BLOCKS * block_bytes:
            raise UnreadableFile(
                f"a column chunk of {safe_name(column.path_in_schema)} of "
                f"{column.total_uncompressed_size / (1 << 20):,.1f} MB decompressed (its "
                f"footer says): over {_CHUNK_BLOCKS} times the "
                f"{block_bytes / (1 << 20):,.0f} MB read block")
        if not column.has_dictionary_page and (
                each := column.total_uncompressed_size / part.num_rows) > block_bytes:
            raise _too_wide(f"a value in {safe_name(column.path_in_schema)}", each,
                            block_bytes, "or more once decompressed")
        if not _is_text(kind):
            fixed += _fixed_width(kind)
        elif not column.has_dictionary_page:
            fixed += _OFFSET  # its values' bytes are in its pages (``spans``)
        else:
            dictionaries.append(column.path_in_schema)
    spans = _page_spans(source, part, read, block_bytes)  # before any dictionary is probed
    longest: dict[str, int] = {}
    for name in dictionaries:
        size = next(part.column(i).total_uncompressed_size for i in read
                    if part.column(i).path_in_schema == name)
        longest[name] = (size if size * part.num_rows <= block_bytes  # small: no probe
                         else _longest_in_dictionary(readers, source, meta, group, name,
                                                     block_bytes))
    average = sum(part.column(index).total_uncompressed_size for index in read) / part.num_rows
    most = int(min(_PARQUET_MAX_ROWS, part.num_rows, max(1, block_bytes // max(average, 1))))

    def rows_of(per_row: int) -> int:
        """The most rows (up to ``most``) whose widths and pages fit the block; 0 if none."""
        def fits(rows: int) -> bool:
            return per_row * rows + sum(_span_bytes(span, rows) for span in spans) <= block_bytes
        if fits(most):
            return most
        low, high = 0, most  # fits(low) or low == 0; not fits(high)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low

    plain = rows_of(fixed + sum(n + _OFFSET for n in longest.values()))
    if plain >= min(part.num_rows, _PLAIN_MIN_ROWS):
        return plain, ()
    # A chunk whose dictionary overflowed into plain pages is read plain: read as a
    # dictionary, Arrow hashes those pages' values into one dictionary for the whole chunk
    # (every long value of the chunk held at once: 72 MB for five columns at a 4 MB block).
    overflowed = {column.path_in_schema for column, span in
                  zip((part.column(index) for index in read), spans, strict=True)
                  if span.plain_pages}
    coded_names = tuple(sorted(name for name in longest if name not in overflowed))
    if coded := rows_of(fixed + sum(n + _OFFSET for name, n in longest.items()
                                    if name in overflowed)
                        + (_INDEX + _OFFSET) * len(coded_names)):
        return coded, coded_names
    raise _too_wide("a row with its pages", fixed + sum(_span_bytes(s, 1) for s in spans),
                    block_bytes, "decompressed")


class _Spans(NamedTuple):
    """A column chunk's pages: what a read of some of its rows may hold at once (the pages
    it touches, whole, and the dictionary)."""

    starts: np.ndarray  # each data page's first row
    ends: np.ndarray  # and its last row + 1
    summed: np.ndarray  # the data pages' decompressed bytes summed, 0 before the first
    dictionary: int  # the dictionary page's decompressed bytes
    plain_pages: bool  # a dictionary chunk with plain data pages (its dictionary overflowed)

_MAX_PAGE_HEADER = 16 << 20  # Arrow's own limit
# Each page header is parsed here in Python (~12 us; 1M one-value pages took 12.6 s against
# Arrow's 2.1 s), so a chunk may have a page per 16 rows or per KB decompressed, and 1,024
# more. Writers cut pages at a size (Arrow and parquet-mr: 1 MB) checked every batch of
# values (Arrow: 1,024) or at a row count (20,000): legitimate pages are far larger.
_ROWS_PER_PAGE = 16
_BYTES_PER_PAGE = 1 << 10
_FREE_PAGES = 1 << 10


def _span_bytes(spans: _Spans, rows: int) -> int:
    """The most decompressed page bytes any ``rows`` consecutive rows of a column touch."""
    starts, ends, summed, dictionary, _ = spans
    # Pages i..j can share a read of ``rows`` rows when the rows between them are fewer than
    # rows - 1: it takes i's last row and j's first.
    first = np.minimum(np.searchsorted(ends, starts - rows + 2), np.arange(len(starts)))
    return dictionary + int((summed[1:] - summed[first]).max())


def _page_spans(source: Any, part: pq.RowGroupMetaData, read: list[int],
                block_bytes: int) -> list[_Spans]:
    """Each read column's pages, from their headers when the columns' chunks together could
    exceed half the block (otherwise one span of the chunk's size: a bound as good).

    Arrow decompresses a page whole and keeps each column's current page and dictionary
    while it reads a batch, and a plain text page's values are its bytes: so a read's decoded
    text and the pages it holds are bounded by the pages its rows touch, and no finer (one
    row may hold a page's every byte). A row whose pages alone are over the block cannot be
    read within it: the file is held."""
    columns = [part.column(index) for index in read]
    if sum(c.total_uncompressed_size for c in columns) <= block_bytes // 2:
        # Read as a dictionary, plain pages are hashed into one for the chunk: at most its
        # size, and these chunks together are at most half the block.
        return [_Spans(np.zeros(1, np.int64), np.full(1, part.num_rows, np.int64),
                       np.array([0, c.total_uncompressed_size], np.int64), 0, False)
                for c in columns]
    stream = open(source, "rb") if isinstance(source, str) else source  # noqa: SIM115
    try:
        spans = [_walk_pages(stream, column, part.num_rows) for column in columns]
    finally:
        if stream is not source:
            stream.close()
    at_one_row = [_span_bytes(span, 1) for span in spans]
    if sum(at_one_row) > block_bytes:
        widest = int(np.argmax(at_one_row))
        name = safe_name(columns[widest].path_in_schema)
        if at_one_row[widest] > block_bytes:
            raise _too_wide(f"a page of {name}", at_one_row[widest], block_bytes,
                            "decompressed (its header says)")
        raise _too_wide(f"the pages of one row ({name} the largest)", sum(at_one_row),
                        block_bytes, "decompressed (their headers say)")
    return spans


def _walk_pages(stream: BinaryIO, column: Any, rows: int) -> _Spans:
    """``column``'s pages as ``_Spans``, from their headers (nothing decompressed)."""
    name = safe_name(column.path_in_schema)
    start = column.data_page_offset
    if column.has_dictionary_page and 0 < column.dictionary_page_offset < start:
        start = column.dictionary_page_offset  # as Arrow finds the chunk
    end = start + column.total_compressed_size
    # The footer's offsets are unchecked: a negative seek is an OSError in a local file but
    # a ValueError in fsspec's buffered files, which would escape as a traceback.
    if start < 0 or end > stream.seek(0, io.SEEK_END):
        raise UnreadableFile(f"unreadable parquet: the page offsets of {name} are outside "
                             "the file")
    counts: list[int] = []
    sizes: list[int] = []
    dictionary = 0
    plain = False
    most = _FREE_PAGES + max(rows // _ROWS_PER_PAGE,
                             column.total_uncompressed_size // _BYTES_PER_PAGE)
    while start < end:
        if len(counts) >= most:
            raise UnreadableFile(
                f"the pages of {name}: over {most:,} for {rows:,} rows of "
                f"{column.total_uncompressed_size / (1 << 20):,.1f} MB decompressed (at most "
                f"one per {_ROWS_PER_PAGE} rows or {_BYTES_PER_PAGE:,} bytes, and "
                f"{_FREE_PAGES:,} more)")
        header, length = _page_header(stream, start, name)
        kind, size, stored = header.get(1), header.get(2), header.get(3)
        if not isinstance(size, int) or not isinstance(stored, int) or size < 0 or stored < 0:
            raise UnreadableFile(f"unreadable parquet: a page header of {name} is corrupt")
        if kind == 2:
            dictionary += size
        elif kind in (0, 3):
            detail = header.get(5 if kind == 0 else 8)
            count = detail.get(1 if kind == 0 else 3) if isinstance(detail, dict) else None
            if not isinstance(count, int) or count < 0:
                raise UnreadableFile(f"unreadable parquet: a page header of {name} is corrupt")
            counts.append(count)
            sizes.append(size)
            # Dictionary indices are PLAIN_DICTIONARY (2) or RLE_DICTIONARY (8).
            plain = plain or detail.get(2 if kind == 0 else 4) not in (2, 8)
        start += length + stored
    if sum(counts) != rows or not counts:
        raise UnreadableFile(f"unreadable parquet: the pages of {name} do not hold its rows")
    ends = np.cumsum(np.array(counts, np.int64))
    return _Spans(ends - counts, ends, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                  dictionary, plain and dictionary > 0)


def _page_header(stream: BinaryIO, offset: int, name: str) -> tuple[dict[int, Any], int]:
    """The page header at ``offset`` (Thrift's compact protocol) and its length."""
    want = 1 << 12
    while True:
        stream.seek(offset)
        data = stream.read(want)
        try:
            return _thrift_struct(data, 0)
        except IndexError:  # the header runs past what was read
            if len(data) < want or want >= _MAX_PAGE_HEADER:
                break
            want *= 4
        except (ValueError, RecursionError):
            break
    raise UnreadableFile(f"unreadable parquet: a page header of {name} is corrupt")


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _thrift_value(data: bytes, at: int, kind: int) -> tuple[Any, int]:
    if kind in (1, 2):  # a field's boolean is its type
        return kind == 1, at
    if kind == 3:
        return data[at], at + 1
    if kind in (4, 5, 6):
        value, at = _varint(data, at)
        return (value >> 1) ^ -(value & 1), at
    if kind == 7:
        return None, at + 8
    if kind == 8:
        length, at = _varint(data, at)
        if at + length > len(data):
            raise IndexError("past the data")
        return None, at + length
    if kind in (9, 10):
        head = data[at]
        count, item = head >> 4, head & 0x0F
        at += 1
        if count == 15:
            count, at = _varint(data, at)
        _check_count(data, at, count)
        for _ in range(count):
            at = _thrift_item(data, at, item)
        return None, at
    if kind == 11:
        count, at = _varint(data, at)
        if count:
            types = data[at]
            at += 1
            _check_count(data, at, 2 * count)
            for _ in range(count):
                at = _thrift_item(data, at, types >> 4)
                at = _thrift_item(data, at, types & 0x0F)
        return None, at
    if kind == 12:
        return _thrift_struct(data, at)
    raise ValueError(f"unknown Thrift type {kind}")


def _check_count(data: bytes, at: int, count: int) -> None:
    # Every element takes a byte at least (a bool too): a larger count is corrupt, and left
    # unchecked a count of 2**40 bools would loop for days without reading a byte.
    if count > len(data) - at:
        raise IndexError("a count past the data")


def _thrift_item(data: bytes, at: int, kind: int) -> int:
    """Where a container's element of type ``kind`` ends (its bool is a byte, unlike a
    field's)."""
    return at + 1 if kind in (1, 2) else _thrift_value(data, at, kind)[1]


def _thrift_struct(data: bytes, at: int) -> tuple[dict[int, Any], int]:
    fields: dict[int, Any] = {}
    last = 0
    while True:
        head = data[at]
        at += 1
        if head == 0:
            return fields, at
        delta, kind = head >> 4, head & 0x0F
        if delta:
            last += delta
        else:
            number, at = _varint(data, at)
            last = (number >> 1) ^ -(number & 1)
        fields[last], at = _thrift_value(data, at, kind)


def _longest_in_dictionary(
    readers: dict[tuple[str, ...], pq.ParquetFile], source: Any, meta: pq.FileMetaData,
    group: int, name: str, block_bytes: int,
) -> int:
    """The longest value of ``name``'s dictionary page in ``group``: read as a dictionary, one
    row decodes that page (bounded by the chunk's size in the footer) and one index."""
    probe = (name,)
    if probe not in readers:
        readers[probe] = pq.ParquetFile(source, metadata=meta, read_dictionary=list(probe))
    batch = next(readers[probe].iter_batches(batch_size=1, columns=[name], row_groups=[group]),
                 None)
    if batch is None:
        return 0
    column = batch.column(0)
    values = column.dictionary if pa.types.is_dictionary(column.type) else column
    longest = int(pc.max(pc.binary_length(values)).as_py() or 0) if len(values) else 0
    if longest > block_bytes:
        raise _too_wide(f"a value in {safe_name(name)}", longest, block_bytes)
    return longest


def _decoded_slices(
    batch: pa.RecordBatch, block_bytes: int
) -> Iterator[tuple[pa.Table, int]]:
    """``batch`` cut into tables of at most ``block_bytes`` decoded, each decoded only then;
    with its decoded bytes."""
    widths = np.zeros(batch.num_rows, dtype=np.int64)
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        cells = _cell_widths(column)
        if (widest := int(cells.max(initial=0))) > block_bytes:
            raise _too_wide(f"a value in {safe_name(name)}", widest, block_bytes)
        widths += cells
    if (widest := int(widths.max(initial=0))) > block_bytes:
        raise _too_wide("a row", widest, block_bytes)
    ends = np.cumsum(widths)
    start = 0
    while start < batch.num_rows:
        before = int(ends[start - 1]) if start else 0
        stop = int(np.searchsorted(ends, before + block_bytes, side="right"))
        piece = batch.slice(start, stop - start)  # stop > start: no row is over the block
        yield pa.Table.from_arrays(
            [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c
             for c in piece.columns],
            names=piece.schema.names,
        ), int(ends[stop - 1]) - before
        start = stop


def _cell_widths(column: pa.Array) -> np.ndarray:
    """Each row's bytes in ``column`` once decoded; a dictionary's from its values' lengths."""
    dictionary = pa.types.is_dictionary(column.type)
    values = column.dictionary if dictionary else column
    if not _is_text(values.type):
        return np.full(len(column), _fixed_width(values.type), dtype=np.int64)
    # Lengths from the offsets, not pc.binary_length(...).fill_null(0): that took ~40 ms per
    # 46,000-row all-null column (2.3 s for a file of 60 such columns).
    lengths = _buffer(values, 1, np.int64 if _is_large(values.type) else np.int32, 1)
    lengths = np.diff(lengths).astype(np.int64) + _OFFSET
    if not dictionary:
        return lengths
    indices = column.indices
    at = _buffer(indices, 1, indices.type.to_pandas_dtype())
    if not indices.null_count:
        return lengths[at]
    valid = pc.is_valid(indices).to_numpy(zero_copy_only=False)
    return np.where(valid, lengths[np.where(valid, at, 0)] if len(lengths) else 0, _OFFSET)


def _is_large(kind: pa.DataType) -> bool:
    return pa.types.is_large_string(kind) or pa.types.is_large_binary(kind)


def _buffer(array: pa.Array, index: int, dtype: Any, extra: int = 0) -> np.ndarray:
    """Buffer ``index`` of ``array`` as numbers, its slice's ``len + extra`` of them."""
    buffer = array.buffers()[index]
    if buffer is None:
        return np.zeros(len(array) + extra, dtype=dtype)
    return np.frombuffer(buffer, dtype=dtype)[array.offset:array.offset + len(array) + extra]


def file_columns(handle: FileHandle, feed: PartnerFeed) -> list[str]:
    """The column names the file actually carries."""
    if handle.size == 0:
        raise UnreadableFile("empty file (0 bytes)")
    try:
        if feed.format == "csv":
            return read_csv_header(handle, feed)
        if feed.format == "parquet":
            with _parquet_source(handle) as source, pq.ParquetFile(source) as parquet:
                return parquet.schema_arrow.names
        with open_bytes(handle.fs, handle.path, handle.stamp) as stream:
            first = stream.readline(16 << 20)
        first.decode("utf-8")  # a JSON-lines feed must be UTF-8: fail here, by name
        _check_nesting(first)
        return pa_json.read_json(pa.py_buffer(first)).column_names
    except UnreadableFile:
        raise
    except (pa.ArrowException, UnicodeDecodeError, OSError) as exc:
        raise _explain(exc, feed) from None


def _header_only(handle: FileHandle) -> bool:
    """A CSV that is one line without its newline: a header and no rows (Arrow's reader
    fails on it, "cannot infer number of columns", though with the newline it reads 0 rows)."""
    with open_bytes(handle.fs, handle.path, handle.stamp) as stream:
        first = stream.readline(1 << 20)
    # A CR-only file is one \n-line too: its rows were dropped as a header's (0 rows loaded).
    return len(first) == handle.size and not first.endswith(b"\n") and b"\r" not in first


def iter_file_chunks(
    handle: FileHandle, feed: PartnerFeed, header: list[str], block_bytes: int = READ_BLOCK_BYTES,
    *, on_bytes: Callable[[memoryview], object] | None = None,
) -> Iterator[pa.Table]:
    """The file's rows as Arrow tables of bounded size; read errors become UnreadableFile.

    ``on_bytes`` is given every byte a CSV or JSON-lines reader takes, in order (Parquet is
    read by offsets from its footer, so it is not called for Parquet)."""
    if feed.format == "csv":
        chunks = (
            iter(()) if _header_only(handle)
            else _iter_csv(handle, feed, header, block_bytes, on_bytes)
        )
    elif feed.format == "jsonl":
        chunks = _iter_jsonl(handle, feed, header, block_bytes, on_bytes)
    else:
        chunks = _iter_parquet(handle, block_bytes, {column.name for column in feed.columns})
    try:
        yield from chunks
    except (pa.ArrowException, UnicodeDecodeError, OSError) as exc:
        raise _explain(exc, feed) from None
