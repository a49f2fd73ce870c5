"""What a model's adapter declares for the model owner's views (``models show|compare``).

Each model package has one ``VIEW`` (puhui/risk/view.py, puhui/recommender/view.py); the
views themselves are shared code (puhui/lifecycle/views.py). Plain data, cheap to import: the
read-only commands load no model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Headline:
    metric: str  # an MLflow run metric
    label: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class ModelView:
    headline: tuple[Headline, ...]
    # ``model_evaluations`` metrics shown per segment (fairness, segment quality).
    segment_metrics: tuple[str, ...] = ()
    # A CSV artifact of the run with one row per risk grade (None: the model has no grades).
    calibration_artifact: str | None = None
    calibration_columns: tuple[str, ...] = field(default_factory=tuple)


# A model without an adapter: its run metrics, no headline choice.
GENERIC = ModelView(headline=())
