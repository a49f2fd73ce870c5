"""Calibration maps: from a model's raw probability to a PD that matches observed defaults.

Fitted on the validation window (never on the test window) and registered inside the model,
so every consumer of ``models:/credit_risk@champion`` gets calibrated PDs. Two maps:

- **Platt**: a logistic regression on the raw log-odds, ``sigmoid(a * logit(p) + b)``; two
  numbers, strictly increasing, so it never changes the ranking.
- **isotonic**: the best non-decreasing step function of the raw probability (linear between
  the fitted points, bounded away from 0 and 1). Steps tie applicants the model ranked
  apart, which costs AUC; ties are broken by the raw probability (a term of at most
  ``TIE_BREAK``), so the map is strictly increasing and the ranking, hence AUC, is kept.

``auto`` picks the map with the lower log-loss over held-out folds of the validation window
(each map fitted on the other folds): fitted and scored on the same rows, isotonic would
always win. Log-loss rather than Brier, because it punishes a PD near zero for a borrower
who defaults, the error a lender can least afford.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.model_selection import StratifiedKFold

Method = Literal["isotonic", "platt"]
METHODS: tuple[Method, ...] = ("platt", "isotonic")
PD_FLOOR = 1e-4  # no PD is exactly 0 or 1, whatever a step of the validation data says
TIE_BREAK = 1e-6  # isotonic: + TIE_BREAK x raw probability keeps the raw ranking
SELECTION_METRIC = "log_loss"
FILE_NAME = "calibration.json"


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class Calibrator:
    """A fitted map, stored as plain numbers (JSON), so a reviewer can read it."""

    method: Method
    slope: float = 1.0  # platt
    intercept: float = 0.0  # platt
    x: tuple[float, ...] = ()  # isotonic: raw probabilities of the fitted points
    y: tuple[float, ...] = ()  # isotonic: calibrated PD at those points

    def apply(self, raw: np.ndarray, break_ties: bool = True) -> np.ndarray:
        raw = np.asarray(raw, dtype=float)
        if self.method == "platt":
            return 1.0 / (1.0 + np.exp(-(self.slope * _logit(raw) + self.intercept)))
        steps = np.interp(raw, self.x, self.y)  # clamps outside the fitted range
        return steps + TIE_BREAK * raw if break_ties else steps

    def as_dict(self) -> dict[str, object]:
        if self.method == "platt":
            return {"method": "platt", "slope": self.slope, "intercept": self.intercept}
        return {"method": "isotonic", "x": list(self.x), "y": list(self.y),
                "tie_break": TIE_BREAK, "pd_floor": PD_FLOOR}

    def save(self, directory: Path) -> None:
        (directory / FILE_NAME).write_text(json.dumps(self.as_dict(), indent=1),
                                           encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> Calibrator | None:
        """The map saved in ``directory``; None for a model registered without one."""
        path = directory / FILE_NAME
        if not path.exists():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["method"] == "platt":
            return cls("platt", slope=data["slope"], intercept=data["intercept"])
        return cls("isotonic", x=tuple(data["x"]), y=tuple(data["y"]))


def fit_map(method: Method, raw: np.ndarray, labels: np.ndarray) -> Calibrator:
    raw, labels = np.asarray(raw, dtype=float), np.asarray(labels, dtype=int)
    if method == "platt":
        # Unpenalized in effect: two parameters on thousands of rows need no shrinkage.
        fit = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(raw).reshape(-1, 1), labels)
        return Calibrator("platt", slope=float(fit.coef_[0, 0]),
                          intercept=float(fit.intercept_[0]))
    iso = IsotonicRegression(y_min=PD_FLOOR, y_max=1 - PD_FLOOR, out_of_bounds="clip",
                             increasing=True).fit(raw, labels)
    return Calibrator("isotonic", x=tuple(float(v) for v in iso.X_thresholds_),
                      y=tuple(float(v) for v in iso.y_thresholds_))


@dataclass
class CalibrationChoice:
    """The map in use and how the candidates measured on the validation window."""

    calibrator: Calibrator
    configured: str  # auto | isotonic | platt
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> metrics
    folds: int = 0

    @property
    def method(self) -> str:
        return self.calibrator.method

    def describe(self) -> str:
        """One phrase for the step line: which map, and why."""
        if not self.scores:
            return f"{self.method} (configured)"
        figures = ", ".join(f"{m} {s[SELECTION_METRIC]:.4f}" for m, s in self.scores.items())
        how = "lower" if self.configured == "auto" else "configured;"
        return (f"{self.method} ({how} {self.folds}-fold validation log-loss: {figures})")

    def as_dict(self) -> dict[str, object]:
        return {"method": self.method, "configured": self.configured,
                "selection_metric": SELECTION_METRIC, "folds": self.folds,
                "cross_validated": self.scores, "map": self.calibrator.as_dict()}


def cross_validated_scores(raw: np.ndarray, labels: np.ndarray, folds: int,
                           seed: int) -> dict[str, dict[str, float]]:
    """Log-loss and Brier of each map over held-out folds of (raw, labels)."""
    raw, labels = np.asarray(raw, dtype=float), np.asarray(labels, dtype=int)
    folds = max(2, min(folds, int(labels.sum()), int((1 - labels).sum())))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    held_out = {m: np.empty(len(raw)) for m in METHODS}
    for fit_rows, score_rows in splitter.split(raw.reshape(-1, 1), labels):
        for method in METHODS:
            held_out[method][score_rows] = fit_map(method, raw[fit_rows],
                                                   labels[fit_rows]).apply(raw[score_rows])
    return {m: {"log_loss": float(log_loss(labels, p, labels=[0, 1])),
                "brier": float(brier_score_loss(labels, p)), "folds": float(folds)}
            for m, p in held_out.items()}


def choose_calibration(raw: np.ndarray, labels: np.ndarray, configured: str, folds: int,
                       seed: int) -> CalibrationChoice:
    """Fit the configured map on the whole validation window (``auto``: the map with the
    lower cross-validated log-loss; a tie goes to Platt, which cannot change the ranking)."""
    scores = cross_validated_scores(raw, labels, folds, seed)
    if configured == "auto":
        method: Method = min(METHODS, key=lambda m: scores[m][SELECTION_METRIC])
    else:
        method = configured  # type: ignore[assignment]
    used_folds = int(next(iter(scores.values()))["folds"])
    for s in scores.values():
        s.pop("folds")
    return CalibrationChoice(fit_map(method, raw, labels), configured, scores, used_folds)
