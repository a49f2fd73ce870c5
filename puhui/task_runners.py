"""Which Prefect task runner the partitioned flows use, from the environment.

``PUHUI_TASK_RUNNER=local`` (default): a thread pool in the flow's process. Partition tasks
spend much of their time in the database and in pandas/numpy code that releases the GIL, so
threads overlap them without copying anything between processes (measured: README,
Performance). ``PUHUI_TASK_RUNNER=dask``: prefect-dask's ``DaskTaskRunner`` on the scheduler
at ``PUHUI_DASK_ADDRESS`` (``tcp://host:8786``), or, with no address, on a ``LocalCluster``
it starts (a script doing that needs an ``if __name__ == "__main__":`` guard, as Dask's
worker processes re-import it). ``PUHUI_TASK_WORKERS`` caps the local pool or sizes the
LocalCluster (default 2: this machine's cores).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from puhui.errors import PuhuiError

RUNNERS = ("local", "dask")


def task_runner_from_env(env: Mapping[str, str] | None = None) -> TaskRunner:
    """The task runner the settings ask for (a new, unstarted one each call)."""
    env = os.environ if env is None else env
    kind = env.get("PUHUI_TASK_RUNNER", "local").strip().lower() or "local"
    if kind not in RUNNERS:
        raise PuhuiError(f"PUHUI_TASK_RUNNER must be one of {', '.join(RUNNERS)}")
    workers_text = env.get("PUHUI_TASK_WORKERS", "2").strip() or "2"
    if not workers_text.isdigit() or int(workers_text) < 1:
        raise PuhuiError("PUHUI_TASK_WORKERS must be a whole number of at least 1")
    workers = int(workers_text)
    if kind == "local":
        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    address = env.get("PUHUI_DASK_ADDRESS", "").strip()
    if address:
        return DaskTaskRunner(address=address)
    # One thread per worker process: a partition task is single-threaded pandas, and two
    # threads in one process would contend for the GIL where two processes do not.
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})
