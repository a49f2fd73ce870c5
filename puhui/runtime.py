"""One place that turns settings into the live handles every stage needs."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from puhui.audit import AuditWriter
from puhui.config import config_hash
from puhui.settings import Settings, configure_runtime, load_settings
from puhui.warehouse.engine import get_engine


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: Engine
    audit: AuditWriter


def open_runtime(settings: Settings | None = None) -> Runtime:
    """Settings from the environment, a migrated warehouse engine and an audit writer."""
    settings = settings or load_settings()
    configure_runtime(settings)
    engine = get_engine(settings.warehouse_url)
    audit = AuditWriter(actor=settings.actor, config_hash=config_hash(settings.config_dir))
    return Runtime(settings, engine, audit)
