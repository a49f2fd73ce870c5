"""LightGBM's parameters and their types, so a config is checked when it is loaded.

LightGBM reads every parameter as text and fails (or warns and ignores an unknown name) only
once a Dataset or Booster is built, after the features; ``num_threads: two`` in a config
should be refused when the config is read, in one line naming the key. The table is LightGBM
4.7's own: its parameter names and aliases (``LGBM_DumpParamAliases``) and their types
(``Config::ParameterTypes``, generated from its ``config.h``). tests/test_settings_config.py
checks names and aliases against the installed library, so an upgrade that adds or renames
one fails there first. Pure data: importing this does not import LightGBM.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_BY_TYPE: dict[str, tuple[str, ...]] = {
    "int": (
        "bagging_freq", "bagging_seed", "bin_construct_sample_cnt", "data_random_seed",
        "drop_seed", "early_stopping_round", "extra_seed", "feature_fraction_seed",
        "gpu_device_id", "gpu_platform_id", "lambdarank_truncation_level", "local_listen_port",
        "max_bin", "max_cat_threshold", "max_cat_to_onehot", "max_depth", "max_drop",
        "metric_freq", "min_data_in_bin", "min_data_in_leaf", "min_data_per_group",
        "multi_error_top_k", "num_class", "num_gpu", "num_grad_quant_bins",
        "num_iteration_predict", "num_iterations", "num_leaves", "num_machines", "num_threads",
        "objective_seed", "pred_early_stop_freq", "saved_feature_importance_type", "seed",
        "snapshot_freq", "start_iteration_predict", "time_out", "top_k", "verbosity",
    ),
    "float": (
        "alpha", "bagging_fraction", "cat_l2", "cat_smooth", "cegb_penalty_split",
        "cegb_tradeoff", "drop_rate", "early_stopping_min_delta", "fair_c", "feature_fraction",
        "feature_fraction_bynode", "histogram_pool_size", "lambda_l1", "lambda_l2",
        "lambdarank_position_bias_regularization", "learning_rate", "linear_lambda",
        "max_delta_step", "min_gain_to_split", "min_sum_hessian_in_leaf", "monotone_penalty",
        "neg_bagging_fraction", "other_rate", "path_smooth", "poisson_max_delta_step",
        "pos_bagging_fraction", "pred_early_stop_margin", "refit_decay_rate",
        "scale_pos_weight", "sigmoid", "skip_drop", "top_rate", "tweedie_variance_power",
    ),
    "bool": (
        "bagging_by_query", "boost_from_average", "deterministic", "enable_bundle",
        "extra_trees", "feature_pre_filter", "first_metric_only", "force_col_wise",
        "force_row_wise", "gpu_use_dp", "header", "is_enable_sparse",
        "is_provide_training_metric", "is_unbalance", "lambdarank_norm", "linear_tree",
        "pre_partition", "precise_float_parser", "pred_early_stop", "predict_contrib",
        "predict_disable_shape_check", "predict_leaf_index", "predict_raw_score",
        "quant_train_renew_leaf", "reg_sqrt", "save_binary", "stochastic_rounding", "two_round",
        "uniform_drop", "use_missing", "use_quantized_grad", "xgboost_dart_mode",
        "zero_as_missing",
    ),
    "str": (
        "boosting", "config", "convert_model", "convert_model_language", "data",
        "data_sample_strategy", "device_type", "forcedbins_filename", "forcedsplits_filename",
        "gpu_device_id_list", "group_column", "input_model", "label_column",
        "machine_list_filename", "machines", "monotone_constraints_method", "objective",
        "output_model", "output_result", "parser_config_file", "task", "tree_learner",
        "weight_column",
    ),
    "list[int]": (
        "categorical_feature", "eval_at", "ignore_column", "max_bin_by_feature",
        "monotone_constraints",
    ),
    "list[float]": (
        "auc_mu_weights", "cegb_penalty_feature_coupled", "cegb_penalty_feature_lazy",
        "feature_contri", "label_gain",
    ),
    "list[str]": (
        "metric", "valid",
    ),
    "list[list[int]]": (
        "interaction_constraints",
    ),
}
_ALIASES_OF: dict[str, tuple[str, ...]] = {
    "bagging_fraction": ("bagging", "sub_row", "subsample"),
    "bagging_freq": ("subsample_freq",),
    "bagging_seed": ("bagging_fraction_seed",),
    "bin_construct_sample_cnt": ("subsample_for_bin",),
    "boosting": ("boost", "boosting_type"),
    "categorical_feature": (
        "cat_column", "cat_feature", "categorical_column", "categorical_features",
    ),
    "config": ("config_file",),
    "convert_model": ("convert_model_file",),
    "data": ("train", "train_data", "data_filename", "train_data_file"),
    "data_random_seed": ("data_seed",),
    "device_type": ("device",),
    "drop_rate": ("rate_drop",),
    "early_stopping_round": ("early_stopping", "n_iter_no_change", "early_stopping_rounds"),
    "enable_bundle": ("bundle", "is_enable_bundle"),
    "eval_at": ("map_at", "ndcg_at", "map_eval_at", "ndcg_eval_at"),
    "extra_trees": ("extra_tree",),
    "feature_contri": ("fc", "fp", "feature_contrib", "feature_penalty"),
    "feature_fraction": ("sub_feature", "colsample_bytree"),
    "feature_fraction_bynode": ("colsample_bynode", "sub_feature_bynode"),
    "forcedsplits_filename": (
        "fs", "forced_splits", "forced_splits_file", "forced_splits_filename",
    ),
    "group_column": ("group", "query", "group_id", "query_id", "query_column"),
    "header": ("has_header",),
    "histogram_pool_size": ("hist_pool_size",),
    "ignore_column": ("blacklist", "ignore_feature"),
    "input_model": ("model_in", "model_input"),
    "is_enable_sparse": ("sparse", "is_sparse", "enable_sparse"),
    "is_provide_training_metric": ("train_metric", "training_metric", "is_training_metric"),
    "is_unbalance": ("unbalance", "unbalanced_sets"),
    "label_column": ("label",),
    "lambda_l1": ("reg_alpha", "l1_regularization"),
    "lambda_l2": ("lambda", "reg_lambda", "l2_regularization"),
    "learning_rate": ("eta", "shrinkage_rate"),
    "linear_tree": ("linear_trees",),
    "local_listen_port": ("port", "local_port"),
    "machine_list_filename": ("mlist", "machine_list", "machine_list_file"),
    "machines": ("nodes", "workers"),
    "max_bin": ("max_bins",),
    "max_delta_step": ("max_leaf_output", "max_tree_output"),
    "metric": ("metrics", "metric_types"),
    "metric_freq": ("output_freq",),
    "min_data_in_leaf": ("min_data", "min_samples_leaf", "min_child_samples", "min_data_per_leaf"),
    "min_gain_to_split": ("min_split_gain",),
    "min_sum_hessian_in_leaf": (
        "min_hessian", "min_sum_hessian", "min_child_weight", "min_sum_hessian_per_leaf",
    ),
    "monotone_constraints": ("mc", "monotonic_cst", "monotone_constraint"),
    "monotone_constraints_method": ("mc_method", "monotone_constraining_method"),
    "monotone_penalty": ("mc_penalty", "ms_penalty", "monotone_splits_penalty"),
    "neg_bagging_fraction": ("neg_bagging", "neg_sub_row", "neg_subsample"),
    "num_class": ("num_classes",),
    "num_iterations": (
        "n_iter", "nrounds", "max_iter", "num_tree", "num_round", "num_trees", "num_rounds",
        "n_estimators", "num_iteration", "num_boost_round",
    ),
    "num_leaves": ("max_leaf", "num_leaf", "max_leaves", "max_leaf_nodes"),
    "num_machines": ("num_machine",),
    "num_threads": ("n_jobs", "nthread", "nthreads", "num_thread"),
    "objective": ("app", "loss", "application", "objective_type"),
    "output_model": ("model_out", "model_output"),
    "output_result": (
        "name_pred", "pred_name", "predict_name", "predict_result", "prediction_name",
        "prediction_result",
    ),
    "pos_bagging_fraction": ("pos_bagging", "pos_sub_row", "pos_subsample"),
    "pre_partition": ("is_pre_partition",),
    "predict_contrib": ("contrib", "is_predict_contrib"),
    "predict_leaf_index": ("leaf_index", "is_predict_leaf_index"),
    "predict_raw_score": ("raw_score", "predict_rawscore", "is_predict_raw_score"),
    "save_binary": ("is_save_binary", "is_save_binary_file"),
    "seed": ("random_seed", "random_state"),
    "snapshot_freq": ("save_period",),
    "task": ("task_type",),
    "top_k": ("topk",),
    "tree_learner": ("tree", "tree_type", "tree_learner_type"),
    "two_round": ("two_round_loading", "use_two_round_loading"),
    "valid": (
        "test", "test_data", "valid_data", "test_data_file", "valid_data_file",
        "valid_filenames",
    ),
    "verbosity": ("verbose",),
    "weight_column": ("weight",),
}
_ALIASES: dict[str, str] = {a: name for name, names in _ALIASES_OF.items() for a in names}
TYPES: dict[str, str] = {name: kind for kind, names in _BY_TYPE.items() for name in names}
# Columns are given by index or by name (``name:a,b``), not only as config.h declares them
# (integers for the lists, a string for the single columns).
TYPES.update(categorical_feature="columns", ignore_column="columns", label_column="column",
             weight_column="column", group_column="column")

_EXPECTED = {
    "int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
    "list[int]": "an integer or a list of integers",
    "list[float]": "a number or a list of numbers",
    "list[str]": "a string or a list of strings",
    "columns": "a string, an integer or a list of them",
    "column": "a string or an integer",
}


def canonical(name: str) -> str | None:
    """LightGBM's own name of parameter ``name`` (an alias resolved), or None: not one."""
    if name in TYPES:
        return name
    return _ALIASES.get(name)


def alias_clash(names: Iterable[str]) -> str | None:
    """The first LightGBM parameter given under more than one of its names, as a problem
    naming those keys, or None: LightGBM keeps one and ignores the others with only a
    warning, which the training's ``verbosity: -1`` hides."""
    seen: dict[str, list[str]] = {}
    for name in names:
        real = canonical(name)
        if real is not None:
            seen.setdefault(real, []).append(name)
    for real, given in seen.items():
        if len(given) > 1:
            return (f"{' and '.join(given)} are the same LightGBM parameter ({real}): "
                    "give one (LightGBM would ignore the others)")
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_CHECKS = {
    "int": _is_int,
    "float": _is_number,
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "list[int]": lambda v: _is_int(v) or (isinstance(v, list) and all(map(_is_int, v))),
    "list[float]": lambda v: _is_number(v) or (isinstance(v, list) and all(map(_is_number, v))),
    "list[str]": lambda v: isinstance(v, str) or (
        isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "columns": lambda v: isinstance(v, str) or _is_int(v) or isinstance(v, list) and (
        all(map(_is_int, v)) or all(isinstance(x, str) for x in v)),
    "column": lambda v: isinstance(v, str) or _is_int(v),
}


def unsupported(name: str) -> str | None:
    """Why LightGBM parameter ``name`` cannot be configured whatever its value, or None: a
    lightgbm block takes scalars and flat lists, and ``interaction_constraints`` is a list
    of lists (refused by name, before its value's shape)."""
    real = canonical(name)
    if real is None or TYPES[real] != "list[list[int]]":
        return None
    return "not supported: LightGBM takes a list of lists, a lightgbm block only flat lists"


def type_problem(name: str, value: Any, size_aware: bool = False) -> str | None:
    """Why ``value`` cannot be LightGBM parameter ``name``, or None. ``size_aware``: the
    value is the size-aware form, which resolves to a number (a count for an integer)."""
    real = canonical(name)
    if real is None:
        return "not a LightGBM parameter (LightGBM would ignore it with a warning)"
    if (problem := unsupported(name)) is not None:
        return problem
    kind = TYPES[real]
    called = "" if real == name else f" (LightGBM's {real})"
    if size_aware:
        return None if kind in ("int", "float") else (
            f"a size-aware value is for numeric parameters; this one takes "
            f"{_EXPECTED[kind]}{called}")
    if _CHECKS[kind](value):
        return None
    return f"expected {_EXPECTED[kind]}{called}"
