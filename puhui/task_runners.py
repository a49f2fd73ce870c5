"""Which Prefect task runner the partitioned flows use, from the environment.

``PUHUI_TASK_RUNNER=local`` (default): a thread pool in the flow's process. Partition tasks
spend much of their time in the database and in pandas/numpy code that releases the GIL, so
threads overlap them without copying anything between processes (measured: README,
Performance). ``PUHUI_TASK_RUNNER=dask``: prefect-dask's ``DaskTaskRunner`` on the scheduler
at ``PUHUI_DASK_ADDRESS`` (``tcp://host:8786``), or, with no address, on a ``LocalCluster``
it starts (a script doing that needs an ``if __name__ == "__main__":`` guard, as Dask's
worker processes re-import it). ``PUHUI_TASK_WORKERS`` caps the local pool or sizes the
LocalCluster (default 2: this machine's cores), at most ``MAX_WORKERS``.

Partitioned scoring's LightGBM threads (:func:`scoring_threads_from_env`): LightGBM's default
is one OpenMP thread per core in each concurrent partition, so 2 partitions at once on 2 cores
ran 4 threads that wait for each other at every barrier (measured: README, Performance). The
cores are divided among the partitions that run at once on this machine instead;
``PUHUI_SCORING_THREADS`` sets the count explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from puhui.errors import PuhuiError

RUNNERS = ("local", "dask")
# A bound on PUHUI_TASK_WORKERS and PUHUI_SCORING_THREADS: Dask asked for as many worker
# processes as given (10**20 was accepted), each a Python process of ~100 MB. 256 is far
# beyond any one machine's useful count and still catches a typo'd extra digit or two.
MAX_WORKERS = 256


def task_runner_from_env(env: Mapping[str, str] | None = None) -> TaskRunner:
    """The task runner the settings ask for (a new, unstarted one each call)."""
    env = os.environ if env is None else env
    kind = _kind(env)
    workers = task_workers(env)
    # Checked here, before the flow starts: scoring reads it only after the whole build.
    _configured_threads(env)
    if kind == "local":
        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    address = env.get("PUHUI_DASK_ADDRESS", "").strip()
    if address:
        return DaskTaskRunner(address=address)
    # One thread per worker process: a partition task is single-threaded pandas, and two
    # threads in one process would contend for the GIL where two processes do not.
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


def _kind(env: Mapping[str, str]) -> str:
    kind = env.get("PUHUI_TASK_RUNNER", "local").strip().lower() or "local"
    if kind not in RUNNERS:
        raise PuhuiError(f"PUHUI_TASK_RUNNER must be one of {', '.join(RUNNERS)}")
    return kind


def task_workers(env: Mapping[str, str] | None = None) -> int:
    """``PUHUI_TASK_WORKERS`` (default 2): the local pool's threads or the LocalCluster's
    worker processes; one line if it is no whole number from 1 to ``MAX_WORKERS``."""
    return _whole(os.environ if env is None else env, "PUHUI_TASK_WORKERS", "2")


def _whole(env: Mapping[str, str], name: str, default: str) -> int:
    text = env.get(name, default).strip() or default
    # ASCII only: '¹'.isdigit() is True, but int('¹') raises a traceback, not this line.
    # The length test first: int() of a 5,000-digit string raises ValueError (3.11's limit).
    if (
        not (text.isascii() and text.isdigit())
        or len(text.lstrip("0")) > 6
        or not 1 <= int(text) <= MAX_WORKERS
    ):
        raise PuhuiError(f"{name} must be a whole number from 1 to {MAX_WORKERS}")
    return int(text)


def _configured_threads(env: Mapping[str, str]) -> int | None:
    return (
        _whole(env, "PUHUI_SCORING_THREADS", "1")
        if env.get("PUHUI_SCORING_THREADS", "").strip()
        else None
    )


def lightgbm_threads(concurrent: int, cores: int, configured: int | None = None) -> int:
    """LightGBM threads for each of ``concurrent`` partitions scoring at once on ``cores``
    cores: ``configured`` if given, else the cores divided among them (at least 1)."""
    if configured is not None:
        return configured
    return max(1, cores // max(1, concurrent))


def scoring_threads_from_env(
    partitions: int, env: Mapping[str, str] | None = None, cores: int | None = None
) -> int | None:
    """LightGBM threads for each scoring task of a run of ``partitions`` partitions; None
    (LightGBM's default) on a Dask scheduler elsewhere, whose machines' cores are unknown
    here, unless ``PUHUI_SCORING_THREADS`` says."""
    env = os.environ if env is None else env
    configured = _configured_threads(env)
    if _kind(env) == "dask" and env.get("PUHUI_DASK_ADDRESS", "").strip():
        return configured
    workers = task_workers(env)
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    return lightgbm_threads(min(workers, partitions), cores, configured)
