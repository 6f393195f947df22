"""Runs collection jobs, several in parallel processes, reporting progress to one bar per job."""

from __future__ import annotations

import logging
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor

from ..envs.dmc import CAMERA_BY_DOMAIN, check_task
from ..errors import ArgumentError, DatasetError
from .job import CollectJob, check_stop, interrupt, stop_signals
from .registry import COLLECTORS

log = logging.getLogger(__name__)


def _run_job(job: CollectJob, queue=None) -> str:
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    report = (lambda n: queue.put((job.path, n))) if queue is not None else None
    return COLLECTORS[job.policy](job, report)


def collect_many(jobs: list[CollectJob], workers: int = 1, quiet: bool = False) -> list[str]:
    """Run jobs, ``workers`` at a time in separate processes, with one progress bar per job."""
    for job in jobs:
        check_task(job.domain, job.task)
        if job.policy not in COLLECTORS:
            raise ArgumentError(f"unknown --policy '{job.policy}'; available: {', '.join(COLLECTORS)}")
        if job.camera_id is None and job.domain in CAMERA_BY_DOMAIN and job.pixels:
            log.info("%s: rendering from camera %d", job.domain, CAMERA_BY_DOMAIN[job.domain])
        if os.path.exists(job.path) and not job.overwrite:
            raise DatasetError(f"{job.path} already exists; pass --overwrite to replace it, or pick another "
                               "--replay_id.")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with stop_signals(), Progress(*columns, disable=quiet) as bar:
        tasks = {j.path: bar.add_task(f"{j.domain}-{j.task} s{j.replay_id}", total=j.num_steps) for j in jobs}
        if workers <= 1:
            return [_collect_inline(j, bar, tasks[j.path]) for j in jobs]
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # GL contexts and forked MuJoCo state do not mix
        with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            queue = manager.Queue()
            futures = {pool.submit(_run_job, j, queue): j for j in jobs}
            pending = set(futures)
            while pending:
                while not queue.empty():
                    path, n = queue.get()
                    bar.advance(tasks[path], n)
                done = {f for f in pending if f.done()}
                for f in done:
                    f.result()  # re-raises a worker's error
                pending -= done
                if pending:
                    check_stop()
                    time.sleep(0.2)
            return [f.result() for f in futures]


def _collect_inline(job: CollectJob, bar, task_id) -> str:
    return COLLECTORS[job.policy](job, lambda n: bar.advance(task_id, n))
