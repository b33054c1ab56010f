"""Asking running fold tasks to stop, without `ray.cancel`.

Cancelling a task that is about to finish (or that the cancel itself ends) races inside Ray 2.60's core worker,
which then aborts the driver (RAY_CHECK "Tried to complete task that was not pending", task_manager.cc; a sibling
of the race fixed in ray-project/ray#54798): seen in the signal tests, with and without `force`. So the driver
sets a flag that the fold tasks poll between batches; each raises `StopRequested` and ends on its own.
"""

from __future__ import annotations

import concurrent.futures
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
    one per `interval_s`; an unreachable flag (the driver is gone, and Ray ends its tasks anyway) reads False.

    The reply is read through `ObjectRef.future()`, not `ray.wait`/`ray.get`: those count as a blocked task, and
    Ray lends a blocked task's CPU to the next queued one (measured on 2 CPUs: a third 1-CPU fold started 1.7 s
    into two that polled with `ray.wait(timeout=0)`), so every poll over-subscribed the node.
    """

    def __init__(self, flag: Optional[ray.actor.ActorHandle], interval_s: float = 0.5):
        self._flag, self._interval = flag, interval_s
        self._reply: Optional[concurrent.futures.Future] = None
        self._asked_at = 0.0
        self._stop = False

    def __call__(self) -> bool:
        if self._flag is None or self._stop:
            return self._stop
        if self._reply is not None and self._reply.done():
            try:
                self._stop = bool(self._reply.result())
            except (ray.exceptions.RayError, concurrent.futures.CancelledError):
                pass
            self._reply = None
        if self._reply is None and time.monotonic() - self._asked_at >= self._interval:
            self._reply, self._asked_at = self._flag.is_set.remote().future(), time.monotonic()
        return self._stop
