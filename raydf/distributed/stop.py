"""Asking running fold tasks to stop, without `ray.cancel`.

Cancelling a task that is about to finish (or that the cancel itself ends) races inside Ray 2.60's core worker,
which then aborts the driver (RAY_CHECK "Tried to complete task that was not pending", task_manager.cc; a sibling
of the race fixed in ray-project/ray#54798): seen in the signal tests, with and without `force`. So the driver
sets a flag that the fold tasks poll between batches; each raises `StopRequested` and ends on its own.
"""

from __future__ import annotations

import time
from typing import Optional

import ray


@ray.remote(num_cpus=0)  # bookkeeping only: must never take a CPU a fold task could use
class StopFlag:
    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


def start_stop_flag() -> ray.actor.ActorHandle:
    return StopFlag.remote()


class StopPoller:
    """Worker side: `poller()` is True once the driver set the flag. Never blocks: at most one query in flight,
    one per `interval_s`; an unreachable flag (the driver is gone, and Ray ends its tasks anyway) reads False."""

    def __init__(self, flag: Optional[ray.actor.ActorHandle], interval_s: float = 0.5):
        self._flag, self._interval = flag, interval_s
        self._ref: Optional[ray.ObjectRef] = None
        self._asked_at = 0.0
        self._stop = False

    def __call__(self) -> bool:
        if self._flag is None or self._stop:
            return self._stop
        if self._ref is not None and ray.wait([self._ref], timeout=0)[0]:
            try:
                self._stop = bool(ray.get(self._ref))
            except ray.exceptions.RayError:
                pass
            self._ref = None
        if self._ref is None and time.monotonic() - self._asked_at >= self._interval:
            self._ref, self._asked_at = self._flag.is_set.remote(), time.monotonic()
        return self._stop
