"""Size-aware LightGBM parameters: values that only make sense relative to the data.

``min_data_in_leaf: 150`` suits 24,000 training loans and leaves a co-operative with a
thousand a handful of leaves; ``{of: defaults, fraction: 0.08, min: 20, max: 150}`` gives
both something sensible. Every value resolves from the train window's rows and defaults
before training, and the resolved values are what gets logged. Shared by both models: the
risk model resolves its whole ``LightGBMSpec`` (search included, ``resolve_lightgbm``), the
recommender its parameters of rows (``resolve_value``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from puhui.config import LightGBMSpec, SizeAware
from puhui.lightgbm_params import TYPES, canonical


@dataclass(frozen=True)
class DataSize:
    rows: int
    defaults: int


def resolve_value(name: str, value: Any, size: DataSize) -> Any:
    """A plain value as is; a size-aware one as ``fraction`` x rows or defaults in its range."""
    if not isinstance(value, SizeAware):
        return value
    basis = size.rows if value.of == "rows" else size.defaults
    resolved = min(max(value.fraction * basis, value.min), value.max)
    # LightGBM's integers (num_leaves, the rounds: aliases of num_iterations and
    # early_stopping_round) as whole numbers.
    whole = TYPES.get(canonical(name) or "") == "int"
    return int(round(resolved)) if whole else float(resolved)


def describe(value: Any) -> str:
    """How a configured value reads in a log: ``0.08 x defaults in [20, 150]``."""
    if isinstance(value, SizeAware):
        return f"{value.fraction:g} x {value.of} in [{value.min:g}, {value.max:g}]"
    return str(value)


@dataclass
class ResolvedLightGBM:
    """The configured LightGBM settings resolved for one training window."""

    size: DataSize
    params: dict[str, Any]
    num_boost_round: int
    early_stopping_rounds: int
    candidates: list[dict[str, Any]] = field(default_factory=list)  # params of each trial
    size_aware: dict[str, str] = field(default_factory=dict)  # name -> configured rule

    def logged(self) -> dict[str, Any]:
        """The resolved values, and the rows/defaults they were resolved from."""
        return {**self.params, "num_boost_round": self.num_boost_round,
                "early_stopping_rounds": self.early_stopping_rounds,
                "size_rows": self.size.rows, "size_defaults": self.size.defaults}


def resolve_lightgbm(spec: LightGBMSpec, size: DataSize, seed: int) -> ResolvedLightGBM:
    """Resolve every size-aware value; the trials are the configured parameters first, then
    ``search.trials`` seeded draws (duplicates after resolving dropped: on a small window
    several configured values may resolve to the same number)."""
    params = {k: resolve_value(k, v, size) for k, v in spec.params.items()}
    rules = {k: describe(v) for k, v in spec.params.items() if isinstance(v, SizeAware)}
    for name in ("num_boost_round", "early_stopping_rounds"):
        if isinstance(getattr(spec, name), SizeAware):
            rules[name] = describe(getattr(spec, name))
    resolved = ResolvedLightGBM(
        size, params, resolve_value("num_boost_round", spec.num_boost_round, size),
        resolve_value("early_stopping_rounds", spec.early_stopping_rounds, size),
        [dict(params)], rules,
    )
    if spec.search is None:
        return resolved
    rng = random.Random(seed)
    space = {name: getattr(spec.search, name)
             for name in type(spec.search).model_fields if name != "trials"}
    # Draw ``trials`` distinct *configured* combinations, so the draws depend only on the
    # seed; then drop those that resolve to parameters already tried.
    drawn: set[str] = set()
    seen = {json.dumps(params, sort_keys=True)}
    for _ in range(spec.search.trials * 20):
        if len(drawn) == spec.search.trials:
            break
        picks = {name: rng.randrange(len(values)) for name, values in space.items()}
        key = json.dumps(picks, sort_keys=True)
        if key in drawn:
            continue
        drawn.add(key)
        draw = dict(params) | {name: resolve_value(name, space[name][i], size)
                               for name, i in picks.items()}
        resolved_key = json.dumps(draw, sort_keys=True)
        if resolved_key not in seen:
            seen.add(resolved_key)
            resolved.candidates.append(draw)
    return resolved
