"""Runtime settings from the environment (the contract's variables) and quiet defaults.

Settings are read once per process from the environment; nothing here reads a file in git
that could hold a secret. ``configure_runtime`` must run before Prefect, GX or MLflow are
imported so their analytics, progress bars and start-up timeouts take our values.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from puhui.errors import PuhuiError
from puhui.privacy import printable, scrub_text, unrecordable_text

Profile = Literal["local", "production"]
DEMO_KEY_FILE = "pseudonym.key"
AUDIT_KEY_FILE = "audit.key"
# PostgreSQL roles the migrations create (NOLOGIN; an operator gives them a login).
DEFAULT_PG_APP_ROLE, DEFAULT_PG_AUDITOR_ROLE = "puhui_app", "puhui_auditor"

# Environment defaults set (if unset) before any heavy library is imported: no analytics
# (there is no internet and nothing may phone home), a Prefect ephemeral server start-up
# timeout long enough for a first run on a slow 2-core machine, and no per-metric GX bars.
QUIET_ENVIRONMENT: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_LOGGING_INTERNAL_LEVEL": "ERROR",
    "PREFECT_SERVER_LOGGING_LEVEL": "ERROR",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # no INFO lines about creating its store tables
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # `models show` printed a download bar
    "DO_NOT_TRACK": "1",
    "TQDM_DISABLE": "1",
}


@dataclass(frozen=True)
class Settings:
    """Where Puhui keeps its state and who is acting; read from the environment.

    Flows hand it to their tasks, so it can reach a log line (a Dask worker's error names
    a task's arguments): its repr leaves out the keys and masks a password in a URL.
    """

    profile: Profile
    home: Path
    warehouse_url: str
    mlflow_tracking_uri: str
    landing: str
    pseudonym_key: str | None = field(repr=False)
    actor: str
    config_dir: Path
    # The expectation suites beside config_dir (``PUHUI_EXPECTATIONS_DIR``, else the
    # checkout's expectations/; a flow's config snapshot points both at its copy): the config
    # hash, ingestion's GX validation and the suites logged with a model all read them here,
    # never from config_dir's contents.
    expectations_dir: Path
    audit_key: str | None = field(default=None, repr=False)
    # Worked out once when a flow run starts (puhui.runtime.flow_settings): every step then
    # records the hash of the configs its specs were read from, not of configs/ at its time.
    config_hash: str | None = None

    def __repr__(self) -> str:
        # Field by field: a password mask runs to the end of its value, so over the joined
        # text one at the end of a URL masked every field after it.
        shown = ", ".join(f"{f.name}={_scrubbed(getattr(self, f.name))}"
                          for f in fields(self) if f.repr)
        return f"Settings({shown})"

    def without_keys(self) -> Settings:
        """A copy for a process that needs no key (a Dask worker staging features): tasks
        mapped over partitions are pickled to the scheduler and each worker, and the keys
        need not travel with them."""
        return replace(self, pseudonym_key=None, audit_key=None)

    @property
    def is_sqlite(self) -> bool:
        return self.warehouse_url.startswith("sqlite")

    @property
    def reports_dir(self) -> Path:
        """Where the HTML reports go ($PUHUI_HOME/reports/, as the README says)."""
        return self.home / "reports"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"


def _scrubbed(value: object) -> str:
    return repr(scrub_text(value)) if isinstance(value, str) else scrub_text(repr(value))


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return f"uid-{os.getuid()}"


ACTOR_MAX_CHARS = 128  # audit_log.actor's width


def _checked_actor(actor: str, source: str) -> str:
    """``actor`` if the audit trail may record it as it is (``unrecordable_text``: a login
    that is the operator's mobile number was recorded raw in audit_log) and it fits
    audit_log's column."""
    if problem := unrecordable_text(actor):
        raise PuhuiError(f"{source} {problem}, which the audit trail must not record: set "
                         "PUHUI_ACTOR to a name or a staff id")
    if len(actor) > ACTOR_MAX_CHARS:
        raise PuhuiError(f"{source} is longer than {ACTOR_MAX_CHARS} characters: set "
                         "PUHUI_ACTOR to a name or a staff id")
    return actor


def _exact_secret(value: str | None, name: str, profile: str) -> str | None:
    """``value`` byte for byte; None if unset or empty, and in the local profile if only
    whitespace (a blank key file: unset, so the local default applies; production's
    strength check refuses it as blank).

    A key keys an HMAC byte for byte: never stripped, since a deployment that ran with a
    file's trailing newline keeps its pseudonyms and audit chain only with it. Refusing such
    a key (round 17's first pass) left that deployment no byte-exact way to run; a changed
    pseudonym key is refused by the warehouse's check value instead. Spaces at the ends or a
    control character get a one-line warning on stderr naming the setting, never the value."""
    if not value or not value.strip():
        return value if value and profile == "production" else None
    if value != value.strip() or not value.isprintable():
        print(f"warning: {name} has spaces at its ends or a control character (a file's "
              "trailing newline?); it is used byte for byte", file=sys.stderr)
    return value


def repo_root() -> Path:
    """The checkout this package runs from (configs/, expectations/, prefect.yaml live here)."""
    return Path(__file__).resolve().parent.parent


def default_expectations_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``PUHUI_EXPECTATIONS_DIR`` of ``environ`` (default ``os.environ``) if set (a fixed
    suite tried before it is committed, a test's copy), else ``expectations/`` of this
    checkout: ``load_settings``'s. The suites' readers and hashers take the folder as a
    required argument (a caller with settings passes ``Settings.expectations_dir``), so only
    a caller with no settings (a bench script, a test) calls this itself."""
    configured = (os.environ if environ is None else environ).get("PUHUI_EXPECTATIONS_DIR")
    return Path(configured).resolve() if configured else repo_root() / "expectations"


MIN_KEY_LENGTH = 32
MIN_KEY_DISTINCT = 8


def weak_key_reason(key: str | None) -> str | None:
    """Why ``key`` is too weak to key an HMAC (None if it is fine).

    Weak: blank or only whitespace, shorter than 32 characters, or fewer than 8 distinct
    characters (32 spaces, "aaaa...", "abababab..." are lengths, not secrets).
    """
    if key is None or not key.strip():
        return "blank"
    if len(key) < MIN_KEY_LENGTH:
        return f"shorter than {MIN_KEY_LENGTH} characters: at least {MIN_KEY_LENGTH} are needed"
    if len(set(key)) < MIN_KEY_DISTINCT:
        return f"fewer than {MIN_KEY_DISTINCT} distinct characters"
    return None


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read the contract's environment variables and apply the profile's rules.

    The ``production`` profile (``PUHUI_PROFILE=production``) refuses to start without a
    pseudonymization key or with an SQLite warehouse: both are demo conveniences only.
    """
    env = os.environ if environ is None else environ
    profile = env.get("PUHUI_PROFILE", "local")
    if profile not in ("local", "production"):
        raise PuhuiError(f"PUHUI_PROFILE must be 'local' or 'production', not {profile!r}")
    # Empty is unset, as for every other variable: Path("") is the working folder, and the
    # warehouse, keys and quarantine copies were written into it (a checkout, say).
    home = Path(env.get("PUHUI_HOME") or ".puhui").expanduser().resolve()
    if home.exists() and not home.is_dir():  # was FileExistsError at the first mkdir
        raise PuhuiError(f"PUHUI_HOME {printable(str(home))} is not a folder")
    warehouse_url = env.get("PUHUI_WAREHOUSE_URL") or f"sqlite:///{home / 'warehouse.db'}"
    mlflow_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
    landing = env.get("PUHUI_LANDING") or str(home / "landing")
    key = _exact_secret(env.get("PUHUI_PSEUDONYM_KEY"), "PUHUI_PSEUDONYM_KEY", profile)
    demo_key_file = home / DEMO_KEY_FILE
    if key is None and profile == "local" and demo_key_file.exists():
        key = demo_key_file.read_text().strip() or None  # the key `puhui demo` made
    config_dir = Path(env.get("PUHUI_CONFIG_DIR", str(repo_root() / "configs"))).resolve()
    audit_key = _exact_secret(env.get("PUHUI_AUDIT_KEY"), "PUHUI_AUDIT_KEY", profile)
    if audit_key is None and profile == "local" and (home / AUDIT_KEY_FILE).exists():
        audit_key = (home / AUDIT_KEY_FILE).read_text().strip() or None  # made on first use
    settings = Settings(
        profile=profile,  # type: ignore[arg-type]
        home=home,
        warehouse_url=warehouse_url,
        mlflow_tracking_uri=mlflow_uri,
        landing=landing,
        pseudonym_key=key,
        actor=(_checked_actor(env["PUHUI_ACTOR"], "PUHUI_ACTOR") if env.get("PUHUI_ACTOR")
               else _checked_actor(_default_actor(), "the OS user name (the default actor)")),
        config_dir=config_dir,
        expectations_dir=default_expectations_dir(env),
        audit_key=audit_key,
    )
    if profile == "production":
        if not key:
            raise PuhuiError("production profile refuses to run without PUHUI_PSEUDONYM_KEY")
        if weakness := weak_key_reason(key):
            raise PuhuiError(f"PUHUI_PSEUDONYM_KEY is weak ({weakness}): refused in production")
        if settings.is_sqlite:
            raise PuhuiError(
                "production profile refuses an SQLite warehouse: set PUHUI_WAREHOUSE_URL "
                "to a postgresql+psycopg:// URL"
            )
    if profile == "production":
        check_audit_key(audit_key, key)
    return settings


def check_audit_key(audit_key: str | None, pseudonym_key: str | None) -> None:
    """Refuse a missing, weak or reused audit key (the production profile's rule).

    Whoever holds the key can rewrite the audit chain undetected, so it must be long, not a
    repeated pattern (32 spaces, "aaaa..."), and not the pseudonym key, which more processes
    see.
    """
    if not audit_key or not audit_key.strip():
        raise PuhuiError("production profile refuses to run without PUHUI_AUDIT_KEY "
                         "(a random secret of 32+ characters, e.g. `openssl rand -hex 32`)")
    if weakness := weak_key_reason(audit_key):
        raise PuhuiError(f"PUHUI_AUDIT_KEY is weak ({weakness}): use a random secret, e.g. "
                         "`openssl rand -hex 32`")
    if audit_key == pseudonym_key:
        raise PuhuiError("PUHUI_AUDIT_KEY must differ from PUHUI_PSEUDONYM_KEY")


def ensure_local_audit_key(settings: Settings) -> tuple[Settings, Path | None]:
    """The audit key; in the local profile, made once under PUHUI_HOME if none is set.

    Returns the settings with the key and the path of a key file made just now (None if one
    existed), so the caller can say so. The file is outside git and readable by its owner only.
    Production never gets here without a key: ``load_settings`` refuses first.
    """
    if settings.audit_key:
        return settings, None
    if settings.profile != "local":
        raise PuhuiError("PUHUI_AUDIT_KEY is not set")
    import secrets
    from dataclasses import replace

    path = settings.home / AUDIT_KEY_FILE
    made = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        made = path
    except FileExistsError:  # another process made it first: use theirs
        pass
    return replace(settings, audit_key=path.read_text().strip()), made


def postgres_role_names(environ: dict[str, str] | None = None) -> tuple[str, str]:
    """(application role, auditor role) for PostgreSQL: PUHUI_PG_APP_ROLE, PUHUI_PG_AUDITOR_ROLE."""
    import re

    env = os.environ if environ is None else environ
    names = (env.get("PUHUI_PG_APP_ROLE") or DEFAULT_PG_APP_ROLE,
             env.get("PUHUI_PG_AUDITOR_ROLE") or DEFAULT_PG_AUDITOR_ROLE)
    for name in names:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise PuhuiError(f"PostgreSQL role names must be lower-case identifiers, not {name!r}")
    return names


def configure_runtime(settings: Settings) -> None:
    """Set quiet, local defaults for Prefect, GX and MLflow; call before importing them.

    Only unset variables are filled, so an operator's explicit choice always wins. Prefect
    state goes under ``PUHUI_HOME`` so that cached task results never leak between homes.
    """
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    settings.home.mkdir(parents=True, exist_ok=True)
