"""prefect.yaml is the one source of schedules, and `puhui serve` can build every deployment."""

from __future__ import annotations

from pathlib import Path

import pytest

from puhui.errors import PuhuiError
from puhui.scheduling import build_runner_deployments, load_deployment_specs


def test_every_declared_deployment_builds_with_its_schedule() -> None:
    specs = load_deployment_specs()
    assert "daily" in {s.name for s in specs}
    deployments = build_runner_deployments(specs)
    by_name = {d.name: d for d in deployments}
    daily = by_name["daily"]
    assert daily.entrypoint.endswith("daily.py:daily_pipeline")
    crons = [s.schedule.cron for s in daily.schedules]
    assert crons == ["30 6 * * *"]
    assert daily.schedules[0].schedule.timezone == "Asia/Shanghai"


def test_a_bad_deployment_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "prefect.yaml"
    bad.write_text(
        "deployments:\n  - name: x\n    entrypoint: flows/x.py:f\n"
        "    schedules:\n      - crn: '* * * * *'\n"
    )
    with pytest.raises(PuhuiError, match=r"deployments\.0\.schedules\.0\.cron"):
        load_deployment_specs(bad)


def test_every_deployment_goes_to_the_process_work_pool() -> None:
    """`prefect deploy --all` needs a work pool per deployment ("A work pool is required")."""
    from puhui.scheduling import work_pool_names

    specs = load_deployment_specs()
    assert all((s.model_extra or {}).get("work_pool") == {"name": "puhui-process"}
               for s in specs), [s.name for s in specs]
    assert work_pool_names(specs) == ["puhui-process"]
