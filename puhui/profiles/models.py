"""The champion models a profile refresh uses, found by alias, and the risk scorer interface.

Profiles consume models only through what the registry serves: ``models:/<name>@champion``
loaded as an MLflow pyfunc. The PD is the pyfunc's own output (calibrated, as registered);
reason codes come from the booster's contributions, which the pyfunc's Python model exposes
(``contributions`` or its ``scorer``). A model with no champion is a reason, not an error; a
registry that cannot be read is an error, never "no version".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy import Engine

from puhui.audit import events_of
from puhui.errors import PuhuiError
from puhui.registry import (
    CHALLENGER,
    CHAMPION,
    LOST_RUN_ADVICE,
    MODEL_ACTIONS,
    MODEL_LOCK,
    alias_difference,
    load_registered_pyfunc,
    mlflow_client,
)
from puhui.registry_read import is_not_found, version_source_run_problem
from puhui.warehouse.engine import held_lock


@dataclass(frozen=True)
class ModelSlot:
    """What a refresh knows about one model: its champion version, or why there is none."""

    slot: str  # "risk", "recommender", ...
    name: str  # registered model name
    version: str | None = None
    run_id: str | None = None
    reason: str | None = None  # set when version is None
    loaded: Any = field(default=None, compare=False, repr=False)

    @property
    def available(self) -> bool:
        return self.version is not None


def _registered_aliases(client: MlflowClient, name: str) -> dict[str, Any] | None:
    """``name``'s aliases in MLflow, None when it is not registered; other failures raise."""
    try:
        return client.get_registered_model(name).aliases
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise PuhuiError(f"model registry error reading {name}: {exc.message}") from None


def _difference(
    client: MlflowClient, engine: Engine, name: str, alias: str
) -> tuple[dict[str, Any] | None, str | None]:
    """MLflow's aliases of ``name`` (read first; None: not registered) and how
    ``name@alias`` there differs from the trail's last move of it (read second), None when
    they agree. A model deleted by hand is an unset alias: the trail's champion is gone."""
    aliases = _registered_aliases(client, name)
    version = None if aliases is None else aliases.get(alias)
    current = None if version is None else str(version)
    return aliases, alias_difference(events_of(engine, MODEL_ACTIONS), name, alias, current)


def resolve_champion(
    client: MlflowClient, slot: str, name: str, alias: str = CHAMPION, engine: Engine | None = None
) -> ModelSlot:
    """The version behind ``name@alias``; a missing model or alias is a reason, any other
    registry failure raises. With ``engine``, an alias that is not where the audit trail's
    last move put it (set by hand in MLflow: a version no promotion vouched for) raises, and
    so does a champion whose source run was deleted in MLflow (its lineage gone); such a
    challenger is a reason (nothing to report under it, and the champion still is)."""
    if engine is None:
        aliases, because = _registered_aliases(client, name), None
    else:
        aliases, because = _difference(client, engine, name, alias)
        if because:
            # A puhui move (promote, rollback, a training's auto-promote) may have landed
            # between the two reads. Every move holds MODEL_LOCK, so both read again under
            # it see one settled state; the lock is taken only here, not while scoring.
            with held_lock(engine, MODEL_LOCK, unless_read_only=True):
                aliases, because = _difference(client, engine, name, alias)
        if because:
            # Not "promote through puhui": promote and rollback refuse the same alias.
            raise PuhuiError(
                f"{because}: not scored; put it back in MLflow as the trail says (promote "
                "and rollback refuse it until then), 'puhui audit verify' lists every difference"
            )
    if aliases is None:
        return ModelSlot(slot, name, reason=f"no champion for {name} (not registered)")
    version = aliases.get(alias)
    if version is None:
        return ModelSlot(slot, name, reason=f"no {alias} for {name}")
    try:
        run_id = client.get_model_version(name, str(version)).run_id
        # Checked with the alias: a version whose source run was deleted by hand in MLflow
        # would score with nothing left to say what it is (loading refuses it too).
        lost = (
            version_source_run_problem(client, name, str(version), run_id)
            if engine is not None
            else None
        )
    except MlflowException as exc:
        raise PuhuiError(f"model registry error reading {name} v{version}: {exc.message}") from None
    if lost and alias == CHALLENGER:
        # Unlike a moved alias there are no disputed rows to keep out: the champion is
        # reported, and the challenger named as unavailable (it may stay for long: only a
        # training whose version passes replaces it).
        return ModelSlot(slot, name, reason=f"{lost}: challenger not scored; {LOST_RUN_ADVICE}")
    if lost:
        raise PuhuiError(f"{lost}: not scored; {LOST_RUN_ADVICE}")
    return ModelSlot(slot, name, str(version), run_id)


def resolve_models(
    tracking_uri: str, models: dict[str, str], alias: str = CHAMPION, engine: Engine | None = None
) -> dict[str, ModelSlot]:
    """Each slot's version behind ``name@alias`` (see :func:`resolve_champion`)."""
    client = mlflow_client(tracking_uri)
    return {
        slot: resolve_champion(client, slot, name, alias, engine) for slot, name in models.items()
    }


def model_input(frame: pd.DataFrame, features: list[str], categorical: list[str]) -> pd.DataFrame:
    """Features as the registered signature takes them: text categories, float numbers."""
    out = pd.DataFrame(index=frame.index)
    for name in features:
        column = frame[name] if name in frame.columns else pd.Series(None, index=frame.index)
        if name in categorical:
            out[name] = column.astype(object).where(column.notna(), None)
        else:
            out[name] = pd.to_numeric(column, errors="coerce").astype("float64")
    return out


class RiskScoring(Protocol):
    """The scorer interface profiles and monitoring use; nothing else of the risk package."""

    features: list[str]
    categorical: list[str]

    def predict_pd(self, frame: pd.DataFrame) -> np.ndarray: ...

    def contributions(self, frame: pd.DataFrame) -> np.ndarray: ...


@dataclass
class PyfuncRiskScorer:
    """A registered risk model: PDs from the pyfunc, contributions from its booster."""

    pyfunc: Any
    features: list[str]
    categorical: list[str]

    def predict_pd(self, frame: pd.DataFrame) -> np.ndarray:
        x = model_input(frame, self.features, self.categorical)
        return np.asarray(self.pyfunc.predict(x), dtype=float).reshape(-1)

    def contributions(self, frame: pd.DataFrame) -> np.ndarray:
        inner = self.pyfunc.unwrap_python_model()
        x = model_input(frame, self.features, self.categorical)
        source = inner if hasattr(inner, "contributions") else inner.scorer
        return np.asarray(source.contributions(x))


def load_risk_scorer(engine: Engine, tracking_uri: str, slot: ModelSlot) -> PyfuncRiskScorer:
    """Load the exact version resolved (not the alias again: it may move meanwhile), from
    files checked against its registration in the trail of ``engine``'s warehouse."""
    pyfunc = load_registered_pyfunc(engine, tracking_uri, slot.name, str(slot.version))
    inner = pyfunc.unwrap_python_model()
    scorer = getattr(inner, "scorer", inner)
    features = list(scorer.features)
    categorical = sorted(getattr(scorer, "categories", {}) or {})
    return PyfuncRiskScorer(pyfunc, features, categorical)
