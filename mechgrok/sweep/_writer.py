"""Background writes of run folders: every write is fsynced, so the pool hands them to threads."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from ..store import StoreError

__all__ = ["Writer"]


class Writer:
    """Runs store writes on worker threads; the jobs of one member stay in order (one thread per
    member). ``join`` waits for everything submitted and re-raises the first failure."""

    def __init__(self, workers: int):
        self.queues = [queue.Queue() for _ in range(workers)]
        self.error: BaseException | None = None
        self.threads = [threading.Thread(target=self._work, args=(q,), daemon=True) for q in self.queues]
        for t in self.threads:
            t.start()

    def _work(self, q: queue.Queue) -> None:
        while True:
            job = q.get()
            try:
                if job is None:
                    return
                if self.error is None:
                    job()
            except BaseException as e:
                self.error = self.error or e
            finally:
                q.task_done()

    def submit(self, key: int, job: Callable[[], None]) -> None:
        if self.error is not None:
            self.join()
        self.queues[key % len(self.queues)].put(job)

    def join(self) -> None:
        for q in self.queues:
            q.join()
        if self.error is not None:
            err, self.error = self.error, None
            if isinstance(err, (StoreError, OSError)):
                raise StoreError(f"writing run folders failed: {err}") from err
            raise err

    def close(self) -> None:
        """Wait for every submitted write, then stop the threads and wait for them to end, so that
        none of them is still alive when the interpreter shuts down."""
        try:
            self.join()
        finally:
            for q in self.queues:
                q.put(None)
            for t in self.threads:
                t.join()
