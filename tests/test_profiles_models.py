"""Champions by alias: a missing model or alias is a reason; a registry error is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from puhui.errors import PuhuiError
from puhui.profiles.models import resolve_models


def test_missing_model_and_missing_alias_are_reasons(tmp_path: Path) -> None:
    from puhui.registry import mlflow_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow_client(uri).create_registered_model("credit_risk")
    slots = resolve_models(uri, {"risk": "credit_risk", "recommender": "product_recommender"})
    assert not slots["risk"].available and slots["risk"].reason == "no champion for credit_risk"
    assert slots["recommender"].reason == ("no champion for product_recommender "
                                           "(not registered)")


def test_an_unreachable_registry_is_an_error_not_no_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with pytest.raises(PuhuiError, match="model registry error reading credit_risk"):
        resolve_models("http://127.0.0.1:9", {"risk": "credit_risk"})
