"""Bins frozen at development: the reference of every PSI/CSI later computed for a version.

Credit practice compares today's population with the development sample on the bins of the
development sample, never re-binned per run (re-binning on the mix of both hides a shift).
``freeze_bins`` cuts quantile bins of the registered model's score and of each feature on the
training window and counts the training rows in them; ``log_monitoring_bins`` stores that as
``monitoring/bins.json`` with the model version's run, where ``load_frozen_bins`` finds it.
Missing values have a bin of their own; categories unseen in training share one bin after the
training categories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from puhui.errors import PuhuiError
from puhui.privacy import error_line
from puhui.risk.metrics import _psi  # the project's one PSI formula (epsilon-floored shares)
from puhui.scratch import scratch_dir

BINS_ARTIFACT = "monitoring/bins.json"
SCORE = "score"


@dataclass(frozen=True)
class FrozenBin:
    """One variable's frozen bins and the training counts in them (missing bin last)."""

    kind: str  # "numeric" or "categorical"
    edges: list[float]  # numeric: inner cut points (value v falls in searchsorted(edges, v))
    categories: list[str]  # categorical: training categories (unseen ones share a bin after them)
    reference: list[int]

    def counts(self, values: pd.Series) -> np.ndarray:
        """Counts of ``values`` in these bins (same layout as ``reference``)."""
        if self.kind == "numeric":
            v = pd.to_numeric(values, errors="coerce").to_numpy(float)
            ok = v[~np.isnan(v)]
            inner = np.bincount(np.searchsorted(np.asarray(self.edges, float), ok,
                                                side="right"), minlength=len(self.edges) + 1)
            return np.append(inner, int(np.isnan(v).sum()))
        text = values.astype(object)
        missing = int(text.isna().sum())
        known = text[text.notna()].astype(str)
        index = {c: i for i, c in enumerate(self.categories)}
        codes = known.map(index).fillna(len(self.categories)).astype(int).to_numpy()
        return np.append(np.bincount(codes, minlength=len(self.categories) + 1), missing)

    def psi(self, values: pd.Series) -> float:
        return _psi(np.asarray(self.reference, float), self.counts(values).astype(float))

    def missing_rate(self) -> float:
        total = sum(self.reference)
        return self.reference[-1] / total if total else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "edges": self.edges, "categories": self.categories,
                "reference": self.reference}


def freeze_variable(values: pd.Series, bins: int, categorical: bool) -> FrozenBin:
    if categorical:
        cats = sorted(values.dropna().astype(str).unique().tolist())
        frozen = FrozenBin("categorical", [], cats, [])
    else:
        v = pd.to_numeric(values, errors="coerce").to_numpy(float)
        ok = v[~np.isnan(v)]
        edges = (np.unique(np.quantile(ok, np.linspace(0, 1, bins + 1)[1:-1])).tolist()
                 if len(ok) else [])
        frozen = FrozenBin("numeric", [float(e) for e in edges], [], [])
    return FrozenBin(frozen.kind, frozen.edges, frozen.categories,
                     [int(c) for c in frozen.counts(values)])


def freeze_bins(frame: pd.DataFrame, score: np.ndarray, features: list[str],
                categorical: list[str], bins: int = 10) -> dict[str, Any]:
    """Bins of the score and of every feature on ``frame`` (the training window)."""
    return {
        "rows": len(frame), "bins": bins,
        SCORE: freeze_variable(pd.Series(score), bins, False).as_dict(),
        "features": {name: freeze_variable(frame[name], bins, name in categorical).as_dict()
                     for name in features if name in frame.columns},
    }


def log_monitoring_bins(model_uri: str, frame: pd.DataFrame, features: list[str],
                        categorical: list[str], bins: int = 10) -> None:
    """Freeze bins on ``frame`` with the registered model's own output (calibrated PDs, as
    consumers see them) and log them to the active MLflow run as ``monitoring/bins.json``."""
    import mlflow.pyfunc

    from puhui.profiles.models import model_input

    model = mlflow.pyfunc.load_model(model_uri)
    score = np.asarray(model.predict(model_input(frame, features, categorical)), dtype=float)
    mlflow.log_dict(freeze_bins(frame, score, features, categorical, bins), BINS_ARTIFACT)


@dataclass(frozen=True)
class FrozenBins:
    rows: int
    score: FrozenBin
    features: dict[str, FrozenBin]


def parse_bins(data: dict[str, Any]) -> FrozenBins:
    return FrozenBins(int(data["rows"]), FrozenBin(**data[SCORE]),
                      {k: FrozenBin(**v) for k, v in data["features"].items()})


class NoFrozenBins(PuhuiError):
    """The version's run has no ``monitoring/bins.json`` (registered before bins were frozen):
    the one ``load_frozen_bins`` failure a monitoring run reports as a note and goes on."""


def load_frozen_bins(tracking_uri: str, run_id: str, name: str, version: str) -> FrozenBins:
    """The bins stored with a version's run. ``NoFrozenBins`` only when a listing of the run's
    ``monitoring`` folder succeeded without ``bins.json``; any other failure (tracking server
    or artifact store unreachable, run gone, download refused) is a ``PuhuiError`` naming a
    registry error: retraining would not help there."""
    from puhui.registry_read import mlflow_client

    folder, _, file = BINS_ARTIFACT.rpartition("/")

    def registry_error(exc: BaseException) -> PuhuiError:
        return PuhuiError(f"model registry error reading the bins of {name} v{version}: "
                          f"{type(exc).__name__}: {error_line(exc)}")

    # Not mlflow.artifacts.download_artifacts(run_id=...): its runs:/ repository turns every
    # artifact-store failure (connection refused, HTTP 5xx, permission) into "does not exist",
    # and requests' errors are OSErrors, so an outage read as "no bins ... retrain".
    try:
        client = mlflow_client(tracking_uri)
        client.get_run(run_id)
        listed = {Path(entry.path).name for entry in client.list_artifacts(run_id, folder)}
    except Exception as exc:
        raise registry_error(exc) from None
    if file not in listed:
        raise NoFrozenBins(
            f"{name} v{version} has no {BINS_ARTIFACT} (registered before bins were frozen "
            "at registration): PSI/CSI not computed for it; retrain to monitor its drift")
    try:
        with scratch_dir("bins") as tmp:
            path = client.download_artifacts(run_id, BINS_ARTIFACT, tmp)
            text = Path(path).read_text(encoding="utf-8")
    except Exception as exc:  # listed a moment ago: a failure now is the store's
        raise registry_error(exc) from None
    return parse_bins(json.loads(text))
