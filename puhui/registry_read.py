"""Reading the model registry without importing MLflow, for the read-only commands
(`models list|show|compare`, `audit lineage|verify`).

``import mlflow`` costs about 2 s of CPU (its tracing, GenAI and data modules), more than the
rest of a read-only command. With a database tracking URI (the embedded SQLite store,
PostgreSQL) the registry's tables are read here with SQLAlchemy, read-only: registered
models, their versions, tags and aliases, and each version's run's latest metrics, in the
default workspace. Any other URI (an MLflow server), a database this cannot read, or tables
shaped differently go through ``MlflowClient``. tests/test_server.py checks that both give
the same rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from puhui.errors import PuhuiError
from puhui.privacy import error_line

if TYPE_CHECKING:  # mlflow is not imported at run time here (see above)
    from mlflow import MlflowClient
    from mlflow.store.entities.paged_list import PagedList

T = TypeVar("T")

# Tags on each model version: the gate verdict, readable without the audit trail.
GATES_PASSED_TAG, GATES_FAILED_TAG = "gates.passed", "gates.failed"
LIST_METRICS = ("auc_oot", "auc_oot_benchmark", "ks_oot", "gini_oot", "brier_oot",
                "score_psi", "approval_rate_oot", "auc_oot_champion",
                "ndcg_at_3_oot", "ndcg_at_3_oot_popularity",
                "ndcg_at_3_oot_segment_popularity", "hit_at_3_oot", "map_at_3_oot",
                "ndcg_at_3_oot_responders")
# MLflow's own constants (mlflow.utils.workspace_utils, model_version_stages).
_DEFAULT_WORKSPACE, _DELETED_STAGE = "default", "Deleted_Internal"
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
# How long a read-only command waits for the MLflow database to take a connection (libpq and
# the MySQL drivers otherwise wait for the OS's TCP timeout, minutes, on a silent host).
CONNECT_TIMEOUT_SECONDS = 5
# Each driver names it its own way (pg8000 refuses connect_timeout with a TypeError); a
# driver not listed gets none rather than an argument it may refuse.
_CONNECT_TIMEOUT_ARG = {"psycopg": "connect_timeout", "psycopg2": "connect_timeout",
                        "pg8000": "timeout", "mysqldb": "connect_timeout",
                        "pymysql": "connect_timeout", "mysqlconnector": "connection_timeout"}


def connect_timeout_args(url: Any) -> dict[str, int]:
    """The ``connect_args`` that bound a connection attempt of ``url``'s driver (a SQLAlchemy
    ``URL``) to ``CONNECT_TIMEOUT_SECONDS``; none for a driver not known here."""
    arg = _CONNECT_TIMEOUT_ARG.get(url.get_driver_name())
    return {arg: CONNECT_TIMEOUT_SECONDS} if arg else {}


@dataclass(frozen=True)
class VersionRow:
    name: str
    version: str
    aliases: list[str]
    metrics: dict[str, float]
    gates: dict[str, Any]
    run_id: str
    created: int
    as_of: str | None
    gated: bool = True  # False: its gate step never ran; nothing promotes it

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "aliases": self.aliases,
                "metrics": self.metrics, "gates": self.gates, "gated": self.gated,
                "run_id": self.run_id, "as_of": self.as_of}


class NotInRegistry(LookupError):
    """``SqlRegistry``'s answer where ``MlflowClient`` raises "no such model or version"."""


def metric_name(metric: str, segment: str) -> str:
    """The run metric a (metric, segment) figure of ``model_evaluations`` is logged as."""
    return metric if segment == "all" else f"{metric}.{re.sub(r'[^A-Za-z0-9_.-]', '.', segment)}"


# Written into the model's folder by MLflow when it registers it (after the digest is taken).
_REGISTERED_AFTER = frozenset({"registered_model_meta"})


def model_files_digest(directory: Path) -> str:
    """SHA-256 over a logged model's files: each relative path and its bytes, in path order.

    What a registered version's model is, as recorded in its registration event (keyed
    into the audit chain): a pickle or booster swapped or edited in the artifact store
    afterwards no longer matches.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative in _REGISTERED_AFTER:
            continue
        digest.update(relative.encode() + b"\0")
        with path.open("rb") as handle:
            while block := handle.read(8 << 20):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def local_artifact_path(uri: str) -> Path | None:
    """The local path an artifact ``uri`` names (``file:`` or a bare path), or None for a
    remote store."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("file", "") else None


def model_files_dir(uri: str, dst_path: str) -> Path | None:
    """The folder of model files at artifact ``uri``: in place for a local store (None when
    it is gone), else downloaded into ``dst_path`` by MLflow."""
    path = local_artifact_path(uri)
    if path is not None:
        return path if path.is_dir() else None
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst_path))


def download_uri(client: Any, name: str, version: str) -> str:
    """Where the registry serves ``name`` v``version``'s model files from (what
    ``models:/name/version`` and scoring load), as the registry itself answers it.

    ``MlflowClient.get_model_version_download_uri`` first reads the registered model to refuse
    a prompt's name: through a tracking server a second request for every version, and
    ``audit verify --deep`` asks for every version. Its registry client answers the same URI
    without that read. A prompt's versions are not puhui's: their files would not hash to a
    registration event's digest and are reported all the same.

    ``_get_registry_client`` is private to MLflow: it is relied on for the pinned
    ``mlflow==3.17.2`` (pyproject.toml), where the public call is the prompt check plus this
    same call. A client without it (a later MLflow) gets the public call: one request more per
    version, the same URI."""
    if isinstance(client, SqlRegistry):
        return client.get_model_version_download_uri(name, version)
    registry = getattr(client, "_get_registry_client", None)
    if registry is None:
        return client.get_model_version_download_uri(name, version)
    return registry().get_model_version_download_uri(name, version)


def is_not_found(exc: BaseException) -> bool:
    """True for a registry look-up that found nothing: ``SqlRegistry``'s ``NotInRegistry`` or
    MLflow's ``RESOURCE_DOES_NOT_EXIST`` (no such model, version, run or artifact). Any other
    MLflow error (a tracking server down, a permission refused) is an error, never read as
    "no version". MLflow's class is looked up only if MLflow was imported: none of its
    exceptions can exist otherwise."""
    if isinstance(exc, NotInRegistry):
        return True
    module = sys.modules.get("mlflow.exceptions")
    return (module is not None and isinstance(exc, module.MlflowException)
            and exc.error_code == "RESOURCE_DOES_NOT_EXIST")


@contextmanager
def suppress_not_found() -> Iterator[None]:
    """``contextlib.suppress`` for the registry's "not found" only (``is_not_found``): the
    block's assignment is skipped and the value set before it stands; any other error, a
    tracking server down among them, propagates."""
    try:
        yield
    except Exception as exc:
        if not is_not_found(exc):
            raise


def registered_model_names(client: Any, page_size: int = 100) -> list[str]:
    """Every registered model's name, sorted. ``MlflowClient.search_registered_models``
    answers one page (``page_size`` models) and a token for the next, so it is paged through
    here; ``SqlRegistry`` reads them all at once."""
    if isinstance(client, SqlRegistry):
        return sorted(m.name for m in client.search_registered_models())
    return sorted(m.name for m in _paged(lambda token: client.search_registered_models(
        max_results=page_size, page_token=token)))


@dataclass(frozen=True)
class RunFacts:
    """What MLflow holds of a version's source run: its latest metrics and its lifecycle
    stage (``active``, ``deleted``: restorable until ``mlflow gc``; None: gone from MLflow,
    hard-deleted, with no metrics)."""

    metrics: dict[str, float]
    stage: str | None


# MLflow's lifecycle stage of a run deleted but not yet garbage-collected.
_DELETED_RUN = "deleted"


def runs_metrics(client: Any, run_ids: Collection[str], models: Collection[str],
                 batch: int = 100) -> dict[str, dict[str, float]]:
    """Run id -> its latest metrics (:func:`runs_facts`); a run that is gone has none."""
    return {run: facts.metrics for run, facts in runs_facts(client, run_ids, models,
                                                            batch).items()}


def runs_facts(client: Any, run_ids: Collection[str], models: Collection[str],
               batch: int = 100) -> dict[str, RunFacts]:
    """Run id -> its latest metrics and lifecycle stage: two queries on ``SqlRegistry``; on
    ``MlflowClient`` (a tracking server) one ``search_runs`` per ``batch`` run ids
    (``attributes.run_id IN``, deleted runs included as ``get_run`` would find them) over
    the experiments named after ``models`` (where their trainings log), then a ``get_run``
    only for an id the search did not return (a run logged elsewhere, or one that is gone).
    Only "no such run" reads as gone; any other registry error raises."""
    if isinstance(client, SqlRegistry):
        return client.runs_facts(run_ids)
    from mlflow.entities import ViewType

    found: dict[str, RunFacts] = {}
    # An id MLflow would refuse (or one that could break out of the quoted list) is read
    # alone, as before.
    searchable = sorted(r for r in run_ids if _RUN_ID.fullmatch(r))
    if searchable:
        # Not every experiment on the server: each search would name them all.
        experiments = [client.get_experiment_by_name(model) for model in sorted(models)]
        ids = [e.experiment_id for e in experiments if e is not None]
        for start in range(0, len(searchable), batch):
            chunk = searchable[start:start + batch]
            where = "attributes.run_id IN ({})".format(",".join(f"'{r}'" for r in chunk))
            for run in _paged(lambda token, where=where, n=len(chunk): client.search_runs(
                    ids, where, run_view_type=ViewType.ALL, max_results=n,
                    page_token=token)) if ids else []:
                found[run.info.run_id] = RunFacts(dict(run.data.metrics),
                                                  run.info.lifecycle_stage)
    for run_id in run_ids:
        if run_id not in found:
            found[run_id] = RunFacts({}, None)
            with suppress_not_found():
                run = client.get_run(run_id)
                found[run_id] = RunFacts(dict(run.data.metrics), run.info.lifecycle_stage)
    return found


def source_run_problem(name: str, version: str, stage: str | None) -> str | None:
    """Why ``name`` v``version``'s source run, in lifecycle ``stage`` (:class:`RunFacts`),
    no longer vouches for it, or None: the run is there. Its lineage (data, parameters,
    metrics, the frozen bins and gate file) lives on that run: a version whose run was
    deleted by hand still loads from its model files, with nothing left to say what it is."""
    if stage == _DELETED_RUN:
        return (f"{name} v{version}: its source run is deleted in MLflow (its lineage: "
                "restorable with 'mlflow runs restore' until 'mlflow gc')")
    if stage is None:
        return (f"{name} v{version}: its source run is gone from MLflow (hard-deleted: its "
                "lineage and metrics are lost)")
    return None


def version_source_run_problem(client: Any, name: str, version: str,
                               run_id: str | None = None) -> str | None:
    """:func:`source_run_problem` of ``name`` v``version`` (its source run ``run_id``, read
    from the registry if not given) as MLflow answers now; only "no such run" reads as gone,
    any other registry error raises. A version registered with no run (never by puhui) has
    none to lose: None, as ``audit verify`` skips it."""
    run_id = run_id or client.get_model_version(name, str(version)).run_id
    if not run_id:
        return None
    stage = None
    with suppress_not_found():
        stage = client.get_run(run_id).info.lifecycle_stage
    return source_run_problem(name, str(version), stage)


# MLflow's own rule for a run id (mlflow.utils.validation._RUN_ID_REGEX).
_RUN_ID = re.compile(r"[a-zA-Z0-9][\w\-]{0,255}")


# Versions a search asks for at once. MLflow's own default (10,000) answered the first page
# only, silently: a version past it read as missing from MLflow and its gate tags unchecked.
VERSIONS_PAGE = 1000


def model_versions(client: Any, filter_string: str) -> list[Any]:
    """Every model version ``search_model_versions(filter_string)`` finds, all its pages.

    ``client``: an ``MlflowClient`` or a ``SqlRegistry`` (one query, no pages)."""
    if isinstance(client, SqlRegistry):
        return client.search_model_versions(filter_string)
    return _paged(lambda token: client.search_model_versions(
        filter_string, max_results=VERSIONS_PAGE, page_token=token))


def versions_of(client: Any, model: str) -> list[Any]:
    """Every version of ``model`` (:func:`model_versions`); none when MLflow has no such
    model."""
    with suppress_not_found():
        return model_versions(client, f"name='{model}'")
    return []


def _paged(page: Callable[[str | None], PagedList[T]]) -> list[T]:
    """Every item of an MLflow search answered a page at a time (``page(token)``)."""
    items: list[T] = []
    token = None
    while True:
        answer = page(token)
        items.extend(answer)
        token = answer.token
        if not token:
            return items


def list_versions(client: Any, name: str | None = None) -> list[VersionRow]:
    """Every version (of ``name`` or of all models), newest first, with aliases and gates.

    ``client``: an ``MlflowClient`` or a ``SqlRegistry`` (``read_only_registry``)."""
    models = [name] if name else registered_model_names(client)
    rows = []
    for model in models:
        aliases: dict[str, Any] = {}
        with suppress_not_found():
            aliases = client.get_registered_model(model).aliases
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        versions = versions_of(client, model)
        if name and not versions:
            raise PuhuiError(f"no registered model {name!r} (train one: puhui run train risk)")
        logged = runs_metrics(client, {v.run_id for v in versions if v.run_id}, [model])
        for v in sorted(versions, key=lambda v: -int(v.version)):
            metrics = logged.get(v.run_id, {})
            rows.append(VersionRow(
                name=model, version=str(v.version),
                aliases=sorted(by_version.get(str(v.version), [])),
                metrics={k: round(metrics[k], 6) for k in LIST_METRICS if k in metrics},
                gates={"passed": v.tags.get(GATES_PASSED_TAG) == "true",
                       "failed": json.loads(v.tags.get(GATES_FAILED_TAG, "[]"))},
                run_id=v.run_id, created=v.creation_timestamp,
                as_of=v.tags.get("training.as_of"), gated=GATES_PASSED_TAG in v.tags,
            ))
    return rows


@dataclass(frozen=True)
class _Model:
    name: str
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Version:
    name: str
    version: str
    run_id: str
    creation_timestamp: int
    tags: dict[str, str]


@dataclass(frozen=True)
class _RunData:
    metrics: dict[str, float]
    tags: dict[str, str]


@dataclass(frozen=True)
class _RunInfo:
    run_id: str
    run_name: str | None
    artifact_uri: str | None
    lifecycle_stage: str | None = None


@dataclass(frozen=True)
class _Run:
    data: _RunData
    info: _RunInfo


class SqlRegistry:
    """The read calls of ``MlflowClient`` that the read-only commands make, on MLflow's
    tables; artifacts straight from a local artifact store (any other through MLflow)."""

    def __init__(self, tracking_uri: str) -> None:
        from sqlalchemy import create_engine, make_url

        url = make_url(tracking_uri)
        self._engine = create_engine(url, connect_args=connect_timeout_args(url))
        self._tracking_uri = tracking_uri

    def check_reachable(self) -> None:
        """Refuse in one line a database that does not take a connection (within
        ``CONNECT_TIMEOUT_SECONDS``): MLflow's own store would retry it for ~100 s."""
        from sqlalchemy import URL
        from sqlalchemy.exc import DBAPIError

        try:
            with self._engine.connect():
                pass
        except DBAPIError as exc:  # refused or silent, and a URL the driver refuses
            url = self._engine.url
            # Not the query: ?password= or ?sslpassword= would be printed as written.
            where = URL.create(url.drivername, username=url.username, host=url.host,
                               port=url.port, database=url.database).render_as_string()
            raise PuhuiError(f"cannot reach the MLflow database {where}: {error_line(exc)}; "
                             "check MLFLOW_TRACKING_URI and that the database is up") from None

    def dispose(self) -> None:
        """Close its pooled connections."""
        self._engine.dispose()

    def _rows(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        with self._engine.connect() as conn:
            return list(conn.execute(text(sql), {"ws": _DEFAULT_WORKSPACE, **params}))

    def search_registered_models(self) -> list[_Model]:
        return [_Model(r.name) for r in self._rows(
            "SELECT name FROM registered_models WHERE workspace = :ws ORDER BY name")]

    def get_registered_model(self, name: str) -> _Model:
        return _Model(name, {r.alias: str(r.version) for r in self._rows(
            "SELECT alias, version FROM registered_model_aliases "
            "WHERE workspace = :ws AND name = :name", name=name)})

    def search_model_versions(self, filter_string: str) -> list[_Version]:
        match = re.fullmatch(r"name='([^']*)'", filter_string)
        if match is None:
            raise ValueError(f"SqlRegistry reads versions by name only, not {filter_string!r}")
        name = match.group(1)
        tags: dict[int, dict[str, str]] = {}
        for r in self._rows("SELECT version, key, value FROM model_version_tags "
                            "WHERE workspace = :ws AND name = :name", name=name):
            tags.setdefault(int(r.version), {})[r.key] = r.value
        return [_Version(name, str(r.version), r.run_id, int(r.creation_time or 0),
                         tags.get(int(r.version), {}))
                for r in self._rows(
                    "SELECT version, run_id, creation_time FROM model_versions "
                    "WHERE workspace = :ws AND name = :name AND current_stage != :deleted",
                    name=name, deleted=_DELETED_STAGE)]

    def get_model_version(self, name: str, version: str) -> _Version:
        found = [v for v in self.search_model_versions(f"name='{name}'")
                 if v.version == str(version)]
        if not found:
            raise NotInRegistry(f"{name} has no version {version}")
        return found[0]

    def runs_facts(self, run_ids: Collection[str]) -> dict[str, RunFacts]:
        """Each run's latest metrics and lifecycle stage in two queries (``get_run`` reads
        one run in three); a run not in ``runs`` is gone (stage None)."""
        from sqlalchemy import bindparam, text

        from puhui.warehouse.engine import in_list_chunks

        latest_metrics = text(
            "SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN :runs"
        ).bindparams(bindparam("runs", expanding=True))
        run_stages = text(
            "SELECT run_uuid, lifecycle_stage FROM runs WHERE run_uuid IN :runs"
        ).bindparams(bindparam("runs", expanding=True))
        metrics: dict[str, dict[str, float]] = {run: {} for run in run_ids}
        stages: dict[str, str | None] = dict.fromkeys(run_ids)
        runs = sorted(metrics)
        with self._engine.connect() as conn:
            for chunk in in_list_chunks(runs):
                for r in conn.execute(latest_metrics, {"runs": chunk}):
                    metrics[r.run_uuid][r.key] = math.nan if r.is_nan else float(r.value)
                for r in conn.execute(run_stages, {"runs": chunk}):
                    stages[r.run_uuid] = r.lifecycle_stage
        return {run: RunFacts(metrics[run], stages[run]) for run in runs}

    def get_model_version_download_uri(self, name: str, version: str) -> str:
        rows = self._rows("SELECT storage_location, source FROM model_versions "
                          "WHERE workspace = :ws AND name = :name AND version = :version "
                          "AND current_stage != :deleted",
                          name=name, version=int(version), deleted=_DELETED_STAGE)
        if not rows:
            raise NotInRegistry(f"{name} has no version {version}")
        return rows[0].storage_location or rows[0].source

    def get_run(self, run_id: str) -> _Run:
        metrics = {r.key: math.nan if r.is_nan else float(r.value) for r in self._rows(
            "SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = :run", run=run_id)}
        tags = {r.key: r.value for r in self._rows(
            "SELECT key, value FROM tags WHERE run_uuid = :run", run=run_id)}
        info = self._rows("SELECT name, artifact_uri, lifecycle_stage FROM runs "
                          "WHERE run_uuid = :run", run=run_id)
        if not info:
            raise NotInRegistry(f"no run {run_id}")
        return _Run(_RunData(metrics, tags), _RunInfo(run_id, info[0].name, info[0].artifact_uri,
                                                      info[0].lifecycle_stage))

    def download_artifacts(self, run_id: str, path: str, dst_path: str) -> str:
        """``MlflowClient.download_artifacts``: copied from a local store (``file:`` URIs,
        the embedded default), else fetched by MLflow."""
        import shutil
        from urllib.parse import unquote, urlparse

        root = urlparse(self.get_run(run_id).info.artifact_uri or "")
        if root.scheme in ("file", ""):
            source = Path(unquote(root.path)) / path
            if not source.is_file():
                raise NotInRegistry(f"run {run_id} has no artifact {path}")
            return shutil.copy(source, Path(dst_path) / source.name)
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self._tracking_uri).download_artifacts(
            run_id, path, dst_path)


class _EmptyRegistry(SqlRegistry):
    """A local store that was never created: no models (and nothing created by reading)."""

    def __init__(self) -> None:
        pass

    def dispose(self) -> None:
        pass

    def _rows(self, sql: str, **params: Any) -> list[Any]:
        return []


def _database_registry(tracking_uri: str) -> SqlRegistry | None:
    """``SqlRegistry`` on a database tracking URI (``_EmptyRegistry`` for a local store never
    created), checked to take a connection; None for any other URI or a missing driver."""
    scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0]
    if scheme not in _DATABASE_SCHEMES:
        return None
    path = tracking_uri.removeprefix("sqlite:///")
    if path != tracking_uri and not Path(path).exists():
        return _EmptyRegistry()
    try:
        registry = SqlRegistry(tracking_uri)
    except Exception:  # noqa: BLE001 - a driver this environment lacks: MLflow says it
        return None
    registry.check_reachable()
    return registry


def check_registry_reachable(tracking_uri: str) -> None:
    """For an interactive command that changes the registry through MLflow: a database that
    does not answer is one line now, not MLflow's ~100 s of retries then three lines."""
    registry = _database_registry(tracking_uri)
    if registry is not None:  # its pooled connection: MLflow makes its own
        registry.dispose()


_CREATED: set[str] = set()


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` on ``tracking_uri`` (also its registry). A local SQLite store is
    made ready first, once per process, under an ``flock`` beside its database file
    (``held_lock``, as the training lock on SQLite): MLflow creates the tables of an empty
    store (its whole migration chain) on its first client, and two processes doing that at
    once collided in MLflow's migrations. The second now waits, then finds it made."""
    from mlflow import MlflowClient

    if tracking_uri in _CREATED or not tracking_uri.startswith("sqlite:"):
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    from sqlalchemy import create_engine

    from puhui.warehouse.engine import held_lock

    database = create_engine(tracking_uri)  # never connects: held_lock only reads its path
    try:
        if database.url.database and database.url.database != ":memory:":
            Path(database.url.database).parent.mkdir(parents=True, exist_ok=True)
        # Without the lock for a process that may not write beside the database (a reader,
        # a read-only folder): it cannot create the store either (SQLite writes its journal
        # there), and it is creation that collides; MLflow alone read an existing store so.
        with held_lock(database, "puhui.mlflow_store", unless_read_only=True):
            # The client opens its stores as it is made: the tracking store creates the
            # tables if none, the registry's (opened on first use) then finds them.
            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            client.search_registered_models(max_results=1)
    finally:
        database.dispose()
    _CREATED.add(tracking_uri)
    return client


def read_only_registry(tracking_uri: str) -> Any:
    """A client for reading the registry: ``SqlRegistry`` on a database store MLflow created,
    else ``MlflowClient`` (an MLflow server, or a database this cannot read). A database
    that takes no connection is refused in one line (``SqlRegistry.check_reachable``)."""
    registry = _database_registry(tracking_uri)
    if registry is not None:
        try:
            registry.search_registered_models()  # the tables exist as read here
            return registry
        except Exception:  # noqa: BLE001 - other tables: ask MLflow
            registry.dispose()  # its pooled connection from check_reachable: MLflow opens its own
    return mlflow_client(tracking_uri)
