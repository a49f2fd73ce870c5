"""Tasks receive the settings and configs their flow read once; what they receive is safe to
pass: it pickles (Dask workers), its repr holds no secret, and no cache key is made of it."""

from __future__ import annotations

import ast
import importlib
import pickle
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import get_args, get_type_hints

import pytest
from prefect import Task
from prefect.cache_policies import NO_CACHE

from puhui.config import config_hash
from puhui.runtime import flow_settings, open_runtime
from puhui.settings import Settings, load_settings, repo_root

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tasks"
# The shared lifecycle code the register steps call: it is given the flow's settings too.
CALLED_BY_TASKS = [ROOT / "puhui" / d / "publish.py" for d in ("lifecycle", "risk", "recommender")]
# What reads configs/ once per flow run: the flows' first steps, and the readers the flow
# bodies call; every other step is given the configs.
CONFIG_READERS = {"check_risk_config", "check_recommender_config", "ProfileConfigs.read"}
READS = {"load_settings", "open_runtime", "load_config"}


def _reads(source: str, name: str) -> list[str]:
    """Where module ``source`` reads the environment or configs/ itself, in any function
    (a task, or a helper a task calls) or at module level: ``load_settings``, ``load_config``
    outside the config readers, and ``open_runtime`` given anything but one parameter of its
    function. A call is found by the name it was imported as (``import ... as``) or by the
    attribute called (``rt.open_runtime()``)."""
    tree = ast.parse(source)
    alias = {a.asname or a.name: a.name for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) for a in node.names if a.name in READS}
    found: list[str] = []

    def callee(call: ast.Call) -> str | None:
        if isinstance(call.func, ast.Attribute):
            return call.func.attr if call.func.attr in READS else None
        if isinstance(call.func, ast.Name):
            return alias.get(call.func.id, call.func.id if call.func.id in READS else None)
        return None

    def visit(node: ast.AST, scope: str, params: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            inner, inner_params = scope, params
            if isinstance(child, ast.ClassDef):
                inner = child.name
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                args = child.args
                inner = f"{scope}.{child.name}" if scope and not isinstance(
                    child, ast.Lambda) else getattr(child, "name", scope)
                inner_params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
            elif isinstance(child, ast.Call) and (called := callee(child)):
                given = child.args + [k.value for k in child.keywords]
                if called == "open_runtime" and len(given) == 1 and isinstance(
                        given[0], ast.Name) and given[0].id in params:
                    pass
                elif called != "load_config" or scope not in CONFIG_READERS:
                    found.append(f"{name}:{child.lineno} {called} in {scope or 'module'}")
            visit(child, inner, inner_params)

    visit(tree, "", set())
    return found


def test_no_task_module_reads_settings_or_configs_itself() -> None:
    """Static (``ast``): a task that reopened the runtime from the environment
    (``open_runtime()``, ``load_settings()``) or re-read YAML (``load_config`` outside the
    config steps) in every step is what this refactor removed."""
    found = []
    for path in sorted(TASKS.glob("*.py")) + CALLED_BY_TASKS:
        found += _reads(path.read_text(encoding="utf-8"), path.name)
    assert found == []


def test_the_static_check_sees_through_aliases_attributes_and_helpers() -> None:
    """Each of these went past the first version of the check (names matched literally,
    task bodies only)."""
    evasions = """
import puhui.runtime as rt
from puhui import settings as S
from puhui.config import load_config as lc
from puhui.runtime import open_runtime as o

def helper(config_dir):
    return lc(config_dir, object)

@task
def step(settings: Settings, other):
    rt.open_runtime()
    o()
    S.load_settings()
    open_runtime(None)
    open_runtime(other.settings)
    open_runtime(settings)
    return helper(settings.config_dir)
"""
    found = [line.split(" ", 1)[1] for line in _reads(evasions, "x.py")]
    assert found == ["load_config in helper", "open_runtime in step", "open_runtime in step",
                     "load_settings in step", "open_runtime in step", "open_runtime in step"]


def test_tasks_mapped_over_partitions_are_given_no_keys() -> None:
    """A ``.map`` sends its arguments to the Dask scheduler and every worker (pickled, per
    partition); the partition tasks need the warehouse URL, not the keys."""
    full = []
    for path in sorted((ROOT / "flows").glob("*.py")):
        for call in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
                    call.func.attr == "map":
                given = [a.args[0] if isinstance(a, ast.Call) and getattr(
                    a.func, "id", None) == "unmapped" else a for a in call.args]
                full += [f"{path.name}:{call.lineno}" for a in given
                         if isinstance(a, ast.Name) and a.id == "settings"]
    assert full == []
    settings = load_settings({"PUHUI_PSEUDONYM_KEY": "p-" + "k1" * 20,
                              "PUHUI_AUDIT_KEY": "a-" + "z9" * 20, "PUHUI_HOME": "/nowhere"})
    keyless = settings.without_keys()
    assert keyless.pseudonym_key is None and keyless.audit_key is None
    assert keyless.warehouse_url == settings.warehouse_url


def _takes_settings(annotation: object) -> bool:
    return annotation is Settings or any(_takes_settings(a) for a in get_args(annotation))


def test_tasks_given_settings_make_no_cache_key_of_them() -> None:
    """A cache policy over the inputs would hash the keys into a key stored by Prefect."""
    given = []
    for path in sorted(TASKS.glob("*.py")):
        module = importlib.import_module(f"tasks.{path.stem}")
        for name, step in vars(module).items():
            if isinstance(step, Task) and any(
                    _takes_settings(a) for a in get_type_hints(step.fn).values()):
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
    for query in ("?sslpassword=k9sec&sslmode=require", "?password=k9sec"):
        shown = repr(load_settings({"PUHUI_HOME": "/nowhere", "PUHUI_WAREHOUSE_URL":
                                    f"postgresql+psycopg://app@db:5432/puhui{query}"}))
        # each field masked on its own: a password ending one URL hid the fields after it
        assert "k9sec" not in shown and "password=***" in shown, shown
        assert "mlflow_tracking_uri=" in shown and "config_dir=" in shown and shown.endswith(")")


def test_a_flow_run_records_the_config_hash_it_started_with(
    puhui_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: each task's ``open_runtime(settings)`` hashed configs/ again, so a config
    edited during a long training gave the version a hash other than its spec's."""
    configs = tmp_path / "configs"
    shutil.copytree(repo_root() / "configs", configs)
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(configs))
    settings = flow_settings()
    started = config_hash(configs, expectations_dir=settings.expectations_dir)
    with (configs / "models.yaml").open("a", encoding="utf-8") as edit:
        edit.write("\n# edited while the flow ran\n")
    assert open_runtime(settings).audit.config_hash == started != config_hash(
        configs, expectations_dir=settings.expectations_dir)


def test_a_flow_run_reads_and_logs_the_configs_it_hashed(
    puhui_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the hash was taken at flow start but the register step logged configs/ as it
    was an hour later, so the run held a models.yaml its hash did not cover."""
    import mlflow

    from puhui.lifecycle.publish import log_configuration

    configs = tmp_path / "configs"
    shutil.copytree(repo_root() / "configs", configs)
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(configs))
    suites = tmp_path / "expectations"
    shutil.copytree(repo_root() / "expectations", suites)
    monkeypatch.setenv("PUHUI_EXPECTATIONS_DIR", str(suites))
    suite = sorted(suites.glob("*.json"))[0]
    hashed = {"models.yaml": (configs / "models.yaml").read_bytes(),
              suite.name: suite.read_bytes()}
    settings = flow_settings()
    with (configs / "models.yaml").open("a", encoding="utf-8") as edit:
        edit.write("\n# edited while the flow ran\n")
    suite.write_text(suite.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    assert config_hash(settings.config_dir,
                       expectations_dir=settings.expectations_dir) == settings.config_hash
    assert flow_settings().config_dir != settings.config_dir  # a new hash, a new copy
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    # Its own experiment: the active one may be an earlier test's, in another store.
    experiment = mlflow.set_experiment("config-snapshot")
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        log_configuration(settings.config_dir, expectations_dir=settings.expectations_dir)
    for artifact in ("configs/models.yaml", f"expectations/{suite.name}"):
        logged = Path(mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path=artifact, dst_path=str(tmp_path / "run")))
        assert logged.read_bytes() == hashed[logged.name], artifact


def test_every_flow_scrubs_its_logs_before_anything_can_fail() -> None:
    """A traceback from a flow body (its settings, its config step) reaches Prefect's log
    table: the scrubbing filter must be on the handlers first, in every flow, not only
    ingest (its tasks may run in other processes, so tasks/ingest.py installs it too)."""
    first = {}
    for path in sorted((ROOT / "flows").glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(d, ast.Call) and getattr(d.func, "id", None) == "flow"
                    for d in node.decorator_list):
                body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(
                    s.value, ast.Constant))]  # the docstring
                call = body[0].value if isinstance(body[0], ast.Expr) else None
                first[node.name] = getattr(getattr(call, "func", None), "id", None)
    assert len(first) >= 7 and set(first.values()) == {"install_log_scrubbing"}, first


def test_every_mapped_task_scrubs_its_logs_first() -> None:
    """A mapped task runs in a Dask worker process under PUHUI_TASK_RUNNER=dask, which has
    not the flow's filter: a partition task's traceback went to Prefect's log table
    unmasked. Each task a flow maps installs it first, as ingest-feed does."""
    mapped = {node.func.value.id for path in (ROOT / "flows").glob("*.py")
              for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "map" and isinstance(node.func.value, ast.Name)}
    first = {}
    for path in sorted(TASKS.glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name in mapped:
                body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(
                    s.value, ast.Constant))]
                call = body[0].value if isinstance(body[0], ast.Expr) else None
                first[node.name] = getattr(getattr(call, "func", None), "id", None)
    assert set(first) == mapped and len(mapped) >= 2, (mapped, first)
    assert set(first.values()) == {"install_log_scrubbing"}, first


def _fenced_tasks() -> set[str]:
    """The tasks that take a training's ``fence``: each one writes (registers, gates, moves
    aliases), and its writes check the fence."""
    return {node.name for path in TASKS.glob("*.py")
            for node in ast.parse(path.read_text(encoding="utf-8")).body
            if isinstance(node, ast.FunctionDef) and node.decorator_list
            and any(a.arg == "fence" for a in node.args.args + node.args.kwonlyargs)}


def _unchecked_fenced_writes(source: str, fenced: set[str]) -> tuple[list[str], list[str]]:
    """(fenced task calls whose statement is not right after a ``held()`` /
    ``held.still_held()`` / ``still_held()`` in the same block of a
    ``with one_training_at_a_time(...) as held``, the fenced calls seen)."""
    tree = ast.parse(source)
    inside: dict[int, str] = {}  # id(statement) -> the lock's name, for a lock block's statements
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if isinstance(call, ast.Call) and getattr(
                        call.func, "id", None) == "one_training_at_a_time" and isinstance(
                        item.optional_vars, ast.Name):
                    for inner in ast.walk(node):
                        for block in ("body", "orelse", "finalbody"):
                            statements = getattr(inner, block, None)
                            for statement in statements if isinstance(statements, list) else []:
                                inside[id(statement)] = item.optional_vars.id

    def is_check(statement: ast.stmt, lock: str) -> bool:
        call = statement.value if isinstance(statement, ast.Expr) else None
        func = getattr(call, "func", None)
        return isinstance(call, ast.Call) and (
            (isinstance(func, ast.Name) and func.id in {lock, "still_held"})
            or (isinstance(func, ast.Attribute) and func.attr == "still_held"
                and getattr(func.value, "id", None) == lock))

    def own_calls(statement: ast.stmt) -> Iterator[tuple[ast.Call, str]]:
        """The fenced calls of ``statement`` itself (a compound one's header), not of the
        blocks inside it: those are checked against their own block. ``step(...)``,
        ``step.submit(...)``, ``step.fn(...)`` alike."""
        for child in ast.iter_child_nodes(statement):
            if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                continue
            for call in ast.walk(child):
                func = getattr(call, "func", None)
                name = func.id if isinstance(func, ast.Name) else getattr(
                    getattr(func, "value", None), "id", None)
                if isinstance(call, ast.Call) and name in fenced:
                    yield call, name

    unchecked, seen = [], []
    for node in ast.walk(tree):
        for block in ("body", "orelse", "finalbody", "handlers"):
            statements = getattr(node, block, None)
            for index, statement in enumerate(statements if isinstance(statements, list)
                                              else []):
                for call, name in own_calls(statement):
                    seen.append(name)
                    lock = inside.get(id(statement))
                    if lock is None or index == 0 or not is_check(statements[index - 1], lock):
                        unchecked.append((call.lineno, f"line {call.lineno}: {name}"))
    return [line for _, line in sorted(unchecked)], seen


def test_every_fenced_write_of_a_training_flow_checks_the_lock_right_before() -> None:
    """A training whose lock was lost (taken over while it trained) must write nothing: the
    flows call ``held()`` right before each fenced step (register, gate, and the skip path's
    ``restore_lost_challenger``, which had none: it moved aliases without the lock), so the
    loss stops the flow before the step starts. The fence inside the step catches a loss
    during it; this catches a step that would start without the check."""
    fenced = _fenced_tasks()
    assert {"register_risk_model", "apply_gates", "restore_lost_challenger",
            "register_recommender", "gate_recommender"} <= fenced, fenced
    seen = []
    for path in sorted((ROOT / "flows").glob("*.py")):
        unchecked, calls = _unchecked_fenced_writes(path.read_text(encoding="utf-8"), fenced)
        assert not unchecked, f"{path.name}: {unchecked}"
        seen += calls
    expected = Counter(["register_risk_model", "apply_gates", "register_recommender",
                        "gate_recommender"] + ["restore_lost_challenger"] * 2)
    assert expected <= Counter(seen), seen  # the check found the flows' steps


def test_the_fenced_write_check_sees_a_missing_or_stale_held_call() -> None:
    source = """
with one_training_at_a_time(settings, name) as held:
    if same:
        restore_lost_challenger(settings, same, model, held.fence)
    train()
    held()
    published = register_risk_model(settings, held.fence)
    held.still_held()
    apply_gates(settings, published, held.fence)
    held()
    trained = train()
    apply_gates(settings, trained, held.fence)
    held()
    if apply_gates.submit(settings, trained, held.fence):
        pass
apply_gates(settings, trained, None)
"""
    unchecked, _ = _unchecked_fenced_writes(source, {"restore_lost_challenger",
                                                     "register_risk_model", "apply_gates"})
    assert unchecked == ["line 4: restore_lost_challenger", "line 12: apply_gates",
                         "line 16: apply_gates"]


def test_the_suites_folder_is_a_required_keyword_of_every_suite_reader() -> None:
    """Each defaulted to ``PUHUI_EXPECTATIONS_DIR`` (or the checkout's): a caller that left
    out its settings' folder hashed, logged or validated other suites than its snapshot's,
    silently. Required, a forgotten one is a TypeError at the call. Read from the source:
    importing MLflow and the validator would cost ~2 s."""
    readers = {"config.py": {"config_hash"}, "lifecycle/publish.py": {"log_configuration"},
               "validation.py": {"__init__", "suite_hash", "load_suite", "suite_names"}}
    for module, names in readers.items():
        body = ast.parse((ROOT / "puhui" / module).read_text(encoding="utf-8")).body
        body += [m for c in body if isinstance(c, ast.ClassDef) and c.name == "BatchValidator"
                 for m in c.body if getattr(m, "name", None) == "__init__"]
        found = {}
        for function in body:
            if isinstance(function, ast.FunctionDef) and function.name in names:
                args = function.args
                kwonly = dict(zip([a.arg for a in args.kwonlyargs], args.kw_defaults,
                                  strict=True))
                # kw_defaults holds None for a keyword-only parameter without a default
                found[function.name] = "expectations_dir" in kwonly and kwonly[
                    "expectations_dir"] is None
        assert found == dict.fromkeys(names, True), (module, found)
