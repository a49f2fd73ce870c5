"""The credit-risk model: training set, size-aware parameters, LightGBM and its benchmark,
calibration, evaluation, gates."""
