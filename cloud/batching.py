"""Dynamic micro-batching: many concurrent requests, one ``session.run`` per batch.

Rules (the worker thread applies them; :func:`take` is the pure part):

* a request carries ``rows`` samples of one sample shape; requests queue in arrival order;
* the queue holds at most ``max_queue`` samples; a request that would overflow it is refused at
  once with :class:`Overloaded` (429: come back later) - never queued unboundedly;
* ``workers`` threads share the queue; a free worker takes the first request, then waits until
  ``max_batch`` samples are queued or ``max_wait_s`` has passed since the first one arrived,
  whichever comes first (``max_wait_s = 0``: run what is queued now - batches still form from
  the requests that arrive while the workers are busy);
* it then runs the longest prefix of the queue with the same sample shape whose rows fit in
  ``max_batch`` (a single request larger than ``max_batch`` runs alone);
* a request that waited more than ``queue_timeout_s`` is answered with :class:`Overloaded`
  (503: the service is behind) instead of being run late; a cancelled request is skipped;
* models with a static batch dimension of 1 are run one sample at a time (``batchable=False``);
* if a batch fails, each request in it is re-run alone so one bad input fails only itself;
* **adaptive threads**: a batch that leaves the queue empty while no other worker is running
  (a lone request, e.g. one client) is run by ``run_solo`` when given - the model's session with
  every core's intra-op threads - so it is not held to one core; any other batch is run by
  ``run`` (one thread per run, the workers giving the parallelism);
* **inline when short**: a request that finds the queue empty and every worker idle, for a
  model whose lone requests took at most ``policy.solo_inline_s`` each so far (decode, run and
  answer, smoothed), is not queued at all: the submitting thread (the event loop) does it at
  once, saving the two thread hand-offs (to a worker and back), which cost more than such a
  run on a loaded box. The bound keeps the loop from being held long; until a lone request
  has been timed, or when ``solo_inline_s`` is 0, lone requests go to a worker;
* a request may hand over a ``prepare`` callable instead of a tensor (:meth:`Batcher.submit_lazy`):
  the worker builds the input (decodes the image) just before the run, so decoding uses the
  worker threads' cores instead of the single event-loop thread;
* it may also hand over a ``finish`` callable: the worker applies it to that request's outputs
  right after the run (e.g. top-k and the JSON answer), so the event loop gets the finished
  answer; an exception from it fails that request only;
* :meth:`Batcher.close` stops new submissions; the workers finish everything queued, then
  exit - that is how a replaced model version drains without dropping requests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import BatchPolicy
from .errors import CloudError, Overloaded, Unavailable

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], list[np.ndarray]]
Finisher = Callable[[list[np.ndarray]], Any]
BatchHook = Callable[[int, float], None]


@dataclass(frozen=True)
class Pending:
    """What :func:`take` needs to know about a queued request."""

    rows: int
    shape: tuple[int, ...]


def take(queue: Sequence[Pending], max_batch: int, batchable: bool) -> int:
    """How many requests from the head of ``queue`` to run in one batch (>= 1 if non-empty)."""
    if not queue:
        return 0
    if not batchable:
        return 1
    first = queue[0]
    rows = first.rows
    count = 1
    for p in queue[1:]:
        if p.shape != first.shape or rows + p.rows > max_batch:
            break
        rows += p.rows
        count += 1
    return count


@dataclass
class _Item:
    x: np.ndarray | None  # None until ``prepare`` ran
    prepare: Callable[[], np.ndarray] | None  # decoding done by the worker, off the event loop
    pending: Pending
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    enqueued: float
    finish: Finisher | None = None  # outputs -> answer, in the worker


def _resolve(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class Batcher:
    """``workers`` threads per served model version. Thread-safe ``submit`` from any event loop."""

    def __init__(
        self,
        name: str,
        run: Runner,
        policy: BatchPolicy,
        batchable: bool = True,
        on_batch: BatchHook | None = None,
        fail: Callable[[Exception], CloudError] | None = None,
        clock: Callable[[], float] = time.monotonic,
        workers: int = 1,
        run_solo: Runner | None = None,
    ) -> None:
        self.name = name
        self._run = run
        self._run_solo = run_solo
        self._busy = 0  # workers running a batch now
        self._solo_s: float | None = None  # smoothed time of a lone request (decode, run, answer)
        self.policy = policy
        self.batchable = batchable
        self._on_batch = on_batch
        self._fail = fail
        self._clock = clock
        self._queue: deque[_Item] = deque()
        self._rows = 0
        self._closed = False
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{name}-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    @property
    def depth(self) -> int:
        """Samples waiting (not counting the batch being run)."""
        return self._rows

    async def submit(self, x: np.ndarray, finish: Finisher | None = None) -> Any:
        """Queue ``x`` (shape ``(rows, *sample)``) and wait for its outputs (rows first), or for
        ``finish(outputs)`` computed by the worker."""
        return await self._enqueue(x, None, Pending(int(x.shape[0]), tuple(x.shape[1:])), finish)

    async def submit_lazy(
        self, prepare: Callable[[], np.ndarray], shape: tuple[int, ...], finish: Finisher | None = None
    ) -> Any:
        """Queue work whose input a worker thread builds with ``prepare()`` (e.g. decoding an
        image), so the event loop only does HTTP. ``shape`` is what ``prepare`` will return;
        an exception from it fails this request only. With ``finish``, the result is
        ``finish(outputs)``, computed by the worker."""
        return await self._enqueue(None, prepare, Pending(int(shape[0]), tuple(shape[1:])), finish)

    async def _enqueue(
        self,
        x: np.ndarray | None,
        prepare: Callable[[], np.ndarray] | None,
        pending: Pending,
        finish: Finisher | None = None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        rows = pending.rows
        item = _Item(x, prepare, pending, fut, loop, self._clock(), finish)
        with self._cond:
            if self._closed:
                raise Unavailable(f"model {self.name} is being unloaded; retry")
            if self._rows + rows > self.policy.max_queue:
                raise Overloaded(
                    f"model {self.name}: queue full ({self._rows} of {self.policy.max_queue} samples waiting)",
                    retry_after=1.0,
                )
            solo_s = self._solo_s
            inline = solo_s is not None and solo_s <= self.policy.solo_inline_s and not self._queue and not self._busy
            if inline:
                self._busy += 1
            else:
                self._queue.append(item)
                self._rows += rows
                self._cond.notify()
        if inline:  # alone: run it here and now (answered through the future, like a worker's)
            try:
                self._work_on([item], True)
            finally:
                self._done()
        return await fut

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Refuse new work, let the workers finish what is queued, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                t.join(timeout)

    # -- worker thread -------------------------------------------------------------------
    def _next_batch(self) -> tuple[list[_Item], bool] | None:
        """The next batch, and whether it runs alone (queue left empty, no other worker busy);
        the caller must call :meth:`_done` after running it."""
        p = self.policy
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].enqueued + p.max_wait_s
            while self.batchable and self._rows < p.max_batch and not self._closed:
                left = deadline - self._clock()
                if left <= 0:
                    break
                self._cond.wait(left)
            now = self._clock()
            expired: list[_Item] = []
            while self._queue and (
                now - self._queue[0].enqueued > p.queue_timeout_s or self._queue[0].future.cancelled()
            ):
                item = self._queue.popleft()
                self._rows -= item.pending.rows
                expired.append(item)
            n = take([i.pending for i in self._queue], p.max_batch, self.batchable)
            batch = [self._queue.popleft() for _ in range(n)]
            self._rows -= sum(i.pending.rows for i in batch)
            solo = not self._queue and self._busy == 0
            self._busy += 1
        for item in expired:
            if not item.future.cancelled():
                waited = now - item.enqueued
                self._answer(
                    item,
                    None,
                    Overloaded(
                        f"model {self.name}: request waited {waited:.2f}s in the queue (limit {p.queue_timeout_s}s)",
                        retry_after=1.0,
                        queue_full=False,
                    ),
                )
        return batch, solo

    def _done(self) -> None:
        with self._cond:
            self._busy -= 1

    def _answer(self, item: _Item, result: Any, exc: BaseException | None) -> None:
        try:
            item.loop.call_soon_threadsafe(_resolve, item.future, result, exc)
        except RuntimeError:
            pass  # the caller's event loop is gone: nobody is waiting for this answer

    def _prepared(self, items: list[_Item]) -> list[_Item]:
        """Build lazy inputs; a request whose input fails to build is answered and dropped."""
        ready = []
        for item in items:
            if item.x is None and item.prepare is not None:
                try:
                    x = item.prepare()
                except Exception as exc:  # noqa: BLE001 - reported to that request only
                    self._answer(item, None, self._error(exc))
                    continue
                if (int(x.shape[0]), tuple(x.shape[1:])) != (item.pending.rows, item.pending.shape):
                    self._answer(
                        item, None, RuntimeError(f"prepared input {x.shape} differs from the announced {item.pending}")
                    )
                    continue
                item.x = x
            ready.append(item)
        return ready

    def _run_items(self, items: list[_Item], solo: bool = False) -> None:
        arrays = [i.x for i in items if i.x is not None]
        x = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        start = self._clock()
        run = self._run_solo if solo and self._run_solo is not None else self._run
        outputs = run(x)
        if self._on_batch is not None:
            self._on_batch(int(x.shape[0]), self._clock() - start)
        at = 0
        for item in items:
            rows = item.pending.rows
            mine: Any = [o[at : at + rows] for o in outputs]
            at += rows
            if item.finish is not None:
                try:
                    mine = item.finish(mine)
                except Exception as exc:  # noqa: BLE001 - reported to that request only
                    self._answer(item, None, self._error(exc))
                    continue
            self._answer(item, mine, None)

    def _work(self) -> None:
        while True:
            taken = self._next_batch()
            if taken is None:
                return
            try:
                self._work_on(*taken)
            finally:
                self._done()

    def _work_on(self, batch: list[_Item], solo: bool) -> None:
        if solo and len(batch) == 1:
            start = self._clock()
            self._work_on_batch(batch, solo)
            took = self._clock() - start
            with self._cond:
                self._solo_s = took if self._solo_s is None else 0.8 * self._solo_s + 0.2 * took
        else:
            self._work_on_batch(batch, solo)

    def _work_on_batch(self, batch: list[_Item], solo: bool) -> None:
        batch = self._prepared(batch)
        if not batch:
            return
        try:
            self._run_items(batch, solo)
        except Exception as exc:  # noqa: BLE001 - a model error must not kill the worker
            if len(batch) > 1:
                for item in batch:  # isolate the request that broke the batch
                    try:
                        self._run_items([item])
                    except Exception as one:  # noqa: BLE001
                        self._answer(item, None, self._error(one))
            else:
                self._answer(batch[0], None, self._error(exc))

    def _error(self, exc: Exception) -> BaseException:
        if isinstance(exc, CloudError):
            return exc
        if self._fail is not None:
            return self._fail(exc)
        log.exception("model %s failed", self.name)
        return exc
