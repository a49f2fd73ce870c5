"""Deployments and schedules from ``prefect.yaml``, the one source of schedules.

``prefect deploy`` reads the same file for a server with workers; ``puhui serve`` turns it into
in-process deployments for the single-machine case. Only the keys used here are validated;
Prefect's own keys (work pools, pull steps) pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console

from puhui.config import load_yaml
from puhui.errors import PuhuiError
from puhui.settings import repo_root


class ScheduleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cron: str
    timezone: str = "Asia/Shanghai"
    slug: str | None = None
    active: bool = True
    parameters: dict[str, Any] = Field(default_factory=dict)


class DeploymentSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    entrypoint: str = Field(pattern=r"^flows/[a-z_]+\.py:[a-z_]+$")
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    schedules: list[ScheduleSpec] = Field(default_factory=list)


def load_deployment_specs(path: Path | None = None) -> list[DeploymentSpec]:
    """The deployments declared in ``prefect.yaml`` (validated)."""
    path = path or repo_root() / "prefect.yaml"
    raw = load_yaml(path, aliases=True) or {}
    specs = []
    for index, item in enumerate(raw.get("deployments") or []):
        try:
            specs.append(DeploymentSpec.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise PuhuiError(f"{path}: deployments.{index}.{key}: {first['msg']}") from None
    return specs


def load_flow(entrypoint: str) -> Any:
    """The flow object of ``flows/<file>.py:<name>``, imported as a module of the package.

    Importing by module (not by file path, as Prefect's loader does) keeps one copy of each
    module in the process, so the deployment and the code share the same tasks and settings.
    """
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def build_runner_deployments(specs: list[DeploymentSpec]) -> list[Any]:
    """Prefect ``RunnerDeployment`` objects for ``specs`` (flows loaded from their entrypoints)."""
    from prefect.schedules import Cron

    deployments = []
    for spec in specs:
        flow = load_flow(spec.entrypoint)
        schedules = [
            Cron(s.cron, timezone=s.timezone, active=s.active, parameters=s.parameters, slug=s.slug)
            for s in spec.schedules
        ]
        deployments.append(
            flow.to_deployment(
                name=spec.name,
                schedules=schedules,
                parameters=spec.parameters,
                description=spec.description,
                tags=spec.tags,
            )
        )
    return deployments


def serve_deployments(console: Console) -> None:
    """Serve every deployment of ``prefect.yaml`` until interrupted (Ctrl-C or SIGTERM).

    Prefect's runner pauses the schedules when it stops, but only once it has started: a stop
    while the deployments are still being registered (seconds on a busy machine, and the
    server schedules runs for each one as soon as it exists) left them active, and the
    server kept scheduling runs after they were deleted. The runs its server scheduled
    ahead would also all start, late, the next time something serves these deployments.
    So whatever was registered is paused, then its scheduled runs deleted, once serving ends.
    """
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    specs = load_deployment_specs()
    for spec in specs:
        crons = ", ".join(f"{s.cron} {s.timezone}" for s in spec.schedules if s.active) or "none"
        console.print(f"serving {spec.name} ({spec.entrypoint}) on schedule: {crons}")
    deployments = build_runner_deployments(specs)
    stop = _StopRequest()
    runner = Runner(pause_on_shutdown=True)
    registered: list[str] = []
    try:
        with stop.deferred():
            for deployment in deployments:
                if stop.requested:
                    break
                # Named before the call: a registration cut short may still reach the server.
                registered.append(f"{deployment.flow_name}/{deployment.name}")
                runner.add_deployment(deployment)
        if not stop.requested:
            asyncio.run(runner.start())  # installs Prefect's own SIGTERM handler
    except (KeyboardInterrupt, TerminationSignal):
        pass  # Ctrl-C or SIGTERM is how serving ends: a normal stop, exit 0
    finally:
        removed = stop_deployments(registered)
        console.print(f"stopped serving; removed {removed} scheduled run(s) it had created")


class _StopRequest:
    """Ctrl-C and SIGTERM while deployments register: noted, acted on between two
    registrations (an interrupted API call could leave a deployment half-applied, active
    again after the cleanup paused it). Otherwise they interrupt at once."""

    def __init__(self) -> None:
        self.requested = False
        self._defer = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, _signum: int, _frame: object) -> None:
        self.requested = True
        if not self._defer:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._defer = True
        try:
            yield
        finally:
            self._defer = False
            # Back to Python's own Ctrl-C handling (asyncio.run relies on it); SIGTERM stays
            # ours until the runner installs its handler.
            signal.signal(signal.SIGINT, signal.default_int_handler)


# A scheduler pass that read a deployment just before it was paused may insert its runs
# just after they were deleted: one more sweep after this long catches them.
RESWEEP_SECONDS = 1.5


def stop_deployments(deployment_names: list[str]) -> int:
    """Pause these deployments and delete their not-yet-started runs; returns how many runs.

    Deleting alone is not enough: the server schedules the runs of an active deployment
    again within a scheduler loop. Paused, it schedules none.
    """
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        ids = []
        for name in deployment_names:
            with contextlib.suppress(ObjectNotFound):
                ids.append(client.read_deployment_by_name(name).id)
        if not ids:
            return 0
        # Pausing deletes the runs the server scheduled itself: note them first, to count.
        removed = {run.id for run in _scheduled_runs(client, ids)}
        for deployment_id in ids:
            client.pause_deployment(deployment_id)
        removed |= _delete_scheduled_runs(client, ids)
        time.sleep(RESWEEP_SECONDS)
        return len(removed | _delete_scheduled_runs(client, ids))


def _scheduled_runs(client: Any, deployment_ids: list[Any]) -> list[Any]:
    """Up to 200 scheduled (incl. late) runs of these deployments."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))), limit=200)


def _delete_scheduled_runs(client: Any, deployment_ids: list[Any]) -> set[Any]:
    """Delete every scheduled (incl. late) run of these deployments; returns their ids."""
    from prefect.exceptions import ObjectNotFound

    deleted = set()
    while runs := _scheduled_runs(client, deployment_ids):
        for run in runs:
            with contextlib.suppress(ObjectNotFound):  # gone meanwhile (started, deleted)
                client.delete_flow_run(run.id)
            deleted.add(run.id)
    return deleted


def work_pool_names(specs: list[DeploymentSpec] | None = None) -> list[str]:
    """The work pools ``prefect.yaml`` deploys to (``work_pool: {name: ...}``)."""
    names = []
    for spec in specs if specs is not None else load_deployment_specs():
        pool = (spec.model_extra or {}).get("work_pool") or {}
        if isinstance(pool, dict) and pool.get("name") and pool["name"] not in names:
            names.append(pool["name"])
    return names
