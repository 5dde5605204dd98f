"""The scheduler side: a ``SchedulerPlugin`` that tells edgebench clients when workers come and go.

Dask's scheduler is the one that knows first: its ``add_worker`` / ``remove_worker`` hooks run
when a worker registers and when it is lost (a ``kill -9`` closes its connection at once).  The
plugin publishes each as an event on the ``edgebench-cluster`` topic; every edgebench client
subscribed to the topic re-creates the replicas that were on a lost worker and gives a new
worker (a nanny's replacement, an autoscaled one) its share.
"""
from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

__all__ = ["TOPIC", "MembershipPlugin"]

TOPIC = "edgebench-cluster"


class MembershipPlugin(SchedulerPlugin):
    """Publishes ``{"action": "add_worker" | "remove_worker", "worker": address}``."""

    name = "edgebench-membership"
    idempotent = True

    def add_worker(self, scheduler: Any = None, worker: str | None = None) -> None:
        scheduler.log_event(TOPIC, {"action": "add_worker", "worker": worker})

    def remove_worker(self, scheduler: Any = None, worker: str | None = None, **kwargs: Any) -> None:
        scheduler.log_event(TOPIC, {"action": "remove_worker", "worker": worker})
