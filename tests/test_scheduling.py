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


# Prefect's docs share work pools and schedules in prefect.yaml through `definitions:` with
# anchors and aliases; before, every alias was refused there as in configs/. Now they load, and
# only an expansion past 100,000 nodes (nested aliases: a YAML bomb) is refused, in one line.
_SHARED = """\
definitions:
  work_pools:
    process: &process {name: puhui-process}
  schedules:
    morning: &morning {cron: "30 6 * * *", timezone: Asia/Shanghai, active: true}
deployments:
  - name: daily
    entrypoint: flows/daily.py:daily_pipeline
    work_pool: *process
    schedules:
      - <<: *morning
        slug: daily-0630
  - name: profiles
    entrypoint: flows/profiles.py:profiles_flow
    work_pool: *process
    schedules: [*morning]
"""


def test_prefect_yaml_may_share_definitions_through_aliases(tmp_path: Path) -> None:
    path = tmp_path / "prefect.yaml"
    path.write_text(_SHARED, encoding="utf-8")
    daily, profiles = load_deployment_specs(path)
    assert daily.schedules[0].slug == "daily-0630" and daily.schedules[0].cron == "30 6 * * *"
    assert profiles.schedules[0].slug is None and profiles.schedules[0].cron == "30 6 * * *"
    assert daily.model_extra["work_pool"] == profiles.model_extra["work_pool"] == {
        "name": "puhui-process"}


@pytest.mark.parametrize("text, said", [
    ("".join(f"x{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10 if i else ["1"] * 10) + "]\n"
             for i in range(9)),
     r"prefect\.yaml: line 5: alias \*l3 expands the document past 100,000 nodes$"),
    ("a: &a [1, *a]\n", r"prefect\.yaml: line 1: alias \*a refers to its own anchor"),
])
def test_prefect_yaml_aliases_that_expand_too_far_are_refused(tmp_path: Path, text: str,
                                                              said: str) -> None:
    path = tmp_path / "prefect.yaml"
    path.write_text(text + _SHARED, encoding="utf-8")
    with pytest.raises(PuhuiError, match=said):
        load_deployment_specs(path)
