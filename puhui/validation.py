"""Data validation with Great Expectations (GX Core 1.x): suites, frames and warehouse tables.

Each partner feed has a suite in ``expectations/<suite>.json`` (GX 1.x ExpectationSuite JSON).
Every expectation carries its severity in ``meta.severity``: ``critical`` (the default; the
batch is held) or ``warning`` (the batch loads and the warning is recorded).

Ingestion calls :meth:`BatchValidator.validate_frame` with the typed, pseudonymized "batch
frame" before loading (index = 1-based data row number in the source file); later stages call
:meth:`BatchValidator.validate_table` on warehouse tables, where GX runs the metrics as SQL in
the database. Both return a :class:`ValidationOutcome` of plain Python values.

``great_expectations`` costs ~3 s to import, so it is imported on first use only, never when
this module is imported.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import sys
import threading
import time
import types
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from puhui.errors import PuhuiError
from puhui.files import write_text_atomically
from puhui.privacy import mask_shape, scrub_text

if TYPE_CHECKING:  # pragma: no cover - typing only; GX is imported lazily at run time
    import great_expectations as gx
    import pandas as pd
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.core.batch_definition import BatchDefinition

Severity = Literal["critical", "warning"]
SEVERITIES: tuple[str, ...] = ("critical", "warning")
SAMPLE_ROWS = 20  # failing row numbers kept per expectation
EXAMPLE_VALUES = 3  # unexpected values quoted in a description
# Keys an expectation entry of a suite file may have (GX 1.x ExpectationConfiguration).
_EXPECTATION_KEYS = frozenset(
    {"type", "kwargs", "meta", "notes", "description", "id", "severity", "rendered_content"}
)
_SUITE_KEYS = frozenset({"name", "expectations", "meta", "notes", "id", "suite_parameters"})

# Two passes. The whole suite runs with BASIC (counts and a few values); only expectations
# that failed run again with SUMMARY, which adds the first SAMPLE_ROWS failing indices.
# SUMMARY for every expectation cost 20-35 % more GX time per batch, spent on index lists of
# expectations that pass; failures are the rare case. COMPLETE would return every
# unexpected value and index (50k items for a 5 % null burst in 1M rows). The "index query"
# is off: for pandas it is the full index list as a string, and for SQL it can omit the
# batch filter (STACK_NOTES), so the index list is what we use.
_FIRST_PASS_FORMAT: dict[str, Any] = {
    "result_format": "BASIC",
    "partial_unexpected_count": SAMPLE_ROWS,
}
_RESULT_FORMAT: dict[str, Any] = {
    "result_format": "SUMMARY",
    "partial_unexpected_count": SAMPLE_ROWS,
    "return_unexpected_index_query": False,
}


def _validate_with_failure_detail(
    batch: Any, suite: gx.ExpectationSuite, detail_format: dict[str, Any]
) -> ExpectationSuiteValidationResult:
    """``suite`` on ``batch``: counts for all expectations, failing rows for failed ones."""
    result = batch.validate(suite, result_format=dict(_FIRST_PASS_FORMAT))
    for index, item in enumerate(result.results):
        if not item.success:
            expectation = item.expectation_config.to_domain_obj()
            result.results[index] = batch.validate(expectation, result_format=dict(detail_format))
    return result


def suite_hash(name: str, *, expectations_dir: Path) -> str:
    """SHA-256 of the suite file's bytes (first 16 hex): which checks validated a batch.

    The bytes, not the parsed suite: a changed severity, tolerance or note is a change an
    auditor must be able to see. A missing file hashes as ``missing``.
    """
    path = expectations_dir / f"{name}.json"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        return "missing"


class SuiteLoadError(PuhuiError):
    """A suite file is missing, malformed, or has an expectation GX cannot build."""


@dataclass(frozen=True)
class FailedExpectation:
    """One expectation that did not hold, in plain Python values."""

    expectation: str  # e.g. "expect_column_values_to_not_be_null"
    column: str | None
    severity: Severity
    unexpected_count: int | None
    unexpected_percent: float | None
    sample_rows: list[int]  # up to SAMPLE_ROWS row numbers (the frame's index), ascending
    description: str  # one human line naming the column and what is wrong
    # Table validations only: key columns (the suite's ``meta.row_key``) of failing rows.
    sample_keys: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ValidationOutcome:
    """The result of running one suite on one batch (frame or table)."""

    suite: str
    success: bool  # no failure at all, critical or warning
    expectations_run: int
    failed: list[FailedExpectation]
    batch_id: str | None = None
    result_path: str | None = None  # the stored GX result JSON, if a results_dir was given
    seconds: float = 0.0
    suite_hash: str | None = None  # of the suite file that ran (see ``suite_hash``)

    @property
    def critical(self) -> list[FailedExpectation]:
        """Failures that hold the batch."""
        return [f for f in self.failed if f.severity == "critical"]

    @property
    def warnings(self) -> list[FailedExpectation]:
        """Failures that are recorded but let the batch load."""
        return [f for f in self.failed if f.severity == "warning"]

    def summary(self) -> dict[str, Any]:
        """JSON-serializable summary (for ``validation_results.details``); no numpy, no NaN."""
        return _plain(
            {
                "suite": self.suite,
                "batch_id": self.batch_id,
                "success": self.success,
                "expectations_run": self.expectations_run,
                "expectations_failed": len(self.failed),
                "critical_failed": len(self.critical),
                "warning_failed": len(self.warnings),
                "failed": [asdict(f) for f in self.failed],
                "result_path": self.result_path,
                "seconds": round(self.seconds, 3),
                "suite_hash": self.suite_hash,
            }
        )


# ---------------------------------------------------------------------------------------
# Plain values


def _plain(value: Any) -> Any:
    """``value`` with numpy/pandas scalars cast to Python and NaN/inf turned into None.

    PostgreSQL's JSON type rejects NaN, and ``json.dumps`` rejects numpy integers, so
    everything leaving this module goes through here.
    """
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)  # numpy.str_ too
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if str(value) in ("<NA>", "NaT", "nan"):  # pd.NA, pd.NaT, numpy NaT
        return None
    if isinstance(value, (datetime, date)):  # includes pandas Timestamp
        return value.isoformat()
    if getattr(getattr(value, "dtype", None), "kind", None) in ("m", "M"):
        return str(value)  # numpy datetime64/timedelta64: .item() would give nanoseconds
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return _plain(item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _as_int(value: Any) -> int | None:
    value = _plain(value)
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _as_float(value: Any) -> float | None:
    value = _plain(value)
    if isinstance(value, bool) or value is None:
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


# ---------------------------------------------------------------------------------------
# GX runtime (one per process)

# Modules GX imports with itself but uses only inside expectations no suite of ours has (KL
# divergence, KS tests, their Altair charts): scipy.stats and altair are ~30 % of GX's import
# time (ingest's largest cost). They load on first use instead (see _DeferredModule).
DEFERRED_FOR_GX = ("scipy.stats", "altair")


class _DeferredModule(types.ModuleType):
    """Stands in ``sys.modules`` for a module until an attribute of it is first used; then
    imports the real one (under a lock, so two threads cannot both run it) and forwards.

    Not ``importlib.util.LazyLoader``: on Python 3.11 a second thread can see a half-run
    module while the first one loads it.
    """

    def __init__(self, name: str, spec: Any) -> None:
        super().__init__(name)
        self.__spec__ = spec
        self.__dict__["_puhui_real"] = None

    def __getattr__(self, attribute: str) -> Any:  # only for what the stand-in lacks
        real = self.__dict__["_puhui_real"]
        if real is None:
            with _deferred_lock:
                real = self.__dict__["_puhui_real"]
                if real is None:
                    if sys.modules.get(self.__name__) is self:
                        del sys.modules[self.__name__]
                    real = importlib.import_module(self.__name__)
                    self.__dict__["_puhui_real"] = real
        return getattr(real, attribute)


_deferred_lock = threading.RLock()


def defer_unused_gx_imports() -> None:
    """Put stand-ins for ``DEFERRED_FOR_GX`` in ``sys.modules`` (before GX is imported);
    a module already imported, or not installed, is left alone."""
    with _deferred_lock:
        for name in DEFERRED_FOR_GX:
            if name in sys.modules:
                continue
            spec = importlib.util.find_spec(name)  # imports the parent package only
            if spec is None:
                continue
            stand_in = _DeferredModule(name, spec)
            sys.modules[name] = stand_in
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, stand_in)


def import_gx() -> Any:
    """``great_expectations``, imported the quick way (analytics off, unused parts deferred)."""
    # Analytics must be off before GX is imported: there is no internet, and nothing may
    # phone home. Forced, not defaulted: no setting of ours wants it on.
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    defer_unused_gx_imports()
    import great_expectations

    return great_expectations


# GX 1.24.1's ``Expectation`` rebuilds its whole ``configuration`` (a pydantic ``dict()`` and
# a new ExpectationConfiguration, whose type name goes through two regexes) once per key when
# it collects an expectation's domain and success kwargs, and does so several times per
# expectation per validation: ~220k rebuilds for the 141 batches of a 300-user demo ingest.
# The rewrites below are GX's own methods with ``configuration.kwargs`` read once per call,
# and the type name's conversion cached (a pure function of the class name); results are
# unchanged (tests/test_validation.py compares them with GX's originals;
# bench/bench_gx_validation.py measures them). Applied to the pinned version only: another
# GX keeps its own code.
GX_KWARGS_PATCHED_VERSION = "1.24.1"
# GX's own methods the rewrites replaced (filled when installed): the test and the bench
# compare with them.
GX_ORIGINAL_METHODS: dict[str, Any] = {}
_KWARGS_METHODS = ("_get_success_kwarg", "_get_domain_kwargs", "_get_success_kwargs")
# The logger GX's own ``_get_success_kwarg`` warns on (the same object, looked up once).
_GX_EXPECTATION_LOG = logging.getLogger("great_expectations.expectations.expectation")
_LOG = logging.getLogger(__name__)


def _get_success_kwarg(self: Any, key: str, default: Any = None) -> Any:
    """GX's ``Expectation._get_success_kwarg``, building ``configuration`` once."""
    kwargs = self.configuration.kwargs
    if key in kwargs:
        return kwargs[key]
    field_ = self.__fields__.get(key)
    if field_ is not None:
        return field_.default if not field_.required else default
    _GX_EXPECTATION_LOG.warning(
        f'_get_success_kwarg called with key "{key}", '
        f"but it is not a known field of {type(self).__name__}"
    )
    return default


def _get_domain_kwargs(self: Any, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """GX's ``Expectation._get_domain_kwargs``, building ``configuration`` once."""
    from great_expectations.exceptions import InvalidExpectationKwargsError

    kwargs = self.configuration.kwargs if kwargs is None else kwargs
    domain = {key: kwargs.get(key, self._get_default_value(key)) for key in self.domain_keys}
    missing = set(self.domain_keys) - set(domain.keys())
    if missing:
        raise InvalidExpectationKwargsError(f"Missing domain kwargs: {list(missing)}")
    return domain


def _get_success_kwargs(self: Any) -> dict[str, Any]:
    """GX's ``Expectation._get_success_kwargs``, building ``configuration`` once."""
    kwargs = self.configuration.kwargs
    # Through the instance, as GX does, when a subclass overrides it; ours takes the kwargs
    # just built (GX's signature has no such argument).
    if type(self)._get_domain_kwargs is _get_domain_kwargs:
        domain = _get_domain_kwargs(self, kwargs)
    else:
        domain = self._get_domain_kwargs()
    success = {key: kwargs.get(key, self._get_default_value(key)) for key in self.success_keys}
    success.update(domain)
    return success


def lighten_gx_expectation_kwargs(gx: Any, lighter: bool = True) -> bool:
    """Install the rewrites above on GX's ``Expectation`` (only on the pinned GX version),
    or with ``lighter=False`` put GX's originals back (the bench compares both); returns
    whether the rewrites are installed now. Call under ``_runtime_lock`` (or, as the test
    and the bench do, with no validation running): it replaces methods of a shared class."""
    import great_expectations.expectations.expectation as gx_expectation

    if gx.__version__ != GX_KWARGS_PATCHED_VERSION:
        _LOG.debug(
            "GX %s is not %s: its own expectation kwargs methods run",
            gx.__version__,
            GX_KWARGS_PATCHED_VERSION,
        )
        return False
    expectation = gx_expectation.Expectation
    if not GX_ORIGINAL_METHODS:
        GX_ORIGINAL_METHODS.update({name: getattr(expectation, name) for name in _KWARGS_METHODS})
        GX_ORIGINAL_METHODS["camel_to_snake"] = gx_expectation.camel_to_snake
    # Decided on what the class has now, not on a flag: the bench puts the originals back.
    installed = expectation._get_success_kwargs is _get_success_kwargs
    if lighter != installed:
        for name in _KWARGS_METHODS:
            setattr(expectation, name, globals()[name] if lighter else GX_ORIGINAL_METHODS[name])
        snake = GX_ORIGINAL_METHODS["camel_to_snake"]
        gx_expectation.camel_to_snake = (
            functools.lru_cache(maxsize=None)(snake) if lighter else snake
        )
    return expectation._get_success_kwargs is _get_success_kwargs


class _GXRuntime:
    """The process's GX context, pandas data source/asset/batch definition and SQL sources."""

    def __init__(self) -> None:
        gx = import_gx()
        import great_expectations.execution_engine.pandas_execution_engine as gx_pandas
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        # GX fingerprints every pandas batch under 1 GB with an MD5 over
        # hash_pandas_object(df) - ~0.45 s per 1M rows, and ``Batch.validate`` fetches the
        # batch a second time, so it is paid twice. The fingerprint is only a batch marker
        # (ingestion has the file's SHA-256), so the threshold is set to skip it.
        gx_pandas.HASH_THRESHOLD = 0
        lighten_gx_expectation_kwargs(gx)

        # Ephemeral: nothing is read from or written to a GX project directory (so parallel
        # processes cannot trip over each other); suites come from expectations/*.json and
        # results are written by BatchValidator itself. In-memory stores, no Data Docs site,
        # no analytics, and no per-metric tqdm bars (dozens of lines per run in flow logs).
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        )
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        pandas_source = self.context.data_sources.add_pandas("puhui_frames")
        asset = pandas_source.add_dataframe_asset("batch_frame")
        self.frame_batches: BatchDefinition = asset.add_batch_definition_whole_dataframe("whole")
        self._tables: dict[tuple[str, str], BatchDefinition] = {}
        self._sql_sources: dict[str, Any] = {}
        self.lock = threading.Lock()

    def table_batches(self, url: str, table: str) -> BatchDefinition:
        """The (cached) batch definition of a whole warehouse table."""
        key = (url, table)
        if key not in self._tables:
            source = self._sql_source(url)
            asset = source.add_table_asset(name=table, table_name=table)
            self._tables[key] = asset.add_batch_definition_whole_table("whole")
        return self._tables[key]

    def _sql_source(self, url: str) -> Any:
        source = self._sql_sources.get(url)
        if source is None:
            # Named by a digest: a URL may hold a password, and names end up in results.
            name = "warehouse_" + hashlib.sha256(url.encode()).hexdigest()[:12]
            sources = self.context.data_sources
            if url.startswith("sqlite"):
                source = sources.add_sqlite(name=name, connection_string=url)
            elif url.startswith("postgresql"):
                source = sources.add_postgres(name=name, connection_string=url)
            else:
                source = sources.add_sql(name=name, connection_string=url)
            self._sql_sources[url] = source
        return source

    def close_sql(self) -> None:
        """Dispose GX's SQL engines and forget the SQL data sources."""
        for source in self._sql_sources.values():
            try:
                source.get_engine().dispose()
            finally:
                self.context.data_sources.delete(source.name)
        self._sql_sources.clear()
        self._tables.clear()


_runtime: _GXRuntime | None = None
_runtime_lock = threading.Lock()


def _gx() -> _GXRuntime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = _GXRuntime()
        return _runtime


# ---------------------------------------------------------------------------------------
# Suites


def _expectation_label(index: int, entry: Any) -> str:
    if not isinstance(entry, dict):
        return f"expectation #{index}"
    kwargs = entry.get("kwargs") if isinstance(entry.get("kwargs"), dict) else {}
    target = kwargs.get("column") or kwargs.get("column_list") or kwargs.get("column_A")
    on = f" on {target}" if target else ""
    return f"expectation #{index} ({entry.get('type', '<no type>')}{on})"


def _severity_of(entry: dict[str, Any]) -> Severity:
    meta = entry.get("meta") or {}
    if not isinstance(meta, dict):
        raise ValueError("meta must be an object")
    severity = meta.get("severity", "critical")
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    native = entry.get("severity")
    if native is not None and native != severity:
        raise ValueError(f"severity {native!r} contradicts meta.severity {severity!r}")
    return severity  # type: ignore[return-value]


def load_suite(name: str, *, expectations_dir: Path) -> gx.ExpectationSuite:
    """Load ``<expectations_dir>/<name>.json`` as a GX ExpectationSuite, or fail loudly.

    GX 1.x logs and silently drops an expectation of unknown type; here every expectation is
    built one by one, so an unknown type, invalid kwargs or a bad ``meta.severity`` raises
    :class:`SuiteLoadError` naming the file and the expectation, and the loaded count is
    checked against the file's.
    """
    path = expectations_dir / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteLoadError(f"{path}: no such suite file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SuiteLoadError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SuiteLoadError(f"{path}: expected a JSON object with 'name' and 'expectations'")
    unknown = sorted(set(data) - _SUITE_KEYS)
    if unknown:
        raise SuiteLoadError(f"{path}: unknown key(s) {', '.join(unknown)}")
    if data.get("name") != name:
        raise SuiteLoadError(f"{path}: suite name {data.get('name')!r} must equal {name!r}")
    entries = data.get("expectations")
    if not isinstance(entries, list) or not entries:
        raise SuiteLoadError(f"{path}: 'expectations' must be a non-empty list")

    import_gx()
    from great_expectations import ExpectationSuite
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    built = []
    for index, entry in enumerate(entries):
        label = _expectation_label(index, entry)
        try:
            if not isinstance(entry, dict):
                raise ValueError("must be a JSON object")
            extra = sorted(set(entry) - _EXPECTATION_KEYS)
            if extra:
                raise ValueError(f"unknown key(s) {', '.join(extra)}")
            if not isinstance(entry.get("type"), str) or not isinstance(entry.get("kwargs"), dict):
                raise ValueError("needs a 'type' string and a 'kwargs' object")
            severity = _severity_of(entry)
            config = ExpectationConfiguration(**{**entry, "severity": severity})
            built.append(config.to_domain_obj())
        except Exception as exc:  # GX raises several unrelated types (pydantic, its own)
            reason = " ".join(str(getattr(exc, "message", exc)).split())
            raise SuiteLoadError(f"{path}: {label}: {reason}") from None
    suite = ExpectationSuite(
        name=name, expectations=built, meta=data.get("meta"), notes=data.get("notes")
    )
    if len(suite.expectations) != len(entries):  # GX dropped one silently
        raise SuiteLoadError(
            f"{path}: {len(entries)} expectations in the file but GX loaded "
            f"{len(suite.expectations)}"
        )
    return suite


def suite_names(*, expectations_dir: Path) -> list[str]:
    """Names of every suite file in the expectations directory."""
    return sorted(p.stem for p in expectations_dir.glob("*.json"))


# ---------------------------------------------------------------------------------------
# Describing failures


def _percent(value: float | None) -> str:
    if value is None:
        return "?%"
    return f"{value:.1f}%" if value >= 1 or value == 0 else f"{value:.2g}%"


def _short(value: Any, limit: int = 40) -> str:
    """A value as a description quotes it: strings quoted, 300.0 as 300, midnight as a date."""
    if isinstance(value, datetime):
        is_midnight = value.time() == datetime.min.time()
        text = value.date().isoformat() if is_midnight else value.isoformat()
        return text if len(text) <= limit else text[: limit - 3] + "..."
    value = _plain(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)  # integer columns reach GX as float64 when they have nulls
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _value_set_text(values: list[Any]) -> str:
    if len(values) <= 8:
        return "{" + ", ".join(_short(v, 24) for v in values) + "}"
    return f"the {len(values)} allowed values"


def _bounds_text(kwargs: dict[str, Any]) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is None:
        return f"above {_short(high)}"
    if high is None:
        return f"below {_short(low)}"
    return f"outside [{_short(low)}, {_short(high)}]"


def _failure_phrase(kind: str, kwargs: dict[str, Any]) -> str:
    """What the unexpected values are, per expectation type (the suite's meta can override)."""
    if kind == "expect_column_values_to_not_be_null":
        return "missing"
    if kind == "expect_column_values_to_be_in_set":
        return f"not in {_value_set_text(list(kwargs.get('value_set') or []))}"
    if kind == "expect_column_values_to_not_be_in_set":
        return f"in the forbidden set {_value_set_text(list(kwargs.get('value_set') or []))}"
    if kind == "expect_column_values_to_be_between":
        return _bounds_text(kwargs)
    if kind == "expect_column_values_to_match_regex":
        return f"not matching {kwargs.get('regex')}"
    if kind == "expect_column_values_to_be_unique":
        return "duplicated"
    if kind == "expect_compound_columns_to_be_unique":
        return "share their key with another row"
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        op = ">=" if kwargs.get("or_equal") else ">"
        return f"where not {kwargs.get('column_A')} {op} {kwargs.get('column_B')}"
    return "unexpected"


def _subject(kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    if meta.get("subject"):
        return str(meta["subject"])
    if "column" in kwargs:
        return str(kwargs["column"])
    if "column_list" in kwargs:
        return "(" + ", ".join(kwargs["column_list"]) + ")"
    if "column_A" in kwargs:
        return f"({kwargs['column_A']}, {kwargs.get('column_B')})"
    return "table"


def _describe(
    kind: str,
    kwargs: dict[str, Any],
    meta: dict[str, Any],
    result: dict[str, Any],
    error: str | None,
) -> str:
    subject = _subject(kwargs, meta)
    if error:
        return f"{subject}: {kind} could not be evaluated: {error}"
    count = _as_int(result.get("unexpected_count"))
    if count is None:  # aggregate expectations (row counts, means, ...)
        observed = _plain(result.get("observed_value"))
        if not isinstance(observed, (int, float)) or isinstance(observed, bool):
            observed = f"shape {mask_shape(observed)!r}"  # computed from values: masked
        return f"{subject}: {kind} failed (observed {_short(observed, 80)})"
    noun = "row" if "column_list" in kwargs or "column_A" in kwargs else "value"
    text = (
        f"{subject}: {count} {noun}{'' if count == 1 else 's'} "
        f"({_percent(_as_float(result.get('unexpected_percent')))}) "
        f"{meta.get('failure') or _failure_phrase(kind, kwargs)}"
    )
    mostly = kwargs.get("mostly")
    if mostly is not None and mostly < 1:
        text += f"; more than the {_percent((1 - mostly) * 100)} tolerated"
    # Never a value (a partner may put a phone number anywhere): the masked shapes of a few
    # (``dddd``, ``aaa_aaa``), distinct; rows of pair or compound expectations and nulls are
    # not worth it.
    shapes = list(
        dict.fromkeys(
            mask_shape(v if isinstance(v, str) else _short(v, 64))
            for v in (result.get("partial_unexpected_list") or [])
            if kind != "expect_column_values_to_not_be_null"
            and not isinstance(v, (dict, list, tuple))
        )
    )[:EXAMPLE_VALUES]
    if shapes and meta.get("quote_values", True) and not meta.get("personal"):
        text += ", e.g. shape " + ", ".join(repr(v) for v in shapes)
    return text


def _first_error(exception_info: Any) -> str | None:
    """The exception message of an expectation that raised, if any (GX nests them by metric)."""
    if not exception_info:
        return None
    infos = [exception_info] if "raised_exception" in exception_info else exception_info.values()
    for info in infos:
        if isinstance(info, dict) and info.get("raised_exception"):
            message = str(info.get("exception_message") or "exception").strip()
            return _masked_message(message.splitlines()[0][:300]) if message else "exception"
    return None


def _sample(
    indices: list[Any], row_key: list[str]
) -> tuple[list[int], list[dict[str, Any]]]:
    """Row numbers and key dicts of failing rows from GX's ``partial_unexpected_index_list``."""
    rows: list[int] = []
    keys: list[dict[str, Any]] = []
    for item in indices[:SAMPLE_ROWS]:
        if isinstance(item, dict):  # SQL: the row_key columns (and the checked value)
            if key := {k: _plain(item[k]) for k in row_key if k in item}:
                keys.append(key)  # the checked value is left out: it is in the description
            if (value := _as_int(item.get("row_number"))) is not None:
                rows.append(value)
        elif (value := _as_int(item)) is not None:
            rows.append(value)
    return rows, keys


_VALUE_KEYS = ("partial_unexpected_list", "partial_unexpected_counts", "unexpected_list")
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")
_MAX_TRACEBACK = 4000


def _masked_message(message: str) -> str:
    """An error message with quoted parts (a library quoting a value) as masked shapes."""
    masked = _QUOTED.sub(lambda m: repr(mask_shape(m.group(1) or m.group(2) or "")), message)
    return scrub_text(masked)


def _mask_values(value: Any) -> Any:
    """Every string in ``value`` as its masked shape (numbers and structure kept)."""
    if isinstance(value, str):
        return mask_shape(value)
    if isinstance(value, dict):
        return {k: _mask_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_values(v) for v in value]
    return value


def _mask_file_values(payload: dict[str, Any]) -> dict[str, Any]:
    """A stored GX result that quotes no file value: values as masked shapes, capped.

    GX returns unexpected values as they are (a 10 MB field 20 times over, a phone number in
    a text column); results and the Data Docs rendered from them keep only the shapes.
    Exception messages and tracebacks are masked the same way.
    """
    for item in payload.get("results") or []:
        result = item.get("result")
        if isinstance(result, dict):
            for key in (*_VALUE_KEYS, "observed_value", "details"):
                if key in result:
                    result[key] = _mask_values(result[key])
            column = ((item.get("expectation_config") or {}).get("kwargs") or {}).get("column")
            for index in result.get("partial_unexpected_index_list") or []:
                if isinstance(index, dict) and column in index:
                    index[column] = _mask_values(index[column])
        for info in _exception_infos(item.get("exception_info")):
            for key in ("exception_message", "exception_traceback"):
                if isinstance(info.get(key), str):
                    info[key] = _masked_message(info[key][:_MAX_TRACEBACK])
    return payload


def _exception_infos(exception_info: Any) -> list[dict[str, Any]]:
    if not isinstance(exception_info, dict):
        return []
    if "raised_exception" in exception_info:
        return [exception_info]
    return [v for v in exception_info.values() if isinstance(v, dict)]


def _scrub_personal(payload: dict[str, Any]) -> dict[str, Any]:
    """Drop unexpected values of expectations on pseudonym columns (``meta.personal``).

    Those columns hold pseudonyms, so their values are safe, except when the check fails
    because ingestion let a raw identifier through: then the value must not be written.
    """
    for item in payload.get("results") or []:
        config = item.get("expectation_config") or {}
        result = item.get("result")
        if not (config.get("meta") or {}).get("personal") or not isinstance(result, dict):
            continue
        for key in _VALUE_KEYS:
            result.pop(key, None)
        column = (config.get("kwargs") or {}).get("column")
        for index in result.get("partial_unexpected_index_list") or []:
            if isinstance(index, dict):  # SQL rows: {row_key..., column: value}
                index.pop(column, None)
    return payload


def outcome_from_result(
    suite: str,
    result: ExpectationSuiteValidationResult,
    row_key: list[str] | None = None,
    batch_id: str | None = None,
    result_path: str | None = None,
    seconds: float = 0.0,
    suite_hash: str | None = None,
) -> ValidationOutcome:
    """Turn a GX suite result into a :class:`ValidationOutcome` of plain values."""
    failed: list[FailedExpectation] = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        kwargs = dict(config.kwargs)
        meta = dict(config.meta or {})
        body = dict(item.result or {})
        error = _first_error(item.exception_info)
        rows, keys = _sample(list(body.get("partial_unexpected_index_list") or []), row_key or [])
        failed.append(
            FailedExpectation(
                expectation=config.type,
                column=kwargs.get("column"),
                severity=meta.get("severity", "critical"),
                unexpected_count=_as_int(body.get("unexpected_count")),
                unexpected_percent=_as_float(body.get("unexpected_percent")),
                sample_rows=sorted(rows),
                description=_describe(config.type, kwargs, meta, body, error),
                sample_keys=keys,
            )
        )
    # Critical first, then in suite order: the first line is the reason a batch is held.
    failed.sort(key=lambda f: f.severity != "critical")
    return ValidationOutcome(
        suite=suite,
        success=not failed,
        expectations_run=len(result.results),
        failed=failed,
        batch_id=batch_id,
        result_path=result_path,
        seconds=seconds,
        suite_hash=suite_hash,
    )


# ---------------------------------------------------------------------------------------
# The validator


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def gx_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the dtypes GX's pandas engine handles vectorized (values unchanged).

    GX's ``column_values.between`` is vectorized only for numpy int/float and datetime64[ns]
    (or tz-aware) columns; a nullable ``Int64`` column, or a naive ``datetime64[us]`` one,
    falls back to a Python call per value (~1 s per 1M values). Nullable integers become
    ``int64`` (no nulls) or ``float64`` (exact up to 2**53), naive datetimes ``[ns]``. Other
    columns are shared, not copied. A named index is unnamed: GX would report it as dicts.
    """
    import numpy as np
    import pandas as pd

    changed: dict[str, Any] = {}
    for name, column in frame.items():
        dtype = column.dtype
        if isinstance(dtype, pd.api.extensions.ExtensionDtype) and dtype.kind in "iu":
            has_na = bool(column.isna().any())
            changed[name] = column.to_numpy(
                dtype="float64" if has_na else "int64", na_value=np.nan if has_na else 0
            )
        elif dtype.kind == "M" and getattr(dtype, "tz", None) is None and dtype != "M8[ns]":
            changed[name] = column.astype("datetime64[ns]")
    if changed:
        frame = frame.assign(**{str(k): v for k, v in changed.items()})
    if frame.index.name is not None:
        frame = frame.rename_axis(None)
    return frame


class BatchValidator:
    """Runs suites on batch frames and warehouse tables.

    Reuses one ephemeral GX context and one pandas data source/asset/batch definition per
    process; suites are loaded once per validator and cached. With ``results_dir`` (e.g.
    ``$PUHUI_HOME/gx``) each GX result is also written as JSON under
    ``<results_dir>/validations/<suite>/<batch_id>.json``. One validator is meant to be used
    by one thread at a time; a lock makes concurrent use safe but serial.
    """

    def __init__(self, *, expectations_dir: Path, results_dir: Path | None = None) -> None:
        self.results_dir = results_dir
        self.expectations_dir = expectations_dir
        self._suites: dict[str, gx.ExpectationSuite] = {}
        self._hashes: dict[str, str] = {}
        self._lock = threading.Lock()

    def suite(self, name: str) -> gx.ExpectationSuite:
        """The cached suite ``name`` (loaded on first use)."""
        if name not in self._suites:
            self._hashes[name] = suite_hash(name, expectations_dir=self.expectations_dir)
            self._suites[name] = load_suite(name, expectations_dir=self.expectations_dir)
        return self._suites[name]

    def load(self, name: str) -> None:
        """Load suite ``name`` now (``SuiteLoadError`` if it is broken), under the lock that
        validations of other feeds sharing this validator hold."""
        with self._lock:
            self.suite(name)

    def suite_hash(self, name: str) -> str:
        """The hash of suite ``name`` as this validator loaded it (what its results ran)."""
        self.suite(name)
        return self._hashes[name]

    def validate_frame(self, frame: pd.DataFrame, suite: str, batch_id: str) -> ValidationOutcome:
        """Validate an ingestion batch frame; ``sample_rows`` are values of its index."""
        with self._lock:
            started = time.perf_counter()
            expectation_suite = self.suite(suite)
            runtime = _gx()
            frame = gx_frame(frame)
            with runtime.lock:
                batch = runtime.frame_batches.get_batch(batch_parameters={"dataframe": frame})
                result = _validate_with_failure_detail(batch, expectation_suite, _RESULT_FORMAT)
            # A file validated in chunks gets one result per chunk, named by its first row.
            first = _as_int(frame.index[0]) if len(frame) else None
            part = f"{batch_id}.from-row-{first}" if first is not None and first > 1 else batch_id
            path = self._store(suite, part, result, batch_id)
            return outcome_from_result(
                suite, result, batch_id=batch_id, result_path=path,
                seconds=time.perf_counter() - started, suite_hash=self._hashes[suite],
            )

    def validate_table(self, warehouse_url: str, table: str, suite: str) -> ValidationOutcome:
        """Validate a whole warehouse table (SQLite or PostgreSQL) with GX's SQL engine.

        Metrics run as SQL in the database. Failing rows are identified by the suite's
        ``meta.row_key`` columns (``sample_keys``; ``sample_rows`` when one is ``row_number``).
        """
        with self._lock:
            started = time.perf_counter()
            expectation_suite = self.suite(suite)
            row_key = list((expectation_suite.meta or {}).get("row_key") or [])
            result_format = dict(_RESULT_FORMAT)
            if row_key:
                result_format["unexpected_index_column_names"] = row_key
            runtime = _gx()
            with runtime.lock:
                batch = runtime.table_batches(warehouse_url, table).get_batch()
                result = _validate_with_failure_detail(batch, expectation_suite, result_format)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            batch_id = f"{table}@{stamp}"
            path = self._store(suite, batch_id, result, table)
            return outcome_from_result(
                suite, result, row_key=row_key, batch_id=batch_id, result_path=path,
                seconds=time.perf_counter() - started, suite_hash=self._hashes[suite],
            )

    def close(self) -> None:
        """Release GX's SQL connections (the pandas side holds nothing)."""
        with self._lock:
            if _runtime is not None:
                with _runtime.lock:
                    _runtime.close_sql()

    def _store(
        self, suite: str, batch_id: str, result: ExpectationSuiteValidationResult, asset: str
    ) -> str | None:
        if self.results_dir is None:
            return None
        folder = self.results_dir / "validations" / _UNSAFE_NAME.sub("_", suite)
        path = folder / f"{_UNSAFE_NAME.sub('_', batch_id)}.json"
        payload = _mask_file_values(_scrub_personal(_plain(result.to_json_dict())))
        # GX's page names the asset and run from these; ephemeral runs leave them empty
        # ("Data asset: None", "Run Name __none__"). The suite hash says which checks ran.
        meta = payload.setdefault("meta", {})
        meta["batch_spec"] = {**(meta.get("batch_spec") or {}), "data_asset_name": asset}
        meta["run_id"] = {"run_name": f"{suite} on {batch_id}",
                          "run_time": datetime.now(UTC).isoformat()}
        meta["puhui_suite_hash"] = self._hashes.get(suite)
        # Two processes may validate the same batch, and Data Docs read results at any time.
        write_text_atomically(path, json.dumps(payload, ensure_ascii=False, indent=1))
        return str(path)
