"""SQLAlchemy Core metadata for every warehouse table of the contract.

The same definitions serve SQLite (embedded default) and PostgreSQL (production); types are
chosen to round-trip identically on both. Alembic migrations in ``migrations/versions`` create
these tables; ``tests/test_warehouse.py`` checks that the migrated database matches this
metadata, so the two cannot drift apart silently.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)


# Here, not beside bulk_insert: the schema is read by commands that load nothing, and the
# bulk loader imports pandas and Arrow (~0.5 s).
def session_default(column: str) -> str:
    """Server default that reads a per-transaction constant set by ``bulk_insert``.

    Declare a column with ``server_default=text(session_default(name))`` and pass its value
    in ``constants``: on PostgreSQL the value is set once (``set_config(..., true)``, local to
    the transaction) instead of being repeated on every COPY row.
    """
    return f"current_setting('puhui.{column}')"


# Deterministic constraint names make migrations portable between the two dialects.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ingest_batches = Table(
    "ingest_batches",
    metadata,
    Column("batch_id", String(40), primary_key=True),
    Column("partner", String(64), nullable=False),
    Column("source_path", Text, nullable=False),
    Column("delivery_date", Date),
    Column("checksum", String(64), nullable=False, comment="sha256 of the file's bytes"),
    # Set to the checksum for every batch that owns its content, NULL for a duplicate
    # delivery: the unique constraint makes "same content loaded twice" impossible even for
    # two runs racing each other, while duplicates are still recorded as rows.
    Column("content_key", String(80), unique=True),
    Column("duplicate_of", String(40)),
    Column("bytes", BigInteger),
    # Added by migration 0005: NULL for rows from before and for remote files (change_marker).
    Column("mtime_ns", BigInteger,
           comment="the local file's modification time (ns) when it was read"),
    # Added by migration 0007: NULL for rows from before and stores whose listing gives no
    # marker (size only); since round 14 a local file's change time too (`ctime_ns=N`,
    # landing.local_change_marker). The database comment below still says "remote" as 0007
    # wrote it: changing it takes a migration (compare_metadata sees comments).
    Column("change_marker", Text,
           comment="a remote file's change marker as its listing gave it (key=value)"),
    # Added by migration 0010 (0006's boolean before it): the identifier shapes
    # (ledger.PATH_SETTLED) source_path was settled at; NULL or lower: ingest settles it.
    Column("path_settled", SmallInteger,
           comment="identifier shapes source_path is settled at; NULL: not yet"),
    Column("rows", BigInteger, comment="rows landed in the file"),
    Column("rows_loaded", BigInteger),
    Column("rows_held", BigInteger),
    Column("rows_duplicate", BigInteger),
    Column("status", String(16), nullable=False),
    Column("reason", Text),
    Column("warnings", JSON),
    Column("flow_run_id", String(64)),
    Column("landed_at", DateTime(timezone=True), nullable=False),
    Column("decided_at", DateTime(timezone=True)),
    Column("decided_by", String(128)),
    Index(None, "partner", "delivery_date"),
    Index(None, "status"),
    # Every ingest looks for each feed's rows below the current settle level (migration
    # 0010): two index ranges (NULL, below), not the ledger.
    Index("ix_ingest_batches_path_settled", "partner", "path_settled"),
)

# The primary keys each feed has loaded, across all its batches (migration 0008): a row's
# key is loaded once per feed, whichever file repeats it. Written in the transaction that
# loads the rows, so the unique primary key decides between two concurrent loads as
# content_key does for whole files. The key is a 126-bit hash (two SipHash-2-4 halves keyed
# by the feed) of the key's text, never the key itself: keys may be pseudonyms of national
# IDs. The feed is in the hash, so the primary key is the two halves alone (narrow entries).
# No partner column: every COPY row pays for each column.
ingest_keys = Table(
    "ingest_keys",
    metadata,
    Column("key_hi", BigInteger, primary_key=True, autoincrement=False),
    Column("key_lo", BigInteger, primary_key=True, autoincrement=False),
    # Its feed is its name's first part. Set once per COPY, as the raw tables' batch_id is.
    Column("batch_id", String(40), nullable=False, server_default=text(session_default("batch_id")),
           comment="the batch that loaded the key"),
    Column("value_hash", BigInteger, nullable=False,
           comment="64-bit hash of the loaded row's values: tells a repeat from a correction"),
)

# One row per feed whose existing raw rows are in ingest_keys (first use after 0008), with
# the key definition they were hashed under: another one means the index is built again.
ingest_key_backfills = Table(
    "ingest_key_backfills",
    metadata,
    Column("partner", String(64), primary_key=True),
    Column("key_definition", String(64), nullable=False,
           comment="fingerprint of the primary key's columns, types and treatment"),
    Column("rows_indexed", BigInteger, nullable=False),
    Column("rows_repeated", BigInteger, nullable=False,
           comment="raw rows repeating a key of an earlier batch, loaded before the index"),
    Column("built_at", DateTime(timezone=True), nullable=False),
)

# One row per registered model: the generation (fencing token) of the training that last
# took its training lock (puhui.lifecycle.fencing). A training's register and gate writes
# check, in their own transaction, that their generation is still this one.
training_generations = Table(
    "training_generations",
    metadata,
    Column("model_name", String(64), primary_key=True),
    Column("generation", BigInteger, nullable=False),
    Column("taken_at", DateTime(timezone=True), nullable=False),
    Column("flow_run_id", String(64)),
)

# The keyed check value of PUHUI_PSEUDONYM_KEY the warehouse's pseudonyms were made with
# (puhui.ingest.pseudonym_check): one row per check label, written by the first run that
# pseudonymizes and compared by every later one, so a rotated or mistyped key is refused
# instead of splitting every customer's history. Never the key, never an unkeyed hash of it.
pseudonym_key_checks = Table(
    "pseudonym_key_checks",
    metadata,
    Column("label", String(64), primary_key=True,
           comment="the fixed label the check value is the key's HMAC of"),
    Column("check_value", String(64), nullable=False,
           comment="HMAC-SHA256(PUHUI_PSEUDONYM_KEY, label), hex"),
    Column("adopted", Boolean, nullable=False,
           comment="pseudonyms existed before it: taken from the key of the run that wrote it"),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

ingest_watermarks = Table(
    "ingest_watermarks",
    metadata,
    Column("partner", String(64), primary_key=True),
    Column("delivery_date", Date, nullable=False, comment="latest delivery date ingested"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("flow_run_id", String(64)),
)

validation_results = Table(
    "validation_results",
    metadata,
    Column("validation_id", String(40), primary_key=True),
    Column("batch_id", String(40)),
    Column("table_name", String(128)),
    Column("suite_name", String(128), nullable=False),
    Column("success", Boolean, nullable=False),
    Column("expectations_run", Integer, nullable=False),
    Column("expectations_failed", Integer, nullable=False),
    Column("critical_failed", Integer, nullable=False, default=0),
    Column("warning_failed", Integer, nullable=False, default=0),
    Column("details", JSON),
    Column("flow_run_id", String(64)),
    Column("validated_at", DateTime(timezone=True), nullable=False),
    Index(None, "batch_id"),
)

user_features = Table(
    "user_features",
    metadata,
    Column("person_key", String(64), primary_key=True),
    Column("as_of_date", Date, primary_key=True),
    Column("feature_set", String(64), nullable=False),
    Column("features", JSON, nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False),
    # A date's rows without a scan (the key leads with the person): migration 0011.
    Index(None, "as_of_date"),
)

_profile_columns = (
    ("customer_id", String(16)),
    ("risk_score", Float),
    ("risk_grade", String(2)),
    ("reasons", JSON),
    ("recommended_products", JSON),
    ("segment_tags", JSON),
    ("risk_model_version", String(32)),
    ("recommender_model_version", String(32)),
    # Added by migration 0004 (the contract's names): the ranking a customer who refused
    # personalisation gets (PIPL Art. 24), their flag, and every model slot's version.
    ("non_personalised_products", JSON),
    ("personalisation_opt_out", Boolean),
    ("model_versions", JSON),
)

user_profiles = Table(
    "user_profiles",
    metadata,
    Column("person_key", String(64), primary_key=True),
    Column("as_of_date", Date, nullable=False),
    *(Column(name, type_) for name, type_ in _profile_columns),
    Column("refreshed_at", DateTime(timezone=True), nullable=False),
    Column("flow_run_id", String(64)),
)

user_profile_history = Table(
    "user_profile_history",
    metadata,
    Column("person_key", String(64), primary_key=True),
    Column("as_of_date", Date, primary_key=True),
    *(Column(name, type_) for name, type_ in _profile_columns),
    Column("refreshed_at", DateTime(timezone=True), nullable=False),
    Column("flow_run_id", String(64)),
)

model_evaluations = Table(
    "model_evaluations",
    metadata,
    Column("evaluation_id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(64), nullable=False),
    Column("model_version", String(32), nullable=False),
    # Keyed with the as-of date since 0004: each report's figures are kept, not overwritten.
    Column("as_of_date", Date, nullable=False),
    Column("metric", String(64), nullable=False),
    Column("segment", String(64), nullable=False, default="all"),
    Column("value", Float),
    Column("threshold", Float, comment="the act level the value was judged against"),
    Column("status", String(16), comment="ok / watch / act; NULL: not judged"),
    Column("mlflow_run_id", String(64)),
    Column("evaluated_at", DateTime(timezone=True), nullable=False),
    # Named by hand: the convention's name is longer than PostgreSQL's 63 characters.
    UniqueConstraint("model_name", "model_version", "as_of_date", "metric", "segment",
                     name="uq_model_evaluations_key"),
)

drift_reports = Table(
    "drift_reports",
    metadata,
    Column("drift_id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(64), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("as_of_date", Date, nullable=False),
    Column("feature", String(128), nullable=False),
    Column("psi", Float),
    Column("threshold", Float, comment="the act level the PSI/CSI was judged against"),
    Column("status", String(16), nullable=False),
    Column("reported_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("model_name", "model_version", "as_of_date", "feature"),
)

service_metrics = Table(
    "service_metrics",
    metadata,
    Column("as_of_date", Date, primary_key=True),
    Column("segment", String(64), primary_key=True),
    Column("metric", String(64), primary_key=True),
    Column("value", Float),
    Column("computed_at", DateTime(timezone=True), nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    # seq is assigned by the writer under a lock (prev + 1), not by a database sequence, so
    # a gap always means a deleted row rather than a rolled-back insert.
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("occurred_at", String(32), nullable=False, comment="UTC, ISO 8601, microseconds"),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("details", Text, nullable=False, comment="canonical JSON"),
    Column("flow_run_id", String(64)),
    Column("mlflow_run_id", String(64)),
    Column("code_version", String(64), nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("row_hash", String(64), nullable=False),
    # 1: unkeyed SHA-256 (before migration 0003), 2: HMAC-SHA256 keyed with PUHUI_AUDIT_KEY.
    Column("chain_version", SmallInteger, nullable=False, server_default="1"),
    Index(None, "action"),
    Index(None, "occurred_at"),
)

CONTRACT_TABLES: tuple[str, ...] = (
    "ingest_batches",
    "validation_results",
    "user_features",
    "user_profiles",
    "user_profile_history",
    "model_evaluations",
    "drift_reports",
    "service_metrics",
    "audit_log",
)
