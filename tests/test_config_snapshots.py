"""Config snapshots (``puhui.runtime.flow_settings``): a copy left by a run killed mid-way
is swept, a live run's copy in progress is not; old snapshots are pruned, a snapshot in use
never; the suites hashed and logged are the settings' (PUHUI_EXPECTATIONS_DIR), not an
``expectations/`` folder that happens to sit in the user's config folder."""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from puhui import runtime
from puhui.config import config_hash
from puhui.errors import PuhuiError
from puhui.runtime import flow_settings, open_runtime
from puhui.scratch import scratch_dir
from puhui.settings import load_settings, repo_root
from puhui.validation import suite_hash
from tasks.ingest import _validator


def _killed_mid_copy(snapshots: str) -> None:
    folder = scratch_dir("config", parent=Path(snapshots))
    (Path(folder.name) / "models.yaml").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)


def _folders(snapshots: Path) -> set[str]:
    return {p.name for p in snapshots.iterdir()}


def test_a_copy_left_by_a_killed_run_is_swept_and_a_live_one_is_not(puhui_env: Path) -> None:
    """Before: a kill -9 mid-copy left ``config-snapshots/.partial-*`` for good."""
    snapshots = puhui_env / "config-snapshots"
    snapshots.mkdir(parents=True)
    child = multiprocessing.get_context("fork").Process(target=_killed_mid_copy,
                                                        args=(str(snapshots),))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    killed = _folders(snapshots)
    assert len(killed) == 1
    legacy_old, legacy_young = snapshots / ".partial-old", snapshots / ".partial-young"
    for legacy in (legacy_old, legacy_young):
        legacy.mkdir()
    hours_ago = time.time() - 2 * 3600
    os.utime(legacy_old, (hours_ago, hours_ago))
    with scratch_dir("config", parent=snapshots) as live:  # a concurrent run's copy
        settings = flow_settings()
        left = _folders(snapshots)
        assert not killed & left and ".partial-old" not in left
        assert ".partial-young" in left  # an older version's copy may be in progress
        assert Path(live).is_dir()
    assert _folders(snapshots) == {".partial-young", settings.config_dir.name}


def test_old_snapshots_are_pruned_but_never_one_in_use(
        puhui_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: every configuration a run ever used stayed under PUHUI_HOME. Now the
    ``SNAPSHOTS_KEPT`` most recently used stay, and any a live process holds."""
    monkeypatch.setattr(runtime, "SNAPSHOTS_KEPT", 2)
    snapshots = puhui_env / "config-snapshots"
    snapshots.mkdir(parents=True)
    old = [snapshots / f"{n:016x}" for n in range(5)]
    for age, folder in enumerate(old):  # 0 the newest
        (folder / "expectations").mkdir(parents=True)
        then = time.time() - 3600 * (age + 1)
        os.utime(folder, (then, then))
    in_use = os.open(old[4], os.O_RDONLY | os.O_DIRECTORY)  # another run's, the oldest
    try:
        fcntl.flock(in_use, fcntl.LOCK_SH)
        settings = flow_settings()
    finally:
        os.close(in_use)
    # Its own (the newest), the next newest, and the one in use.
    assert _folders(snapshots) == {settings.config_dir.name, old[0].name, old[4].name}
    # A run in progress keeps its own even when it is no longer among the newest.
    for n in range(5, 8):
        (snapshots / f"{n:016x}").mkdir()
    runtime.prune_snapshots(snapshots, 0)
    assert settings.config_dir.is_dir() and (settings.config_dir / "models.yaml").is_file()


def test_suites_come_from_the_settings_not_from_the_config_folder(
        puhui_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: ``hashed_suites_dir`` preferred an ``expectations/`` folder inside the config
    folder (how a snapshot carried its suites), so a user's config folder holding one was
    hashed, snapshotted and logged with those suites, not PUHUI_EXPECTATIONS_DIR's (the
    ones ingest validates with)."""
    configs = tmp_path / "configs"
    shutil.copytree(repo_root() / "configs", configs)
    shutil.copytree(repo_root() / "expectations", configs / "expectations")
    suites = tmp_path / "suites"
    shutil.copytree(repo_root() / "expectations", suites)
    suite = sorted(suites.glob("*.json"))[0]
    suite.write_text(suite.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    monkeypatch.setenv("PUHUI_CONFIG_DIR", str(configs))
    monkeypatch.setenv("PUHUI_EXPECTATIONS_DIR", str(suites))
    expected = config_hash(configs, expectations_dir=suites)
    assert expected != config_hash(configs, expectations_dir=configs / "expectations")
    assert load_settings().expectations_dir == suites.resolve()
    assert open_runtime().audit.config_hash == expected
    settings = flow_settings()
    assert settings.config_hash == expected
    assert settings.expectations_dir == settings.config_dir / "expectations"
    assert (settings.expectations_dir / suite.name).read_bytes() == suite.read_bytes()
    # Ingestion validates with the snapshot's suites, not the live ones edited mid-run.
    suite.write_text(suite.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    validator = _validator(settings.home, settings.expectations_dir)
    assert validator.suite_hash(suite.stem) == suite_hash(
        suite.stem, expectations_dir=settings.expectations_dir)
    assert validator.suite_hash(suite.stem) != suite_hash(suite.stem, expectations_dir=suites)


def test_a_file_system_without_locks_takes_snapshots_and_prunes_none(
        puhui_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: on a PUHUI_HOME whose file system gives no flock (ENOLCK, EOPNOTSUPP, EBADF:
    some NFS and CIFS) every flow start died with a raw OSError; and a prune reading that
    error as "held" would have gone silent. Now: no hold, no prune, one line."""
    monkeypatch.setattr(runtime, "SNAPSHOTS_KEPT", 0)
    old = puhui_env / "config-snapshots" / f"{0:016x}"
    old.mkdir(parents=True)

    def no_lock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(fcntl, "flock", no_lock)
    settings = flow_settings()
    assert old.is_dir() and (settings.config_dir / "models.yaml").is_file()
    assert capsys.readouterr().err.splitlines() == [
        f"puhui: config snapshots in {old.parent} not pruned: no lock there (ENOLCK) to tell "
        "one a run holds"]


def test_a_snapshot_pruned_while_being_taken_is_copied_again(
        puhui_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reused snapshot can be pruned by another run between ``target.is_dir()`` and the
    hold. The hold sees it (it waits out the prune's exclusive lock, then finds the folder
    renamed away); the copy is made again, and a third loss is one line, not a loop."""
    target = tmp_path / "snapshot"
    target.mkdir()
    pruning = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(pruning, fcntl.LOCK_EX)
    with ThreadPoolExecutor(1) as other:
        holding = other.submit(runtime._hold_snapshot, target)
        time.sleep(0.2)
        assert not holding.done()  # waiting for the prune's lock
        target.rename(tmp_path / ".pruned-snapshot")
        target.mkdir()  # the same hash copied again by a third run: another folder
        os.close(pruning)
        assert holding.result(timeout=30) is False
    assert target not in runtime._held_snapshots

    hold, taken = runtime._hold_snapshot, []

    def pruned_first(folder: Path) -> bool:
        taken.append(folder)
        if len(taken) == 1:
            shutil.rmtree(folder)  # another run's prune, between the rename and the hold
            return False
        return hold(folder)
    monkeypatch.setattr(runtime, "_hold_snapshot", pruned_first)
    settings = flow_settings()
    assert taken == [settings.config_dir] * 2
    assert (settings.config_dir / "models.yaml").is_file()

    monkeypatch.setattr(runtime, "_hold_snapshot", lambda folder: False)
    with pytest.raises(PuhuiError, match=r"^config snapshot .*: removed three times while "
                                         "being taken$"):
        flow_settings()
