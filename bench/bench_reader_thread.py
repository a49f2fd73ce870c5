"""Benchmark: the ingest reader thread's work per 1M rows, stage by stage, in one thread.

The reader thread of ``FileIngestor`` reads each 32 MB block of the ingest benchmark's
mobile_payments file, types and pseudonymizes it (``prepare_chunk``), drops keys repeated
within the file (``drop_duplicate_keys``) and hashes the rows for the key index
(``row_hashes`` with both digests). Each stage is timed over the whole file, best of
``--repeats``, with ``string_hashes``' equal-length path on and off (round 15; the same hashes),
alternating, the order swapped every other repeat. Then the key hashes' parts: both
SipHash-2-4 halves as the index makes them (``pandas.util.hash_array`` over ``bytes``
objects) against a vectorized NumPy SipHash-2-4 over Arrow's buffers (no Python object per
key; measured, not used: it is slower), which must give the very same hashes, checked here
on the file's keys and on awkward ones (the check's outcome is recorded; a difference
makes the script exit 1).

Usage: python bench/bench_reader_thread.py [--rows 1000000] [--repeats 5] [--quick]
    [--label NAME]
Prints the figures and writes bench/results/reader_thread[-NAME].json, with the 1-minute
load average before each repeat.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_ingest import KEY, general_key_hashing, write_payments_file  # noqa: E402
from bench.results_file import machine_facts, write_results  # noqa: E402
from puhui.hashing import splitmix64_finish  # noqa: E402

_U = np.uint64
_SIP_CONSTANTS = (0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573)
_TAIL_MASKS = np.array([(1 << (8 * r)) - 1 for r in range(8)], dtype=_U)


def _rotate(x: np.ndarray, bits: int, spare: np.ndarray) -> None:
    np.left_shift(x, _U(bits), out=spare)
    np.right_shift(x, _U(64 - bits), out=x)
    np.bitwise_or(x, spare, out=x)


def _sip_round(v: list[np.ndarray], spare: np.ndarray) -> None:
    v0, v1, v2, v3 = v
    v0 += v1
    _rotate(v1, 13, spare)
    v1 ^= v0
    _rotate(v0, 32, spare)
    v2 += v3
    _rotate(v3, 16, spare)
    v3 ^= v2
    v0 += v3
    _rotate(v3, 21, spare)
    v3 ^= v0
    v2 += v1
    _rotate(v1, 17, spare)
    v1 ^= v2
    _rotate(v2, 32, spare)


def numpy_siphash(keys: pa.Array, hash_keys: list[str], block: int = 1 << 14) -> np.ndarray:
    """SipHash-2-4 of each value's bytes under each 16-character key, then pandas'
    splitmix64 finish: ``pandas.util.hash_array(bytes objects, hash_key=k,
    categorize=False)`` for each ``k``, as a (keys, rows) uint64 array, from Arrow's offsets
    and data alone (no NULLs). Rows go ``block`` at a time, so the state stays in cache."""
    count = len(keys)
    offsets = np.frombuffer(keys.buffers()[1], np.int32, count + 1, keys.offset * 4)
    offsets = offsets.astype(np.int64)
    data = keys.buffers()[2]
    padded = np.zeros((data.size if data is not None else 0) + 8, dtype=np.uint8)
    if data is not None:
        padded[: data.size] = np.frombuffer(data, np.uint8)
    words = np.ndarray((padded.size - 7,), dtype="<u8", buffer=padded, strides=(1,))
    k = np.array([np.frombuffer(h.encode(), "<u8") for h in hash_keys], dtype=_U)
    halves = [k[:, :1], k[:, 1:], k[:, :1], k[:, 1:]]
    out = np.empty((len(hash_keys), count), dtype=_U)
    for first in range(0, count, block):
        starts = offsets[first : first + block + 1]
        at, lengths = starts[:-1], np.diff(starts)
        shape = (len(hash_keys), len(at))
        v = [np.empty(shape, _U) for _ in range(4)]
        for state, half, constant in zip(v, halves, _SIP_CONSTANTS, strict=True):
            state[:] = half ^ _U(constant)
        spare = np.empty(shape, _U)
        whole = lengths // 8
        last = (words[at + 8 * whole] & _TAIL_MASKS[lengths % 8]) | (
            (lengths.astype(_U) & _U(0xFF)) << _U(56)
        )
        fewest = int(whole.min()) if len(at) else 0
        for b in range(int(whole.max()) + 1 if len(at) else 0):
            word = words[np.minimum(at + 8 * b, words.size - 1)]
            message = word if b < fewest else np.where(whole > b, word, last)
            before = None if b <= fewest else [s.copy() for s in v]
            v[3] ^= message
            _sip_round(v, spare)
            _sip_round(v, spare)
            v[0] ^= message
            if before is not None:  # keys with fewer blocks keep their state
                done = whole < b
                for state, kept in zip(v, before, strict=True):
                    np.copyto(state, kept, where=done)
        v[2] ^= _U(0xFF)
        for _ in range(4):
            _sip_round(v, spare)
        out[:, first : first + len(at)] = v[0] ^ v[1] ^ v[2] ^ v[3]
    return splitmix64_finish(out)


def _awkward_keys(rng: np.random.Generator) -> pa.Array:
    """Empty, every length 1-80 (exact multiples of 8, past 64), NUL, 4-byte UTF-8."""
    alphabet = ["a", "\0", "é", "中", "😀", "\x01", "9"]
    texts = ["", "\0", "a\0b", "😀", "😀x", "k" * 199 + "😀", "é" * 100]
    for length in range(1, 81):
        texts += ["".join(rng.choice(alphabet, length)) for _ in range(5)]
    return pa.array(texts, pa.string())


def _pandas_siphash(keys: pa.Array, hash_keys: list[str]) -> np.ndarray:
    from puhui.ingest.key_index import _siphash_input

    objects = _siphash_input(keys)
    return np.array([pd.util.hash_array(objects, hash_key=k, categorize=False) for k in hash_keys])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100k rows, 2 repeats")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = 100_000, 2

    from puhui.config import PartnersConfig, load_config
    from puhui.hashing import string_hashes
    from puhui.ingest import key_index as ki
    from puhui.ingest.batches import SeenKeys, drop_duplicate_keys, prepare_chunk
    from puhui.ingest.contract import end_of_delivery_day
    from puhui.ingest.key_digest import digest_subkey
    from puhui.ingest.pseudonymize import PseudonymCache, pseudonym_key_bytes
    from puhui.ingest.reading import (
        READ_BLOCK_BYTES,
        file_columns,
        iter_file_chunks,
        open_landed_file,
    )

    feed = load_config(ROOT / "configs", PartnersConfig).get("mobile_payments")
    key, subkey = pseudonym_key_bytes(KEY), digest_subkey(b"bench")
    delivery_end = end_of_delivery_day(date(2026, 9, 30))
    stages = ("read", "prepare", "dedup", "row_hashes")
    runs: dict[str, dict[str, list[float]]] = {
        path: {s: [] for s in stages} for path in ("equal_length_path", "general_path")
    }
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="puhui-bench-") as tmp:
        path = Path(tmp) / "payments.csv"
        write_payments_file(path, args.rows)
        for repeat in range(args.repeats):
            # Each path first in every other repeat: neither gains from the other's warm-up.
            for mode in list(runs)[:: -1 if repeat % 2 else 1]:
                figures = runs[mode]
                loads.append(round(os.getloadavg()[0], 2))
                spent = dict.fromkeys(stages, 0.0)
                handle, cache, seen, first = (
                    open_landed_file(str(path)),
                    PseudonymCache(),
                    SeenKeys(),
                    1,
                )
                chunks = []
                blocks = iter_file_chunks(
                    handle, feed, file_columns(handle, feed), READ_BLOCK_BYTES
                )
                path_used = general_key_hashing() if mode == "general_path" else nullcontext()
                with path_used:
                    while True:
                        started = time.perf_counter()
                        raw = next(blocks, None)
                        spent["read"] += time.perf_counter() - started
                        if raw is None:
                            break
                        started = time.perf_counter()
                        chunk = prepare_chunk(raw, feed, key, delivery_end, first, cache)
                        spent["prepare"] += time.perf_counter() - started
                        first += raw.num_rows
                        started = time.perf_counter()
                        chunk, _ = drop_duplicate_keys(chunk, feed, seen)
                        spent["dedup"] += time.perf_counter() - started
                        started = time.perf_counter()
                        chunk.hashes = ki.row_hashes(chunk.stored, feed, digest_key=subkey)
                        spent["row_hashes"] += time.perf_counter() - started
                        chunks.append(chunk)
                for stage, seconds in spent.items():
                    figures[stage].append(seconds)

    texts = [ki.key_strings(c.stored, feed) for c in chunks]
    halves = list(ki._half_keys(feed))
    awkward = _awkward_keys(np.random.default_rng(15))
    # Computed, not asserted: stored as found, and a difference fails the run (at the end).
    siphash_equal = all(
        bool((numpy_siphash(keys, halves) == _pandas_siphash(keys, halves)).all())
        for keys in [*texts, awkward]
    )

    def best(work: Callable[[], object]) -> float:
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return round(min(times), 3)

    pseudonyms = [c.stored["phone_key"].combine_chunks() for c in chunks]

    def general(arrays: list[pa.Array]) -> None:
        with general_key_hashing():
            for values in arrays:
                string_hashes(values)

    parts = {
        "siphash_two_halves_pandas_bytes_objects": best(
            lambda: [_pandas_siphash(t, halves) for t in texts]
        ),
        "siphash_two_halves_numpy_arrow_buffers": best(
            lambda: [numpy_siphash(t, halves) for t in texts]
        ),
        "key_hashes_pseudonym_column_equal_length_path": best(
            lambda: [string_hashes(p) for p in pseudonyms]
        ),
        "key_hashes_pseudonym_column_general_path": best(lambda: general(pseudonyms)),
        "key_hashes_key_text_equal_length_path": best(lambda: [string_hashes(t) for t in texts]),
        "key_hashes_key_text_general_path": best(lambda: general(texts)),
    }
    result = {
        "benchmark": "reader_thread",
        "rows": args.rows,
        "repeats": args.repeats,
        "chunk_rows": [c.stored.num_rows for c in chunks],
        "stage_seconds_runs": {
            m: {s: [round(x, 3) for x in v] for s, v in f.items()} for m, f in runs.items()
        },
        "stage_seconds_best": {
            m: {s: round(min(v), 3) for s, v in f.items()} for m, f in runs.items()
        },
        "reader_total_best": {
            m: round(sum(min(v) for v in f.values()), 3) for m, f in runs.items()
        },
        "part_seconds_best": parts,
        "numpy_siphash_equal_to_pandas": siphash_equal,
        "load_average_1min_before_each_run": loads,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        **machine_facts(),
    }
    print(
        f"\nreader thread per {args.rows:,} rows, one thread, best of {args.repeats} "
        f"(load {min(loads)}-{max(loads)}):"
    )
    for mode, figures in result["stage_seconds_best"].items():
        print(
            f"  {mode:<20} "
            + "  ".join(f"{s} {v:.3f}" for s, v in figures.items())
            + f"  total {result['reader_total_best'][mode]:.3f} s"
        )
    for name, seconds in parts.items():
        print(f"  {name:<48} {seconds:6.3f} s")
    write_results("reader_thread" + (f"-{args.label}" if args.label else ""), result, args.quick)
    if not siphash_equal:
        print("NumPy SipHash differs from pandas' (numpy_siphash_equal_to_pandas: false)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
