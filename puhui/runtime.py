"""One place that turns settings into the live handles every stage needs."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, make_url
from sqlalchemy.exc import NoSuchModuleError

from puhui.audit import AuditWriter, audit_key_bytes
from puhui.config import config_hash
from puhui.errors import PuhuiError
from puhui.privacy import error_line
from puhui.settings import Settings, configure_runtime, ensure_local_audit_key, load_settings
from puhui.warehouse.engine import get_engine

if TYPE_CHECKING:
    from puhui.prefect_server import PrefectTarget


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: Engine
    audit: AuditWriter


def open_runtime(settings: Settings | None = None) -> Runtime:
    """Settings from the environment, a migrated warehouse engine and an audit writer."""
    settings, made = ensure_local_audit_key(settings or load_settings())
    if made is not None:
        print(f"puhui: made a local audit key in {made} (production sets PUHUI_AUDIT_KEY)",
              file=sys.stderr)
    configure_runtime(settings)
    engine = get_engine(settings.warehouse_url)
    audit = AuditWriter(actor=settings.actor,
                        config_hash=settings.config_hash or config_hash(settings.config_dir),
                        key=audit_key_bytes(settings.audit_key))
    return Runtime(settings, engine, audit)


def flow_settings() -> Settings:
    """The settings a flow run hands its tasks: read once, at its start, with the hash of
    its configs worked out once too (a config edited during a long training then does not
    give the version a hash other than that of the spec it was trained with)."""
    settings = load_settings()
    return replace(settings, config_hash=config_hash(settings.config_dir))


def check_settings(settings: Settings, prefect: PrefectTarget | None = None, *,
                   needs_key: bool = True) -> None:
    """Refuse bad settings before any flow starts, in one line that says the fix.

    Checks the pseudonymization key (when the command ingests), that the warehouse URL
    parses, names a supported database and answers, that the MLflow URI has a scheme MLflow
    knows, and that a configured Prefect server answers. A flow would otherwise fail on
    each of these after Prefect started, with a traceback per retry.
    """
    from sqlalchemy.exc import ArgumentError, OperationalError

    if needs_key and not settings.pseudonym_key:
        raise PuhuiError("PUHUI_PSEUDONYM_KEY is not set: export PUHUI_PSEUDONYM_KEY=<a secret "
                         "of 32+ characters> (keep it out of git), or run 'puhui demo' once "
                         "for a local demo key")
    try:
        url = make_url(settings.warehouse_url)
        url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise PuhuiError(
            "PUHUI_WAREHOUSE_URL is not a usable SQLAlchemy URL: set it like "
            # '***' rather than 'password': every error line goes through scrub_text, which
            # masks whatever stands between 'user:' and '@' in a URL
            "postgresql+psycopg://user:***@host:5432/dbname (*** the password), or unset "
            "it for the embedded SQLite warehouse") from None
    try:
        with get_engine(settings.warehouse_url).connect():
            pass
    except OperationalError as exc:
        raise PuhuiError(
            f"cannot reach the warehouse {url.render_as_string(hide_password=True)}: "
            f"{error_line(exc)}; "
            "check PUHUI_WAREHOUSE_URL and that the database is up") from None
    scheme = settings.mlflow_tracking_uri.split(":", 1)[0] if ":" in \
        settings.mlflow_tracking_uri else ""
    if scheme.split("+", 1)[0] not in MLFLOW_SCHEMES and not Path(
            settings.mlflow_tracking_uri).is_absolute():
        raise PuhuiError(
            f"MLFLOW_TRACKING_URI {settings.mlflow_tracking_uri!r} has no scheme MLflow "
            "knows: use sqlite:///path/mlflow.db, postgresql://..., or http://host:5000, or "
            "unset it for the embedded store")
    if prefect is not None and not prefect.ephemeral and prefect.api_url:
        from puhui.prefect_server import is_healthy

        if not is_healthy(prefect.api_url, timeout=3.0):
            fix = ("'puhui server stop' then 'puhui server start'" if prefect.kind == "server"
                   else "start it, or unset PREFECT_API_URL for a temporary local one")
            raise PuhuiError(f"the Prefect server at {prefect.api_url} does not answer: {fix}")


# Tracking URI schemes MLflow resolves (database stores, its server, and files).
MLFLOW_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql", "http", "https",
                            "file", "databricks"})
