"""Writing batches to landing-zone files: CSV, JSON lines (UTF-8 or GBK) and Parquet.

A ``FileSink`` is one output file. Batches appended to it are buffered up to
``FLUSH_ROWS`` rows, rendered with the vectorized formatters and appended to the file, so a
month of history streams through in bounded memory. Output is byte-for-byte reproducible:
CSV/JSON text does not depend on the buffering, and Parquet row groups depend only on the
row counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from puhui.generate.batch import (
    Batch,
    batch_rows,
    concat_batches,
    is_json_number,
    render_arrow,
    render_text,
)
from puhui.generate.feeds import FeedSpec
from puhui.generate.formatting import concatenated_bytes, csv_line, join_lines, quote

FLUSH_ROWS = 250_000
PARQUET_COMPRESSION = "zstd"


class FileSink:
    """One output file of a feed; ``append`` batches, then ``close``."""

    def __init__(self, path: Path, spec: FeedSpec, encoding: str | None = None) -> None:
        self.path = path
        self.spec = spec
        self.encoding = encoding or spec.encoding
        self.rows = 0
        self._pending: list[Batch] = []
        self._pending_rows = 0
        self._columns: list[str] | None = None
        self._text: BinaryIO | None = None
        self._parquet: pq.ParquetWriter | None = None
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, batch: Batch) -> None:
        if self._columns is None:
            self._columns = list(batch)
        elif list(batch) != self._columns:
            raise ValueError(f"{self.path.name}: batch columns changed within a file")
        n = batch_rows(batch)
        self.rows += n
        self._pending.append(batch)
        self._pending_rows += n
        if self._pending_rows >= FLUSH_ROWS:
            self._flush()

    def close(self) -> int:
        """Write what is buffered (and the header of an empty file); return rows written."""
        self._flush(final=True)
        if self._text is not None:
            self._text.close()
        if self._parquet is not None:
            self._parquet.close()
        return self.rows

    def _flush(self, final: bool = False) -> None:
        if not self._pending:
            if final and self._text is None and self._parquet is None:
                raise ValueError(f"{self.path.name}: closed without any batch")
            return
        batch = concat_batches(self._pending)
        self._pending, self._pending_rows = [], 0
        if self.spec.ext == "parquet":
            self._write_parquet(batch)
        else:
            self._write_text(batch)

    def _write_text(self, batch: Batch) -> None:
        if self._text is None:
            self._text = open(self.path, "wb")  # noqa: SIM115 - closed in close()
            if self.spec.ext == "csv":
                self._write_encoded(csv_line(list(batch)))
        if batch_rows(batch) == 0:
            return
        lines = csv_lines(batch) if self.spec.ext == "csv" else json_lines(batch)
        self._write_encoded(concatenated_bytes(lines))

    def _write_encoded(self, data: bytes | pa.Buffer) -> None:
        assert self._text is not None
        if self.encoding == "utf-8":
            self._text.write(data)
        else:
            self._text.write(memoryview(data).tobytes().decode("utf-8").encode(self.encoding))

    def _write_parquet(self, batch: Batch) -> None:
        table = pa.table({name: render_arrow(col) for name, col in batch.items()})
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(
                self.path, table.schema, compression=PARQUET_COMPRESSION
            )
        if table.num_rows or self.rows == 0:
            self._parquet.write_table(table)


def csv_lines(batch: Batch) -> pa.Array:
    """One CSV line per row (values never contain quotes or line breaks; amounts that hold
    a comma are already quoted by their formatter)."""
    return join_lines([render_text(col) for col in batch.values()])


def json_lines(batch: Batch) -> pa.Array:
    """One JSON object per row, keys in column order; strings are plain ASCII/UTF-8 text
    without quotes or backslashes, so no escaping is needed."""
    pieces: list[pa.Array | str] = []
    for i, (name, col) in enumerate(batch.items()):
        text = render_text(col)
        if not is_json_number(col):
            text = quote(text)
        if col.valid is not None:
            text = pc.fill_null(text, "null")
        pieces.append(("{" if i == 0 else ",") + f'"{name}":')
        pieces.append(text)
    pieces.append("}")
    return join_lines([pc.binary_join_element_wise(*pieces, "")])
