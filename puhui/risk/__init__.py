"""The credit-risk model: training set, LightGBM and its benchmark, evaluation, gates."""
