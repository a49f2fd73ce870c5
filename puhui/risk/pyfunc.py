"""The registered form of the risk model: an MLflow pyfunc around the candidate's scorer.

``models:/credit_risk@champion`` then takes a frame of features (text categories and
numbers, as ``user_features`` holds them) and returns each row's calibrated probability of
default, whether the candidate was the LightGBM booster or the logistic benchmark; the
encoding and the calibration map travel with the model, so a caller cannot feed it
differently from training or get uncalibrated PDs.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from puhui.risk.model import load_scorer

SCORER_ARTIFACT = "scorer"


class RiskModelPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's PythonModelContext
        self.scorer = load_scorer(Path(context.artifacts[SCORER_ARTIFACT]))

    # A DataFrame hint: MLflow validates against the logged signature, not the hint.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:  # noqa: ANN001
        return self.scorer.predict_pd(model_input)
