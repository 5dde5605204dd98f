"""Whose turn it is at a stage of a streaming graph.

A stream's worker threads each carry one event through every stage (see
:mod:`edgebench.graph.stream`).  A stage must see its events in source order and one at a
time, so each event gets a ticket (its place in the source order) and a stage serves tickets
strictly in order: a worker whose ticket is not up yet waits at that stage.  An event that
produced nothing at an earlier stage (a window that has not filled, a filter) has nothing to
bring to the later ones: its ticket is *skipped* there without waiting, and the stage moves
past it as soon as the ticket before it is served.

Every wait wakes every ``poll_s`` seconds to look at a cancel flag, so a stopping stream never
hangs on a stage.
"""
from __future__ import annotations

import threading

__all__ = ["Turns"]


class Turns:
    """Ticket order at one stage.

    Attributes
    ----------
    turn
        The ticket the stage serves next.
    waiting
        Workers waiting for their turn now (the events queued in front of the stage).
    max_waiting
        The most that ever waited.
    """

    def __init__(self, poll_s: float = 0.05):
        self.poll_s = poll_s
        self.turn = 0
        self.waiting = self.max_waiting = 0
        self._skipped: set[int] = set()
        self._cond = threading.Condition(threading.Lock())

    def wait(self, ticket: int, cancel: threading.Event) -> bool:
        """Block until ``ticket`` is served next; False if ``cancel`` was set first."""
        with self._cond:
            if self.turn == ticket:
                return True
            self.waiting += 1
            self.max_waiting = max(self.max_waiting, self.waiting)
            try:
                while self.turn != ticket:
                    if cancel.is_set():
                        return False
                    self._cond.wait(self.poll_s)
            finally:
                self.waiting -= 1
        return True

    def done(self, ticket: int) -> None:
        """``ticket`` was served: the next one (past any skipped) is up."""
        with self._cond:
            self._advance(ticket + 1)

    def skip(self, ticket: int) -> None:
        """``ticket`` brings nothing to this stage: never wait for it here."""
        with self._cond:
            if self.turn == ticket:
                self._advance(ticket + 1)
            else:
                self._skipped.add(ticket)

    def _advance(self, turn: int) -> None:
        while turn in self._skipped:
            self._skipped.remove(turn)
            turn += 1
        self.turn = turn
        if self.waiting:
            self._cond.notify_all()

    def __repr__(self) -> str:
        return f"Turns(next={self.turn}, waiting={self.waiting}, max={self.max_waiting})"
