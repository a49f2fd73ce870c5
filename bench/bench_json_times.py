"""Reading and typing 300,000 JSON order lines (the shipped ecommerce_orders contract) by
how their times and phones are written: times with an offset, times without one (the
lender's local time: a second cast after the offset cast fails), and phones as JSON numbers
(a block Arrow refuses, re-read with the numbers quoted by Python's parser). Ratios against
the offset case, in one run.

Prints a table and writes bench/results/json-times.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_file import best_of, machine_facts, write_results  # noqa: E402
from puhui.config import PartnersConfig, load_config_file  # noqa: E402
from puhui.ingest.contract import coerce_to_contract  # noqa: E402
from puhui.ingest.reading import _json_text_schema, _parse_jsonl_block  # noqa: E402
from puhui.settings import repo_root  # noqa: E402

LINES = 300_000


def _block(time: str, phone_as_number: bool) -> bytes:
    lines = []
    for i in range(LINES):
        phone = 13900000000 + i
        lines.append(
            json.dumps(
                {
                    "order_id": f"O{i:016d}",
                    "buyer_phone": phone if phone_as_number else str(phone),
                    "order_time": time.format(s=i % 60),
                    "amount_yuan": 10.5,
                    "category_code": "GROCERY",
                    "province": "北京",
                },
                ensure_ascii=False,
            )
        )
    return ("\n".join(lines) + "\n").encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1 repeat instead of 3")
    args = parser.parse_args()
    repeat = 1 if args.quick else 3
    partners = load_config_file(repo_root() / "configs" / "partners.yaml", PartnersConfig)
    feed = next(f for f in partners.partners if f.name == "ecommerce_orders")
    header = [c.name for c in feed.columns]
    text = _json_text_schema(feed)
    strings = frozenset(c.name for c in feed.columns if c.type == "string")
    cases = [
        ("offset times", "2026-03-02T10:00:{s:02d}+08:00", False),
        ("no-offset times", "2026-03-02 10:00:{s:02d}", False),
        ("offset times, phones as numbers", "2026-03-02T10:00:{s:02d}+08:00", True),
    ]
    rows, base = [], None
    for label, time, numbers in cases:
        block = _block(time, numbers)
        seconds = best_of(
            lambda b=block: coerce_to_contract(_parse_jsonl_block(b, header, text, strings), feed),
            repeat,
        )
        base = base or seconds
        rows.append(
            {
                "case": label,
                "lines": LINES,
                "seconds": round(seconds, 3),
                "ratio": round(seconds / base, 2),
            }
        )
        print(f"{label:34} {seconds:6.2f} s  x{seconds / base:4.2f}")
    print(f"load average {os.getloadavg()[0]:.1f}")
    write_results("json-times", {"machine": machine_facts(), "rows": rows}, args.quick)


if __name__ == "__main__":
    main()
