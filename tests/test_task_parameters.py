"""Tasks receive the settings and configs their flow read once; what they receive is safe to
pass: it pickles (Dask workers), its repr holds no secret, and no cache key is made of it."""

from __future__ import annotations

import ast
import importlib
import inspect
import pickle
import shutil
from pathlib import Path

import pytest
from prefect import Task
from prefect.cache_policies import NO_CACHE

from puhui.config import config_hash
from puhui.runtime import flow_settings, open_runtime
from puhui.settings import load_settings, repo_root

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tasks"
# The shared lifecycle code the register steps call: it is given the flow's settings too.
CALLED_BY_TASKS = [ROOT / "puhui" / d / "publish.py" for d in ("lifecycle", "risk", "recommender")]
# The flows' first steps: they read the configs the other steps are then given.
CONFIG_STEPS = {"check_risk_config", "check_recommender_config"}


def _is_task(node: ast.FunctionDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Name) and target.id == "task":
            return True
    return False


def _called(node: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name)]


def test_no_task_module_reads_settings_or_configs_itself() -> None:
    """Static (``ast``): a task that reopened the runtime from the environment
    (``open_runtime()``, ``load_settings()``) or re-read YAML (``load_config`` outside the
    config steps) in every step is what this refactor removed."""
    found = []
    for path in sorted(TASKS.glob("*.py")) + CALLED_BY_TASKS:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in _called(tree):
            name = call.func.id  # type: ignore[attr-defined]
            if name == "load_settings" or (name == "open_runtime" and not call.args):
                found.append(f"{path.name}:{call.lineno} {name}()")
        for func in ast.walk(tree):
            if (isinstance(func, ast.FunctionDef) and _is_task(func)
                    and func.name not in CONFIG_STEPS):
                found += [f"{path.name}:{c.lineno} load_config in task {func.name}"
                          for c in _called(func) if c.func.id == "load_config"]  # type: ignore[attr-defined]
    assert found == []


def test_tasks_given_settings_make_no_cache_key_of_them() -> None:
    """A cache policy over the inputs would hash the keys into a key stored by Prefect."""
    given = []
    for path in sorted(TASKS.glob("*.py")):
        module = importlib.import_module(f"tasks.{path.stem}")
        for name, step in vars(module).items():
            if isinstance(step, Task) and "settings" in inspect.signature(step.fn).parameters:
                given.append(name)
                assert step.cache_policy is NO_CACHE, name
    assert len(given) >= 25  # every step that touches the warehouse or the registry


def test_settings_show_no_secret_and_pickle() -> None:
    pseudonym, audit, password = "p-" + "k1" * 20, "a-" + "z9" * 20, "pw-s3cr3t-x"
    settings = load_settings({
        "PUHUI_PSEUDONYM_KEY": pseudonym, "PUHUI_AUDIT_KEY": audit, "PUHUI_HOME": "/nowhere",
        "PUHUI_WAREHOUSE_URL": f"postgresql+psycopg://app:{password}@db:5432/puhui"})
    for shown in (repr(settings), str(settings), f"{settings}"):
        assert pseudonym not in shown and audit not in shown and password not in shown
        assert "db:5432/puhui" in shown  # the rest is still there to read
    assert pickle.loads(pickle.dumps(settings)) == settings  # to a Dask worker


def test_a_flow_run_records_the_config_hash_it_started_with(
    puhui_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: each task's ``open_runtime(settings)`` hashed configs/ again, so a config
    edited during a long training gave the version a hash other than its spec's."""
    configs = tmp_path / "configs"
    shutil.copytree(repo_root() / "configs", configs)
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(configs))
    settings = flow_settings()
    started = config_hash(configs)
    with (configs / "models.yaml").open("a", encoding="utf-8") as edit:
        edit.write("\n# edited while the flow ran\n")
    assert open_runtime(settings).audit.config_hash == started != config_hash(configs)
