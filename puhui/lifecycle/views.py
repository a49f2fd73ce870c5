"""The model owner's read-only views: one version in full, two side by side.

Shared by every model: metrics come from the version's MLflow run, gate checks from its
``gates.json`` artifact (the verdict from its tags), per-segment figures from
``model_evaluations``, calibration per grade from the artifact the model's adapter names.
Which metrics are the headline and which segment figures to show is the adapter's
(``puhui/<model>/view.py``). Nothing here writes, and nothing imports Prefect.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select

from puhui.errors import PuhuiError
from puhui.lifecycle.adapters import GENERIC, ModelView
from puhui.lifecycle.gates import gate_rule
from puhui.registry import (
    CHALLENGER,
    CHAMPION,
    GATES_FAILED_TAG,
    GATES_PASSED_TAG,
    current_aliases,
    run_artifact,
)
from puhui.registry_read import suppress_not_found
from puhui.warehouse.schema import model_evaluations

if TYPE_CHECKING:  # the commands pass puhui.registry_read's reader (no MLflow import)
    from mlflow import MlflowClient

LINEAGE_TAG_PREFIXES = ("puhui.", "training.")


def view_for(name: str, config_dir: Path) -> ModelView:
    """The adapter's view of the registered model ``name`` (by configs/models.yaml)."""
    from puhui.config import ModelsConfig, load_config

    models = load_config(config_dir, ModelsConfig)
    if name == models.credit_risk.registered_name:
        from puhui.risk.view import VIEW

        return VIEW
    if models.product_recommender and name == models.product_recommender.registered_name:
        from puhui.recommender.view import VIEW as RECOMMENDER_VIEW

        return RECOMMENDER_VIEW
    return GENERIC


def _number(text: str) -> float | int | bool | str | None:
    if text in ("True", "False"):
        return text == "True"
    if text.isdigit():  # counts stay counts
        return int(text)
    try:
        value = float(text)
    except ValueError:
        return text or None
    return None if value != value else value  # NaN: no applicant in the grade


def version_facts(client: MlflowClient, engine: Engine, name: str, version: str,
                  view: ModelView) -> dict[str, Any]:
    """Everything ``models show`` prints about one version, as plain data."""
    v = None
    with suppress_not_found():
        v = client.get_model_version(name, str(version))
    if v is None:
        raise PuhuiError(f"{name} has no version {version} (puhui models list {name})")
    run = client.get_run(v.run_id)
    metrics = {k: val for k, val in run.data.metrics.items() if "." not in k}
    headline = [h.metric for h in view.headline if h.metric in metrics]
    aliases = sorted(a for a, ver in current_aliases(client, name).items()
                     if ver == str(version))
    checks: list[dict[str, Any]] = []
    gates_file = run_artifact(client, v.run_id, "gates.json")
    if gates_file is not None:
        checks = json.loads(gates_file).get("checks", [])
        for check in checks:  # versions gated before rules were recorded
            check.setdefault("rule", gate_rule(str(check["gate"]), float(check["limit"])))
    segments: dict[str, dict[str, float]] = {}
    if view.segment_metrics:
        with engine.connect() as conn:
            rows = conn.execute(select(
                model_evaluations.c.segment, model_evaluations.c.metric,
                model_evaluations.c.value).where(
                (model_evaluations.c.model_name == name)
                & (model_evaluations.c.model_version == str(version))
                & (model_evaluations.c.segment != "all")
                & model_evaluations.c.metric.in_(view.segment_metrics))).all()
        for segment, metric, value in sorted(rows):
            segments.setdefault(segment, {})[metric] = value
    calibration: list[dict[str, Any]] = []
    if view.calibration_artifact:
        table = run_artifact(client, v.run_id, view.calibration_artifact)
        if table is not None:
            calibration = [{"grade": row["grade"],
                            **{c: _number(row[c]) for c in view.calibration_columns
                               if c in row}}
                           for row in csv.DictReader(io.StringIO(table))]
    return {
        "name": name, "version": str(version), "aliases": aliases,
        "as_of": v.tags.get("training.as_of"), "run_id": v.run_id,
        "run_name": run.info.run_name,
        "headline": headline, "metrics": metrics,
        "gates": {"gated": GATES_PASSED_TAG in v.tags,
                  "passed": v.tags.get(GATES_PASSED_TAG) == "true",
                  "failed": json.loads(v.tags.get(GATES_FAILED_TAG, "[]")),
                  "checks": checks},
        "lineage": {k: val for k, val in sorted({**run.data.tags, **v.tags}.items())
                    if k.startswith(LINEAGE_TAG_PREFIXES)},
        "segments": segments, "calibration": calibration,
    }


def default_pair(client: MlflowClient, name: str, a: str | None,
                 b: str | None) -> tuple[str, str]:
    """The versions ``models compare`` compares: as given; one given: the champion against
    it; none: the champion against the challenger (the newest passing version)."""
    aliases = current_aliases(client, name)
    if a is not None and b is not None:
        return a, b
    champion = aliases.get(CHAMPION)
    if champion is None:
        raise PuhuiError(f"{name} has no champion to compare with: name two versions "
                         f"(puhui models compare {name} A B)")
    if a is not None:
        return champion, a
    challenger = aliases.get(CHALLENGER)
    if challenger is None:
        raise PuhuiError(f"{name} has no challenger to compare with champion v{champion}: "
                         f"name a version (puhui models compare {name} {champion} B)")
    return champion, challenger


def _diff(a: Any, b: Any) -> float | None:
    if isinstance(a, bool) or isinstance(b, bool):
        return None
    if isinstance(a, int | float) and isinstance(b, int | float):
        return b - a
    return None


def compare_facts(a: dict[str, Any], b: dict[str, Any], view: ModelView) -> dict[str, Any]:
    """Two versions side by side; ``diff`` is B minus A."""
    headline = [h.metric for h in view.headline
                if h.metric in a["metrics"] or h.metric in b["metrics"]]
    metric_names = headline or sorted(set(a["metrics"]) | set(b["metrics"]))
    metrics = [{"metric": m, "a": a["metrics"].get(m), "b": b["metrics"].get(m),
                "diff": _diff(a["metrics"].get(m), b["metrics"].get(m))}
               for m in metric_names]
    segments = []
    for segment in sorted(set(a["segments"]) | set(b["segments"])):
        sa, sb = a["segments"].get(segment, {}), b["segments"].get(segment, {})
        for m in view.segment_metrics:
            if m in sa or m in sb:
                segments.append({"segment": segment, "metric": m, "a": sa.get(m),
                                 "b": sb.get(m), "diff": _diff(sa.get(m), sb.get(m))})
    grades_a = {row["grade"]: row for row in a["calibration"]}
    grades_b = {row["grade"]: row for row in b["calibration"]}
    calibration = []
    for grade in sorted(set(grades_a) | set(grades_b)):
        ra, rb = grades_a.get(grade, {}), grades_b.get(grade, {})
        calibration.append({"grade": grade,
                            "observed_a": ra.get("observed"), "expected_a": ra.get("expected"),
                            "ok_a": ra.get("ok"), "observed_b": rb.get("observed"),
                            "expected_b": rb.get("expected"), "ok_b": rb.get("ok"),
                            "diff": _diff(ra.get("observed"), rb.get("observed"))})
    checks_a = {(c["gate"], c["subject"]): c for c in a["gates"]["checks"]}
    checks_b = {(c["gate"], c["subject"]): c for c in b["gates"]["checks"]}
    gates = []
    for key in list(checks_a) + [k for k in checks_b if k not in checks_a]:
        ca, cb = checks_a.get(key, {}), checks_b.get(key, {})
        gates.append({"gate": key[0], "subject": key[1], "rule": cb.get("rule", ca.get("rule")),
                      "a": ca.get("value"), "passed_a": ca.get("passed"),
                      "b": cb.get("value"), "passed_b": cb.get("passed"),
                      "diff": _diff(ca.get("value"), cb.get("value"))})
    return {"name": a["name"], "a": _brief(a), "b": _brief(b), "metrics": metrics,
            "segments": segments, "calibration": calibration, "gates": gates}


def _brief(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: facts[k] for k in ("version", "aliases", "as_of", "run_id", "run_name")} | {
        "gates": {k: facts["gates"][k] for k in ("gated", "passed", "failed")}}
