"""Benchmark: the profile swap's digest made from the rows it holds against the read-back it
replaced, and what ``user_features``' digest costs its writer, SQLite and PostgreSQL.

Setup (not measured): a fresh warehouse per dialect, ROWS customers' profiles staged as 8
Parquet partitions (``bench_table_digests``' columns and JSON sizes). Measured in one run
per dialect: ``swap_profiles`` (which now digests the Arrow tables it inserts); then, on the
rows it wrote, in one transaction, the read-back digest the swap made before (``recorded``
on the date's rows) and the held-data digest (``held_rows_mac`` over the same 8 Arrow
tables the swap builds, rebuilt here untimed: the swap holds them), asserted equal. Then
``write_user_features`` of FEATURE_ROWS rows (20 features, 5 as-of dates) replacing the
same pairs without and with its audit writer (the ``features.recorded`` event and the
dates' read-back). Ratios compare
within one run; the machine is shared: the load average is recorded.

With ``--home DIR`` (a ``puhui demo`` home) only ``audit verify``'s table check on its SQLite
warehouse, in this process: the round-16 specs against all (plain and ``--deep``).

Usage: python bench/bench_profile_digest.py [--rows 300000] [--feature-rows 100000] [--quick]
       [--features-only [--repeats 3]]
       python bench/bench_profile_digest.py --home DIR
Prints a table and writes bench/results/profile_digest.json (profile_digest-verify.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_table_digests import AS_OF, AUDIT_KEY, _stage, _timed  # noqa: E402
from bench.results_file import machine_facts, write_results  # noqa: E402


def _features(rows: int, shift: float, days_back: int = 0, step: int = 1):  # noqa: ANN202
    # ``step``: every step-th pair of the full set (a partial re-write of each date);
    # ``days_back``: the same people 5 days earlier (other dates' rows).
    import numpy as np
    import pandas as pd

    people = np.arange(0, rows * step, step)
    frame = pd.DataFrame(
        {
            "person_key": [f"{i // 5:064x}" for i in people],
            "as_of_date": [AS_OF - timedelta(days=int(i % 5) + days_back) for i in people],
        }
    )
    for j in range(20):
        frame[f"f{j:02d}"] = (people * (j + 1) % 1009) / 7.0 + shift
    return frame


def _measure(url: str, staged: Path, feature_rows: int) -> dict:
    import pandas as pd

    from puhui.audit import AuditWriter
    from puhui.profiles.refresh import _frame_for, _part_path, swap_profiles
    from puhui.table_digests import (
        PROFILES_HISTORY,
        RowsMac,
        add_macs,
        held_rows_mac,
        recorded,
        writer_subkey,
    )
    from puhui.warehouse.engine import get_engine
    from puhui.warehouse.schema import user_profile_history

    engine = get_engine(url)
    audit = AuditWriter(actor="bench", config_hash="bench", code_version="bench", key=AUDIT_KEY)
    subkey = writer_subkey(audit)
    figures: dict = {}
    _, figures["swap"] = _timed(lambda: swap_profiles(engine, AS_OF, staged, 8, None, audit))
    with engine.connect() as conn:
        refreshed_at, flow_run_id = conn.exec_driver_sql(
            "SELECT refreshed_at, flow_run_id FROM user_profile_history LIMIT 1"
        ).one()
    if isinstance(refreshed_at, str):
        from puhui.table_digests import _time

        refreshed_at = pd.Timestamp(_time(refreshed_at)).tz_localize("UTC").to_pydatetime()
    tables = []
    for part in range(8):
        rows = pd.read_parquet(_part_path(staged, part))
        rows["as_of_date"] = pd.to_datetime(rows["as_of_date"]).dt.date
        tables.append(_frame_for(rows, refreshed_at, flow_run_id))
    with engine.begin() as conn:
        before, figures["read_back"] = _timed(
            lambda: recorded(
                conn, PROFILES_HISTORY, subkey, user_profile_history.c.as_of_date == AS_OF
            )
        )

    def held() -> RowsMac:
        mac = RowsMac()
        for table in tables:
            add_macs(mac, held_rows_mac(user_profile_history, table, subkey))
        return mac

    mac, figures["held"] = _timed(held)
    assert before["scopes"][AS_OF.isoformat()]["mac"] == mac.hex(), (
        "the held digest differs from the read-back"
    )
    figures["held_over_read_back"] = round(
        figures["held"]["wall"] / figures["read_back"]["wall"], 3
    )
    figures.update(_measure_features(engine, audit, feature_rows))
    return figures


def _measure_features(engine, audit, feature_rows: int, repeats: int = 1) -> dict:  # noqa: ANN001
    """``write_user_features`` of ``feature_rows`` rows (5 as-of dates) replacing the pairs
    an untimed first write made, beside as many rows of 5 other, older dates (a table that
    earlier trainings filled): as main writes (no ``as_of_date`` index, no digest), with the
    index and no digest, with both (the whole dates re-written: the held digest); then half
    of each date's pairs re-written, with the index, without and with the digest (a read-back
    of those dates' rows). ``repeats`` rounds of the five, interleaved: each one's median."""
    from sqlalchemy import text

    from puhui.features.store import write_user_features

    write_user_features(engine, _features(feature_rows, 0.0, days_back=5), "bench")  # others
    write_user_features(engine, _features(feature_rows, 0.0), "bench")
    figures: dict = {}

    def index(create: bool) -> None:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE INDEX IF NOT EXISTS ix_user_features_as_of_date "
                    "ON user_features (as_of_date)"
                    if create
                    else "DROP INDEX IF EXISTS ix_user_features_as_of_date"
                )
            )

    runs = (
        ("features_main", False, None, 0.25, feature_rows),
        ("features_plain", True, None, 0.5, feature_rows),
        ("features_digested", True, audit, 0.75, feature_rows),
        ("partial_plain", True, None, 1.0, feature_rows // 2),
        ("partial_digested", True, audit, 1.25, feature_rows // 2),
    )
    timings: dict[str, list[dict]] = {name: [] for name, *_ in runs}
    for repeat in range(repeats):  # interleaved: the machine's load changes over a run
        for name, indexed, writer, shift, rows in runs:
            index(indexed)
            frame = _features(rows, shift + repeat, step=feature_rows // rows)
            timings[name].append(
                _timed(lambda f=frame, w=writer: write_user_features(engine, f, "bench", w))[1]
            )
    for name, timed in timings.items():
        figures[name] = sorted(timed, key=lambda t: t["wall"])[len(timed) // 2]  # the median
        figures[name]["walls"] = [t["wall"] for t in timed]
    for name in ("features_plain", "features_digested"):
        figures[f"{name}_over_main"] = round(
            figures[name]["wall"] / figures["features_main"]["wall"], 3
        )
    figures["features_ratio"] = round(
        figures["features_digested"]["wall"] / figures["features_plain"]["wall"], 3
    )
    figures["partial_ratio"] = round(
        figures["partial_digested"]["wall"] / figures["partial_plain"]["wall"], 3
    )
    return figures


def _verify_tables(home: Path, runs: int = 5) -> dict:
    """``audit verify``'s table check on a demo home's SQLite warehouse, in this process
    (median of ``runs``): the specs before round 17 against all of them, plain (the small
    tables' digests) and ``--deep``."""
    import statistics

    from puhui.audit import AuditWriter, audit_key_bytes
    from puhui.table_digests import SPECS, WRITERS, table_problems, writer_subkey
    from puhui.warehouse.engine import get_engine

    engine = get_engine(f"sqlite:///{home / 'warehouse.db'}")
    key = audit_key_bytes((home / "audit.key").read_text().strip())
    subkey = writer_subkey(AuditWriter(actor="bench", config_hash="", key=key))
    before = SPECS[:6]  # round 16's: profiles, history, drift, monitoring, service, validations
    figures: dict = {}
    for name, specs in (("before", before), ("after", SPECS)):
        for mode in ("plain", "deep"):
            walls, check = [], None
            for _ in range(runs):
                check, timed = _timed(
                    lambda s=specs, m=mode: table_problems(
                        engine, s, WRITERS, subkey if m == "deep" else None, None, subkey
                    )
                )
                walls.append(timed["wall"])
            assert check is not None and not check.problems, check and check.problems
            figures[f"{name}_{mode}"] = {
                "wall": statistics.median(walls),
                "rows": check.rows,
                "notes": check.notes,
                "load": timed["load"],
            }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--feature-rows", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="5,000 rows of each")
    parser.add_argument("--home", type=Path, help="only verify's table check on this demo home")
    parser.add_argument(
        "--features-only",
        action="store_true",
        help="only the features writer (writes profile_digest-features.json)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="features: rounds, medians")
    args = parser.parse_args()
    if args.home:
        found = _verify_tables(args.home.resolve())
        for name, f in found.items():
            print(f"{name}: {f['wall']:.3f} s, {f['rows']:,} rows counted, load {f['load']}")
        write_results(
            "profile_digest-verify",
            {"benchmark": "profile_digest-verify", "machine": machine_facts(), **found},
            False,
        )
        return
    rows, feature_rows = (5_000, 5_000) if args.quick else (args.rows, args.feature_rows)
    from puhui.settings import QUIET_ENVIRONMENT
    from puhui.throwaway_postgres import throwaway_postgres
    from puhui.warehouse.engine import get_engine

    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    result: dict = {
        "benchmark": "profile_digest",
        "machine": machine_facts(),
        "rows": rows,
        "feature_rows": feature_rows,
    }
    with tempfile.TemporaryDirectory(prefix="puhui-bench-") as tmp, throwaway_postgres() as pg:
        work = Path(tmp)
        staged = work / "staged"
        if not args.features_only:
            _stage(staged, rows)
        urls = {
            "sqlite": f"sqlite:///{work / 'warehouse.db'}",
            "postgresql": pg.create_database("bench_profile_digest"),
        }
        for dialect, url in urls.items():
            get_engine(url)  # migrated, not measured
            if args.features_only:
                from puhui.audit import AuditWriter

                audit = AuditWriter(
                    actor="bench", config_hash="bench", code_version="bench", key=AUDIT_KEY
                )
                result[dialect] = f = _measure_features(
                    get_engine(url), audit, feature_rows, args.repeats
                )
            else:
                result[dialect] = f = _measure(url, staged, feature_rows)
                print(
                    f"{dialect}: {rows:,} profiles; swap {f['swap']['wall']:.2f} s wall; "
                    f"digest read back {f['read_back']['wall']:.2f} s "
                    f"({f['read_back']['cpu']:.2f} s CPU), from the held rows "
                    f"{f['held']['wall']:.2f} s ({f['held']['cpu']:.2f} s CPU): "
                    f"{f['held_over_read_back']:.2f}x",
                    flush=True,
                )
            print(
                f"{dialect}: user_features {feature_rows:,} rows over 5 dates beside 5 other "
                f"dates' as many: main's writer {f['features_main']['wall']:.2f} s, with the "
                f"as_of_date index {f['features_plain']['wall']:.2f} s "
                f"({f['features_plain_over_main']:.2f}x), and its digest "
                f"{f['features_digested']['wall']:.2f} s ({f['features_digested_over_main']:.2f}x"
                f" main's, {f['features_ratio']:.2f}x without the digest); half the pairs "
                f"re-written: {f['partial_plain']['wall']:.2f} s, with the digest "
                f"{f['partial_digested']['wall']:.2f} s ({f['partial_ratio']:.2f}x); "
                f"load {f['features_digested']['load']}",
                flush=True,
            )
    name = "profile_digest-features" if args.features_only else "profile_digest"
    write_results(name, {**result, "benchmark": name}, args.quick)


if __name__ == "__main__":
    main()
