"""The product recommender on several seeds of the demo: NDCG@3 out of time against both
popularity baselines and the truth ceiling, overall and per segment, seed by seed.
Per gated segment it counts the segments where the model beats each baseline and both, and
names the losses beyond noise (the model's lead under -2 paired standard errors).

For each seed: the demo's landing zone (``--users`` customers, ``--days`` daily deliveries,
two years of history), generated and ingested once into its own ``PUHUI_HOME`` (phase
``prepare``, the risk seeds bench's code); then the recommender's ranking set as of the last
delivery date (cached under the seed's home: the point-in-time features are the slow part)
and ``fit_and_evaluate`` on it with the generator's rural agri truth (phase ``train``; no
Prefect and no registry: only the model and its evaluation are measured). Each seed runs in
a child process of its own (settings and caches are per process).

``--holdout validation`` judges a variant (a config change) without looking at the
out-of-time window: window 0 is dropped, the model trains on windows 2.. and the same table
is printed for window 1 (the truth ceilings, which are the out-of-time window's, are left
out); results go to reco_result_validation.json and bench/results/
recommender_seeds_validation.json. Choose on it, then run the default (``oot``) once for the
choice. The ranking set's cache is kept per features config (a digest in its name), so
switching variants (``PUHUI_CONFIG_DIR``) needs no ``--rebuild``.

``--average N`` judges a model average the config cannot express: N boosters of the
config on one Dataset, LightGBM ``seed`` the configured one, +1, ... +N-1, scored by the
mean of their raw scores; each member's NDCG@3 alone is kept (``members``): the spread a
single seed's figure hides.

Usage:
  python bench/bench_recommender_seeds.py [--seeds 42 1 2] [--users 5000] [--days 3]
                                          [--phase prepare|train|all|table] [--work DIR]
                                          [--rebuild] [--quick] [--holdout oot|validation]
                                          [--average N]
Prints a table and writes bench/results/recommender_seeds.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_risk_seeds import (  # noqa: E402
    _seed_env,
    run_child_phase,
    run_seeds,
    seeds_parser,
)
from bench.results_file import machine_facts, write_results  # noqa: E402
from puhui.config import FeaturesConfig, RecommenderSpec  # noqa: E402
from puhui.recommender.evaluation import (  # noqa: E402
    BASELINES,
    MODEL,
    POPULARITY,
    SEGMENT_POPULARITY,
    lead_standard_error,
)
from puhui.recommender.metrics import group_metrics, ranking_summary  # noqa: E402
from puhui.recommender.model import Ranker, ranker_params  # noqa: E402
from puhui.recommender.training_set import OOT, TRAIN, RankingSet  # noqa: E402
from puhui.risk.model import category_vocabulary, encode_features  # noqa: E402

DEFAULT_WORK = ROOT / ".puhui" / "bench-recommender-seeds"
MAX_GAP_TO_CEILING = 0.05
FORMER_FLOOR = 0.05  # the segment gate's floor over every customer, before it was by responders
NOISE_SE = 2.0  # a segment's loss beyond this many standard errors of its lead is not noise
RANKINGS = ("model", "popularity", "segment_popularity", "non_personal")
HOLDOUTS = ("oot", "validation")
VALIDATION_WINDOW = 1  # the newest window before the out-of-time one


def validation_holdout(data: RankingSet) -> RankingSet:
    """``data`` with the out-of-time window dropped and the validation window in its place
    (scored, not trained on): what a variant is chosen on."""
    frame = data.frame[data.frame["window"] >= VALIDATION_WINDOW].reset_index(drop=True)
    frame["split"] = np.where(frame["window"] == VALIDATION_WINDOW, OOT, TRAIN)
    return dataclasses.replace(data, frame=frame, oot_start=frame.loc[
        frame["split"] == OOT, "as_of_date"].min())


def overall_lead_se(oot: pd.DataFrame, k: int) -> dict[str, float | None]:
    """Per baseline, the paired standard error of the model's overall lead in NDCG@k over
    responders (the segments' is over every customer, as their gate)."""
    rel, group = oot["relevance"].to_numpy(dtype=float), oot["group"].to_numpy()
    per = {name: group_metrics(rel, oot[name].to_numpy(dtype=float), group, k)
           for name in (MODEL, *BASELINES)}
    responders = per[MODEL].has_response
    return {b: lead_standard_error(per[MODEL].ndcg[responders] - per[b].ndcg[responders])
            for b in BASELINES}


def features_digest(features: FeaturesConfig) -> str:
    """A short digest of the features config: the ranking set's cache is per config."""
    return hashlib.sha256(features.model_dump_json().encode()).hexdigest()[:12]


def child_train(seed: int, rebuild: bool, holdout: str, average: int = 1) -> None:
    """Ranking set (cached), model, baselines, evaluation and gates for one seed, scored on
    ``holdout``'s window; ``average`` > 1: the model is the mean raw score of that many
    boosters differing by seed (``--average``)."""

    import puhui.recommender.train as train_module
    from puhui.config import ModelsConfig, ProductsConfig, load_config
    from puhui.features.builder import feature_catalog
    from puhui.features.sources import load_source_frames
    from puhui.recommender.gates import way_from_chance
    from puhui.recommender.train import build_ranking_set, fit_and_evaluate
    from puhui.runtime import open_runtime

    home = Path(os.environ["PUHUI_HOME"])
    prepared = json.loads((home / "prepared.json").read_text())
    as_of = date.fromisoformat(prepared["end_date"])
    runtime = open_runtime()
    config_dir = runtime.settings.config_dir
    features = load_config(config_dir, FeaturesConfig)
    models = load_config(config_dir, ModelsConfig)
    spec = models.product_recommender
    products = load_config(config_dir, ProductsConfig)
    # The slow part, kept across runs; groups are rebuilt each run. A cache built for fewer
    # windows (train_windows raised) is completed, not joined to blanks: build_ranking_set
    # builds the requests it lacks, and the grown cache is written back.
    digest = features_digest(features)
    cache = home / f"customer_features-{digest}.pkl"
    started = time.perf_counter()
    frames = load_source_frames(runtime.engine, features, as_of)
    known = pickle.loads(cache.read_bytes()) if cache.exists() and not rebuild else None
    data = build_ranking_set(runtime.engine, frames, features, spec, models.credit_risk,
                             products, features=known)
    keys = ["person_key", "as_of_date"]
    built_rows = data.frame[[*keys, *(f.name for f in feature_catalog(features))]]
    cached = built_rows.drop_duplicates(keys) if known is None else pd.concat(
        [known, built_rows]).drop_duplicates(keys)
    added = len(cached) - (0 if known is None else len(known))
    if added:
        cache.write_bytes(pickle.dumps(cached))
    print(f"seed {seed}: features of {added:,} requests built and cached, "
          f"{len(cached) - added:,} reused")
    validation = holdout == "validation"
    if validation:
        data = validation_holdout(data)
    built = time.perf_counter() - started
    # Every customer within every credit limit: the bench measures the ranking, not the risk
    # model (no risk champion is trained here), and the truth ceiling ranks the whole shelf.
    data.frame["risk_grade"] = "A"
    truth = json.loads((home / "landing" / "truth.json").read_text())
    # The truth's ceilings and rural agri share are the out-of-time window's
    reco_truth = {} if validation else truth["recommender"]
    members: list[Ranker] = []
    if average > 1:  # fit_and_evaluate's trainer, in this child process only
        train_module.train_ranker = averaged_trainer(average, members)
    started = time.perf_counter()
    run = fit_and_evaluate(data, spec, (), reco_truth.get("rural_top1_agri_share"))
    fitted = time.perf_counter() - started
    m, seg = run.evaluation.metrics, run.evaluation.segments
    # The truth ranking's NDCG@3 within each segment (landing zones generated before it was
    # in truth.json have none): what a segment gate can ask of any ranking there.
    ceilings = reco_truth.get("ceiling_by_segment", {})
    key = seg["dimension"] + "=" + seg["segment"]
    seg["ceiling"] = key.map(lambda k: ceilings.get(k, {}).get("ndcg_every"))
    seg["ceiling_responders"] = key.map(lambda k: ceilings.get(k, {}).get("ndcg_responders"))
    gated = seg[seg["gated"]]
    name = gated["dimension"] + "=" + gated["segment"]
    beats = {b: gated["model"] > gated[b] for b in BASELINES}
    # A loss "beyond noise": the model's lead over the baseline below -NOISE_SE paired
    # standard errors (a segment's lead is a mean over its customers).
    noisy = {b: gated["model"] - gated[b] < -NOISE_SE * gated[f"{b}_lead_se"]
             for b in BASELINES}
    floor = spec.gates.segment_ndcg_over_chance.threshold
    way = pd.Series([way_from_chance(a, b) for a, b in zip(
        gated["model_responders"], gated["chance_responders"], strict=True)],
        index=gated.index, dtype=float)
    lowest = gated.loc[way.idxmin()] if len(gated) else None
    # The gated segment and baseline where the model's lead is smallest in standard errors
    leads = pd.DataFrame({b: (gated["model"] - gated[b]) / gated[f"{b}_lead_se"]
                          for b in BASELINES}, index=gated.index)
    closest = leads.stack().idxmin() if len(gated) else None
    overall_se = overall_lead_se(run.oot, spec.k)
    row = {
        "seed": seed, "users": prepared["users"], "holdout": holdout,
        "scored_as_of": str(data.oot_start), "features_digest": digest,
        "ceiling": reco_truth.get("ceiling", {}).get("ndcg_every"),
        "ceiling_responders": reco_truth.get("ceiling", {}).get("ndcg_responders"),
        **{name_: m["ndcg_at_3_oot" + ("" if name_ == "model" else f"_{name_}")]
           for name_ in RANKINGS},
        **{f"{name_}_responders": m["ndcg_at_3_oot_responders" + (
            "" if name_ == "model" else f"_{name_}")] for name_ in RANKINGS},
        **{f"{b}_lead_se_responders": overall_se[b] for b in BASELINES},
        "chance": m["ndcg_at_3_oot_chance"],
        "chance_responders": m["ndcg_at_3_oot_responders_chance"],
        "groups_oot": run.evaluation.counts["groups_oot"],
        "groups_oot_with_response": run.evaluation.counts["groups_oot_with_response"],
        "segments_gated": len(gated),
        **{f"segments_beating_{b}": int(beats[b].sum()) for b in BASELINES},
        "segments_beating_both": int((beats[POPULARITY] & beats[SEGMENT_POPULARITY]).sum()),
        "segments_not_beating": {b: name[~beats[b]].tolist() for b in BASELINES},
        "segments_losing_beyond_noise": {b: name[noisy[b]].tolist() for b in BASELINES},
        "closest_gated_segment": None if closest is None else {
            "segment": name[closest[0]], "baseline": closest[1],
            "lead": gated.loc[closest[0], "model"] - gated.loc[closest[0], closest[1]],
            "lead_in_se": leads.loc[closest]},
        "segment_floor_over_chance": floor,
        "lowest_gated_segment": None if lowest is None else {
            "segment": f"{lowest['dimension']}={lowest['segment']}",
            "model_responders": lowest["model_responders"],
            "chance_responders": lowest["chance_responders"],
            "way_from_chance": way[lowest.name]},
        # Segments of at least min_segment_size customers where even the truth ranking's
        # NDCG@3 over every customer is under the former floor of 0.05
        "segments_truth_under_every_customer_floor": [
            f"{r.dimension}={r.segment}" for r in seg.itertuples()
            if r.groups >= spec.min_segment_size and r.ceiling is not None
            and r.ceiling < FORMER_FLOOR],
        "rural_agri_top1_share": m.get("rural_agri_top1_share"),
        "rural_agri_top1_share_segment_popularity": m.get(
            "rural_agri_top1_share_segment_popularity"),
        "truth_rural_agri_top1_share": reco_truth.get("rural_top1_agri_share"),
        "eligibility_removed": run.evaluation.eligibility_removed,
        "eligibility_violations": run.eligibility_violations,
        "gates_passed": run.gates.passed, "gates_failed": run.gates.failed,
        "ranking_set_seconds": round(built, 1), "fit_seconds": round(fitted, 1),
        # the shared machine's load when the fit ended: the seconds above depend on it
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "average_of": average,
        # each member's NDCG@3 over every customer alone: the spread the average removes
        "members": [member_ndcg(run.oot, r, spec.k) for r in members],
        "segments": seg.to_dict(orient="records"),
    }
    (home / result_name(holdout)).write_text(json.dumps(row, indent=1, default=str))
    print(f"seed {seed} ({holdout}): model {row['model']:.4f} popularity "
          f"{row['popularity']:.4f} segment {row['segment_popularity']:.4f} ceiling "
          f"{_num(row['ceiling'])}; segments beating both "
          f"{row['segments_beating_both']}/{len(gated)} {row['segments_not_beating']}; beyond "
          f"noise {row['segments_losing_beyond_noise']}; gates "
          f"{'passed' if run.gates.passed else run.gates.failed}")


class AveragedRanker(Ranker):
    """Boosters of one config differing by seed, scored by their mean raw score: members
    share data and parameters, so their scores are on one scale, and a mean of per-row
    scores ranks each group with no group-wise step."""

    members: list[Ranker]

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        return np.mean([m.score(frame) for m in self.members], axis=0)


def averaged_trainer(size: int, members: list[Ranker]):  # noqa: ANN201 - train_ranker's shape
    """``train_ranker`` fitting ``size`` boosters on its one Dataset, the LightGBM ``seed``
    seed, seed+1, ...; ``members`` receives each as a Ranker of its own."""
    def train(frame: pd.DataFrame, features: list[str], categorical: list[str],
              spec: RecommenderSpec) -> Ranker:
        categories = category_vocabulary(frame, categorical)
        data = lgb.Dataset(encode_features(frame, features, categories),
                           label=frame["relevance"].to_numpy(),
                           group=frame.groupby("group", sort=True).size().to_numpy(),
                           categorical_feature=categorical)
        params = ranker_params(spec, len(frame))
        members.extend(Ranker(lgb.train({**params, "seed": spec.seed + i}, data,
                                        num_boost_round=spec.num_boost_round),
                              features, categories, params={**params, "seed": spec.seed + i})
                       for i in range(size))
        ranker = AveragedRanker(members[0].booster, features, categories, params=params)
        ranker.members = list(members)
        return ranker
    return train


def member_ndcg(oot: pd.DataFrame, member: Ranker, k: int) -> float | None:
    """One member's NDCG@k over every customer (no one opts out in the bench)."""
    return ranking_summary(oot["relevance"].to_numpy(dtype=float), member.score(oot),
                           oot["group"].to_numpy(), k).ndcg_every


def result_name(holdout: str) -> str:
    return "reco_result.json" if holdout == "oot" else f"reco_result_{holdout}.json"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _run_child(args: argparse.Namespace, phase: str, seed: int) -> int:
    command = [sys.executable, __file__, "--child", phase, "--seeds", str(seed),
               "--users", str(args.users), "--days", str(args.days), "--work", str(args.work),
               "--holdout", args.holdout, "--average", str(args.average)]
    if args.rebuild:
        command.append("--rebuild")
    return subprocess.run(command, env=_seed_env(args.work, seed), cwd=ROOT,
                          check=False).returncode


def met(r: dict) -> bool:
    """The issue's target: both baselines beaten overall and in every gated segment, within
    MAX_GAP_TO_CEILING of the truth ceiling (none on the validation window)."""
    return (r["model"] > max(r["popularity"], r["segment_popularity"])
            and r["segments_beating_both"] == r["segments_gated"]
            and (r["ceiling"] is None or r["ceiling"] - r["model"] <= MAX_GAP_TO_CEILING))


def losses_beyond_noise(r: dict) -> list[str]:
    """Gated segments where the model trails a baseline by more than NOISE_SE errors."""
    return sorted({s for names in r["segments_losing_beyond_noise"].values() for s in names})


def _table(rows: list[dict]) -> str:
    lines = ["| seed | users | customers scored (with response) | model | popularity | segment "
             "pop. | scenario pop. | chance | ceiling | model over responders (lead over "
             "popularity; segment pop., in paired SE) | gated segments beaten: popularity / "
             "segment pop. / both | smallest gated lead (in SE) | losses beyond 2 SE | gated "
             "segment nearest the floor: "
             "NDCG@3 over responders (chance's; way from chance) | rural top-1 agri: model / "
             "segment pop. / truth | gates | target met | load (1/5/15 min) |", "|" + "---|" * 18]
    for r in rows:
        low = r["lowest_gated_segment"] or {}
        close = r["closest_gated_segment"] or {}
        lead_se = " / ".join(
            f"{(r['model_responders'] - r[f'{b}_responders']) / r[f'{b}_lead_se_responders']:+.1f}"
            for b in ("popularity", "segment_popularity"))
        lines.append(
            f"| {r['seed']} | {r['users']:,} | {r['groups_oot']:,} "
            f"({r['groups_oot_with_response']:,}) | **{r['model']:.4f}** | "
            f"{r['popularity']:.4f} | {r['segment_popularity']:.4f} | "
            f"{r['non_personal']:.4f} | {r['chance']:.4f} | {_num(r['ceiling'])} | "
            f"{r['model_responders']:.4f} ({lead_se}) | "
            f"{r['segments_beating_popularity']} / {r['segments_beating_segment_popularity']} "
            f"/ {r['segments_beating_both']} of {r['segments_gated']} | "
            f"{close.get('segment', '-')} vs {close.get('baseline', '-')} "
            f"{close.get('lead', 0):+.4f} ({close.get('lead_in_se', 0):+.2f}) | "
            f"{', '.join(losses_beyond_noise(r)) or 'none'} | "
            f"{low.get('segment', '-')} {low.get('model_responders') or 0:.3f} "
            f"({low.get('chance_responders') or 0:.3f}; way "
            f"{low.get('way_from_chance') or 0:.2f}) | "
            f"{r['rural_agri_top1_share'] or 0:.2f} / "
            f"{r['rural_agri_top1_share_segment_popularity'] or 0:.2f} / "
            f"{_num(r['truth_rural_agri_top1_share'], 2)} | "
            f"{'passed' if r['gates_passed'] else 'FAILED: ' + '; '.join(r['gates_failed'])} | "
            f"{'yes' if met(r) else 'no'} | "
            f"{' / '.join(map(str, r.get('load_average') or ['-']))} |")
    return "\n".join(lines)


def main() -> int:
    parser = seeds_parser(__doc__, [42, 1, 2], 5_000, 3, DEFAULT_WORK,
                          "1,500 users, seed 42 only (a smoke run; results-quick.json)")
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild the cached ranking sets")
    parser.add_argument("--holdout", choices=HOLDOUTS, default="oot",
                        help="validation: train on windows 2.., score window 1 (choose on it)")
    parser.add_argument("--average", type=int, default=1, metavar="N",
                        help="the model: the mean raw score of N boosters, seeds seed..seed+N-1")
    args = parser.parse_args()
    if args.average < 1:
        parser.error("--average: at least 1 booster")
    if run_child_phase(args, lambda: child_train(args.seeds[0], args.rebuild, args.holdout,
                                                 args.average)):
        return 0
    if args.quick:
        args.users, args.seeds = 1_500, [42]
    args.work = args.work.with_name(f"{args.work.name}-{args.users}")
    args.work.mkdir(parents=True, exist_ok=True)
    rows, missing = run_seeds(args, _run_child, result_name(args.holdout))
    if args.phase == "prepare":
        return 0
    if rows:
        print(_table(rows))
    summary = {
        "users": args.users, "days": args.days, "seeds": args.seeds, "missing": missing,
        "holdout": args.holdout,
        "max_gap_to_ceiling": MAX_GAP_TO_CEILING, "noise_standard_errors": NOISE_SE,
        "every_seed_met_the_target": len(rows) == len(args.seeds) and all(map(met, rows)),
        "no_gated_segment_lost_beyond_noise": all(not losses_beyond_noise(r) for r in rows),
        "rows": [{k: v for k, v in r.items() if k != "segments"} for r in rows],
        "machine": machine_facts(),
    }
    write_results("recommender_seeds" + ("" if args.holdout == "oot" else f"_{args.holdout}"),
                  summary, args.quick)
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())
