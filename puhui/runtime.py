"""One place that turns settings into the live handles every stage needs."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from sqlalchemy import Engine

from puhui.audit import AuditWriter, audit_key_bytes
from puhui.config import config_hash
from puhui.settings import Settings, configure_runtime, ensure_local_audit_key, load_settings
from puhui.warehouse.engine import get_engine


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
    audit = AuditWriter(actor=settings.actor, config_hash=config_hash(settings.config_dir),
                        key=audit_key_bytes(settings.audit_key))
    return Runtime(settings, engine, audit)
