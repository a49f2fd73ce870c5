"""The ``puhui`` command line: thin wiring from the contract's commands to library calls.

Every command exits 0 on success and non-zero with one clear line on failure; ``--debug``
anywhere on the line shows the traceback instead. Commands whose capability is not built
yet say so and exit 2; they never pretend.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from puhui import console as report
from puhui.errors import PuhuiError, UsageError
from puhui.privacy import printable
from puhui.settings import Settings, configure_runtime, load_settings

if TYPE_CHECKING:
    from puhui.runtime import Runtime

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

app = typer.Typer(
    name="puhui",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Puhui: the data and model lifecycle of an inclusive-finance lender. Anywhere on "
         "the line: --verbose for one line per file and Prefect's own lines, --debug for "
         "a failure's traceback.",
)
run_app = typer.Typer(no_args_is_help=True, help="Run one pipeline flow now.")
models_app = typer.Typer(no_args_is_help=True, help="Model versions, champions and challengers.")
quarantine_app = typer.Typer(no_args_is_help=True, help="Held partner batches.")
audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit trail.")
db_app = typer.Typer(no_args_is_help=True, help="Warehouse schema migrations.")
server_app = typer.Typer(no_args_is_help=True,
                         help="A local Prefect server with its UI, used by every command.")
config_app = typer.Typer(no_args_is_help=True, help="The declarative configuration.")
app.add_typer(run_app, name="run")
app.add_typer(models_app, name="models")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")
app.add_typer(server_app, name="server")
app.add_typer(config_app, name="config")

AsOf = Annotated[
    str | None,
    typer.Option("--as-of", help="As-of date YYYY-MM-DD (default: today, Asia/Shanghai)."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _version(value: str, option: str = "--version") -> str:
    """``--version`` (or ``models compare``'s A and B) as a model version number, refused in
    one line before MLflow is asked (it quoted the value whole, line breaks included, after
    opening its store)."""
    if not (value.isascii() and value.isdigit() and int(value) > 0):
        raise UsageError(option, f"must be a model version number (1, 2, ...), "
                                 f"not '{printable(value)}'")
    return str(int(value))


def _parse_date(value: str | None, option: str) -> date | None:
    """A date option's ``YYYY-MM-DD`` (only that form: ``parse_day``), or a usage error."""
    from puhui.dates import parse_day

    if value is None:
        return None
    try:
        return parse_day(value)
    except ValueError:
        # printable, not repr: repr's escapes glue to a phone number typed after a control
        # character ('\u202e13812345678'), and the mask needs its edge.
        raise UsageError(option, f"must be a date YYYY-MM-DD, not '{printable(value)}'") from None


def _run_date(value: str | None, option: str) -> date | None:
    """A date a pipeline run is for: parsed, and not after today in the lender's timezone
    (a run for a day that has not come would advance watermarks and profiles past it)."""
    from puhui.dates import LENDER_TIMEZONE, today_local

    day = _parse_date(value, option)
    today = today_local()
    if day is not None and day > today:
        raise PuhuiError(f"{option} {day} is in the future (today is {today} in "
                         f"{LENDER_TIMEZONE.key}): no data can have landed for it")
    return day


def _reason(text: str) -> str:
    """A decision's ``--reason``, refused in one line before anything moves when the audit
    trail, which keeps reasons, may not record it (over ``MAX_REASON`` characters trimmed,
    or ``unrecordable_text``: an identifier, a control character, a password); its guard
    would otherwise refuse the event halfway through the decision, and `audit log` printed
    a line break or an escape as it was."""
    from puhui.audit import decision_reason
    from puhui.privacy import unrecordable_text

    text = decision_reason(text)
    if problem := unrecordable_text(text):
        raise PuhuiError(f"--reason {problem}; the audit trail keeps reasons: say it in one "
                         "line of plain text without it")
    return text


@contextmanager
def _generator_options() -> Iterator[None]:
    """A generator argument it cannot use as a usage error naming the option (exit 2); one
    that is no option (the products of configs/products.yaml) stays a one-line error."""
    from puhui.generate.arguments import BadArgument

    try:
        yield
    except BadArgument as exc:
        if exc.argument == "products":
            raise
        option = "--" + exc.argument.replace("_", "-")
        raise typer.BadParameter(exc.problem, param_hint=f"'{option}'") from None


def _settings() -> Settings:
    """Settings for any command: quiet defaults, and the running Prefect server if there is
    one (said with --verbose; read-only commands never start or import Prefect)."""
    from puhui.prefect_server import choose_prefect_target

    settings = load_settings()
    configure_runtime(settings)
    report.detail(choose_prefect_target(settings).line)
    return settings


def _existing_runtime(anchor: tuple[int, str] | None = None) -> Runtime:
    """The runtime for a command that only reads (or decides on a batch that must exist): a
    SQLite warehouse that does not exist, or a database puhui never migrated, is refused in
    one line and left as it was. Opening it created and migrated an empty one (and an audit
    key beside it), and every later read accepted it: a mistyped PUHUI_HOME read as "audit
    trail intact: 0 events", exit 0, after any command had run there. With an ``anchor``
    (``audit verify --anchor``) a missing file or an empty database is the trail deleted,
    not a new home."""
    from puhui.runtime import check_warehouse, open_runtime
    from puhui.warehouse.engine import missing_sqlite_file

    settings = _settings()
    if (path := missing_sqlite_file(settings.warehouse_url)) is not None:
        if anchor is not None:
            raise PuhuiError(f"no warehouse at {path}: the trail anchored at seq {anchor[0]} "
                             "is missing (deleted, or PUHUI_HOME or PUHUI_WAREHOUSE_URL now "
                             "points elsewhere: check them)")
        raise PuhuiError(f"no warehouse at {path}: nothing has run with this PUHUI_HOME or "
                         "PUHUI_WAREHOUSE_URL (check them; 'puhui db upgrade', 'puhui demo' "
                         "or 'puhui run ingest' creates it)")
    # One line, not SQLAlchemy's, for a bad or silent URL; a database never migrated (an
    # empty PostgreSQL one) is refused too, not migrated.
    check_warehouse(settings, existing=True, anchored_seq=None if anchor is None else anchor[0])
    return open_runtime(settings)


def _config_dir() -> Path:
    """The config folder, for a command that runs flows: a missing or incomplete one is
    refused in one line now, not after Prefect started (``check_config_dir``)."""
    from puhui.config import check_config_dir

    config_dir = load_settings().config_dir
    check_config_dir(config_dir)
    return config_dir


def _flow_settings(*, needs_key: bool = True, ephemeral_ok: bool = True,
                   config_checked: bool = False) -> Settings:
    """Settings for a command that runs flows: checked before any flow starts, Prefect's
    console quietened, and one line saying which Prefect server the runs go to.
    ``config_checked``: the command already had ``_config_dir``."""
    from puhui.prefect_server import choose_prefect_target
    from puhui.runtime import check_settings

    if not config_checked:
        _config_dir()
    settings = load_settings()
    configure_runtime(settings)
    target = choose_prefect_target(settings)
    check_settings(settings, target, needs_key=needs_key)
    if target.ephemeral and not ephemeral_ok:
        raise PuhuiError("no Prefect server is running: start one with 'puhui server start' "
                         "(or pass --ephemeral for a temporary one without UI, whose "
                         "schedules die with this process)")
    report.quiet_prefect_logging(verbose=report.is_verbose(), tracebacks=_DEBUG)
    report.stage(target.line)
    return settings


def _print_json(data: Any) -> None:
    """``data`` as JSON, readable (Chinese stays Chinese) and inert (``inert_json``: a
    stored reason's U+202E printed raw reordered the rest of the line)."""
    from puhui.privacy import inert_json

    sys.stdout.write(inert_json(json.dumps(data, indent=2, ensure_ascii=False, default=str))
                     + "\n")


# --------------------------------------------------------------------------- demo, generate
@app.command()
def demo(
    users: Annotated[int, typer.Option(min=100, help="Synthetic customers.")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Daily deliveries.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 42,
    history_days: Annotated[
        int | None,
        typer.Option(min=200, help="Back history in the first delivery \\[default: 730]."),
    ] = None,
) -> None:
    """Generate a synthetic landing zone, run the daily pipeline and train both models."""
    from puhui.demo import DEMO_HISTORY_DAYS, run_demo

    with _generator_options():
        run_demo(_flow_settings(needs_key=False), users=users, days=days, seed=seed,
                 console=console, history_days=history_days or DEMO_HISTORY_DAYS)


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the landing zone to.")],
    users: Annotated[int, typer.Option(min=100, help="Synthetic customers.")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Daily deliveries.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 42,
    faults: Annotated[
        bool, typer.Option("--faults", help="Plant the bad inputs of DOMAIN.md.")
    ] = False,
    end_date: Annotated[str, typer.Option("--end-date", help="Last delivery date.")] = "2026-09-30",
    history_days: Annotated[
        int, typer.Option(min=0, help="Back history in the first delivery.")
    ] = 365,
    penalize_segment: Annotated[
        str | None, typer.Option(help="Raise one segment's true default odds (fairness tests).")
    ] = None,
    drift: Annotated[
        bool, typer.Option("--drift", help="Shift the population the bureau reports in the "
                           "last 120 days (monitoring tests).")
    ] = False,
    rural_agri_boost: Annotated[
        float, typer.Option(min=0, help="Add to rural people's appeal of agri products.")
    ] = 0.0,
) -> None:
    """Write synthetic partner files, faults.json and truth.json (no pipeline run)."""
    from puhui.demo import generate_with_progress

    settings = _settings()
    with _generator_options():
        summary = generate_with_progress(
            settings,
            out,
            users=users,
            days=days,
            seed=seed,
            faults=faults,
            end_date=_parse_date(end_date, "--end-date"),
            history_days=history_days,
            penalize_segment=penalize_segment,
            drift=drift,
            rural_agri_boost=rural_agri_boost,
            console=console,
        )
    console.print(
        f"generated {summary.files} files, {sum(summary.rows_by_partner.values()):,} rows, "
        f"{summary.bytes_written / 1e6:,.1f} MB in {summary.seconds:.1f}s into {out}"
        + (f"; {len(summary.faults)} planted faults in faults.json" if faults else "")
    )


# --------------------------------------------------------------------------- run, backfill
@run_app.command("daily")
def run_daily(as_of: AsOf = None) -> None:
    """The daily pipeline flow."""
    from puhui.pipeline import run_daily_pipeline

    day = _run_date(as_of, "--as-of")
    _flow_settings()
    summary = run_daily_pipeline(day)
    console.print(summary["line"], markup=False)


@run_app.command("ingest")
def run_ingest(
    partner: Annotated[str | None, typer.Option(help="Only this partner feed.")] = None,
    as_of: AsOf = None,
    json_: JsonFlag = False,
) -> None:
    """Ingest and validate landed partner files (one line per file, then a summary)."""
    day = _run_date(as_of, "--as-of")
    from puhui.pipeline import run_ingest_flow

    if partner is not None:  # a typo is one line now, not a failed flow run after Prefect starts
        from puhui.config import PartnersConfig, load_config

        load_config(_config_dir(), PartnersConfig).get(partner)
    _flow_settings(config_checked=partner is not None)
    summary = run_ingest_flow(day, partner)
    if json_:
        _print_json(summary)
        return
    for feed in summary["feeds"]:
        for outcome in feed["files"]:
            # New files that were held or warned about get their line; all with --verbose.
            notable = not outcome["skipped"] and (
                outcome["status"] not in QUIET_FILE_STATUSES or outcome["warnings"])
            if report.is_verbose() or notable:
                console.print(_file_line(outcome), markup=False)
    console.print(summary["line"], markup=False)


# Outcomes that need no one's attention: their per-file lines only show with --verbose.
QUIET_FILE_STATUSES = ("accepted", "duplicate")


def _file_line(outcome: dict) -> str:
    from puhui.ingest.batches import FileOutcome

    return FileOutcome(**outcome).line()


@run_app.command("train")
def run_train(
    model: Annotated[str, typer.Argument(help="risk or recommender")],
    as_of: AsOf = None,
    force: Annotated[
        bool, typer.Option("--force", help="Train even if an identical version exists.")
    ] = False,
    allow_gate_failure: Annotated[
        bool, typer.Option("--allow-gate-failure",
                           help="Exit 0 (and end the flow run Completed) even when the new "
                                "version fails its gates; it stays registered without an alias.")
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Retrain, evaluate, register and gate a model (one line per step). Exits 1 when the
    new version fails a gate (the flow run ends Failed), unless --allow-gate-failure."""
    if model not in ("risk", "recommender"):
        raise UsageError("MODEL", f"must be 'risk' or 'recommender', not '{printable(model)}'")
    from puhui.config import ModelsConfig, load_config
    from puhui.lifecycle.gates import GatesFailed
    from puhui.pipeline import run_train_recommender_flow, run_train_risk_flow

    day = _run_date(as_of, "--as-of")
    # A bad model setting (a LightGBM value of the wrong type) is one line now, not a failed
    # flow run after the features were built; before the Prefect line, so it is the only one.
    load_config(_config_dir(), ModelsConfig)
    _flow_settings(config_checked=True)
    train = run_train_recommender_flow if model == "recommender" else run_train_risk_flow
    failure = None
    try:
        summary = train(day, force=force, allow_gate_failure=allow_gate_failure)
    except GatesFailed as exc:
        failure, summary = exc, exc.summary
    if json_:
        _print_json(summary)
    else:
        # The steps' lines were printed as each step finished (puhui.console.stage).
        console.print(summary["line"], markup=False)
    if failure is not None:
        raise PuhuiError(str(failure))


@run_app.command("profiles")
def run_profiles(as_of: AsOf = None, json_: JsonFlag = False) -> None:
    """Refresh user profiles with the champion models (atomic swap, history kept)."""
    from puhui.pipeline import run_profiles_flow

    _settings()
    _config_dir()
    summary = run_profiles_flow(_run_date(as_of, "--as-of"))
    if json_:
        _print_json(summary)
        return
    console.print(summary["line"], markup=False)


@run_app.command("report")
def run_report(as_of: AsOf = None, json_: JsonFlag = False) -> None:
    """Model monitoring, service effect, early warning and the HTML report."""
    from puhui.pipeline import run_report_flow

    _settings()
    _config_dir()
    summary = run_report_flow(_run_date(as_of, "--as-of"))
    if json_:
        _print_json(summary)
    else:
        console.print(summary["line"], markup=False)
    if summary.get("alerts"):
        raise PuhuiError(f"ALERT: {summary['why']}")


BACKFILL_MAX_DAYS = 366  # a year of dates without --yes


@app.command()
def backfill(
    start: Annotated[str, typer.Option("--start", help="First as-of date.")],
    end: Annotated[str, typer.Option("--end", help="Last as-of date.")],
    force: Annotated[bool, typer.Option("--force", help="Re-run dates already completed.")] = False,
    yes: Annotated[bool, typer.Option(
        "--yes", help=f"Run a span over {BACKFILL_MAX_DAYS} days.")] = False,
) -> None:
    """Run the daily pipeline for each date in order; completed dates are skipped (resumable)."""
    first, last = _parse_date(start, "--start"), _run_date(end, "--end")
    assert first and last
    if first > last:  # the two options disagree, whatever the state: a usage error
        raise UsageError("--start", f"{first} is after --end {last}: nothing to backfill")
    # Each date is a full pipeline run that is then marked completed for good: a mistyped
    # year (0001-01-01) was ~740,000 runs filling Prefect's database and the daily tables.
    # No fixed floor: a lender's own partner data may start before the synthetic 2020.
    if (days := (last - first).days + 1) > BACKFILL_MAX_DAYS and not yes:
        raise UsageError("--start", f"gives {days:,} dates, over {BACKFILL_MAX_DAYS}, each a "
                                    "full pipeline run: add --yes to run them")
    from puhui.pipeline import backfill_daily

    _flow_settings()
    for line in backfill_daily(first, last, force=force):
        console.print(line)


# --------------------------------------------------------------------------- models
def _registry_to_change() -> tuple:
    """MLflow client and runtime, for a command that changes models: first settle (and say)
    what a crash left half-done."""
    from puhui.registry import mlflow_client, reconcile_model_changes
    from puhui.registry_read import check_registry_reachable
    from puhui.runtime import open_runtime

    runtime = open_runtime(_settings())
    check_registry_reachable(runtime.settings.mlflow_tracking_uri)
    client = mlflow_client(runtime.settings.mlflow_tracking_uri)
    settled = reconcile_model_changes(client, runtime.engine, runtime.audit)
    # A dead process's temp folder removed is housekeeping, not news: said with --verbose.
    for line in settled.repaired + (settled.swept if report.is_verbose() else []):
        err_console.print(f"puhui: {printable(line)}", markup=False)  # model names in it
    return client, runtime


def _read_registry() -> tuple:
    """The registry's reader and the runtime, for commands that only read: MLflow's tables
    read directly (``read_only_registry``), without importing MLflow (~2-3 s of CPU)."""
    from puhui.registry_read import read_only_registry

    runtime = _existing_runtime()
    return read_only_registry(runtime.settings.mlflow_tracking_uri), runtime


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Argument()] = None, json_: JsonFlag = False
) -> None:
    """Versions, aliases, key metrics and gate results."""
    from puhui.registry_read import list_versions, read_only_registry

    # Read without importing MLflow (2 s) and without the warehouse: nothing else is needed.
    rows = list_versions(read_only_registry(_settings().mlflow_tracking_uri), name)
    if json_:
        _print_json([r.as_dict() for r in rows])
        return
    if not rows:
        console.print("no registered models yet (puhui run train risk)")
        return
    table = Table(box=None)
    for header in ("model", "v", "aliases", "as of", "headline (out of time)"):
        table.add_column(header, no_wrap=True)
    table.add_column("gates")
    for r in rows:
        gates = ("UNGATED (gate step never ran)" if not r.gated else "passed"
                 if r.gates["passed"] else "FAILED: " + "; ".join(r.gates["failed"]))
        table.add_row(r.name, r.version, ", ".join(r.aliases), r.as_of or "",
                      _headline(r.metrics), gates)
    # Piped into a file or another program, a row should stay one line, not 80 columns.
    out = console if console.is_terminal else Console(width=200)
    out.print(table)
    for r in rows:
        if not r.gates["passed"] and not r.aliases:
            out.print(f"{r.name} v{r.version} FAILED its gates and has no alias: retrain "
                      f"(puhui run train), or accept it with puhui models promote {r.name} "
                      f"--version {r.version} --force --reason ...", markup=False,
                      soft_wrap=True)


def _headline(m: dict[str, float]) -> str:
    """Each model's own headline figures: AUC for the risk model, NDCG@3 for the ranker."""
    def fig(label: str, key: str) -> str | None:
        return f"{label} {m[key]:.3f}" if key in m else None

    parts = [fig("AUC", "auc_oot"), fig("bench", "auc_oot_benchmark"), fig("KS", "ks_oot"),
             fig("PSI", "score_psi"), fig("NDCG@3", "ndcg_at_3_oot"),
             fig("popularity", "ndcg_at_3_oot_popularity"),
             fig("segment popularity", "ndcg_at_3_oot_segment_popularity")]
    return ", ".join(p for p in parts if p)


def _fig(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.4f}"


def _verdict(gates: dict) -> str:
    if not gates["gated"]:
        return "UNGATED (gate step never ran)"
    return "passed" if gates["passed"] else "FAILED: " + "; ".join(gates["failed"])


def _wide() -> Console:
    # Piped into a file or another program, a row should stay one line, not 80 columns.
    return console if console.is_terminal else Console(width=200, highlight=False)


def _model_view(name: str) -> tuple:
    from puhui.lifecycle.views import view_for

    client, runtime = _read_registry()
    return client, runtime, view_for(name, runtime.settings.config_dir)


@models_app.command("show")
def models_show(
    name: str,
    version: Annotated[str, typer.Option("--version", help="The version to show.")],
    json_: JsonFlag = False,
) -> None:
    """One version in full: metrics, gates (with their direction), aliases, lineage tags,
    per-segment figures and, for graded models, calibration per grade (read-only)."""
    from puhui.lifecycle.views import version_facts

    version = _version(version)
    client, runtime, view = _model_view(name)
    facts = version_facts(client, runtime.engine, name, version, view)
    if json_:
        _print_json(facts)
        return
    out = _wide()
    out.print(f"{name} v{facts['version']}: aliases {', '.join(facts['aliases']) or 'none'}; "
              f"trained as of {facts['as_of']}; MLflow run {facts['run_name']} "
              f"({facts['run_id']}); gates {_verdict(facts['gates'])}", markup=False)
    labels = {h.metric: h.label for h in view.headline}
    table = Table("metric", "value", box=None, title="metrics", title_justify="left")
    for metric in facts["headline"] or sorted(facts["metrics"]):
        table.add_row(labels.get(metric, metric), _fig(facts["metrics"][metric]))
    out.print(table)
    if facts["gates"]["checks"]:
        table = Table("gate", "subject", "value", "rule", "result", box=None, title="gates",
                      title_justify="left")
        for c in facts["gates"]["checks"]:
            table.add_row(str(c["gate"]), str(c["subject"]), _fig(c["value"]), str(c["rule"]),
                          _fig(bool(c["passed"])))
        out.print(table)
    if facts["segments"]:
        shown = [m for m in view.segment_metrics
                 if any(m in values for values in facts["segments"].values())]
        table = Table("segment", *shown, box=None, title="per segment", title_justify="left")
        for segment, values in facts["segments"].items():
            table.add_row(segment, *(_fig(values.get(m)) for m in shown))
        out.print(table)
    if facts["calibration"]:
        columns = ("grade", *view.calibration_columns)
        table = Table(*columns, box=None, title="calibration per grade", title_justify="left")
        for row in facts["calibration"]:
            table.add_row(*(_fig(row.get(c)) for c in columns))
        out.print(table)
    table = Table("lineage tag", "value", box=None)
    for key, value in facts["lineage"].items():
        table.add_row(key, value if len(value) <= 100 else value[:97] + "...")
    out.print(table)


@models_app.command("compare")
def models_compare(
    name: str,
    a: Annotated[str | None, typer.Argument(help="Version A \\[default: the champion].")] = None,
    b: Annotated[str | None, typer.Argument(
        help="Version B \\[default: the challenger; with only A given, A is compared with the "
             "champion].")] = None,
    json_: JsonFlag = False,
) -> None:
    """Two versions side by side with the difference (B - A): metrics, per-segment figures,
    calibration and gates (read-only)."""
    from puhui.lifecycle.views import compare_facts, default_pair, version_facts

    a = _version(a, "A") if a is not None else None
    b = _version(b, "B") if b is not None else None
    client, runtime, view = _model_view(name)
    first, second = default_pair(client, name, a, b)
    fa = version_facts(client, runtime.engine, name, first, view)
    fb = version_facts(client, runtime.engine, name, second, view)
    found = compare_facts(fa, fb, view)
    if json_:
        _print_json(found)
        return
    out = _wide()
    head_a = f"A v{first}" + (f" ({', '.join(fa['aliases'])})" if fa["aliases"] else "")
    head_b = f"B v{second}" + (f" ({', '.join(fb['aliases'])})" if fb["aliases"] else "")
    out.print(f"{name}: {head_a} vs {head_b}; gates A {_verdict(fa['gates'])}; gates B "
              f"{_verdict(fb['gates'])}", markup=False)
    labels = {h.metric: h.label for h in view.headline}
    table = Table("metric", head_a, head_b, "B - A", box=None, title="metrics",
                  title_justify="left")
    for r in found["metrics"]:
        table.add_row(labels.get(r["metric"], r["metric"]), _fig(r["a"]), _fig(r["b"]),
                      _signed(r["diff"]))
    out.print(table)
    if found["segments"]:
        table = Table("segment", "metric", "A", "B", "B - A", box=None, title="per segment",
                      title_justify="left")
        for r in found["segments"]:
            table.add_row(r["segment"], r["metric"], _fig(r["a"]), _fig(r["b"]),
                          _signed(r["diff"]))
        out.print(table)
    if found["calibration"]:
        table = Table("grade", "A predicted", "A observed", "A", "B predicted", "B observed",
                      "B", "observed B - A", box=None, title="calibration per grade",
                      title_justify="left")
        for r in found["calibration"]:
            table.add_row(r["grade"], _fig(r["expected_a"]), _fig(r["observed_a"]),
                          _fig(r["ok_a"]), _fig(r["expected_b"]), _fig(r["observed_b"]),
                          _fig(r["ok_b"]), _signed(r["diff"]))
        out.print(table)
    if found["gates"]:
        table = Table("gate", "subject", "rule", "A", "", "B", "", "B - A", box=None,
                      title="gates", title_justify="left")
        for r in found["gates"]:
            table.add_row(r["gate"], r["subject"], str(r["rule"]), _fig(r["a"]),
                          _fig(r["passed_a"]), _fig(r["b"]), _fig(r["passed_b"]),
                          _signed(r["diff"]))
        out.print(table)


def _refuse_before_mlflow(settings: Settings, name: str, version: str | None = None) -> None:
    """Refusals of ``models promote|rollback`` decided without MLflow (whose import and first
    client took 10-20 s under load) and without creating anything: a name that neither
    configs/models.yaml nor the registry has, and a local warehouse or MLflow store that does
    not exist yet (the client created an empty store, the runtime an empty warehouse and an
    audit key), or a database puhui never migrated. Everything else (the verdict, the fence,
    the trail's champion history) is decided where it was, under the model lock after a
    crash's leftovers are settled."""
    from puhui.config import ModelsConfig, load_config
    from puhui.registry_read import read_only_registry, registered_model_names
    from puhui.runtime import check_warehouse
    from puhui.warehouse.engine import missing_sqlite_file

    try:
        models = load_config(settings.config_dir, ModelsConfig)
        names = [m.registered_name for m in (models.credit_risk, models.product_recommender)
                 if m is not None]
    except PuhuiError:  # an unreadable config is not this command's business: no check
        names = [name]
    # A name the config no longer has may still be registered (renamed since): the registry
    # decides then (its tables read without MLflow; a store never created has no models).
    if name not in names and name not in registered_model_names(
            read_only_registry(settings.mlflow_tracking_uri)):
        raise PuhuiError(f"no model named {printable(name)}: configs/models.yaml has "
                         f"{' and '.join(names)}, and the registry has no other by that name")
    warehouse = missing_sqlite_file(settings.warehouse_url)
    store = missing_sqlite_file(settings.mlflow_tracking_uri)
    if version is not None and store is not None:
        raise PuhuiError(f"{name} has no version {version} (no model is registered with "
                         f"this MLFLOW_TRACKING_URI yet: no store at {store})")
    if version is None and warehouse is not None and store is not None:
        # Neither exists: nothing ever ran here, so no champion was ever set. With a store
        # but no warehouse the trail is elsewhere (a mistyped PUHUI_HOME): named below.
        raise PuhuiError(f"{name} has no previous champion to roll back to")
    if (missing := store or warehouse) is not None:
        raise PuhuiError(f"no {'MLflow store' if store else 'warehouse'} at {missing}: "
                         "check PUHUI_HOME, MLFLOW_TRACKING_URI and PUHUI_WAREHOUSE_URL")
    # A database puhui never migrated (an empty PostgreSQL one) is refused as the reads
    # refuse it: opening it migrated it and recorded the move there, while the alias moved
    # in the shared MLflow store and the real warehouse's trail missed it.
    check_warehouse(settings, existing=True)


@models_app.command("promote")
def models_promote(
    name: str,
    version: Annotated[str, typer.Option(
        "--version", help="The version number to promote, as 'models list' shows it.")],
    reason: Annotated[str, typer.Option("--reason")],
    force: Annotated[bool, typer.Option(
        "--force", help="Promote a version that failed its gates (recorded as forced past "
                        "them); never one whose gates did not run.")] = False,
) -> None:
    """Make a version the champion (refused if it failed its gates unless --force, and
    always if its gates never ran)."""
    from puhui.registry import promote

    version = _version(version)
    reason = _reason(reason)
    _refuse_before_mlflow(_settings(), name, version)
    client, runtime = _registry_to_change()
    previous = promote(client, runtime.engine, runtime.audit, name, version, reason, force)
    console.print(f"{printable(name)}: champion is now v{version} (was "
                  f"{'v' + previous if previous else 'nobody'}); recorded in the audit trail",
                  markup=False)


@models_app.command("rollback")
def models_rollback(name: str, reason: Annotated[str, typer.Option("--reason")]) -> None:
    """Bring the previous champion back."""
    from puhui.registry import rollback

    reason = _reason(reason)
    _refuse_before_mlflow(_settings(), name)
    client, runtime = _registry_to_change()
    current, target = rollback(client, runtime.engine, runtime.audit, name, reason)
    console.print(f"{printable(name)}: champion rolled back from v{current} to v{target}; "
                  "recorded in the audit trail", markup=False)


# --------------------------------------------------------------------------- quarantine
BatchArg = Annotated[str, typer.Argument(
    metavar="BATCH", help="A batch id, or a unique prefix of one (as 'quarantine list' prints).")]


def _batch_runtime(batch: str) -> tuple[Any, str]:
    """The runtime and the full batch id a (prefix of a) batch id names."""
    from puhui.ingest.held_batches import resolve_batch_id

    runtime = _existing_runtime()  # no warehouse, no batch: refused before creating one
    return runtime, resolve_batch_id(runtime.engine, batch)


def _width() -> int:
    # A terminal's own width; piped, 80 columns (a file or a pager reads the same).
    return console.width if console.is_terminal else 80


@quarantine_app.command("list")
def quarantine_list(
    all_: Annotated[bool, typer.Option("--all", help="Every batch, not only held ones.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Held batches: unique id prefix, status, rows and the first line of the reason."""
    from puhui.ingest import ledger
    from puhui.ingest.held_batches import (  # not quarantine: it loads pandas and Arrow
        all_batch_ids,
        is_reject_only,
        list_quarantined,
        short_reason,
        unique_prefixes,
    )

    runtime = _existing_runtime()
    home = runtime.settings.home
    records = ledger.list_batches(runtime.engine) if all_ else list_quarantined(runtime.engine)
    prefixes = unique_prefixes(all_batch_ids(runtime.engine))
    if json_:
        _print_json([{**record.__dict__, "prefix": prefixes[record.batch_id],
                      "reject_only": is_reject_only(home, record)} for record in records])
        return

    def state(record: Any) -> str:
        if record.status == "quarantined":
            return "reject-only" if is_reject_only(home, record) else "held"
        return record.status

    cells = [(prefixes[r.batch_id], state(r), "?" if "rows" in r.unreadable else f"{r.rows:,}")
             for r in records]
    widths = [max([len(h), *(len(c[i]) for c in cells)])
              for i, h in enumerate(("batch", "status", "rows"))]
    room = max(_width() - sum(widths) - 6, 12)

    def line(batch: str, status: str, rows: str, reason: str) -> str:
        return (f"{batch:<{widths[0]}}  {status:<{widths[1]}}  {rows:>{widths[2]}}  "
                f"{reason}").rstrip()

    console.print(line("batch", "status", "rows", "reason"), markup=False)
    for record, (batch, status, rows) in zip(records, cells, strict=True):
        # A cell SQLite kept as none of its type (a hand edit) is marked, not a crash.
        marked = "".join(f"[{c}: unreadable] " for c in record.unreadable)
        # printable: a reason from before round 16 (a JSON key's type drift) or a hand
        # edit may hold an escape; short_reason only folds whitespace.
        reason = short_reason(printable(record.reason or ""), max(room - len(marked), 12))
        console.print(line(batch, status, rows, marked + reason), markup=False)
    held = [r for r in records if r.status == "quarantined"]
    reject_only = sum(is_reject_only(home, r) for r in held)
    console.print(f"{len(held)} batch(es) held ({reject_only} reject-only: no readable copy)"
                  + (f"; {len(records)} listed" if all_ else ""), markup=False)
    console.print("full reason: quarantine show BATCH; decide: revalidate|release|reject "
                  "BATCH", markup=False)


@quarantine_app.command("show")
def quarantine_show(batch: BatchArg, json_: JsonFlag = False) -> None:
    """One batch in full: reasons, failing expectations with masked samples, rows, suite
    hash, Data Docs page and the decisions recorded on it."""
    from puhui.ingest.held_batches import show_batch  # not quarantine: pandas and Arrow

    runtime, batch_id = _batch_runtime(batch)
    found = show_batch(runtime, batch_id)
    if json_:
        _print_json(found)
        return
    status = found["status"] + (" (reject-only: no readable copy)" if found["reject_only"]
                                else "")
    # printable on what was stored or chosen by a partner (a reason, a failure message or an
    # event recorded before round 16, or by hand, may hold an escape or a line break); not on
    # the paths built here from our own settings, which it would mask (a digit run in a home).
    p = printable
    delivered = found["delivery_date"] or "(unreadable)"
    out = [f"batch {p(found['batch_id'])}: {p(found['partner'])}, delivered {delivered}, "
           f"{p(status)}",
           f"  file {p(found['source_path'])} (sha256 {p(found['checksum'][:16])})",
           f"  rows {_count(found, 'rows')}: loaded {_count(found, 'rows_loaded')}, held "
           f"{_count(found, 'rows_held')}, duplicate {_count(found, 'rows_duplicate')}",
           f"  reason: {p(found['reason']) or '-'}"]
    if found["unreadable"]:
        out.append(f"  unreadable (stored as none of its type, a hand edit): "
                   f"{', '.join(found['unreadable'])}")
    validation = found["validation"]
    if validation and not validation["expectations_run"]:
        out.append(f"  validation: suite {p(validation['suite'])} did not run (held before "
                   "validation: the file could not be read as its contract says)")
    elif validation:
        out.append(f"  validation: suite {p(validation['suite'])} (hash "
                   f"{p(str(validation['suite_hash'] or 'not recorded'))}), "
                   f"{validation['expectations_run']} expectations, "
                   f"{validation['critical_failed']} critical and "
                   f"{validation['warning_failed']} warning failure(s), at "
                   f"{(validation['validated_at'] or '(unreadable)')[:19]}")
    for failure in found["failures"]:
        out.append(f"  [{p(str(failure.get('severity', 'critical')))}] "
                   f"{p(failure['message'])}")
        rows = failure.get("sample_rows") or []
        if rows:
            shapes = failure["sample_shapes"]
            out.append("      rows " + p(", ".join(map(str, rows[:10])))
                       + (f"; masked values {p(', '.join(repr(v) for v in shapes[:5]))}"
                          if shapes else ""))
    for warning in found["warnings"] if not found["failures"] else []:
        out.append(f"  warning: {p(warning)}")
    out.append("  quarantine copy: " + (found["quarantine_copy"] or "none"))
    for page in found["data_docs"]:
        built = "" if Path(page).exists() else " (not built yet: puhui data-docs)"
        out.append(f"  Data Docs: {page}{built}")
    for event in found["decisions"]:
        out.append(f"  {p(event['at'])} {p(event['actor'])} {p(event['action'])}"
                   + (f": {p(event['reason'])}" if event["reason"] else ""))
    for text in out:
        console.print(text, markup=False)


def _count(found: dict[str, Any], column: str) -> str:
    """A ledger count as `show` prints it: '?' when the stored value is no number."""
    return "?" if f"ingest_batches.{column}" in found["unreadable"] else f"{found[column]:,}"


@quarantine_app.command("revalidate")
def quarantine_revalidate(batch: BatchArg, json_: JsonFlag = False) -> None:
    """Run the current suite on a held batch; load it if it now passes (audited with the
    suite's hash), else it stays held with the new reasons (exit 1)."""
    from puhui.ingest.quarantine import revalidate_batch

    runtime, batch_id = _batch_runtime(batch)
    result = revalidate_batch(runtime, batch_id)
    record = result.record
    if json_:
        _print_json({"batch_id": batch_id, "accepted": result.accepted,
                     "changed": result.changed, "status": record.status,
                     "suite": result.suite, "suite_hash": result.suite_hash,
                     "rows_loaded": record.rows_loaded, "critical": result.critical,
                     "warnings": result.warnings})
    elif not result.changed:
        console.print(f"{batch_id} is already {record.status} ({record.rows_loaded:,} rows "
                      "loaded): nothing to do", markup=False)
    elif result.accepted:
        console.print(f"accepted {batch_id}: passed suite {result.suite} "
                      f"({result.suite_hash}); {record.rows_loaded:,} rows loaded into "
                      f"raw_{record.partner}, {record.rows_duplicate:,} duplicate rows dropped"
                      + (f"; {len(result.warnings)} warning(s)" if result.warnings else ""),
                      markup=False)
    if result.changed and not result.accepted:
        raise PuhuiError(f"{batch_id} still fails suite {result.suite} ({result.suite_hash}) "
                         f"and stays held: {result.critical[0]}")


@quarantine_app.command("release")
def quarantine_release(batch: BatchArg, reason: Annotated[str, typer.Option("--reason")]) -> None:
    """Load a held batch without checking it again (recorded with your reason)."""
    from puhui.ingest.quarantine import release_batch

    reason = _reason(reason)
    runtime, batch_id = _batch_runtime(batch)
    record = release_batch(runtime, batch_id, reason)
    console.print(
        f"released {record.batch_id}: {record.rows_loaded:,} rows loaded into "
        f"raw_{record.partner}, {record.rows_duplicate:,} duplicate rows dropped"
    )


@quarantine_app.command("reject")
def quarantine_reject(batch: BatchArg, reason: Annotated[str, typer.Option("--reason")]) -> None:
    """Reject a held batch for good (recorded with your reason)."""
    from puhui.ingest.quarantine import reject_batch

    reason = _reason(reason)
    runtime, batch_id = _batch_runtime(batch)
    record = reject_batch(runtime, batch_id, reason)
    console.print(f"rejected {record.batch_id} ({record.rows:,} rows stay held)")


# --------------------------------------------------------------------------- audit
AUDIT_COLUMNS = ("seq", "occurred_at", "actor", "action", "subject", "reason", "flow_run_id",
                 "mlflow_run_id", "code_version", "config_hash", "details")


def _inert_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a reason or actor starting with = + - @ (or a
    tab or carriage return) is a formula to Excel and LibreOffice (``=HYPERLINK(...)`` sends
    the sheet's data away when an auditor opens the export), so it gets a leading quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@audit_app.command("log")
def audit_log_command(
    since: Annotated[str | None, typer.Option(
        "--since", help="From this UTC date or time (YYYY-MM-DD[THH:MM[:SS]]).")] = None,
    until: Annotated[str | None, typer.Option(
        "--until", help="Up to this UTC date (the whole day) or time.")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Only this actor.")] = None,
    action: Annotated[list[str] | None, typer.Option(
        "--action", help="Actions starting with this (repeatable); unknown: an error.")] = None,
    subject: Annotated[str | None, typer.Option(
        "--subject", help="Subjects starting with this (a batch id, credit_risk/v3).")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, help="Only the last N events.")] = None,
    format_: Annotated[str, typer.Option(
        "--format", help="table, json or csv (all fields, for a spreadsheet).")] = "table",
    json_: JsonFlag = False,
) -> None:
    """The audit trail, oldest first, with each event's reason."""
    from puhui.audit import (
        EventFilter,
        check_action_prefixes,
        event_reason,
        parse_time,
        read_audit_events,
    )

    # --format checked before --json overrides it: `--format xml --json` was accepted.
    if format_ not in ("table", "json", "csv"):
        # A usage error naming the option, exit 2, as the README says of every wrong value.
        raise UsageError("--format", f"must be table, json or csv, not '{printable(format_)}'")
    fmt = "json" if json_ else format_
    where = EventFilter(
        since=parse_time(since, "--since") if since else None,
        until=parse_time(until, "--until", end_of_day=True) if until else None,
        actor=actor, actions=tuple(action or ()), subject=subject)
    if where.since and where.until and where.since > where.until:
        # As backfill's --start after --end (a usage error, exit 2): swapped dates read
        # "0 event(s)", exit 0, to an auditor who then took the trail for empty over that span.
        raise UsageError("--since", f"{printable(since or '')} is after --until "
                                    f"{printable(until or '')}: no event can match")
    runtime = _existing_runtime()
    check_action_prefixes(runtime.engine, where.actions)
    events = read_audit_events(runtime.engine, limit=limit, where=where)
    for event in events:
        event["reason"] = event_reason(event)
    if fmt == "json":
        _print_json(events)
        return
    if fmt == "csv":
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=AUDIT_COLUMNS, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        for event in events:
            row = {**event, "details": json.dumps(event["details"], sort_keys=True,
                                                  ensure_ascii=False)}
            writer.writerow({k: _inert_cell(v) for k, v in row.items()})
        return
    table = Table(box=None)
    for header in ("seq", "time (UTC)", "actor", "action", "subject"):
        table.add_column(header, no_wrap=True)
    table.add_column("reason")
    for event in events:
        # Text, not markup: a reason reads "[FORCED] ..." and Rich would eat the brackets.
        # printable: an event recorded before its text was checked stays one inert line.
        table.add_row(*(Text(printable(str(v))) for v in (event["seq"], event["occurred_at"][:19],
                                                event["actor"], event["action"],
                                                event["subject"], event["reason"])))
    # Piped into a file or another program, an event stays one line, not 80 columns.
    (console if console.is_terminal else Console(width=400)).print(table)
    console.print(f"{len(events)} event(s)")


def _verified_chain(anchor: str | None = None) -> tuple:
    from puhui.audit import audit_key_bytes, parse_anchor, verify_audit_chain

    parsed = parse_anchor(anchor) if anchor else None
    runtime = _existing_runtime(parsed)
    key = audit_key_bytes(runtime.settings.audit_key)
    return runtime, verify_audit_chain(runtime.engine, key, anchor=parsed)


@audit_app.command("anchor")
def audit_anchor(json_: JsonFlag = False) -> None:
    """Print SEQ:HASH of the trail's last event, to keep outside the database."""
    _, result = _verified_chain()
    if not result.ok:
        raise PuhuiError(f"audit trail ALTERED, not anchoring it: {result.problems[0]}")
    if json_:
        _print_json({"seq": result.head_seq, "hash": result.head_hash, "anchor": result.anchor})
        return
    sys.stdout.write(result.anchor + "\n")


@audit_app.command("verify")
def audit_verify(
    anchor: Annotated[
        str | None,
        typer.Option(help="SEQ:HASH from 'puhui audit anchor', kept outside the database."),
    ] = None,
    repair: Annotated[
        bool, typer.Option(help="Settle model changes a crash interrupted (--no-repair: "
                                "only report them, e.g. as the read-only auditor role).")
    ] = True,
    deep: Annotated[
        bool, typer.Option("--deep", help="Hash the model files of every registered version, "
                                          "ignoring the cache of checked files (default: only "
                                          "those an alias points to; --anchor implies it), "
                                          "and check ingest_keys against its keyed digest "
                                          "(streams every key: ~3 s of CPU per 1M), and "
                                          "the profile, monitoring and validation tables "
                                          "against their writers' keyed digests "
                                          "(watermarks' and trainings' evaluations: always), "
                                          "user_features against its writer's counts and "
                                          "digests (plain verify leaves it out), "
                                          "and each "
                                          "raw batch's rows against its load's.")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option("--since", help="With --deep: digest the dated tables' rows (profile "
                                     "history, monitoring, user_features) from this as-of "
                                     "date (YYYY-MM-DD) "
                                     "on, and the raw batches delivered from it on; older "
                                     "ones are counted only.")
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Check the audit trail (keyed chain, anchor) and that MLflow, the ledger, its keys,
    the raw tables and the profile, monitoring, validation, feature, watermark and
    evaluation tables agree with it; exit 1 if any is wrong."""
    since_day = _parse_date(since, "--since")
    if since_day is not None and not deep:
        # A usage error (exit 2), as backfill's span without --yes: the options alone are
        # wrong, whatever the warehouse holds.
        raise UsageError("--since", "is for --deep only (plain verify digests no rows)")
    runtime, result = _verified_chain(anchor)
    # Not implied by --anchor, unlike the model files: the keyed digest guards against those
    # without the key, an anchor against its holder.
    keyed = deep
    problems = list(result.problems)
    summary: dict[str, Any] = {**result.__dict__, "anchor": result.anchor}
    lines: list[str] = []
    model_events = any(e.startswith("model.") for e in _actions(runtime.engine))
    from puhui.warehouse.engine import missing_sqlite_file

    # No model event and no local store (no model trained yet): MLflow is not asked.
    store_missing = missing_sqlite_file(runtime.settings.mlflow_tracking_uri) is not None
    if result.ok and (model_events or not store_missing):
        from puhui.model_fingerprints import VerifiedFiles
        from puhui.registry import (
            mlflow_client,
            reconcile_model_changes,
            registry_problems,
            unfingerprinted_versions,
        )
        from puhui.registry_read import read_only_registry

        uri = runtime.settings.mlflow_tracking_uri
        client = read_only_registry(uri)
        # Read first: only a crash's leftovers need MLflow itself (and its import) to repair.
        settled = reconcile_model_changes(client, runtime.engine, runtime.audit, repair=False)
        if settled.open and repair:
            settled = reconcile_model_changes(mlflow_client(uri), runtime.engine,
                                              runtime.audit, repair=True)
        if settled.repaired:  # the repairs are events: the head moved
            runtime, result = _verified_chain(anchor)
            summary.update(result.__dict__, anchor=result.anchor)
            problems = list(result.problems)
        # The cache's entries are HMACs under the audit key, which the local profile keeps in
        # $PUHUI_HOME next to the cache: its holder could swap a file and forge an entry.
        # An anchor is for not trusting the key's holder, so every file is hashed then.
        deep = deep or anchor is not None
        verified = None if deep else VerifiedFiles(runtime.settings.home, runtime.audit.key)
        mismatches, versions, aliases = registry_problems(client, runtime.engine, deep=deep,
                                                          verified=verified)
        if verified is not None:
            verified.save()
        problems += settled.open + mismatches
        lines += settled.repaired + (settled.swept if report.is_verbose() else []) + [
            f"ungated (promote refuses it): {v}" for v in settled.ungated]
        unchecked = unfingerprinted_versions(runtime.engine)
        if unchecked:  # informational: these came before digests, nothing is wrong with them
            lines.append(f"{len(unchecked)} version(s) registered without a file fingerprint "
                         f"(model files not checkable): {', '.join(unchecked[:5])}"
                         + (", ..." if len(unchecked) > 5 else ""))
        summary.update(repaired=settled.repaired, swept=settled.swept, ungated=settled.ungated,
                       registry_problems=mismatches, versions=versions, aliases=aliases,
                       unfingerprinted=unchecked)
        if not settled.open and not mismatches:
            lines.append(f"MLflow agrees with the trail: {versions} version(s), "
                         f"{aliases} alias(es); model files hashed: "
                         + ("every version" if deep else "the aliased versions (--deep: all)"))
    ledger_mismatches: list[str] = []
    if result.ok:
        from puhui.ingest.ledger import key_index_problems, ledger_problems

        ledger_mismatches, batches, unrecorded = ledger_problems(runtime.engine)
        problems += ledger_mismatches
        summary.update(ledger_problems=ledger_mismatches, batches=batches,
                       ledger_unrecorded=unrecorded)
        lines += [unrecorded] if unrecorded else []  # informational, as below
        if not ledger_mismatches:
            lines.append(f"ingest_batches agrees with the trail: {batches} batch(es)")
            # Counted against the ledger's rows_loaded: only worth it once those are trusted.
            from puhui.ingest.key_digest import digest_subkey

            checked = key_index_problems(
                runtime.engine, digest_subkey(runtime.audit.key) if keyed else None)
            key_mismatches = checked.problems
            problems += key_mismatches + checked.raw_problems
            summary.update(key_index_problems=key_mismatches, index_keys=checked.keys,
                           index_undigested=checked.undigested,
                           index_keyed=keyed, index_unkeyed=checked.unkeyed,
                           raw_problems=checked.raw_problems, raw_rows=checked.raw_rows)
            # informational, as unfingerprinted model versions are
            lines += [note for note in (checked.undigested, checked.unkeyed) if note]
            if not key_mismatches:
                lines.append(f"ingest_keys agrees with the ledger: {checked.keys:,} key(s)"
                             + (", keyed digests compared" if keyed
                                else " (--deep: also the keyed digests)"))
            if not checked.raw_problems:
                lines.append(f"raw tables agree with the ledger: {checked.raw_rows:,} row(s)")
    key_check_problems: list[str] = []
    if result.ok:
        key_line, key_check_problems = _pseudonym_key_report(runtime)
        problems += key_check_problems
        summary.update(pseudonym_key=key_line, pseudonym_key_problems=key_check_problems)
        lines += [key_line] if key_line else []
    table_mismatches: list[str] = []
    if result.ok:
        from puhui.table_digests import SPECS, WRITERS, table_problems, writer_subkey

        subkey = writer_subkey(runtime.audit)
        tables = table_problems(runtime.engine, SPECS, WRITERS, subkey if keyed else None,
                                since_day, small_subkey=subkey)
        table_mismatches = tables.problems
        problems += table_mismatches
        summary.update(table_problems=table_mismatches, table_rows=tables.rows,
                       table_notes=tables.notes)
        raw = tables.raw
        problems += raw.problems
        summary.update(raw_digest_problems=raw.problems, raw_digest_notes=raw.notes,
                       raw_digests_compared={"batches": raw.batches, "rows": raw.rows}
                       if keyed else None)
        lines += tables.notes + raw.notes  # informational: rows written before digests
        if not raw.problems:
            lines.append("raw tables have every column their loads digested"
                         + (f"; their rows agree with the loads' keyed digests: "
                            f"{raw.batches:,} batch(es), {raw.rows:,} row(s)"
                            + (f" (batches delivered from {since_day})" if since_day else "")
                            if keyed else " (--deep: also their rows' keyed digests)"))
        if not table_mismatches:
            lines.append(
                "profile, monitoring, validation, training-evaluation and watermark tables"
                + (" and user_features" if keyed else "")
                + f" agree with the trail: {tables.rows:,} row(s) counted, "
                + ("keyed digests compared" if keyed
                   else "the watermarks' and training evaluations' keyed digests compared "
                        "(--deep: also the others', and user_features counted and digested)")
                + (f" (dated rows from {since_day})" if since_day else ""))
    summary.update(ok=not problems, problems=problems)
    if json_:
        _print_json(summary)
    else:
        for line in lines:
            console.print(line, markup=False)
        if result.ok:
            console.print(f"audit trail intact: {result.rows} events, anchor {result.anchor}"
                          + (f" (checked against the anchor {anchor.split(':')[0]})"
                             if anchor else ""), markup=False)
        for problem in problems:
            err_console.print(f"  {printable(problem)}", markup=False)
    # The problems are listed above (stderr), or in the JSON: the error line names only the
    # first for JSON, whose reader sees no list on stderr (each was printed twice).
    def first(found: list[str]) -> str:
        return f", first: {found[0]}" if json_ else " (listed above)"

    if not result.ok:
        raise PuhuiError(f"audit trail ALTERED: {len(result.problems)} problem(s)"
                         + first(result.problems))
    if problems:
        key_problems = len(summary.get("key_index_problems", []))
        raw_problems = (len(summary.get("raw_problems", []))
                        + len(summary.get("raw_digest_problems", [])))
        which = " and ".join(["MLflow"] * (len(problems) > len(ledger_mismatches) + key_problems
                                           + raw_problems + len(table_mismatches)
                                           + len(key_check_problems))
                             + ["PUHUI_PSEUDONYM_KEY"] * bool(key_check_problems)
                             + ["ingest_batches"] * bool(ledger_mismatches)
                             + ["ingest_keys"] * bool(key_problems)
                             + ["raw tables"] * bool(raw_problems)
                             + ["warehouse tables"] * bool(table_mismatches))
        raise PuhuiError(f"{which} and the audit trail DISAGREE: {len(problems)} problem(s)"
                         + first(problems))


def _pseudonym_key_report(runtime: Any) -> tuple[str | None, list[str]]:
    """`audit verify`'s line on the pseudonym key's check value, and its problem if
    PUHUI_PSEUDONYM_KEY is set and not the key the check value was made with."""
    from puhui.ingest.pseudonym_check import check_value_problems, key_matches

    recorded, problems = check_value_problems(runtime.engine)
    if recorded is None:
        return None if problems else ("pseudonym key: no check value recorded yet (the next "
                                      "run that pseudonymizes records it)"), problems
    when = f"recorded {recorded.recorded_at:%Y-%m-%d}" + (
        ", adopted from pseudonyms made before it" if recorded.adopted else "")
    key = runtime.settings.pseudonym_key
    if not key:
        return (f"pseudonym key: check value {when} (PUHUI_PSEUDONYM_KEY not set: not "
                "compared)"), problems
    if not key_matches(recorded, key.encode()):  # as pseudonym_key_bytes (no Arrow)
        return None, [*problems, f"PUHUI_PSEUDONYM_KEY is not the key this warehouse's "
                      f"pseudonyms were made with (its check value, {when}, differs): ingest "
                      "refuses it"]
    return (None if problems else
            f"pseudonym key: PUHUI_PSEUDONYM_KEY matches the check value {when}"), problems


def _actions(engine: Any) -> set[str]:
    from sqlalchemy import select

    from puhui.warehouse.schema import audit_log

    with engine.connect() as conn:
        return set(conn.execute(select(audit_log.c.action).distinct()).scalars())


@audit_app.command("lineage")
def audit_lineage(
    name: str, version: Annotated[str, typer.Option("--version")],
    batches: Annotated[bool, typer.Option(
        "--batches", help="Also one line per data batch: id, checksum, rows, suite hash.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Data batches, validations, code and config behind a model version."""
    from puhui.ingest.ledger import suite_hashes
    from puhui.registry import lineage

    version = _version(version)
    client, runtime = _read_registry()
    found = lineage(client, runtime.engine, name, version)
    hashes = suite_hashes(runtime.engine, [b["batch_id"] for b in found["batches"]])
    for batch in found["batches"]:
        batch["suite_hash"] = hashes.get(batch["batch_id"])
    if json_:
        _print_json(found)
        return
    console.print(
        f"{name} v{version}: registered {found['registered_at']} by {found['registered_by']}"
        f" (MLflow run {found['mlflow_run_id']}); code {found['code_version']}, config "
        f"{found['config_hash']}; trained as of {found['training_as_of']} on features as of "
        f"{' .. '.join(found['feature_as_of_range'] or [])}; gates "
        + ("never ran (ungated)" if found["gates"] is None else "passed"
           if found["gates"]["passed"] else "FAILED: " + "; ".join(found["gates"]["failed"])),
        markup=False)
    by_partner: dict[str, list[dict]] = {}
    for batch in found["batches"]:
        by_partner.setdefault(batch["partner"], []).append(batch)
    failed = {v["batch_id"] for v in found["validations"] if not v["success"]}
    table = Table("partner", "batches", "rows loaded", "validations failed", box=None)
    # Not named `batches`: that is the --batches flag, which a loop variable used to
    # shadow, so every lineage listed each batch whether asked or not.
    for partner, of_partner in sorted(by_partner.items()):
        table.add_row(partner, str(len(of_partner)),
                      f"{sum(b['rows_loaded'] or 0 for b in of_partner):,}",
                      str(sum(b["batch_id"] in failed for b in of_partner)))
    console.print(table)
    if batches:
        listing = Table(box=None)
        for header in ("batch", "status", "rows loaded", "sha256", "suite hash"):
            listing.add_column(header, no_wrap=True)
        for batch in found["batches"]:
            listing.add_row(*(Text(str(v)) for v in (
                batch["batch_id"], batch["status"], f"{batch['rows_loaded'] or 0:,}",
                batch["checksum"], batch["suite_hash"] or "-")))
        # Ids and checksums are what an auditor compares: never cut, whatever the width.
        (console if console.is_terminal else Console(width=240)).print(listing)
    if found["missing_batches"]:
        console.print(f"MISSING from ingest_batches: {', '.join(found['missing_batches'])}")
    for move in found["alias_history"]:
        to = f"v{move['version']}" if move["version"] else "removed"
        console.print(f"  {move['at']} {move['actor']}: {move['alias']} -> {to}"
                      f" ({move['reason']})", markup=False)


# --------------------------------------------------------------------------- profiles
profiles_app = typer.Typer(no_args_is_help=True, help="User profiles (用户画像).")
app.add_typer(profiles_app, name="profiles")


@profiles_app.command("explain")
def profiles_explain(
    key: Annotated[str, typer.Argument(help="person_key, or a raw national ID / phone "
                                            "(hashed on the spot, never stored)")],
    as_of: AsOf = None,
    json_: JsonFlag = False,
) -> None:
    """One customer's PD, grade, reasons, offers and model versions; audited as an access."""
    from puhui.config import SegmentsConfig, load_config
    from puhui.profiles.explain import (
        ACCESS_ACTION,
        explanation,
        explanation_lines,
        read_profile,
        resolve_person_key,
    )

    day = _parse_date(as_of, "--as-of")
    runtime = _existing_runtime()
    person = resolve_person_key(runtime.engine, key, runtime.settings.pseudonym_key)
    del key  # the raw value goes no further than the hash
    models = load_config(runtime.settings.config_dir, SegmentsConfig).profile.models
    found = explanation(read_profile(runtime.engine, person, day), models.get("risk", "risk"))
    runtime.audit.record(runtime.engine, ACCESS_ACTION, f"profile/{person}", {
        "person_key": person, "as_of": found["as_of"], "decision": found["decision"],
        "models": found["models"]})
    if json_:
        _print_json(found)
        return
    for line in explanation_lines(found):
        console.print(line, markup=False)


# --------------------------------------------------------------------------- db, config, serve
@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the warehouse to the newest schema (also done automatically on first use)."""
    from puhui.warehouse.engine import create_warehouse_engine, upgrade_schema

    settings = _settings()
    engine = create_warehouse_engine(settings.warehouse_url)
    console.print(f"warehouse at revision {upgrade_schema(engine)}: {engine.url!r}")


@db_app.command("status")
def db_status() -> None:
    """The warehouse's schema revision and the code's."""
    from puhui.runtime import usable_warehouse_url
    from puhui.warehouse.engine import (
        create_warehouse_engine,
        current_revision,
        head_revision,
        missing_sqlite_file,
    )

    settings = _settings()
    usable_warehouse_url(settings)  # a bad URL in one line, not SQLAlchemy's ValueError
    # Connecting to a SQLite file that is not there creates it (empty, revision none), and
    # the commands that refuse a missing warehouse then took it for one.
    if (path := missing_sqlite_file(settings.warehouse_url)) is not None:
        console.print(f"no warehouse at {path}, code {head_revision()}: 'puhui db upgrade', "
                      "'puhui demo' or 'puhui run ingest' creates it", markup=False)
        return
    engine = create_warehouse_engine(settings.warehouse_url)
    current, head = current_revision(engine), head_revision()
    state = "up to date" if current == head else "needs upgrade (runs on first use)"
    console.print(f"warehouse {engine.url!r}: revision {current or 'none'}, code {head}: {state}")


@config_app.command("check")
def config_check() -> None:
    """Validate every file in configs/."""
    from puhui.config import (
        check_config_dir,
        check_feature_sources,
        check_feed_suites,
        check_keys,
        check_recommender_products,
        config_hash,
        validate_config_dir,
    )
    settings = _settings()
    # The folder first, as the flow commands do: a missing one read "/x/products.yaml: config
    # file is missing", the first name in CONFIG_MODELS, not what was wrong.
    check_config_dir(settings.config_dir)
    names = validate_config_dir(settings.config_dir)
    problems = check_feed_suites(settings.config_dir, settings.expectations_dir)
    problems += check_feature_sources(settings.config_dir)
    problems += check_recommender_products(settings.config_dir)
    problems += check_keys(dict(os.environ))
    for problem in problems:
        err_console.print(f"puhui: {problem}", markup=False)
    if problems:
        raise PuhuiError(f"config check: {len(problems)} problem(s), listed above")
    console.print(
        f"{len(names)} config files valid ({', '.join(names)}); "
        f"hash {config_hash(settings.config_dir, expectations_dir=settings.expectations_dir)}"
    )


@app.command("data-docs")
def data_docs() -> None:
    """Build GX Data Docs for every stored validation result (new ones only) and print the index."""
    from puhui.data_docs import build_data_docs, ledger_outcomes

    runtime = _existing_runtime()
    build = build_data_docs(runtime.settings.home / "gx", ledger_outcomes(runtime.engine))
    console.print(build.line(), markup=False)


@app.command()
def serve(
    ephemeral: Annotated[bool, typer.Option(
        "--ephemeral", help="Serve on a temporary Prefect server (no UI; gone when stopped)."
    )] = False,
) -> None:
    """Run every scheduled deployment of prefect.yaml in this process (Ctrl-C stops).

    Needs a Prefect server ('puhui server start' or PREFECT_API_URL) unless --ephemeral.
    The scheduled runs it created are deleted when it stops (Ctrl-C or SIGTERM).
    """
    from puhui.scheduling import serve_deployments

    _flow_settings(ephemeral_ok=ephemeral)
    serve_deployments(console=console)


# --------------------------------------------------------------------------- server
@server_app.command("start")
def server_start(
    port: Annotated[str | None, typer.Option(  # text: click's int took '１２３' as 123
        "--port", metavar="PORT", help="Port on 127.0.0.1, 1-65535 \\[default: "
        "PUHUI_PREFECT_PORT, else 4200 if free, else a free one].")] = None,
) -> None:
    """Start a local Prefect server (API + UI) under PUHUI_HOME; waits until it is healthy."""
    from puhui.prefect_server import ensure_process_work_pools, port_number, start_server
    from puhui.scheduling import work_pool_names
    from puhui.warm_worker import disabled, launch_worker, wait_for_worker

    requested = None if port is None else port_number(port, "--port")
    settings = load_settings()
    configure_runtime(settings)
    launched: list = []  # the warm worker imports while the server starts

    def alongside(info: Any) -> None:
        if not disabled():
            launched.append(launch_worker(settings, info.api_url))

    with console.status("starting the Prefect server (the first start takes longer)..."):
        try:
            info, started = start_server(settings, requested, on_launch=alongside)
        except BaseException:
            for process in launched:
                if process is not None:
                    process.terminate()
            raise
        pools = ensure_process_work_pools(info.api_url, work_pool_names())
    console.print(f"Prefect server {'started' if started else 'already running'}: UI "
                  f"{info.ui_url}, API {info.api_url} (pid {info.pid}, log {info.log}); "
                  "every puhui command now uses it; 'puhui server stop' stops it",
                  markup=False)
    if pools:
        console.print(f"created the process work pool(s) {', '.join(pools)} of prefect.yaml "
                      "(prefect deploy --all; prefect worker start --pool NAME)")
    if disabled():
        return
    with console.status("starting the warm worker (imports Prefect and GX once)..."):
        worker = wait_for_worker(settings, launched[0] if launched
                                 else launch_worker(settings, info.api_url))
    console.print(f"warm worker running (pid {worker.pid}): 'puhui run ingest' runs in it, "
                  "without importing Prefect and GX again" if worker else
                  "the warm worker did not start (see warm.log beside server.log): "
                  "'puhui run ingest' imports everything itself", markup=False)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the local Prefect server of this PUHUI_HOME."""
    from puhui.prefect_server import stop_server
    from puhui.warm_worker import stop_worker

    settings = load_settings()
    stop_worker(settings)
    info = stop_server(settings)
    console.print(f"Prefect server stopped (pid {info.pid}, port {info.port})" if info
                  else "no Prefect server running for this PUHUI_HOME")


@server_app.command("status")
def server_status(json_: JsonFlag = False) -> None:
    """Is the local Prefect server running? Its URL and pid (exit 1 if not running)."""
    from puhui.prefect_server import is_healthy, read_server
    from puhui.warm_worker import read_worker

    settings = load_settings()
    info = read_server(settings)
    healthy = info is not None and is_healthy(info.api_url)
    worker = read_worker(settings)
    if json_:
        _print_json({"running": info is not None, "healthy": healthy,
                     "warm_worker_pid": worker.pid if worker else None,
                     **({"pid": info.pid, "port": info.port, "ui_url": info.ui_url,
                         "api_url": info.api_url, "log": str(info.log)} if info else {})})
    elif info is None:
        console.print("no Prefect server running for this PUHUI_HOME "
                      "(commands use a temporary one; 'puhui server start' starts one)")
    else:
        console.print(f"Prefect server {'running' if healthy else 'NOT ANSWERING'}: UI "
                      f"{info.ui_url}, API {info.api_url} (pid {info.pid}, log {info.log})"
                      + (f"; warm worker pid {worker.pid}" if worker else ""), markup=False)
    if info is None or not healthy:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- entry point
_DEBUG = False
# Long flags only: a subcommand may use a short one (e.g. -v) for its own option.
GLOBAL_FLAGS = {"--debug", "--verbose"}


def _reflowed_help(typer_app: typer.Typer) -> None:
    """Each command's help from its docstring with the source's line breaks inside a
    paragraph taken out: Rich's help keeps them, so `puhui run --help` listed "Exits 1 when
    the" and then "new version fails a gate ..." on the next line, cut where the source is.
    Click's own marks keep their meaning: text after ``\\f`` is not shown, and a paragraph
    that starts with ``\\b``, or holds a line starting with "- " or indented, stays as written
    (a list, an example)."""
    import inspect

    def reflowed(paragraph: str) -> str:
        lines = paragraph.splitlines()
        if paragraph.startswith("\b") or any(
                line.startswith(("- ", " ")) for line in lines):
            return paragraph
        return " ".join(paragraph.split())

    for info in typer_app.registered_commands:
        if info.help is None and info.callback is not None:
            doc = (inspect.getdoc(info.callback) or "").partition("\f")[0].rstrip()
            info.help = "\n\n".join(reflowed(p) for p in doc.split("\n\n"))
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflowed_help(group.typer_instance)


_reflowed_help(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (one line on error, traceback only with --debug).

    ``--debug`` (tracebacks) and ``--verbose`` (per-file lines, Prefect's INFO lines,
    which Prefect server is used) may appear anywhere on the line.
    """
    global _DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _DEBUG = "--debug" in args
    verbose = "--verbose" in args
    args = [a for a in args if a not in GLOBAL_FLAGS]
    if argv is None and tuple(args[:2]) == ("run", "ingest"):  # typed, not called from Python
        from puhui.warm_worker import delegate

        code = delegate(list(sys.argv[1:]), args)
        if code is not None:
            return code
    report.configure(console, verbose=verbose, json_output="--json" in args)
    report.filter_third_party_noise()
    started = time.monotonic()
    try:
        return _run(args, debug, started)
    finally:
        # Reporting is process-wide: a caller of main() (a test, a library) would otherwise
        # print every later stage line through the CLI's console.
        report.configure(None)


def _run(args: list[str], debug: bool, started: float) -> int:
    """The command, and any failure as one inert line (its exit code returned)."""
    try:
        result = app(args=args, prog_name="puhui", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except UsageError as exc:  # as click's usage errors below: the line, never a traceback
        err_console.print(f"puhui: error: {printable(str(exc))}")
        return 2
    except PuhuiError as exc:
        if debug:
            raise
        err_console.print(f"puhui: error: {printable(str(exc))}")
        return 1
    except click.exceptions.Abort:
        err_console.print("puhui: aborted")
        return 130
    except (click.ClickException, typer.TyperException) as exc:
        # A usage error (typer vendors click: its exceptions are not click's): one line that
        # names the option ("Invalid value for '--users': ..."), not a crash with a hint.
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err_console.print(f"puhui: error: {printable(message)}")
        return int(getattr(exc, "exit_code", 2))
    except Exception as exc:  # noqa: BLE001 - the one place that turns crashes into a line
        if debug:
            raise
        elapsed = time.monotonic() - started
        err_console.print(
            # One inert line: MLflow quotes a hostile --version whole, line breaks and
            # terminal escapes included ("got '1\n[ok] promoted'" printed two lines).
            f"puhui: error: {type(exc).__name__}: {printable(str(exc))} "
            f"(after {elapsed:.1f}s; --debug shows the traceback)"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
