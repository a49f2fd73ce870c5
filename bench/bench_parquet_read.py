"""Reading a 1M-row Parquet file of product events through the ingest's reader
(``iter_file_chunks``: reads sized from the footer, the schema's widths and each dictionary
page's longest value, each chunk's decoded width measured), against Arrow's plain
``iter_batches`` of the same file at the footer's batch size, which measures nothing.

Two files: as Arrow writes by default (dictionary pages, falling back to plain for the
unique event ids) and with no dictionary at all. With ``--baseline REF`` the reader of that
git ref (``puhui/ingest/reading.py`` as committed there) is timed in the same run, each
repeat alternating with this one, so a change to the reader is measured against its
predecessor under the same load. Then a hostile file of 1M one-value pages: the time until
the reader holds it, against Arrow's read. Prints a table and writes
bench/results/parquet-read.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bench.results_file import best_of, machine_facts, write_results  # noqa: E402
from puhui.config import PartnersConfig, load_config  # noqa: E402
from puhui.ingest.reading import (  # noqa: E402
    READ_BLOCK_BYTES,
    UnreadableFile,
    iter_file_chunks,
    open_landed_file,
)
from puhui.settings import repo_root  # noqa: E402

ROWS = 1_000_000


def _reader_at(ref: str, folder: str):  # noqa: ANN202 - a module
    """``iter_file_chunks`` as committed at git ``ref`` (imported from a copy)."""
    source = subprocess.run(["git", "-C", str(repo_root()), "show",
                             f"{ref}:puhui/ingest/reading.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(folder) / "baseline_reading.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_reading", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _events(rows: int) -> pa.Table:
    rng = np.random.default_rng(7)
    start = np.datetime64("2026-09-30T00:00:00", "us")
    return pa.table({
        "event_id": pa.array([f"EV{i:012d}" for i in range(rows)]),
        "customer_id": pa.array([f"C{x:08d}" for x in rng.integers(0, 200_000, rows)]),
        "event_time": pa.array(start + rng.integers(0, 86_400_000_000, rows).astype(
            "timedelta64[us]")),
        "product_code": pa.array(rng.choice(["P01", "P02", "P03", "P04", "P05"], rows)),
        "scenario": pa.array(rng.choice(["app", "sms", "branch"], rows)),
        "event_type": pa.array(rng.choice(["impression", "click", "application", "uptake"],
                                          rows)),
    })


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    parser.add_argument("--baseline", help="a git ref whose reader is timed alongside")
    args = parser.parse_args()
    repeat = 3 if args.quick else 7
    feed = load_config(repo_root() / "configs", PartnersConfig).get("product_events")
    table = _events(ROWS)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        before = _reader_at(args.baseline, folder) if args.baseline else None
        for label, dictionary in [("Arrow's default (dictionary)", True),
                                  ("no dictionary", False)]:
            path = Path(folder) / f"events-{dictionary}.parquet"
            pq.write_table(table, path, use_dictionary=dictionary)
            handle = open_landed_file(str(path))
            batch = READ_BLOCK_BYTES // max(
                pq.ParquetFile(path).metadata.row_group(0).total_byte_size // ROWS, 1)

            def ours(h=handle) -> int:  # noqa: ANN001
                return sum(t.num_rows for t in iter_file_chunks(h, feed, table.column_names))

            def plain(p=path, b=batch) -> int:  # noqa: ANN001
                return sum(b.num_rows for b in pq.ParquetFile(p).iter_batches(batch_size=b))

            timed = {"reader_s": ours, "iter_batches_s": plain}
            if before is not None:
                timed["baseline_s"] = lambda h=handle: sum(  # noqa: E731
                    t.num_rows for t in before.iter_file_chunks(h, feed, table.column_names))
            assert all(func() == ROWS for func in timed.values())
            runs: dict[str, list[float]] = {name: [] for name in timed}
            for _ in range(repeat):  # alternating: each repeat sees the same load for all
                for name, func in timed.items():
                    runs[name].append(best_of(func, 1))
            best = {name: min(seconds) for name, seconds in runs.items()}
            row = {"file": label, "mb": round(path.stat().st_size / 2**20, 1),
                   **{name: round(seconds, 3) for name, seconds in best.items()}}
            if args.baseline:
                row["reader_vs_baseline"] = round(best["reader_s"] / best["baseline_s"], 2)
                # Each repeat's own ratio, so a README's range can be read back from here.
                ratios = [ours_s / main_s for ours_s, main_s in
                          zip(runs["reader_s"], runs["baseline_s"], strict=True)]
                row["reader_vs_baseline_min_max"] = [round(min(ratios), 2),
                                                     round(max(ratios), 2)]
            rows.append(row)
            print(f"{label:30} {row['mb']:5.1f} MB  " + "  ".join(
                f"{name} {value}" for name, value in row.items() if name not in ("file", "mb")))
        tiny = _tiny_pages(Path(folder) / "tiny.parquet", feed)
    print(f"{ROWS:,} one-value pages: held in {tiny['held_s']} s ({tiny['reason']}); "
          f"Arrow's read_table {tiny['arrow_read_table_s']} s")
    write_results("parquet-read", {"machine": machine_facts(), "rows": ROWS,
                                   "baseline": args.baseline, "table": rows,
                                   "tiny_pages": tiny},
                  args.quick)


def _tiny_pages(path: Path, feed: object) -> dict[str, object]:
    """A hostile chunk: ROWS event ids in one-value pages (each header is parsed in Python):
    the time until the reader holds it, against Arrow reading it whole."""
    pq.write_table(pa.table({"event_id": [f"{i:012}" for i in range(ROWS)]}), path,
                   use_dictionary=False, compression="none", write_batch_size=1,
                   data_page_size=1)
    reason = ""

    def held() -> None:
        nonlocal reason
        try:
            for _ in iter_file_chunks(open_landed_file(str(path)), feed, ["event_id"]):
                pass
        except UnreadableFile as exc:
            reason = str(exc)

    held_s = best_of(held, 1)
    return {"pages": ROWS, "mb": round(path.stat().st_size / 2**20, 1), "reason": reason,
            "held_s": round(held_s, 2),
            "arrow_read_table_s": round(best_of(lambda: pq.read_table(path), 1), 2)}


if __name__ == "__main__":
    main()
