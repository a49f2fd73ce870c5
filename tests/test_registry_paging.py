"""Listing registered models pages through MlflowClient's answers (one page each call)."""

from __future__ import annotations

from mlflow import MlflowClient

from puhui.registry_read import SqlRegistry, registered_model_names


def test_model_names_page_through_mlflow_and_match_sql_registry(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    names = [f"model_{i}" for i in range(5)]
    for name in names:
        client.create_registered_model(name)
    # One call answers one page: the names beyond it came from following the token.
    assert len(client.search_registered_models(max_results=2)) == 2
    assert registered_model_names(client, page_size=2) == names
    assert registered_model_names(SqlRegistry(uri)) == names
