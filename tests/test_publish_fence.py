"""Both model publishers pass their training's fence (``audit.guard``) to
``write_evaluations``: a training whose lock a newer training took between MLflow's
registration and the ``model_evaluations`` rows writes no rows. A publisher that dropped the
guard wrote them unchecked (tests/test_training_fence.py checks ``write_evaluations`` itself,
not its callers). Real objects: SQLite warehouse, MLflow store, small trained models (the
risk model on a thousand labelled loans of the shared clean template, ``small_risk_model``;
the recommender on test_recommender's synthetic set); the newer training is a real newer
generation of the model's lock, taken at the registration's crash point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from puhui import registry
from puhui.audit import events_of
from puhui.lifecycle.fencing import REGISTRATION, FencedOut, fenced, take_generation
from puhui.recommender.publish import publish_recommender
from puhui.recommender.train import fit_and_evaluate
from puhui.registry import REGISTERED, mlflow_client
from puhui.risk.publish import publish_risk_model
from puhui.runtime import Runtime, open_runtime
from puhui.warehouse.schema import model_evaluations
from tests.conftest import SmallRiskModel
from tests.test_recommender import _configs, _synthetic_set


def _publish_overtaken(name: str, runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
                       publish: Callable[..., object]) -> None:
    """``publish(audit)`` under a fence that a newer training makes stale right after MLflow
    registered the version: it must raise ``FencedOut`` and leave no evaluation rows."""
    engine: Engine = runtime.engine
    fence = take_generation(engine, name)

    def newer_training(point: str) -> None:
        if point == "register.after_mlflow":
            take_generation(engine, name)
    monkeypatch.setattr(registry, "crash_point", newer_training)
    with pytest.raises(FencedOut, match=f"^the training lock of {name} was lost during "
                                        "the registration") as refused:
        publish(fenced(runtime.audit, fence, REGISTRATION))
    # The rows' guard refused, not some fenced write after the registration (which would
    # leave no rows too, with the rows' guard dropped).
    assert "write_evaluations" in {entry.name for entry in refused.traceback}
    # The registration went through (its completion is not fenced): the refusal was the rows'.
    assert [e["details"]["version"] for e in events_of(engine, [REGISTERED])] == ["1"]
    assert [str(v.version) for v in mlflow_client(runtime.settings.mlflow_tracking_uri)
            .search_model_versions(f"name='{name}'")] == ["1"]
    with engine.connect() as conn:
        assert conn.execute(select(model_evaluations).where(
            model_evaluations.c.model_name == name)).all() == []


def test_the_risk_publisher_fences_its_evaluation_rows(
    small_risk_model: SmallRiskModel, puhui_env: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = open_runtime()
    settings, small = runtime.settings, small_risk_model
    name = "fenced_risk"
    _publish_overtaken(name, runtime, monkeypatch, lambda audit: publish_risk_model(
        engine=runtime.engine, tracking_uri=settings.mlflow_tracking_uri, name=name,
        training=small.training, trained=small.trained, evaluation=small.evaluation,
        gates=small.gates, tags={}, fingerprint="fenced", report_dir=settings.home / "reports",
        artifact_root=settings.home / "mlartifacts", audit=audit, profile=settings.profile,
        config_dir=settings.config_dir, expectations_dir=settings.expectations_dir))


def test_the_recommender_publisher_fences_its_evaluation_rows(
    puhui_env: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = open_runtime()
    settings = runtime.settings
    spec = _configs()[0].product_recommender.model_copy(update={"min_segment_size": 10})
    data = _synthetic_set()
    run = fit_and_evaluate(data, spec)
    name = "fenced_recommender"
    _publish_overtaken(name, runtime, monkeypatch, lambda audit: publish_recommender(
        engine=runtime.engine, audit=audit, tracking_uri=settings.mlflow_tracking_uri,
        name=name, data=data, run=run, tags={}, fingerprint="fenced",
        artifact_root=settings.home / "mlartifacts", profile=settings.profile,
        config_dir=settings.config_dir, expectations_dir=settings.expectations_dir))
