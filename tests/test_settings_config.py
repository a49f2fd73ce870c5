"""Settings profiles, config validation and the CLI's error contract."""

from __future__ import annotations

import shutil
from pathlib import Path

import click
import pytest
import typer
import yaml

from puhui.cli import app, main
from puhui.config import (
    ModelsConfig,
    PartnersConfig,
    ProductsConfig,
    config_hash,
    load_config_file,
    validate_config_dir,
)
from puhui.errors import PuhuiError
from puhui.settings import default_expectations_dir, load_settings, repo_root

CONFIGS = repo_root() / "configs"
GOOD_KEY = "k3y-" + "0123456789abcdef" * 2  # 40 "k"s are a length, not a secret (weak)


def test_local_profile_defaults_live_under_puhui_home(tmp_path: Path) -> None:
    settings = load_settings({"PUHUI_HOME": str(tmp_path)})
    assert settings.profile == "local"
    assert settings.warehouse_url == f"sqlite:///{tmp_path / 'warehouse.db'}"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert settings.landing == str(tmp_path / "landing")
    assert settings.pseudonym_key is None and settings.actor


def test_the_suites_folder_is_read_from_the_environment_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One helper for ``load_settings(environ)`` and the callers given no settings: each
    reads the mapping it is given, never another (``os.environ`` only by default)."""
    monkeypatch.setenv("PUHUI_EXPECTATIONS_DIR", str(tmp_path / "live"))
    given = {"PUHUI_HOME": str(tmp_path), "PUHUI_EXPECTATIONS_DIR": str(tmp_path / "given")}
    assert load_settings(given).expectations_dir == (tmp_path / "given").resolve()
    assert default_expectations_dir(given) == (tmp_path / "given").resolve()
    assert default_expectations_dir({}) == repo_root() / "expectations"
    assert default_expectations_dir() == (tmp_path / "live").resolve()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PUHUI_WAREHOUSE_URL": "postgresql+psycopg://x@h/db"}, "PUHUI_PSEUDONYM_KEY"),
        ({"PUHUI_PSEUDONYM_KEY": GOOD_KEY}, "SQLite"),
        (
            {"PUHUI_PSEUDONYM_KEY": "short", "PUHUI_WAREHOUSE_URL": "postgresql+psycopg://x@h/db"},
            "at least 32",
        ),
    ],
)
def test_production_profile_refuses_demo_conveniences(env: dict, message: str) -> None:
    with pytest.raises(PuhuiError, match=message):
        load_settings({"PUHUI_PROFILE": "production", **env})


def test_production_profile_accepts_a_proper_setup() -> None:
    settings = load_settings(
        {
            "PUHUI_PROFILE": "production",
            "PUHUI_PSEUDONYM_KEY": GOOD_KEY,
            "PUHUI_WAREHOUSE_URL": "postgresql+psycopg://x@h/db",
            "PUHUI_ACTOR": "etl-bot",
            "PUHUI_AUDIT_KEY": "audit-key-0123456789abcdefghijklmnop",
        }
    )
    assert settings.actor == "etl-bot" and not settings.is_sqlite


def test_shipped_configs_are_valid() -> None:
    assert validate_config_dir(CONFIGS) == [
        "features.yaml", "models.yaml", "monitoring.yaml", "partners.yaml", "products.yaml",
        "segments.yaml"]


def _broken_copy(tmp_path: Path, name: str, old: str, new: str) -> Path:
    target = tmp_path / "configs"
    shutil.copytree(CONFIGS, target)
    path = target / name
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name, old, new, model, expected",
    [
        (
            "partners.yaml",
            "    delivery: daily",
            "    delivery: daily\n    deliverey: daily",
            PartnersConfig,
            "partners.0.deliverey: Extra inputs are not permitted",
        ),
        ("partners.yaml", "format: jsonl", "format: xml", PartnersConfig, "partners.2.format"),
        ("products.yaml", "kind: insurance", "kind: [1, 2]", ProductsConfig, "products.3.kind"),
    ],
)
def test_config_errors_are_one_line_naming_file_and_key(
    tmp_path: Path, name: str, old: str, new: str, model: type, expected: str
) -> None:
    path = _broken_copy(tmp_path, name, old, new)
    with pytest.raises(PuhuiError) as info:
        load_config_file(path, model)
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


def _models_with_ranker_params(tmp_path: Path, extra: dict) -> Path:
    """configs/models.yaml with ``extra`` added to the recommender's lightgbm block (whatever
    values the shipped block holds)."""
    models = yaml.safe_load((CONFIGS / "models.yaml").read_text(encoding="utf-8"))
    models["product_recommender"]["lightgbm"].update(extra)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(models, allow_unicode=True), encoding="utf-8")
    return path


def test_recommender_lightgbm_takes_flat_lists_of_any_kind_and_bools(tmp_path: Path) -> None:
    """LightGBM's list parameters are floats (``feature_contri``; ``label_gain`` is the
    trainer's), ints (``monotone_constraints``) or strings; a YAML ``true`` stays a bool
    (LightGBM refuses a bool parameter of 1.0)."""
    path = _models_with_ranker_params(tmp_path, yaml.safe_load(
        "{feature_contri: [0, 1.5, 3], monotone_constraints: [1, 0, -1], metric: [ndcg, map],"
        " force_col_wise: true, max_bin: 63}"))
    params = load_config_file(path, ModelsConfig).product_recommender.lightgbm
    assert params["feature_contri"] == [0.0, 1.5, 3.0]
    assert [type(v) for v in params["monotone_constraints"]] == [int, int, int]
    assert params["metric"] == ["ndcg", "map"]
    assert params["force_col_wise"] is True
    assert params["max_bin"] == 63 and type(params["max_bin"]) is int


def test_recommender_lightgbm_single_columns_take_an_index_or_a_name(tmp_path: Path) -> None:
    """LightGBM takes label, weight and group columns as "int or string"; an index was
    refused as "expected a string"."""
    path = _models_with_ranker_params(tmp_path, {"label_column": 0, "weight": "name:w",
                                                 "group_column": 2})
    params = load_config_file(path, ModelsConfig).product_recommender.lightgbm
    assert (params["label_column"], params["weight"], params["group_column"]) == (0, "name:w", 2)


@pytest.mark.parametrize("value, expected", [
    ("{max_depth: 3}", "lightgbm: Value error, nested: a mapping (['max_depth'])"),
    ("[[1, 2]]", "lightgbm: Value error, nested: a list must hold only numbers or only strings"),
    ("[1, b]", "lightgbm: Value error, nested: a list must hold only numbers or only strings"),
    ("[{a: 1}]", "lightgbm: Value error, nested: a list must hold only numbers or only strings"),
    ("{of: rows, fraction: 0.1}", "lightgbm: Value error, nested: size-aware value: min: Field"),
    ("", "lightgbm: Value error, nested: expected a number"),
])
def test_recommender_lightgbm_refuses_nonsense_naming_the_key(
    tmp_path: Path, value: str, expected: str
) -> None:
    path = _models_with_ranker_params(tmp_path, {"nested": yaml.safe_load(value)})
    with pytest.raises(PuhuiError) as info:
        load_config_file(path, ModelsConfig)
    message = str(info.value)
    assert expected in message and "\n" not in message


@pytest.mark.parametrize("value, expected", [
    ("{num_threads: two}", "num_threads: expected an integer"),
    ("{reg_alpha: two}", "reg_alpha: expected a number (LightGBM's lambda_l1)"),
    ("{num_leaves: 7.5}", "num_leaves: expected an integer"),
    ("{learning_rate: fast}", "learning_rate: expected a number"),
    ("{feature_fraction: true}", "feature_fraction: expected a number"),
    ("{force_col_wise: 1}", "force_col_wise: expected true or false"),
    ("{objective: 1}", "objective: expected a string"),
    ("{eval_at: [1.5]}", "eval_at: expected an integer or a list of integers"),
    ("{label_column: [0, 1]}", "label_column: expected a string or an integer"),
    ("{weight: 1.5}", "weight: expected a string or an integer (LightGBM's weight_column)"),
    ("{objective: {of: rows, fraction: 0.1, min: 1, max: 2}}",
     "objective: a size-aware value is for numeric parameters; this one takes a string"),
    ("{num_leave: 7}", "num_leave: not a LightGBM parameter"),
    ("{interaction_constraints: [[0, 1], [2]]}", "interaction_constraints: not supported: "
     "LightGBM takes a list of lists, a lightgbm block only flat lists"),
    ("{interaction_constraints: [0, 1]}", "interaction_constraints: not supported"),
    ("{categorical_feature: [0, 1.5]}",
     "categorical_feature: expected a string, an integer or a list of them"),
])
def test_recommender_lightgbm_values_are_typed_as_lightgbm_declares_them(
    tmp_path: Path, value: str, expected: str
) -> None:
    """A wrong type was taken and failed inside LightGBM after the features were built; an
    unknown name (a typo) was ignored by LightGBM with a warning."""
    path = _models_with_ranker_params(tmp_path, yaml.safe_load(value))
    with pytest.raises(PuhuiError) as info:
        load_config_file(path, ModelsConfig)
    message = str(info.value)
    assert f"product_recommender.lightgbm: Value error, {expected}" in message
    assert "\n" not in message


def test_risk_lightgbm_params_are_typed_and_aliases_accepted(tmp_path: Path) -> None:
    models = yaml.safe_load((CONFIGS / "models.yaml").read_text(encoding="utf-8"))
    params = models["credit_risk"]["lightgbm"]["params"]
    del params["num_threads"]  # shipped; n_jobs next to it would be refused
    params.update(n_jobs=2, reg_alpha=1, min_data_in_leaf={"of": "rows", "fraction": 0.01,
                                                             "min": 5, "max": 50})
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(models), encoding="utf-8")
    loaded = load_config_file(path, ModelsConfig).credit_risk.lightgbm.params
    assert loaded["n_jobs"] == 2 and loaded["reg_alpha"] == 1

    params["n_jobs"] = "two"
    path.write_text(yaml.safe_dump(models), encoding="utf-8")
    with pytest.raises(PuhuiError) as info:
        load_config_file(path, ModelsConfig)
    assert str(info.value).endswith("credit_risk.lightgbm.params: Value error, n_jobs: "
                                    "expected an integer (LightGBM's num_threads)")


@pytest.mark.parametrize("value", [[1, 0], [[0, 1]]])
def test_risk_lightgbm_params_refuse_a_list_in_one_line(tmp_path: Path, value: list) -> None:
    """Risk params are scalars (pydantic's union error named its members: 'eval_at.bool:
    Input should be a valid boolean (+4 more)'); monotone constraints are lightgbm.monotone."""
    models = yaml.safe_load((CONFIGS / "models.yaml").read_text(encoding="utf-8"))
    models["credit_risk"]["lightgbm"]["params"]["eval_at"] = value
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(models), encoding="utf-8")
    with pytest.raises(PuhuiError) as info:
        load_config_file(path, ModelsConfig)
    assert str(info.value).endswith(
        "credit_risk.lightgbm.params: Value error, eval_at: a list is taken only in the "
        "recommender's lightgbm block (the risk model's monotone constraints: "
        "lightgbm.monotone)")


@pytest.mark.parametrize("block, extra, expected", [
    ("recommender", {"nthreads": 2},
     "product_recommender.lightgbm: Value error, num_threads and nthreads are the same "
     "LightGBM parameter (num_threads): give one"),
    ("risk", {"n_jobs": 2, "nthreads": 2},
     "credit_risk.lightgbm.params: Value error, num_threads and n_jobs and nthreads are the "
     "same LightGBM parameter (num_threads): give one"),
    ("risk", {"max_leaves": 7},
     "credit_risk.lightgbm.params: Value error, num_leaves and max_leaves are the same "
     "LightGBM parameter (num_leaves)"),
    ("risk_search", {"reg_lambda": 1.0},
     "credit_risk.lightgbm: Value error, params and search: reg_lambda and lambda_l2 are the "
     "same LightGBM parameter (lambda_l2)"),
])
def test_lightgbm_parameter_under_two_names_is_refused_naming_both(
    tmp_path: Path, block: str, extra: dict, expected: str
) -> None:
    """LightGBM keeps one of a parameter's names and ignores the others with a warning that
    the training's ``verbosity: -1`` hides; the shipped blocks give num_threads and
    num_leaves, and the risk search draws lambda_l2 over the params."""
    models = yaml.safe_load((CONFIGS / "models.yaml").read_text(encoding="utf-8"))
    if block == "recommender":
        models["product_recommender"]["lightgbm"].update(extra)
    else:
        params = models["credit_risk"]["lightgbm"]["params"]
        if block == "risk_search":
            del params["lambda_l2"]
        params.update(extra)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(models, sort_keys=False), encoding="utf-8")
    with pytest.raises(PuhuiError) as info:
        load_config_file(path, ModelsConfig)
    message = str(info.value)
    assert expected in message and "\n" not in message


@pytest.mark.parametrize("model", ["risk", "recommender"])
def test_training_flow_reads_models_config_first(
    model: str, puhui_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    prefect_harness: None,
) -> None:
    """A scheduled run (``puhui serve``, a deployment) starts the flow without the CLI's
    check: a bad lightgbm block failed it in the features step, after the warehouse
    migrations and the MLflow reconciliation had run. The first step refuses it now, in one
    line, and no other step runs."""
    from datetime import date

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.recommender import train_recommender_flow
    from flows.train import train_risk_flow

    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    models = yaml.safe_load((configs / "models.yaml").read_text(encoding="utf-8"))
    where = "credit_risk.lightgbm.params" if model == "risk" else "product_recommender.lightgbm"
    block = (models["credit_risk"]["lightgbm"]["params"] if model == "risk"
             else models["product_recommender"]["lightgbm"])
    block["num_threads"] = "two"
    (configs / "models.yaml").write_text(yaml.safe_dump(models, allow_unicode=True),
                                         encoding="utf-8")
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(configs))
    flow = train_risk_flow if model == "risk" else train_recommender_flow

    state = flow(as_of=date(2026, 9, 30), return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, PuhuiError) and "\n" not in str(error)
    assert str(error).endswith(f"{where}: Value error, num_threads: expected an integer")
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert [run.name.split("-")[:2] for run in runs] == [[model, "config"]]


def test_lightgbm_parameter_table_is_the_installed_librarys() -> None:
    """Names and aliases as the installed LightGBM reports them (an upgrade that adds or
    renames a parameter fails here); types agree with a trained booster's saved values and,
    for the lists and what it does not save, with a table written from LightGBM's docs."""
    import lightgbm
    import numpy as np
    from lightgbm.basic import _ConfigAliases

    from puhui.lightgbm_params import _ALIASES, TYPES, canonical

    library = _ConfigAliases._get_all_param_aliases()
    assert set(TYPES) == set(library)
    assert {a: n for n, names in library.items() for a in names if a != n} == _ALIASES
    x = np.arange(40, dtype=float).reshape(20, 2)
    booster = lightgbm.train({"verbosity": -1, "min_data_in_leaf": 1, "min_data_in_bin": 1},
                             lightgbm.Dataset(x, np.arange(20) % 2), num_boost_round=1)
    saved = lightgbm.Booster(model_str=booster.model_to_string())._get_loaded_param()
    kinds = {bool: {"bool"}, str: {"str"}, list: {"list[str]", "list[int]", "list[float]"},
             int: {"int", "float"}, float: {"float"}}
    wrong = {k: v for k, v in saved.items() if TYPES[canonical(k)] not in kinds[type(v)]}
    assert len(saved) > 90 and wrong == {}
    # The booster cannot tell an integer list from a number list (nor an int from a float);
    # these, and every parameter it does not save, are checked against LightGBM's docs.
    assert {k: v for k, v in TYPES.items() if v not in kinds[bool] | kinds[str]
            | kinds[int]} == LIGHTGBM_COLUMN_AND_LIST_TYPES
    written = LIGHTGBM_COLUMN_AND_LIST_TYPES | LIGHTGBM_UNSAVED_SCALAR_TYPES
    assert set(TYPES) - set(saved) <= set(written)
    assert {k: TYPES[k] for k in written} == written


# LightGBM 4.7's Parameters docs: "multi-int", "multi-double", "multi-enum"/"multi-string";
# "multi-int or string" (indices or ``name:`` columns) is ``columns``.
LIGHTGBM_COLUMN_AND_LIST_TYPES = {
    "eval_at": "list[int]", "max_bin_by_feature": "list[int]",
    "monotone_constraints": "list[int]", "label_gain": "list[float]",
    "auc_mu_weights": "list[float]", "feature_contri": "list[float]",
    "cegb_penalty_feature_coupled": "list[float]", "cegb_penalty_feature_lazy": "list[float]",
    "metric": "list[str]", "valid": "list[str]",
    "interaction_constraints": "list[list[int]]",
    "categorical_feature": "columns", "ignore_column": "columns",
    # "int or string": an index or a ``name:`` column
    "label_column": "column", "weight_column": "column", "group_column": "column",
}
# Scalars a trained booster does not save (file names, prediction and CLI settings).
LIGHTGBM_UNSAVED_SCALAR_TYPES = {
    **dict.fromkeys(("is_provide_training_metric", "pred_early_stop", "predict_contrib",
                     "predict_disable_shape_check", "predict_leaf_index",
                     "predict_raw_score", "save_binary"), "bool"),
    **dict.fromkeys(("metric_freq", "num_iteration_predict", "pred_early_stop_freq",
                     "snapshot_freq", "start_iteration_predict"), "int"),
    "pred_early_stop_margin": "float",
    **dict.fromkeys(("config", "convert_model", "convert_model_language", "data",
                     "forcedbins_filename", "forcedsplits_filename", "gpu_device_id_list",
                     "input_model", "machine_list_filename", "machines", "output_model",
                     "output_result", "parser_config_file", "task"), "str"),
}


def test_unknown_config_file_is_an_error_and_hash_tracks_content(tmp_path: Path) -> None:
    target = tmp_path / "configs"
    shutil.copytree(CONFIGS, target)
    before = config_hash(target, expectations_dir=default_expectations_dir())
    (target / "gates.yaml").write_text("min_auc: 0.7\n")
    assert config_hash(target, expectations_dir=default_expectations_dir()) != before
    with pytest.raises(PuhuiError, match="gates.yaml: no schema"):
        validate_config_dir(target)


def _all_command_paths(group: click.Command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            paths += _all_command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_every_command_has_help(capsys: pytest.CaptureFixture) -> None:
    paths = _all_command_paths(typer.main.get_command(app))
    assert len(paths) >= 25
    for path in paths:
        assert main([*path, "--help"]) == 0, path
    assert "backfill" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["models", "list", "credit_risk"], "no registered model 'credit_risk'"),
        (["models", "rollback", "credit_risk", "--reason", "x"], "no previous champion"),
        # A read: since round 16 a home with no warehouse is refused, not created; with a
        # warehouse (an ingest ran, no training) it names the missing registration.
        (["audit", "lineage", "credit_risk", "--version", "9"], "no warehouse at"),
        (["audit", "lineage", "credit_risk", "--version", "9", "+warehouse"], "no registration"),
    ],
)
def test_model_commands_before_any_training_are_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture, puhui_env: Path
) -> None:
    if argv[-1] == "+warehouse":
        from puhui.runtime import open_runtime

        argv = argv[:-1]
        open_runtime()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_input_is_one_clear_line(capsys: pytest.CaptureFixture, puhui_env: Path) -> None:
    assert main(["backfill", "--start", "2026-13-01", "--end", "2026-01-02"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("puhui: error: Invalid value for '--start': must be a date YYYY-MM-DD, "
                   "not '2026-13-01'")
    assert main(["run", "train", "fraud"]) == 2
    assert "'MODEL': must be 'risk' or 'recommender'" in capsys.readouterr().err
