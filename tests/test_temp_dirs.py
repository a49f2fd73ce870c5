"""Nothing puhui makes in the temp folder outlives its use: a read-only command leaves no
directory behind (every ``models show`` left one), and the folders of killed processes (a
registration's model copy, a training's publish folder) are swept by the next reconcile,
never a live process's."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from puhui.cli import main
from puhui.config import ModelsConfig, load_config
from puhui.registry import mlflow_client, reconcile_model_changes
from puhui.runtime import open_runtime
from puhui.scratch import (
    PENDING_GRACE_SECONDS,
    pid_namespace,
    scratch_dir,
    sweep_scratch_dirs,
)
from puhui.settings import load_settings, repo_root
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


_HOLD_A_COPY = ("import sys; from puhui.scratch import scratch_dir; copy = scratch_dir('model'); "
                "print(copy.name, flush=True); sys.stdin.read()")
# A training killed while publishing (its MLflow run's files in a temp folder).
_KILLED_PUBLISHING = ("import os, signal; from puhui.scratch import scratch_dir; "
                      "folder = scratch_dir('publish'); open(folder.name + '/report.html', 'w'); "
                      "os.kill(os.getpid(), signal.SIGKILL)")


def test_reconcile_removes_the_temp_folders_of_killed_processes_only(
        sqlite_warehouse: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registration killed (kill -9) while its copy of the model files exists leaves the
    copy, a training killed while publishing its folder; the next reconcile (every model
    command and training starts with one) removes both, and keeps the copy of a process
    still running."""
    scratch = _scratch(tmp_path, monkeypatch)
    env = {**os.environ, "TMPDIR": str(scratch), "PUHUI_CRASH_AT": "register.model_copy"}
    script = ("from tests.test_lifecycle import _register; "
              "_register('credit_risk', 'fp-killed')")
    killed = subprocess.run([sys.executable, "-c", script], env=env, cwd=repo_root(),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    left = list(scratch.glob("puhui-model-*"))
    assert len(left) == 1 and any(left[0].rglob("MLmodel"))  # the real copy it was hashing
    env.pop("PUHUI_CRASH_AT")
    assert subprocess.run([sys.executable, "-c", _KILLED_PUBLISHING], env=env,
                          cwd=repo_root(), timeout=120).returncode == -signal.SIGKILL
    left += list(scratch.glob("puhui-publish-*"))
    assert len(left) == 2

    live = subprocess.Popen([sys.executable, "-c", _HOLD_A_COPY], env=env, cwd=repo_root(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held = Path(live.stdout.readline().strip())
        assert held.is_dir() and held.parent.parent == scratch
        runtime = open_runtime()
        settled = reconcile_model_changes(
            mlflow_client(runtime.settings.mlflow_tracking_uri), runtime.engine,
            runtime.audit)
        assert not any(p.exists() for p in left) and held.is_dir()
        assert sorted(settled.swept) == sorted(
            f"removed {p}: a temporary folder its process, now gone, left behind" for p in left)
        assert settled.repaired == []  # events written: none (verify re-checks the chain then)
    finally:
        live.communicate("", timeout=60)  # its stdin closed: it ends, removing its copy
    assert list(scratch.glob("puhui-model-*")) == list(scratch.glob("puhui-publish-*")) == []


def _unshare() -> str:
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-Urpf", "true"],
                                         capture_output=True).returncode != 0:
        pytest.skip("no unprivileged pid namespaces here (unshare -Urpf)")
    return unshare


# In a pid namespace of its own (a sibling container of the pod), the holder forks until its
# pid is one that no process has in ours: to a sweep judging pids alone, its owner is dead.
_HOLD_IN_ANOTHER_NAMESPACE = """
import os, sys
ours = {int(p) for p in sys.argv[1].split(",")}
while (child := os.fork()) and os.waitpid(child, 0)[1] >> 8 == 3:
    pass
if child:
    sys.exit(0)
if os.getpid() in ours:
    os._exit(3)
from puhui.scratch import scratch_dir
copy = scratch_dir("model")
print(os.getpid(), copy.name, flush=True)
sys.stdin.read()
"""


@contextmanager
def _holder_in_another_namespace(unshare: str,
                                 env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A process in a pid namespace of its own holding a folder (its pid and the folder its
    first line), until the block ends."""
    ours = ",".join(p.name for p in Path("/proc").iterdir() if p.name.isdigit())
    sibling = subprocess.Popen(
        [unshare, "-Urpf", "--mount-proc", sys.executable, "-c", _HOLD_IN_ANOTHER_NAMESPACE,
         ours], env=env, cwd=repo_root(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        yield sibling
    finally:
        sibling.communicate("", timeout=60)


def test_the_sweep_never_touches_another_pid_namespace_s_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two containers of a pod share the hostname and may share /tmp with separate pid
    namespaces: the other's live process has a pid that is dead (or someone else) in ours.
    Its copy of the model files stays while it hashes them; a killed process's of our own
    namespace is still swept."""
    unshare = _unshare()
    scratch = _scratch(tmp_path, monkeypatch)
    env = {**os.environ, "TMPDIR": str(scratch)}
    with _holder_in_another_namespace(unshare, env) as sibling:
        pid, name = sibling.stdout.readline().split()
        held = Path(name)
        assert held.is_dir() and held.parent.parent == scratch and not Path(f"/proc/{pid}").exists()
        assert subprocess.run([sys.executable, "-c", _KILLED_PUBLISHING], env=env,
                              cwd=repo_root(), timeout=120).returncode == -signal.SIGKILL
        killed = list(scratch.glob("puhui-publish-*"))
        assert sweep_scratch_dirs() == [str(p) for p in killed] and len(killed) == 1
        assert held.is_dir() and not killed[0].exists()
    assert list(scratch.iterdir()) == []


# pid 1 of a namespace ignores even its own SIGKILL: its child is the one killed.
_KILLED_IN_ITS_NAMESPACE = """
import os, signal, sys
if child := os.fork():
    sys.exit(os.waitpid(child, 0)[1] & 0x7f)
from puhui.scratch import pid_namespace, scratch_dir
folder = scratch_dir("publish")
open(folder.name + "/report.html", "w").close()
print(pid_namespace(), folder.name, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
_SWEEP_IN_ITS_NAMESPACE = ("import json; from puhui.scratch import pid_namespace, "
                           "sweep_scratch_dirs; print(pid_namespace(), "
                           "json.dumps(sweep_scratch_dirs()))")


def test_a_restarted_container_sweeps_its_predecessor_s_folders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A container killed (kill -9) while publishing, restarted with a new pid namespace on
    the same /tmp: its predecessor's folder was of "another namespace" for good. Liveness
    is the folder's lock now, which the kernel dropped with the process: the sweep in the
    new namespace removes it, and keeps a live process's of a third namespace."""
    unshare = _unshare()
    scratch = _scratch(tmp_path, monkeypatch)
    env = {**os.environ, "TMPDIR": str(scratch)}
    with _holder_in_another_namespace(unshare, env) as sibling:
        held = Path(sibling.stdout.readline().split()[1])
        killed = subprocess.run(
            [unshare, "-Urpf", "--mount-proc", sys.executable, "-c", _KILLED_IN_ITS_NAMESPACE],
            env=env, cwd=repo_root(), capture_output=True, text=True, timeout=120)
        assert killed.returncode == signal.SIGKILL, killed.stderr[-2000:]
        predecessor_ns, name = killed.stdout.split()
        left = Path(name)
        assert (left / "report.html").exists() and predecessor_ns != pid_namespace()
        swept = subprocess.run(
            [unshare, "-Urpf", "--mount-proc", sys.executable, "-c", _SWEEP_IN_ITS_NAMESPACE],
            env=env, cwd=repo_root(), capture_output=True, text=True, timeout=120)
        assert swept.returncode == 0, swept.stderr[-2000:]
        restarted_ns, removed = swept.stdout.split(maxsplit=1)
        assert restarted_ns not in (predecessor_ns, pid_namespace())
        assert json.loads(removed) == [str(left.parent)] and not left.exists()
        assert held.is_dir() and sweep_scratch_dirs() == [] and held.is_dir()
    assert list(scratch.iterdir()) == []


def test_a_folder_is_never_swept_while_being_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder is made under a hidden name, locked, then renamed. A sweep (of another
    process) between its mkdir and its lock sees the hidden name, young: it must not lock it
    even for an instant, which made the maker fail (BlockingIOError). Here the sweep runs in
    that very window, holding any lock it takes a while. One left by a process killed in
    that instant goes once it is old; a live folder of this very process is kept."""
    import threading

    import puhui.scratch as scratch_module

    scratch = _scratch(tmp_path, monkeypatch)
    host = socket.gethostname()
    pending = scratch / f".puhui-model-{host}-{pid_namespace()}-{os.getpid()}-flock-ab12cd34"
    flock, mkdtemp = fcntl.flock, tempfile.mkdtemp
    sweeping, swept, locked = threading.Event(), [], threading.Event()

    def slow_sweep_flock(fd: int, operation: int) -> None:
        flock(fd, operation)
        if sweeping.is_set() and threading.current_thread() is not threading.main_thread():
            locked.set()
            time.sleep(1)  # a loaded machine's sweep, between its lock and its unlock

    def mkdtemp_then_sweep(**kwargs: str) -> str:
        made = mkdtemp(**kwargs)
        sweeping.set()
        sweep = threading.Thread(
            target=lambda: (swept.append(sweep_scratch_dirs()), locked.set()))
        sweep.start()
        locked.wait(timeout=5)  # the sweep holds a lock, or took none
        sweep.join(timeout=0.1)
        return made

    monkeypatch.setattr(fcntl, "flock", slow_sweep_flock)
    monkeypatch.setattr(scratch_module.tempfile, "mkdtemp", mkdtemp_then_sweep)
    with scratch_dir("model") as live:
        monkeypatch.undo()
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))
        assert Path(live).parent.parent == scratch
        assert Path(live).parent.name.startswith("puhui-model-")
        assert swept == [[]]
        pending.mkdir()
        assert sweep_scratch_dirs() == [] and pending.is_dir() and Path(live).is_dir()
        old = time.time() - PENDING_GRACE_SECONDS - 1
        os.utime(pending, (old, old))
        assert sweep_scratch_dirs() == [str(pending)] and Path(live).is_dir()
    assert list(scratch.iterdir()) == []


_SWEEP = ("import json; from puhui.scratch import sweep_scratch_dirs; "
          "print(json.dumps(sweep_scratch_dirs()))")


def _as_nobody(code: str, env: dict[str, str]) -> subprocess.CompletedProcess | None:
    """``code`` run by the nobody user (puhui from this checkout), or None where it cannot
    be (not root, no setpriv, no Python that user can run)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        return None
    def run(python: str, source: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python, "-B", "-c",
             source], env={**env, "PYTHONPATH": str(repo_root())}, cwd="/",
            capture_output=True, text=True, timeout=120)

    for python in (sys.executable, "/usr/bin/python3"):
        # A checkout nobody cannot read (CI clones into a mode-700 mktemp folder) is a
        # "cannot run here", not a failure of the sweep.
        if run(python, "import puhui.scratch").returncode == 0:
            return run(python, code)
    return None


def test_a_folder_the_sweep_cannot_remove_is_not_reported_removed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead process's folder of another user (mode 700, in a sticky temp folder) cannot
    be removed by this one: it was reported removed on every reconcile. The sweep runs here
    as the nobody user, then as the owner."""
    shared = Path(tempfile.mkdtemp(prefix="sweep-shared-", dir="/tmp"))
    try:
        shared.chmod(0o1777)  # as /tmp: anyone creates, only the owner removes
        dead = subprocess.Popen(["true"])
        dead.wait()
        folder = shared / f"puhui-model-{socket.gethostname()}-{pid_namespace()}-{dead.pid}-x1"
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "MLmodel").write_text("flavors: {}")
        folder.chmod(0o700)
        swept = _as_nobody(_SWEEP, {**os.environ, "TMPDIR": str(shared)})
        if swept is None:
            pytest.skip("cannot run puhui as another user here (needs root and setpriv)")
        assert swept.returncode == 0, swept.stderr[-2000:]
        assert json.loads(swept.stdout) == [] and (folder / "model" / "MLmodel").exists()
        monkeypatch.setattr(tempfile, "tempdir", str(shared))
        assert sweep_scratch_dirs() == [str(folder)] and not folder.exists()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _nfs_flock(flock: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """flock as on an NFS or CIFS mount: emulated by a byte-range lock, which an exclusive
    lock takes only on a file open for writing (EBADF otherwise)."""
    def emulated(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_EX and \
                fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        flock(fd, operation)
    return emulated


def test_folders_are_made_and_swept_on_a_network_temp_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an NFS or CIFS temp folder the lock on the folder (opened read-only) failed with
    EBADF: every model command failed there. The lock is a file in the folder opened for
    writing; the sweep keeps a live one and removes a dead one's."""
    scratch = _scratch(tmp_path, monkeypatch)
    monkeypatch.setattr(fcntl, "flock", _nfs_flock(fcntl.flock))
    with scratch_dir("model") as live:
        dead = scratch_dir("publish")
        os.close(dead._finalizer.peek()[2][1])  # its process gone: the lock with it
        dead._finalizer.detach()
        assert sweep_scratch_dirs() == [dead.folder] and Path(live).is_dir()
    assert list(scratch.iterdir()) == []


def test_without_locks_a_folder_is_judged_by_its_pid(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the file system gives no lock at all (ENOLCK), a folder takes the earlier
    format, judged by its pid: kept while this process lives."""
    scratch = _scratch(tmp_path, monkeypatch)

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with scratch_dir("model") as live:
        folder = Path(live).parent
        assert folder.name == (f"puhui-model-{socket.gethostname()}-{pid_namespace()}-"
                               f"{os.getpid()}-{folder.name.rsplit('-', 1)[1]}")
        assert sweep_scratch_dirs() == [] and Path(live).is_dir()
    assert list(scratch.iterdir()) == []


def test_a_forked_child_never_removes_its_parent_s_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child forked while its parent holds a folder has a copy of the object: dropping it
    removed the parent's folder, in use. The child lets go of its copy of the descriptor
    only; the parent's lock stays, and so does its folder."""
    import gc

    scratch = _scratch(tmp_path, monkeypatch)
    with scratch_dir("publish") as held:
        copy = scratch_dir("model")
        if (child := os.fork()) == 0:
            del copy
            gc.collect()
            os._exit(0)
        assert os.waitpid(child, 0)[1] == 0
        assert Path(copy.name).is_dir() and Path(held).is_dir()
        assert sweep_scratch_dirs() == [] and Path(copy.name).is_dir()
        copy.cleanup()
        assert not Path(copy.folder).exists()
    assert list(scratch.iterdir()) == []


def _replace_lock(folder: Path) -> None:
    """The folder's ``.lock`` replaced by a new file (its owner or root can, mode 700)."""
    os.unlink(folder / ".lock")
    (folder / ".lock").touch(mode=0o600)


def test_a_live_folder_whose_lock_file_was_replaced_is_not_swept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep took the new ``.lock`` file's lock (nobody holds that file) and removed a
    live process's folder. The folder itself is locked too now: a killed process's folder
    with a replaced lock file is still swept, a live one's is not."""
    scratch = _scratch(tmp_path, monkeypatch)
    env = {**os.environ, "TMPDIR": str(scratch)}
    assert subprocess.run([sys.executable, "-c", _KILLED_PUBLISHING], env=env,
                          cwd=repo_root(), timeout=120).returncode == -signal.SIGKILL
    (dead,) = scratch.glob("puhui-publish-*")
    _replace_lock(dead)
    live = subprocess.Popen([sys.executable, "-c", _HOLD_A_COPY], env=env, cwd=repo_root(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held = Path(live.stdout.readline().strip())
        _replace_lock(held.parent)
        assert sweep_scratch_dirs() == [str(dead)]
        assert held.is_dir()
    finally:
        live.communicate("", timeout=60)  # its stdin closed: it ends, removing its copy
    assert list(scratch.iterdir()) == []
