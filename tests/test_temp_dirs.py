"""Nothing puhui makes in the temp folder outlives its use: a read-only command leaves no
directory behind (every ``models show`` left one), and a model copy a killed registration
left is swept by the next reconcile, never a live process's."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from puhui.cli import main
from puhui.config import ModelsConfig, load_config
from puhui.settings import load_settings
from tests.conftest import RiskTemplates, risk_env
from tests.test_models_cli import _version


@pytest.fixture
def sqlite_warehouse(risk_templates: RiskTemplates, puhui_env: Path,
                     monkeypatch: pytest.MonkeyPatch) -> str:
    return risk_env(risk_templates, "clean", "sqlite", puhui_env, monkeypatch)


def _scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temp folder for this process, to see what is left in it."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def test_models_show_and_compare_leave_no_temp_dir(
        sqlite_warehouse: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    name = load_config(load_settings().config_dir, ModelsConfig).credit_risk.registered_name
    v1 = _version("credit_risk", name, 0.70, 0.85)
    scratch = _scratch(tmp_path, monkeypatch)
    for argv in (["models", "show", name, "--version", v1, "--json"],
                 ["models", "compare", name, v1, v1, "--json"]):
        capsys.readouterr()
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out)  # read the artifacts it shows
    assert sorted(p.name for p in scratch.iterdir()) == []

