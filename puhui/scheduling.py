"""Deployments and schedules from ``prefect.yaml``, the one source of schedules.

``prefect deploy`` reads the same file for a server with workers; ``puhui serve`` turns it into
in-process deployments for the single-machine case. Only the keys used here are validated;
Prefect's own keys (work pools, pull steps) pass through untouched.
"""

from __future__ import annotations

import importlib
import signal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console

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
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
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

    Prefect's runner pauses the schedules when it stops, but the runs its server already
    scheduled ahead stay behind and would all start, late, the next time something serves
    these deployments. They are deleted here once serving ends.
    """
    from prefect import serve

    specs = load_deployment_specs()
    for spec in specs:
        crons = ", ".join(f"{s.cron} {s.timezone}" for s in spec.schedules if s.active) or "none"
        console.print(f"serving {spec.name} ({spec.entrypoint}) on schedule: {crons}")
    deployments = build_runner_deployments(specs)
    # Until Prefect's runner installs its own handler, SIGTERM must still end in the cleanup.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve(*deployments, print_starting_message=False)
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM is how serving ends: a normal stop, exit 0
    finally:
        removed = delete_scheduled_runs([f"{d.flow_name}/{d.name}" for d in deployments])
        console.print(f"stopped serving; removed {removed} scheduled run(s) it had created")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def delete_scheduled_runs(deployment_names: list[str]) -> int:
    """Delete the not-yet-started (scheduled, late) runs of these deployments; returns how many."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    removed = 0
    with get_client(sync_client=True) as client:
        ids = []
        for name in deployment_names:
            try:
                ids.append(client.read_deployment_by_name(name).id)
            except ObjectNotFound:
                continue
        if not ids:
            return 0
        scheduled = FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))
        while True:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=ids)),
                flow_run_filter=scheduled, limit=200)
            if not runs:
                return removed
            for run in runs:
                client.delete_flow_run(run.id)
                removed += 1


def work_pool_names(specs: list[DeploymentSpec] | None = None) -> list[str]:
    """The work pools ``prefect.yaml`` deploys to (``work_pool: {name: ...}``)."""
    names = []
    for spec in specs if specs is not None else load_deployment_specs():
        pool = (spec.model_extra or {}).get("work_pool") or {}
        if isinstance(pool, dict) and pool.get("name") and pool["name"] not in names:
            names.append(pool["name"])
    return names
