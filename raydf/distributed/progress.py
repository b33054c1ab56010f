"""Progress events from fold tasks to the driver, through a small Ray actor (not by tailing files).

Fold tasks call `EventSender.send(event)` from their `on_epoch` callback (fire and forget); the driver
drains the actor while it waits for the tasks. An event is a plain dict with at least `type` and `fold`.
"""

from __future__ import annotations

import logging
from typing import Optional

import ray

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)  # bookkeeping only: must never take a CPU a fold task could use
class ProgressActor:
    """A mailbox: fold tasks append events, the driver takes them all at once."""

    def __init__(self) -> None:
        self._events: list[dict] = []

    def put(self, event: dict) -> None:
        self._events.append(event)

    def drain(self) -> list[dict]:
        events, self._events = self._events, []
        return events


class EventSender:
    """Worker side: sends events without waiting, and waits once at the end so none is still in flight.

    Calls from one worker to an actor run in submission order, so waiting for the last one is enough.
    Progress is best effort: a lost actor never fails a fold.
    """

    def __init__(self, actor: Optional[ray.actor.ActorHandle]):
        self._actor = actor
        self._last: Optional[ray.ObjectRef] = None

    def send(self, event: dict) -> None:
        if self._actor is not None:
            self._last = self._actor.put.remote(event)

    def flush(self, timeout: float = 10.0) -> None:
        if self._last is not None:
            try:
                ray.get(self._last, timeout=timeout)
            except (ray.exceptions.RayError, TimeoutError) as e:  # the display is not worth failing a fold
                log.debug("progress events may be incomplete: %s", e)
            self._last = None


def start_progress_actor() -> ray.actor.ActorHandle:
    return ProgressActor.remote()


def drain(actor: ray.actor.ActorHandle, timeout: float = 10.0) -> list[dict]:
    """The events that reached `actor` since the last drain, in arrival order."""
    try:
        return ray.get(actor.drain.remote(), timeout=timeout)
    except (ray.exceptions.RayError, TimeoutError) as e:
        log.debug("could not read progress events: %s", e)
        return []
