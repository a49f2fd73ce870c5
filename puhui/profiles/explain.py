"""Explaining one customer's profile (PIPL Art. 24: a person may ask why).

The key is the pseudonymous ``person_key``, or a raw national ID or phone number that is
hashed here with ``PUHUI_PSEUDONYM_KEY`` exactly as ingestion hashes it, then dropped: the raw
value is never stored, logged or written to the audit trail (the access is audited under the
pseudonymous key). The explanation is read from the stored profile, so it is the decision as
it was made, not a recomputation.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any

import pyarrow as pa
from sqlalchemy import Engine, MetaData, Table, select
from sqlalchemy.exc import NoSuchTableError

from puhui.errors import PuhuiError
from puhui.ingest.pseudonym_check import check_pseudonym_key
from puhui.ingest.pseudonymize import pseudonym_key_bytes, pseudonymize_ids
from puhui.warehouse.schema import user_profile_history, user_profiles

PERSON_KEY = re.compile(r"^[0-9a-f]{64}$")
ACCESS_ACTION = "profiles.explain"


def resolve_person_key(engine: Engine, key: str, pseudonym_key: str | None) -> str | None:
    """The person_key for ``key``: itself, or the keyed hash of a raw national ID / phone;
    None for a phone no customer has (told apart from nobody: see :func:`read_profile`)."""
    if PERSON_KEY.match(key):
        return key
    if not pseudonym_key or not pseudonym_key.strip():  # pseudonym_key_bytes' line is ingest's
        raise PuhuiError("PUHUI_PSEUDONYM_KEY is not set: KEY is not a person_key (64 hex), "
                         "and a raw national ID or phone is looked up by its keyed hash; set "
                         "the key the warehouse was built with, or give the person_key")
    secret = pseudonym_key_bytes(pseudonym_key)
    check_pseudonym_key(engine, secret)  # another key finds nobody, or someone else
    for kind in ("national_id", "phone"):
        keys, valid = pseudonymize_ids(pa.array([key]), kind, secret)
        if valid[0].as_py():
            hashed = keys[0].as_py()
            if kind == "national_id":
                return hashed
            try:
                customers = Table("raw_customers", MetaData(), autoload_with=engine)
            except NoSuchTableError:  # nothing ingested yet: nobody has that phone
                return None
            with engine.connect() as conn:
                return conn.execute(select(customers.c.person_key).where(
                    customers.c.phone_key == hashed).limit(1)).scalar()
    raise PuhuiError("KEY is neither a person_key (64 hex) nor a valid national ID or phone")


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def read_profile(
    engine: Engine, person_key: str | None, as_of: date | None = None
) -> dict[str, Any]:
    """The current profile, or the one of ``as_of`` from the history.

    Every miss (an unknown person_key, ID or phone, a customer without a profile) is the
    same error: whoever asks with a raw ID or phone must not learn whether it is a customer.
    """
    table = user_profiles if as_of is None else user_profile_history
    row = None
    if person_key is not None:
        query = select(table).where(table.c.person_key == person_key)
        if as_of is not None:
            query = query.where(table.c.as_of_date == as_of)
        with engine.connect() as conn:
            row = conn.execute(query).mappings().first()
    if row is None:
        when = f" as of {as_of}" if as_of else ""
        raise PuhuiError(f"no profile for that customer{when} (puhui run profiles)")
    profile = dict(row)
    for column in ("reasons", "recommended_products", "non_personalised_products",
                   "segment_tags", "model_versions"):
        profile[column] = _json(profile[column])
    return profile


def explanation(profile: dict[str, Any], risk_model: str) -> dict[str, Any]:
    """What the customer is told, as data: decision, PD, grade, reasons, offers, lineage."""
    reasons = profile["reasons"] or {}
    offers = profile["recommended_products"] or {}
    version = profile.get("risk_model_version")
    lineage = (f"puhui audit lineage {risk_model} --version {version}" if version else None)
    return {
        "person_key": profile["person_key"], "as_of": str(profile["as_of_date"]),
        "decision": reasons.get("decision"), "pd": profile.get("risk_score"),
        "grade": profile.get("risk_grade"), "policy_cutoff_pd": reasons.get("policy_cutoff_pd"),
        "reasons": [{"code": r["code"], "text": r["text"]} for r in reasons.get("top", [])],
        "risk_reason_missing": reasons.get("reason"),
        "offers": offers.get("products", []), "ranking": offers.get("ranking"),
        "non_personalised": profile.get("non_personalised_products") or [],
        "personalisation_opt_out": bool(profile.get("personalisation_opt_out")),
        "offers_reason": offers.get("reason"), "not_eligible": offers.get("not_eligible", {}),
        "segment_tags": profile.get("segment_tags") or [],
        "models": {m["name"]: m["version"] for m in (profile.get("model_versions") or {
            "risk": {"name": risk_model, "version": version}}).values()},
        "lineage_command": lineage,
    }


def explanation_lines(found: dict[str, Any]) -> list[str]:
    """The explanation in plain words, for a customer or the staff member reading it out."""
    lines = [f"customer {found['person_key'][:12]}... as of {found['as_of']}"]
    if found["pd"] is None:
        lines.append(f"credit decision: none ({found['risk_reason_missing']})")
    else:
        lines.append(f"credit decision: {found['decision']} (probability of default "
                     f"{found['pd']:.1%}, grade {found['grade']}, cut-off "
                     f"{found['policy_cutoff_pd']:.0%})")
        label = "main reasons" if found["decision"] == "decline" else "what raises the risk most"
        lines.append(f"{label}:")
        lines += [f"  {i}. {r['text']} ({r['code']})" for i, r in enumerate(found["reasons"], 1)]
    if found["offers"]:
        lines.append("products offered: " + ", ".join(
            f"{o['product']} ({o['score']:.3f})" for o in found["offers"]))
    else:
        lines.append(f"products offered: none ({found['offers_reason']})")
    if found["personalisation_opt_out"]:
        lines.append("personalisation: refused by the customer (non-personalised offers only)")
    elif found["non_personalised"]:
        lines.append("without personalisation: " + ", ".join(
            o["product"] for o in found["non_personalised"]))
    for product, why in sorted(found["not_eligible"].items()):
        lines.append(f"  not eligible for {product}: {why}")
    if found["segment_tags"]:
        lines.append("segments: " + ", ".join(found["segment_tags"]))
    lines.append("models: " + ", ".join(f"{n} v{v}" if v else f"{n}: none"
                                         for n, v in found["models"].items()))
    if found["lineage_command"]:
        lines.append(f"lineage: {found['lineage_command']}")
    return lines
