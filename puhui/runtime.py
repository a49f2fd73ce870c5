"""One place that turns settings into the live handles every stage needs."""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, make_url
from sqlalchemy.exc import NoSuchModuleError

from puhui.audit import AuditWriter, audit_key_bytes
from puhui.config import config_files, config_hash, hashed_suites_dir, read_config_bytes
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
    """The settings a flow run hands its tasks: read once, at its start, with its configs
    (and expectation suites) copied once into ``PUHUI_HOME/config-snapshots/<hash>`` and
    ``config_dir`` pointing at that copy. Every step and the files logged with a model then
    read exactly the bytes the run's hash covers, even when ``configs/`` is edited during a
    long training."""
    settings = load_settings()
    digest, snapshot = snapshot_configs(settings.config_dir, settings.home / "config-snapshots")
    return replace(settings, config_dir=snapshot, config_hash=digest)


def snapshot_configs(config_dir: Path, snapshots: Path) -> tuple[str, Path]:
    """Copy ``config_dir``'s config files and the suites its hash covers (into
    ``expectations/``) to ``snapshots/<hash>`` and return both; the hash is taken from the
    copy, so the two cannot differ. Written aside then renamed (a concurrent run never sees
    half a folder); an existing snapshot is reused."""
    snapshots.mkdir(parents=True, exist_ok=True)
    aside = Path(tempfile.mkdtemp(prefix=".partial-", dir=snapshots))
    try:
        for path in config_files(config_dir):
            (aside / path.name).write_bytes(read_config_bytes(path))
        # The suites too: the hash covers them, and the register step logs them.
        (aside / "expectations").mkdir()
        for path in sorted(hashed_suites_dir(config_dir).glob("*.json")):
            (aside / "expectations" / path.name).write_bytes(path.read_bytes())
        digest = config_hash(aside)
        target = snapshots / digest
        if not target.is_dir():
            try:
                aside.rename(target)
            except OSError:
                # Another run renamed the same hash first: its copy holds the same bytes.
                if not target.is_dir():
                    raise
        return digest, target
    finally:
        shutil.rmtree(aside, ignore_errors=True)


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
