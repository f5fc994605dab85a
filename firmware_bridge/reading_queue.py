"""The bounded queue between the bridge's readers and its worker, with a put of many at once.

A gateway's reader hands the worker a batch (every device that sent a reading while it was
gathering) in one call: one lock, one wake of the worker, instead of one per reading. The
bound still counts readings, not batches, so ``queue_size`` means what it says.
"""

from __future__ import annotations

import queue


class ReadingQueue(queue.Queue):
    """``queue.Queue`` of ``(stream, reading, arrived_ns)`` plus :meth:`put_many_nowait`."""

    def put_many_nowait(self, items: list) -> int:
        """Put as many of ``items`` as fit, in order, without blocking; the number put (the
        rest, ``items[n:]``, did not fit: the caller counts them)."""
        if not items:
            return 0
        with self.not_full:
            room = len(items) if self.maxsize <= 0 else max(self.maxsize - self._qsize(), 0)
            taken = items[:room]
            for item in taken:
                self._put(item)
            if taken:
                self.unfinished_tasks += len(taken)
                self.not_empty.notify()
            return len(taken)

    def get_all_nowait(self, most: int | None = None) -> list:
        """Everything queued now (at most ``most``), oldest first, possibly nothing, in one lock."""
        with self.not_empty:
            count = self._qsize() if most is None else min(self._qsize(), max(most, 0))
            items = [self._get() for _ in range(count)]
            if items:
                self.not_full.notify_all()
            return items
