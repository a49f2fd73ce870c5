"""The ``puhui`` command line: thin wiring from the contract's commands to library calls.

Every command exits 0 on success and non-zero with one clear line on failure; ``--debug``
anywhere on the line shows the traceback instead. Commands whose capability is not built
yet say so and exit 2; they never pretend.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table

from puhui.errors import NotBuiltYet, PuhuiError
from puhui.settings import Settings, configure_runtime, load_settings

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

app = typer.Typer(
    name="puhui",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Puhui: the data and model lifecycle of an inclusive-finance lender.",
)
run_app = typer.Typer(no_args_is_help=True, help="Run one pipeline flow now.")
models_app = typer.Typer(no_args_is_help=True, help="Model versions, champions and challengers.")
quarantine_app = typer.Typer(no_args_is_help=True, help="Held partner batches.")
audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit trail.")
db_app = typer.Typer(no_args_is_help=True, help="Warehouse schema migrations.")
config_app = typer.Typer(no_args_is_help=True, help="The declarative configuration.")
app.add_typer(run_app, name="run")
app.add_typer(models_app, name="models")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")

AsOf = Annotated[
    str | None,
    typer.Option("--as-of", help="As-of date YYYY-MM-DD (default: today, Asia/Shanghai)."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _parse_date(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise PuhuiError(f"{option} must be a date YYYY-MM-DD, not {value!r}") from None


def _settings() -> Settings:
    settings = load_settings()
    configure_runtime(settings)
    return settings


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


# --------------------------------------------------------------------------- demo, generate
@app.command()
def demo(
    users: Annotated[int, typer.Option(min=100, help="Synthetic customers.")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Daily deliveries.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 42,
    history_days: Annotated[
        int | None,
        typer.Option(min=200, help="Back history in the first delivery [default: 730]."),
    ] = None,
) -> None:
    """Generate a synthetic landing zone, run the daily pipeline and train the risk model."""
    from puhui.demo import DEMO_HISTORY_DAYS, run_demo

    run_demo(_settings(), users=users, days=days, seed=seed, console=console,
             history_days=history_days or DEMO_HISTORY_DAYS)


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
) -> None:
    """Write synthetic partner files, faults.json and truth.json (no pipeline run)."""
    from puhui.demo import generate_with_progress

    settings = _settings()
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

    _settings()
    summary = run_daily_pipeline(_parse_date(as_of, "--as-of"))
    console.print(summary["line"])


@run_app.command("ingest")
def run_ingest(
    partner: Annotated[str | None, typer.Option(help="Only this partner feed.")] = None,
    as_of: AsOf = None,
    json_: JsonFlag = False,
) -> None:
    """Ingest and validate landed partner files (one line per file, then a summary)."""
    day = _parse_date(as_of, "--as-of")
    from puhui.ingest.pseudonymize import pseudonym_key_bytes
    from puhui.pipeline import run_ingest_flow

    pseudonym_key_bytes(_settings().pseudonym_key)  # refuse before starting any flow
    summary = run_ingest_flow(day, partner)
    if json_:
        _print_json(summary)
        return
    for feed in summary["feeds"]:
        for outcome in feed["files"]:
            console.print(_file_line(outcome), markup=False)
    console.print(summary["line"], markup=False)


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
    json_: JsonFlag = False,
) -> None:
    """Retrain, evaluate, register and gate a model (one line per step)."""
    if model not in ("risk", "recommender"):
        raise PuhuiError(f"model must be 'risk' or 'recommender', not {model!r}")
    if model == "recommender":
        raise NotBuiltYet("puhui run train recommender", "product recommender")
    from puhui.pipeline import run_train_risk_flow

    _settings()
    summary = run_train_risk_flow(_parse_date(as_of, "--as-of"), force=force)
    if json_:
        _print_json(summary)
        return
    for line in summary["steps"]:
        console.print(line, markup=False)
    console.print(summary["line"], markup=False)


@run_app.command("profiles")
def run_profiles(as_of: AsOf = None, json_: JsonFlag = False) -> None:
    """Refresh user profiles with the champion models (atomic swap, history kept)."""
    from puhui.pipeline import run_profiles_flow

    _settings()
    summary = run_profiles_flow(_parse_date(as_of, "--as-of"))
    if json_:
        _print_json(summary)
        return
    console.print(summary["line"], markup=False)


@run_app.command("report")
def run_report(as_of: AsOf = None, json_: JsonFlag = False) -> None:
    """Model monitoring, service effect, early warning and the HTML report."""
    from puhui.pipeline import run_report_flow

    _settings()
    summary = run_report_flow(_parse_date(as_of, "--as-of"))
    if json_:
        _print_json(summary)
    else:
        console.print(summary["line"], markup=False)
    if summary.get("alerts"):
        raise PuhuiError(f"ALERT: {summary['why']}")


@app.command()
def backfill(
    start: Annotated[str, typer.Option("--start", help="First as-of date.")],
    end: Annotated[str, typer.Option("--end", help="Last as-of date.")],
    force: Annotated[bool, typer.Option("--force", help="Re-run dates already completed.")] = False,
) -> None:
    """Run the daily pipeline for each date in order; completed dates are skipped (resumable)."""
    first, last = _parse_date(start, "--start"), _parse_date(end, "--end")
    assert first and last
    from puhui.pipeline import backfill_daily

    _settings()
    for line in backfill_daily(first, last, force=force):
        console.print(line)


# --------------------------------------------------------------------------- models
def _registry() -> tuple:
    from puhui.registry import registry_client
    from puhui.runtime import open_runtime

    runtime = open_runtime(_settings())
    return registry_client(runtime.settings.mlflow_tracking_uri), runtime


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Argument()] = None, json_: JsonFlag = False
) -> None:
    """Versions, aliases, key metrics and gate results."""
    from puhui.registry import list_versions

    client, _ = _registry()
    rows = list_versions(client, name)
    if json_:
        _print_json([r.as_dict() for r in rows])
        return
    if not rows:
        console.print("no registered models yet (puhui run train risk)")
        return
    table = Table(box=None)
    for header in ("model", "v", "aliases", "as of", "AUC oot", "bench", "KS", "PSI"):
        table.add_column(header, no_wrap=True)
    table.add_column("gates")
    for r in rows:
        m = r.metrics
        gates = "passed" if r.gates["passed"] else "FAILED: " + "; ".join(r.gates["failed"])
        table.add_row(r.name, r.version, ", ".join(r.aliases), r.as_of or "",
                      *(f"{m[k]:.3f}" if k in m else "" for k in
                        ("auc_oot", "auc_oot_benchmark", "ks_oot", "score_psi")), gates)
    # Piped into a file or another program, a row should stay one line, not 80 columns.
    (console if console.is_terminal else Console(width=200)).print(table)


@models_app.command("promote")
def models_promote(
    name: str,
    version: Annotated[str, typer.Option("--version")],
    reason: Annotated[str, typer.Option("--reason")],
    force: Annotated[bool, typer.Option("--force")] = False,
) -> None:
    """Make a version the champion (refused if it failed its gates unless --force)."""
    from puhui.registry import promote

    client, runtime = _registry()
    previous = promote(client, runtime.engine, runtime.audit, name, version, reason, force)
    console.print(f"{name}: champion is now v{version} (was "
                  f"{'v' + previous if previous else 'nobody'}); recorded in the audit trail")


@models_app.command("rollback")
def models_rollback(name: str, reason: Annotated[str, typer.Option("--reason")]) -> None:
    """Bring the previous champion back."""
    from puhui.registry import rollback

    client, runtime = _registry()
    current, target = rollback(client, runtime.engine, runtime.audit, name, reason)
    console.print(f"{name}: champion rolled back from v{current} to v{target}; "
                  "recorded in the audit trail")


# --------------------------------------------------------------------------- quarantine
@quarantine_app.command("list")
def quarantine_list(json_: JsonFlag = False) -> None:
    """Batches held by validation, with their reasons."""
    from puhui.ingest.quarantine import list_quarantined
    from puhui.runtime import open_runtime

    held = list_quarantined(open_runtime(_settings()))
    if json_:
        _print_json([record.__dict__ for record in held])
        return
    table = Table("batch", "partner", "delivered", "rows", "reason", box=None)
    for record in held:
        table.add_row(
            record.batch_id,
            record.partner,
            str(record.delivery_date),
            f"{record.rows:,}",
            record.reason or "",
        )
    console.print(table)
    console.print(
        f"{len(held)} batch(es) held; decide with 'puhui quarantine release|reject "
        "BATCH --reason TEXT'"
    )


@quarantine_app.command("release")
def quarantine_release(batch: str, reason: Annotated[str, typer.Option("--reason")]) -> None:
    """Load a held batch after all (recorded with your reason)."""
    from puhui.ingest.quarantine import release_batch
    from puhui.runtime import open_runtime

    record = release_batch(open_runtime(_settings()), batch, reason)
    console.print(
        f"released {record.batch_id}: {record.rows_loaded:,} rows loaded into "
        f"raw_{record.partner}, {record.rows_duplicate:,} duplicate rows dropped"
    )


@quarantine_app.command("reject")
def quarantine_reject(batch: str, reason: Annotated[str, typer.Option("--reason")]) -> None:
    """Reject a held batch for good (recorded with your reason)."""
    from puhui.ingest.quarantine import reject_batch
    from puhui.runtime import open_runtime

    record = reject_batch(open_runtime(_settings()), batch, reason)
    console.print(f"rejected {record.batch_id} ({record.rows:,} rows stay held)")


# --------------------------------------------------------------------------- audit
@audit_app.command("log")
def audit_log_command(
    since: Annotated[str | None, typer.Option("--since", help="From this UTC date.")] = None,
    action: Annotated[str | None, typer.Option("--action", help="Only this action.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the last N events.")] = None,
    json_: JsonFlag = False,
) -> None:
    """The audit trail, oldest first."""
    from puhui.audit import read_audit_events
    from puhui.runtime import open_runtime

    runtime = open_runtime(_settings())
    events = read_audit_events(runtime.engine, _parse_date(since, "--since"), action, limit)
    if json_:
        _print_json(events)
        return
    table = Table("seq", "time (UTC)", "actor", "action", "subject", "flow run", box=None)
    for event in events:
        table.add_row(
            str(event["seq"]),
            event["occurred_at"][:19],
            event["actor"],
            event["action"],
            event["subject"],
            (event["flow_run_id"] or "")[:8],
        )
    console.print(table)
    console.print(f"{len(events)} event(s)")


@audit_app.command("verify")
def audit_verify(
    expect_head: Annotated[
        str | None, typer.Option(help="Head hash recorded earlier outside the database.")
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Check that the audit trail has not been altered; exit 1 if it has."""
    from puhui.audit import verify_audit_chain
    from puhui.runtime import open_runtime

    runtime = open_runtime(_settings())
    result = verify_audit_chain(runtime.engine, expect_head=expect_head)
    if json_:
        _print_json(result.__dict__)
    elif result.ok:
        console.print(
            f"audit trail intact: {result.rows} events, head seq {result.head_seq} "
            f"hash {result.head_hash}"
        )
    else:
        for problem in result.problems:
            err_console.print(f"  {problem}")
    if not result.ok:
        raise PuhuiError(
            f"audit trail ALTERED: {len(result.problems)} problem(s), first: {result.problems[0]}"
        )


@audit_app.command("lineage")
def audit_lineage(
    name: str, version: Annotated[str, typer.Option("--version")], json_: JsonFlag = False
) -> None:
    """Data batches, validations, code and config behind a model version."""
    from puhui.registry import lineage

    client, runtime = _registry()
    found = lineage(client, runtime.engine, name, version)
    if json_:
        _print_json(found)
        return
    console.print(
        f"{name} v{version}: registered {found['registered_at']} by {found['registered_by']}"
        f" (MLflow run {found['mlflow_run_id']}); code {found['code_version']}, config "
        f"{found['config_hash']}; trained as of {found['training_as_of']} on features as of "
        f"{' .. '.join(found['feature_as_of_range'] or [])}; gates "
        + ("passed" if found["gates"]["passed"] else "FAILED: "
           + "; ".join(found["gates"]["failed"])), markup=False)
    by_partner: dict[str, list[dict]] = {}
    for batch in found["batches"]:
        by_partner.setdefault(batch["partner"], []).append(batch)
    failed = {v["batch_id"] for v in found["validations"] if not v["success"]}
    table = Table("partner", "batches", "rows loaded", "validations failed", box=None)
    for partner, batches in sorted(by_partner.items()):
        table.add_row(partner, str(len(batches)),
                      f"{sum(b['rows_loaded'] or 0 for b in batches):,}",
                      str(sum(b["batch_id"] in failed for b in batches)))
    console.print(table)
    if found["missing_batches"]:
        console.print(f"MISSING from ingest_batches: {', '.join(found['missing_batches'])}")
    for move in found["alias_history"]:
        console.print(f"  {move['at']} {move['actor']}: {move['alias']} -> v{move['version']}"
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
    from puhui.runtime import open_runtime

    runtime = open_runtime(_settings())
    person = resolve_person_key(runtime.engine, key, runtime.settings.pseudonym_key)
    del key  # the raw value goes no further than the hash
    day = _parse_date(as_of, "--as-of")
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
    from puhui.warehouse.engine import create_warehouse_engine, current_revision, head_revision

    engine = create_warehouse_engine(_settings().warehouse_url)
    current, head = current_revision(engine), head_revision()
    state = "up to date" if current == head else "needs upgrade (runs on first use)"
    console.print(f"warehouse {engine.url!r}: revision {current or 'none'}, code {head}: {state}")


@config_app.command("check")
def config_check() -> None:
    """Validate every file in configs/."""
    from puhui.config import config_hash, validate_config_dir

    settings = _settings()
    names = validate_config_dir(settings.config_dir)
    console.print(
        f"{len(names)} config files valid ({', '.join(names)}); "
        f"hash {config_hash(settings.config_dir)}"
    )


@app.command("data-docs")
def data_docs() -> None:
    """Build GX Data Docs for every stored validation result (new ones only) and print the index."""
    from puhui.data_docs import build_data_docs

    console.print(build_data_docs(_settings().home / "gx").line(), markup=False)


@app.command()
def serve() -> None:
    """Run every scheduled deployment of prefect.yaml in this process (Ctrl-C stops)."""
    from puhui.scheduling import serve_deployments

    _settings()
    serve_deployments(console=console)


# --------------------------------------------------------------------------- entry point
class _NoTracebacks(logging.Filter):
    """Keep library log records (Prefect's failure logs) to their message line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def _quiet_tracebacks() -> None:
    """Console logs without tracebacks (Prefect's API logs keep them for the run history)."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    for handler in logging.getLogger().handlers:
        handler.addFilter(_NoTracebacks())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (one line on error, traceback only with --debug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not debug and args[:1] in (["run"], ["demo"], ["backfill"], ["serve"]):
        _quiet_tracebacks()
    started = time.monotonic()
    try:
        result = app(args=args, prog_name="puhui", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except NotBuiltYet as exc:
        err_console.print(f"puhui: {exc}")
        return 2
    except PuhuiError as exc:
        if debug:
            raise
        err_console.print(f"puhui: error: {exc}")
        return 1
    except click.exceptions.Abort:
        err_console.print("puhui: aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the one place that turns crashes into a line
        if debug:
            raise
        elapsed = time.monotonic() - started
        err_console.print(
            f"puhui: error: {type(exc).__name__}: {exc} "
            f"(after {elapsed:.1f}s; --debug shows the traceback)"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
