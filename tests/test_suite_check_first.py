"""A suite broken by an edit stops its feed before any file is decided or reported: it was
checked at the first new file, after the files decided earlier had been reported one by one
(``on_file``: the task's log and progress), and their outcomes were then lost with the error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from puhui.config import PartnersConfig, load_config
from puhui.errors import PuhuiError
from puhui.ingest.batches import FileIngestor
from puhui.ingest.feeds import ingest_feed
from puhui.ingest.pseudonymize import pseudonym_key_bytes
from puhui.runtime import open_runtime
from puhui.settings import repo_root
from puhui.validation import BatchValidator
from tests.test_attack_round8 import DAY, _payments


@pytest.mark.parametrize("warehouse_url", ["sqlite"], indirect=True)
def test_a_broken_suite_stops_the_feed_before_files_decided_earlier_are_reported(
    puhui_env: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUHUI_WAREHOUSE_URL", warehouse_url)
    suites = tmp_path / "expectations"
    shutil.copytree(repo_root() / "expectations", suites)
    monkeypatch.setenv("PUHUI_EXPECTATIONS_DIR", str(suites))
    monkeypatch.setenv("PUHUI_LANDING", str(tmp_path / "landing"))
    folder = tmp_path / "landing" / "mobile_payments" / DAY.isoformat()
    folder.mkdir(parents=True)
    (folder / "mobile_payments_1.csv").write_bytes(_payments(1))
    runtime = open_runtime()
    feed = load_config(runtime.settings.config_dir, PartnersConfig).get("mobile_payments")

    def ingest(reported: list[str]) -> list[str]:
        ingestor = FileIngestor(
            runtime, feed, BatchValidator(expectations_dir=runtime.settings.expectations_dir),
            pseudonym_key_bytes(runtime.settings.pseudonym_key))
        return [f.status for f in ingest_feed(runtime, feed, ingestor, DAY,
                                              on_file=lambda f: reported.append(f.status)).files]

    assert ingest([]) == ["accepted"]
    path = suites / "mobile_payments.json"
    good = path.read_text(encoding="utf-8")
    suite = json.loads(good)
    suite["expectations"][0]["kwargs"]["column"] = "amountt"
    path.write_text(json.dumps(suite), encoding="utf-8")
    (folder / "mobile_payments_2.csv").write_bytes(_payments(2))

    reported: list[str] = []
    with pytest.raises(PuhuiError, match="no file of mobile_payments was read"):
        ingest(reported)
    assert reported == [], "a file was reported, then its outcome lost with the error"
    path.write_text(good, encoding="utf-8")
    assert ingest(reported) == ["accepted", "accepted"]  # the first decided earlier
