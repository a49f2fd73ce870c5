"""The JSON-lines nesting check (``_check_nesting``) on one 32 MB read block of flat order
lines, with and without brackets inside strings, against Arrow's parse of the same block.

Prints a table and writes bench/results/json-nesting.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402
import pyarrow.json as pa_json  # noqa: E402

from bench.results_file import best_of, machine_facts, write_results  # noqa: E402
from puhui.ingest.reading import READ_BLOCK_BYTES, _check_nesting  # noqa: E402


def _block(every: int) -> bytes:
    """Order lines up to one read block; every ``every``-th note starts with "[urgent]"."""
    lines, size, i = [], 0, 0
    while size < READ_BLOCK_BYTES:
        note = ("[urgent] " if every and i % every == 0 else "") + "call back before noon"
        line = json.dumps({"order_id": f"O{i:09d}", "customer_id": f"C{i % 99991:07d}",
                           "amount": f"{i % 5000}.50", "order_date": "2026-09-30",
                           "status": "paid", "note": note}).encode()
        lines.append(line)
        size += len(line) + 1
        i += 1
    return b"\n".join(lines) + b"\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    args = parser.parse_args()
    repeat = 3 if args.quick else 7
    rows = []
    for label, every in [("no brackets", 0), ("[urgent] in 1 note in 1,000", 1000),
                         ("[urgent] in every note", 1)]:
        block = _block(every)
        check = best_of(lambda b=block: _check_nesting(b), repeat)
        parse = best_of(lambda b=block: pa_json.read_json(
            pa.py_buffer(b), read_options=pa_json.ReadOptions(
                use_threads=False, block_size=len(b) + 1)), min(repeat, 3))
        rows.append({"block": label, "mb": round(len(block) / 2**20, 1),
                     "check_s": round(check, 4), "arrow_parse_s": round(parse, 4)})
        print(f"{label:32} {len(block) / 2**20:5.1f} MB  check {check * 1000:7.1f} ms  "
              f"Arrow parse {parse * 1000:7.1f} ms")
    write_results("json-nesting", {"machine": machine_facts(), "rows": rows}, args.quick)


if __name__ == "__main__":
    main()
