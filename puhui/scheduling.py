"""Deployments and schedules from ``prefect.yaml``, the one source of schedules.

``prefect deploy`` reads the same file for a server with workers; ``puhui serve`` turns it into
in-process deployments for the single-machine case. Only the keys used here are validated;
Prefect's own keys (work pools, pull steps) pass through untouched.
"""

from __future__ import annotations

import importlib
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
    """Serve every deployment of ``prefect.yaml`` until interrupted."""
    from prefect import serve

    specs = load_deployment_specs()
    for spec in specs:
        crons = ", ".join(f"{s.cron} {s.timezone}" for s in spec.schedules if s.active) or "none"
        console.print(f"serving {spec.name} ({spec.entrypoint}) on schedule: {crons}")
    serve(*build_runner_deployments(specs), print_starting_message=False)
