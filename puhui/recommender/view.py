"""The recommender's adapter to the model owner's views (``models show|compare``)."""

from __future__ import annotations

from puhui.lifecycle.adapters import Headline, ModelView

VIEW = ModelView(
    headline=(Headline("ndcg_at_3_oot", "NDCG@3 (out of time)"),
              Headline("ndcg_at_3_oot_popularity", "NDCG@3 of popularity"),
              Headline("ndcg_at_3_oot_segment_popularity", "NDCG@3 of segment popularity"),
              Headline("ndcg_at_3_oot_responders", "NDCG@3 over responders"),
              Headline("hit_at_3_oot", "hit@3"), Headline("map_at_3_oot", "MAP@3"),
              Headline("rural_agri_top1_share", "rural top-1 agri share")),
    segment_metrics=("ndcg_at_3_oot",),
)
