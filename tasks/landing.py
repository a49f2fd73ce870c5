"""Prefect tasks that look at the landing zone."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date

from prefect import get_run_logger, task

from puhui.config import PartnersConfig, load_config
from puhui.landing import survey_landing_zone
from puhui.settings import load_settings


@task(name="survey-landing-zone", retries=2, retry_delay_seconds=5)
def survey_landing(as_of: date) -> list[dict]:
    """Per feed: files and bytes landed for ``as_of``, and whether an expected file is late."""
    settings = load_settings()
    partners = load_config(settings.config_dir, PartnersConfig)
    arrivals = survey_landing_zone(partners, settings.landing, as_of)
    logger = get_run_logger()
    for arrival in arrivals:
        state = "LATE" if arrival.late else f"{arrival.files} file(s), {arrival.bytes:,} bytes"
        logger.info("%s %s: %s", as_of, arrival.partner, state)
    return [asdict(a) | {"late": a.late} for a in arrivals]
