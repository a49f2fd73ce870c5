"""The generated landing zone's truth files: their names and their readers.

The generator (``landing.py``) writes them next to the partner folders, never inside one, so
nothing here is ever landed or ingested. Evaluations read them to compare a model with the
data's ceiling; this module imports nothing of the generator, so reading the truth does not
load the landing-zone writer (synthetic data only: a real lender's landing zone has none of
these files, and every reader then gets ``None``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

FAULTS_FILE = "faults.json"
TRUTH_FILE = "truth.json"
RISK_TRUTH_FILE = "risk_truth.csv.gz"


def read_truth(landing: str | Path) -> dict[str, Any] | None:
    """``truth.json`` of a generated landing zone, or ``None`` when there is none."""
    path = Path(landing) / TRUTH_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def load_true_pd(landing: str | Path) -> pd.Series | None:
    """The generator's true PD per ``application_id``, or ``None`` when the landing zone is
    not a generated one."""
    path = Path(landing) / RISK_TRUTH_FILE
    if not path.is_file():
        return None
    frame = pd.read_csv(path, dtype={"application_id": str, "true_pd": float})
    return frame.set_index("application_id")["true_pd"]
