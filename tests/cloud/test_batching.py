"""Micro-batching rules: merge, bound, expire, isolate failures, drain on close."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from cloud.batching import Batcher, Pending, take
from cloud.config import BatchPolicy
from cloud.errors import BadInput, Overloaded, Unavailable

from .conftest import Setup, client_for, drop, make_archive, portal_of, service_of, tiny_model

S = (8, 8, 1)


def test_take_merges_the_longest_same_shape_prefix_that_fits() -> None:
    cases = [
        ([], 4, True, 0),
        ([Pending(1, S)], 4, True, 1),
        ([Pending(1, S)] * 6, 4, True, 4),
        ([Pending(3, S), Pending(2, S)], 4, True, 1),  # 3 + 2 > 4
        ([Pending(9, S), Pending(1, S)], 4, True, 1),  # oversized request runs alone
        ([Pending(1, S), Pending(1, (4, 4, 1)), Pending(1, S)], 8, True, 1),  # shape change stops
        ([Pending(1, S)] * 6, 4, False, 1),  # static batch: one at a time
    ]
    for queue, max_batch, batchable, want in cases:
        assert take(queue, max_batch, batchable) == want, (queue, max_batch, batchable)


class Recorder:
    """A runner that records batch sizes and can be held until released."""

    def __init__(self, hold: bool = False) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        if not hold:
            self.gate.set()

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self.entered.set()
        self.gate.wait(30)
        if np.isnan(x).any():
            raise BadInput("input", "NaN")
        self.sizes.append(int(x.shape[0]))
        return [x.reshape(x.shape[0], -1).sum(axis=1, keepdims=True)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def rows(n: int, value: float = 1.0) -> np.ndarray:
    return np.full((n, *S), value, np.float32)


def test_concurrent_requests_run_as_one_batch_and_get_their_own_rows() -> None:
    rec = Recorder()
    b = Batcher("m", rec, BatchPolicy(max_batch=16, max_wait_s=30.0, max_queue=64))

    async def go() -> list[list[np.ndarray]]:
        return await asyncio.gather(*(b.submit(rows(1, float(i))) for i in range(16)))

    outs = run(go())
    b.close()
    assert rec.sizes == [16]  # the batch filled up long before the (huge) max wait
    assert [float(o[0][0, 0]) for o in outs] == [64.0 * i for i in range(16)]


def test_full_queue_is_refused_at_once_not_queued() -> None:
    rec = Recorder(hold=True)
    b = Batcher("m", rec, BatchPolicy(max_batch=2, max_wait_s=0, max_queue=4))

    async def go() -> tuple[list[Any], Overloaded]:
        first = asyncio.ensure_future(b.submit(rows(1)))
        await asyncio.to_thread(rec.entered.wait, 30)  # worker is busy with the first
        queued = [asyncio.ensure_future(b.submit(rows(2))) for _ in range(2)]  # 4 rows: full
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await b.submit(rows(1))
        rec.gate.set()
        return await asyncio.gather(first, *queued), info.value

    done, exc = run(go())
    b.close()
    assert exc.queue_full and "4 of 4" in str(exc)
    assert len(done) == 3


def test_request_that_waited_past_the_timeout_is_answered_not_run() -> None:
    now = [0.0]
    rec = Recorder(hold=True)
    b = Batcher(
        "m", rec, BatchPolicy(max_batch=4, max_wait_s=0, max_queue=8, queue_timeout_s=5.0), clock=lambda: now[0]
    )

    async def go() -> tuple[Any, BaseException | None]:
        first = asyncio.ensure_future(b.submit(rows(1)))
        await asyncio.to_thread(rec.entered.wait, 30)
        late = asyncio.ensure_future(b.submit(rows(1)))
        await asyncio.sleep(0)
        now[0] = 6.0  # the queued request is now 6 s old
        rec.gate.set()
        await first
        try:
            await late
        except Overloaded as exc:
            return rec.sizes, exc
        return rec.sizes, None

    sizes, exc = run(go())
    b.close()
    assert sizes == [1] and isinstance(exc, Overloaded) and not exc.queue_full
    assert "waited 6.00s" in str(exc)


def test_one_bad_request_fails_alone_and_its_batch_mates_succeed() -> None:
    rec = Recorder()
    b = Batcher("m", rec, BatchPolicy(max_batch=8, max_wait_s=30.0, max_queue=8))

    async def go() -> list[Any]:
        subs = [b.submit(rows(1, np.nan if i == 3 else 1.0)) for i in range(8)]
        return await asyncio.gather(*subs, return_exceptions=True)

    outs = run(go())
    b.close()
    assert isinstance(outs[3], BadInput)
    assert all(float(o[0][0, 0]) == 64.0 for i, o in enumerate(outs) if i != 3)


def test_close_drains_queued_requests_then_refuses_new_ones() -> None:
    rec = Recorder(hold=True)
    b = Batcher("m", rec, BatchPolicy(max_batch=1, max_wait_s=0, max_queue=8))

    async def go() -> list[Any]:
        subs = [asyncio.ensure_future(b.submit(rows(1))) for _ in range(5)]
        await asyncio.to_thread(rec.entered.wait, 30)
        b.close(wait=False)  # 4 still queued, 1 running
        with pytest.raises(Unavailable):
            await b.submit(rows(1))
        rec.gate.set()
        await asyncio.to_thread(b.close)  # returns once the worker drained the queue
        return await asyncio.gather(*subs)

    outs = run(go())
    assert len(outs) == 5 and rec.sizes == [1] * 5


def test_static_batch_of_one_model_runs_rows_one_by_one(setup: Setup, trust: Any) -> None:
    model = tiny_model((1, 8, 8, 1))
    drop(setup.bundles, make_archive(trust.targets_key, "static", "1", model.onnx))
    x = np.random.default_rng(4).random((3, 8, 8, 1)).astype(np.float32)
    with client_for(setup, trust) as client:
        info = client.get("/v1/models").json()["models"][0]
        assert info["input"]["shape"] == [1, 8, 8, 1] and info["input"]["batchable"] is False
        r = client.post("/v1/models/static/predict", json={"inputs": x.tolist()})
        assert r.status_code == 200, r.text
        assert np.allclose(r.json()["outputs"]["scores"], model.expected(x), atol=1e-5)
        assert 'edgefleet_cloud_batch_size_sum{model="static"} 3.0' in client.get("/metrics").text


def test_two_workers_run_two_batches_at_once() -> None:
    both = threading.Barrier(2, timeout=30)
    sizes: list[int] = []

    def run(x: np.ndarray) -> list[np.ndarray]:
        both.wait()  # returns only if a second run is in flight at the same time
        sizes.append(int(x.shape[0]))
        return [x[:, :1, 0, 0]]

    b = Batcher("m", run, BatchPolicy(max_batch=1, max_wait_s=0, max_queue=8, workers=2), workers=2)

    async def go() -> list[Any]:
        return await asyncio.gather(*(b.submit(rows(1)) for _ in range(4)))

    assert len(asyncio.run(go())) == 4
    b.close()
    assert sizes == [1, 1, 1, 1]


def test_lazy_input_is_built_by_the_worker_and_a_failing_one_fails_alone() -> None:
    rec = Recorder()
    b = Batcher("m", rec, BatchPolicy(max_batch=8, max_wait_s=30.0, max_queue=8))
    loop_thread = threading.get_ident()
    built_on: list[int] = []

    def good() -> np.ndarray:
        built_on.append(threading.get_ident())
        return rows(1, 2.0)

    def bad() -> np.ndarray:
        raise BadInput("file", "is not an image")

    async def go() -> list[Any]:
        subs = [b.submit_lazy(bad if i == 2 else good, (1, *S)) for i in range(8)]
        return await asyncio.gather(*subs, return_exceptions=True)

    outs = asyncio.run(go())
    b.close()
    assert isinstance(outs[2], BadInput)
    assert [float(o[0][0, 0]) for i, o in enumerate(outs) if i != 2] == [128.0] * 7
    assert rec.sizes == [7] and loop_thread not in built_on


def test_full_queue_answers_429_with_retry_after_over_http(setup: Setup, trust: Any) -> None:
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny_model().onnx))
    gate, started = threading.Event(), threading.Event()

    def held() -> np.ndarray:
        started.set()
        gate.wait(30)
        return np.zeros((1, 8, 8, 1), np.float32)

    with client_for(setup, trust, workers=1, max_batch=8, max_queue=8) as client:
        batcher = service_of(client).catalog.default("tiny").batcher
        pending = [portal_of(client).start_task_soon(batcher.submit_lazy, held, (1, 8, 8, 1))]
        assert started.wait(30)  # the only worker is stuck building that input
        pending += [portal_of(client).start_task_soon(batcher.submit_lazy, held, (1, 8, 8, 1)) for _ in range(8)]
        while batcher.depth < 8:  # eight queued samples fill the queue
            gate.wait(0.01)
        r = client.post("/v1/models/tiny/predict", json={"inputs": np.zeros((1, 8, 8, 1)).tolist()})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "queue full (8 of 8" in r.json()["detail"]
        gate.set()
        assert all(len(p.result(30)) == 1 for p in pending)
        r = client.post("/v1/models/tiny/predict", json={"inputs": np.zeros((1, 8, 8, 1)).tolist()})
        assert r.status_code == 200
        assert 'edgefleet_cloud_errors_total{code="overloaded"} 1.0' in client.get("/metrics").text


def test_finish_runs_in_the_worker_on_each_requests_rows_and_fails_only_its_own() -> None:
    rec = Recorder()
    b = Batcher("m", rec, BatchPolicy(max_batch=8, max_wait_s=0.5, max_queue=64))
    threads: list[str] = []

    def finish(value: float):
        def f(outputs: list[np.ndarray]) -> str:
            threads.append(threading.current_thread().name)
            if value == 2:
                raise BadInput("answer", "cannot be written")
            return f"{float(outputs[0][0, 0]):.0f}"

        return f

    async def go() -> list[Any]:
        return await asyncio.gather(
            *(b.submit(rows(1, float(i)), finish(float(i))) for i in range(4)),
            b.submit_lazy(lambda: rows(1, 5.0), (1, *S), finish(5.0)),
            return_exceptions=True,
        )

    outs = run(go())
    b.close()
    assert outs[0] == "0" and outs[1] == "64" and outs[3] == "192" and outs[4] == "320"  # 8*8 ones x value
    assert isinstance(outs[2], BadInput) and "cannot be written" in str(outs[2])
    assert len(threads) == 5 and all(t.startswith("batcher-m") for t in threads)


def test_a_lone_request_runs_on_the_solo_session_and_one_beside_a_busy_worker_on_the_batch_one() -> None:
    solo, batch = Recorder(hold=True), Recorder()
    b = Batcher("m", batch, BatchPolicy(max_batch=4, max_queue=64, workers=2), workers=2, run_solo=solo)

    async def go() -> tuple[Any, Any]:
        first = asyncio.ensure_future(b.submit(rows(1, 1.0)))  # alone: every worker idle
        await asyncio.to_thread(solo.entered.wait, 30)
        second = await b.submit(rows(1, 2.0))  # the other worker is busy with the first
        solo.gate.set()
        return await first, second

    first, second = run(go())
    b.close()
    assert solo.sizes == [1] and batch.sizes == [1]
    assert float(first[0][0, 0]) == 64.0 and float(second[0][0, 0]) == 128.0


def test_a_short_lone_request_runs_on_the_submitting_thread_once_timed_and_the_rest_queue() -> None:
    where: list[int] = []

    def solo(x: np.ndarray) -> list[np.ndarray]:
        where.append(threading.get_ident())
        return [x.reshape(x.shape[0], -1).sum(axis=1, keepdims=True)]

    held = Recorder(hold=True)
    policy = BatchPolicy(max_batch=4, max_queue=64, workers=1, solo_inline_s=60.0)  # any run is "short"
    b = Batcher("m", held, policy, workers=1, run_solo=solo)

    async def go() -> tuple[int, list[Any], Any]:
        loop_thread = threading.get_ident()
        alone = [await b.submit(rows(1, 1.0))]  # timed by a worker
        # the worker answers before it records the time and goes idle: wait for both, or the
        # next request may (rightly) find it still busy and queue
        for _ in range(30_000):
            if b._solo_s is not None and b._busy == 0:
                break
            await asyncio.sleep(0.001)
        alone.append(await b.submit(rows(1, 2.0)))  # then inline
        b._busy += 1  # as if a worker were running another batch: the next request must queue
        try:
            queued = asyncio.ensure_future(b.submit(rows(1, 3.0)))
            await asyncio.to_thread(held.entered.wait, 30)
        finally:
            b._busy -= 1
        held.gate.set()
        return loop_thread, alone, await queued

    loop_thread, alone, queued = run(go())
    b.close()
    assert len(where) == 2 and where[0] != loop_thread and where[1] == loop_thread
    assert [float(a[0][0, 0]) for a in alone] == [64.0, 128.0]
    assert held.sizes == [1] and float(queued[0][0, 0]) == 192.0


def test_a_long_lone_request_stays_on_a_worker() -> None:
    where: list[int] = []

    def solo(x: np.ndarray) -> list[np.ndarray]:
        where.append(threading.get_ident())
        return [x.reshape(x.shape[0], -1).sum(axis=1, keepdims=True)]

    b = Batcher("m", Recorder(), BatchPolicy(max_batch=4, workers=1, solo_inline_s=0.0), run_solo=solo)

    async def go() -> int:
        for i in range(3):
            await b.submit(rows(1, float(i)))
        return threading.get_ident()

    loop_thread = run(go())
    b.close()
    assert len(where) == 3 and loop_thread not in where
