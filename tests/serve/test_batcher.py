"""The adaptive batcher on a real ONNX Runtime session (wine, one epoch, fp32 and int8).

No timing assertions: these tests prove what the batcher answers and to whom; how fast
it does so is measured in ``benchmarks/bench_batcher.py``. Each test drives its own event
loop with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard.config import compose
from shipyard.export.build import export_run
from shipyard.export.package import ModelPackage
from shipyard.serve.batcher import Batcher, BatcherClosed, QueueFull
from shipyard.serve.runtime import ServedModel
from shipyard.train.run import train

QUICK = (
    "task=tabular",
    "quantize=int8",
    "trainer.max_epochs=1",
    "trainer.early_stopping_patience=null",
    "export.latency.repeats=1",
    "export.latency.batch_sizes=[1]",
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("batcher") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHIPYARD_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def models(home: Path) -> dict[str, ServedModel]:
    """Two wine versions (fp32; trained with different seeds, so their numbers differ)
    and the first one's int8 graph."""
    served = {}
    for version, seed in (("1", 42), ("2", 7)):
        cfg = compose([*QUICK, f"seed={seed}"])
        package = export_run(cfg, train(cfg).run_id).package
        served[f"v{version}"] = ServedModel.load(package, name="wine", version=version)
        if version == "1":
            served["v1-int8"] = ServedModel.load(
                dynamic_int8(package, home / "dynamic"),
                name="wine",
                version=version,
                precision="int8",
            )
    return served


def dynamic_int8(package: ModelPackage, folder: Path) -> ModelPackage:
    """A copy of ``package`` whose int8 graph is *dynamically* quantised, as other tools
    make them (Shipyard's export quantises statically): the batcher must keep its rows
    apart."""
    import shutil

    from shipyard.export.package import describe_graph, save_package
    from shipyard.export.quantize import quantize_int8

    staging = folder.with_name(f".{folder.name}.partial")
    shutil.copytree(package.path, staging)
    int8 = staging / "model.int8.onnx"
    quantize_int8(staging / "model.onnx", int8, np.zeros((1, 13), np.float32), "dynamic")
    graphs = [
        describe_graph(int8, precision="int8") if g.precision == "int8" else g
        for g in package.manifest.graphs
    ]
    manifest = package.manifest.model_copy(update={"graphs": graphs})
    return save_package(staging, manifest, folder)


@pytest.fixture
def model(models: dict[str, ServedModel]) -> ServedModel:
    return models["v1"]


def requests(count: int, seed: int = 0, width: int = 13) -> list[np.ndarray]:
    """``count`` requests of 1 to 9 rows of random wine-shaped features."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(int(rng.integers(1, 10)), width)).astype(np.float32) for _ in range(count)
    ]


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


class Batches:
    """``on_batch`` recorder."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, rows: int, seconds: float) -> None:
        assert seconds >= 0
        self.sizes.append(rows)


def test_concurrent_requests_get_exactly_their_own_rows(model: ServedModel) -> None:
    batches = Batches()
    inputs = requests(200)

    async def scenario() -> None:
        batcher = Batcher(lambda: model, max_batch_size=64, on_batch=batches)
        await batcher.start()
        answers = await asyncio.gather(*(batcher.submit(rows) for rows in inputs))
        await batcher.stop()

        for rows, (outputs, served) in zip(inputs, answers, strict=True):
            assert served is model
            assert set(outputs) == {"probabilities"}
            alone = model.run(rows)["probabilities"]
            assert outputs["probabilities"].shape == alone.shape
            np.testing.assert_allclose(outputs["probabilities"], alone, rtol=0, atol=1e-6)
        assert batcher.in_flight == 0
        assert batcher.queue_rows == 0

    run(scenario)
    assert sum(batches.sizes) == sum(len(rows) for rows in inputs)
    assert max(batches.sizes) > 1  # batches formed
    assert max(batches.sizes) <= 64
    assert len(batches.sizes) < len(inputs)


def test_batches_form_while_waiting_for_more(model: ServedModel) -> None:
    """With a wait, requests that trickle in (one per loop turn) still share a call."""
    batches = Batches()

    async def scenario() -> None:
        batcher = Batcher(lambda: model, max_batch_size=16, max_wait_ms=50, on_batch=batches)
        await batcher.start()

        async def late(rows: np.ndarray, turns: int) -> Any:
            for _ in range(turns):
                await asyncio.sleep(0)
            return await batcher.submit(rows)

        await asyncio.gather(*(late(rows, k) for k, rows in enumerate(requests(10))))
        await batcher.stop()

    run(scenario)
    assert max(batches.sizes) > 1


def test_a_request_larger_than_a_batch_runs_alone_in_one_call(model: ServedModel) -> None:
    batches = Batches()
    big = np.random.default_rng(3).normal(size=(50, 13)).astype(np.float32)

    async def scenario() -> None:
        batcher = Batcher(lambda: model, max_batch_size=8, on_batch=batches)
        await batcher.start()
        _small, large = await asyncio.gather(batcher.submit(big[:3]), batcher.submit(big))
        await batcher.stop()
        np.testing.assert_allclose(
            large[0]["probabilities"], model.run(big)["probabilities"], atol=1e-6
        )

    run(scenario)
    assert batches.sizes == [3, 50]


class GatedSession:
    """A real ORT session whose first call waits for the test to open the gate, so the
    test can see what gathers while a batch runs."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.entered = threading.Event()
        self.gate = threading.Event()

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(timeout=30), "the test never opened the gate"
        return list(self.session.run(names, feed))


def test_rows_that_arrive_while_a_batch_runs_form_the_next_batches(model: ServedModel) -> None:
    gated = GatedSession(model.session)
    slow = dataclasses.replace(model, session=gated)
    batches = Batches()

    async def scenario() -> None:
        batcher = Batcher(lambda: slow, max_batch_size=8, on_batch=batches)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(requests(1)[0][:1]))
        await asyncio.to_thread(gated.entered.wait, 30)  # the first batch is in ORT now
        later = [asyncio.create_task(batcher.submit(rows[:1])) for rows in requests(20)]
        await asyncio.sleep(0)
        gated.gate.set()
        await asyncio.gather(first, *later)
        await batcher.stop()

    run(scenario)
    # one full batch is sent to wait behind the running one; the rest follow as the
    # worker frees up, the remainder without waiting for a full batch
    assert batches.sizes == [1, 8, 8, 4]


def test_a_full_queue_refuses_at_once_with_retry_after(model: ServedModel) -> None:
    async def scenario() -> None:
        batcher = Batcher(lambda: model, max_batch_size=4, max_queue_rows=8)
        await batcher.start()
        singles = [rows[:1] for rows in requests(50)]
        answers = await asyncio.gather(
            *(batcher.submit(rows) for rows in singles), return_exceptions=True
        )
        await batcher.stop()

        refused = [a for a in answers if isinstance(a, QueueFull)]
        served = [a for a in answers if not isinstance(a, BaseException)]
        assert refused
        assert served
        assert len(refused) + len(served) == 50
        assert all(r.retry_after_s > 0 for r in refused)
        assert "queue is full" in str(refused[0])

    run(scenario)


def test_stop_answers_every_queued_request_then_refuses(model: ServedModel) -> None:
    inputs = requests(100, seed=5)

    async def scenario() -> None:
        batcher = Batcher(lambda: model, max_batch_size=8, max_wait_ms=1000)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(rows)) for rows in inputs]
        await asyncio.sleep(0)  # every request is queued now
        assert batcher.in_flight == 100
        assert batcher.queue_rows > 0

        await batcher.stop()

        assert all(task.done() and task.exception() is None for task in tasks)
        for rows, task in zip(inputs, tasks, strict=True):
            np.testing.assert_allclose(
                task.result()[0]["probabilities"], model.run(rows)["probabilities"], atol=1e-6
            )
        assert (batcher.in_flight, batcher.queue_rows) == (0, 0)
        with pytest.raises(BatcherClosed) as closed:
            await batcher.submit(inputs[0])
        assert isinstance(closed.value, QueueFull)

    run(scenario)


def test_a_model_swap_applies_per_batch_and_never_mixes(models: dict[str, ServedModel]) -> None:
    """Hot reload swaps what ``get_model`` returns; here it alternates on every batch."""
    served: list[ServedModel] = []
    alternate = itertools.cycle([models["v1"], models["v2"]])

    def get_model() -> ServedModel:
        served.append(next(alternate))
        return served[-1]

    batches = Batches()
    inputs = requests(60, seed=7)

    async def scenario() -> list[tuple[dict[str, np.ndarray], ServedModel]]:
        batcher = Batcher(get_model, max_batch_size=10, on_batch=batches)
        await batcher.start()
        answers = await asyncio.gather(*(batcher.submit(rows) for rows in inputs))
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())

    assert len(served) == len(batches.sizes) > 2
    assert {m.version for m in served} == {"1", "2"}
    probe = inputs[0]
    assert not np.allclose(
        models["v1"].run(probe)["probabilities"],
        models["v2"].run(probe)["probabilities"],
        atol=1e-3,
    )
    # FIFO: the requests fill the batches in order; every request of batch i got model i
    position = 0
    for batch_model, size in zip(served, batches.sizes, strict=True):
        rows = 0
        while rows < size:
            outputs, model = answers[position]
            assert model is batch_model
            expected = model.run(inputs[position])["probabilities"]
            np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-6)
            rows += len(inputs[position])
            position += 1
        assert rows == size
    assert position == len(inputs)


def test_an_ort_error_reaches_only_the_callers_of_its_batch(model: ServedModel) -> None:
    """Rows of the wrong width make ONNX Runtime raise; they are batched together (same
    row shape), apart from the good requests, which are answered."""
    batches = Batches()
    bad = requests(3, seed=1, width=12)
    good = requests(5, seed=2)

    async def scenario() -> None:
        batcher = Batcher(lambda: model, on_batch=batches)
        await batcher.start()
        answers = await asyncio.gather(
            *(batcher.submit(rows) for rows in [*bad, *good]), return_exceptions=True
        )
        await batcher.stop()

        errors, results = answers[:3], answers[3:]
        assert all(isinstance(e, Exception) and "features" in str(e) for e in errors)
        assert len({id(e) for e in errors}) == 1  # one ORT call, one error
        for rows, answer in zip(good, results, strict=True):
            assert not isinstance(answer, BaseException)
            np.testing.assert_allclose(
                answer[0]["probabilities"], model.run(rows)["probabilities"], atol=1e-6
            )

    run(scenario)
    assert batches.sizes == [sum(map(len, bad)), sum(map(len, good))]


def test_a_failing_get_model_fails_its_batch_only(model: ServedModel) -> None:
    calls = itertools.count()

    def get_model() -> ServedModel:
        if next(calls) == 0:
            raise RuntimeError("no model loaded yet")
        return model

    async def scenario() -> None:
        batcher = Batcher(get_model)
        await batcher.start()
        with pytest.raises(RuntimeError, match="no model loaded yet"):
            await batcher.submit(requests(1)[0])
        outputs, served = await batcher.submit(requests(1)[0])
        await batcher.stop()
        assert served is model
        assert outputs["probabilities"].shape[1] == 3

    run(scenario)


def test_a_caller_that_leaves_costs_no_model_time(model: ServedModel) -> None:
    batches = Batches()

    async def scenario() -> None:
        batcher = Batcher(lambda: model, max_wait_ms=1000, max_batch_size=64, on_batch=batches)
        await batcher.start()
        inputs = requests(4, seed=9)
        tasks = [asyncio.create_task(batcher.submit(rows)) for rows in inputs]
        await asyncio.sleep(0)
        tasks[1].cancel()
        await batcher.stop()
        assert tasks[1].cancelled()
        assert all(t.done() and not t.cancelled() for k, t in enumerate(tasks) if k != 1)
        assert batches.sizes == [sum(len(r) for k, r in enumerate(inputs) if k != 1)]

    run(scenario)


def test_dynamic_int8_requests_cannot_change_each_others_answers(
    models: dict[str, ServedModel],
) -> None:
    """Dynamic int8 scales activations by the batch's range: batched naively, one extreme
    request would flip its neighbours' labels. Such a model gets one ORT call per
    request (still one thread hop per batch), so every answer is the request's own."""
    int8 = models["v1-int8"]
    assert not int8.rows_independent
    assert models["v1"].rows_independent
    batches = Batches()
    inputs = [*requests(30, seed=11), np.full((1, 13), 1e6, dtype=np.float32)]

    async def scenario() -> None:
        batcher = Batcher(lambda: int8, on_batch=batches)
        await batcher.start()
        answers = await asyncio.gather(*(batcher.submit(rows) for rows in inputs))
        await batcher.stop()
        for rows, (outputs, _) in zip(inputs, answers, strict=True):
            alone = int8.run(rows)["probabilities"]
            np.testing.assert_allclose(outputs["probabilities"], alone, rtol=0, atol=1e-6)

    run(scenario)
    assert max(batches.sizes) > 1


def test_bad_arguments(model: ServedModel) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(lambda: model, max_batch_size=0)

    async def scenario() -> None:
        batcher = Batcher(lambda: model)
        with pytest.raises(BatcherClosed):  # not started
            await batcher.submit(np.zeros((1, 13), dtype=np.float32))
        await batcher.start()
        with pytest.raises(ValueError, match="at least one row"):
            await batcher.submit(np.zeros((0, 13), dtype=np.float32))
        await batcher.stop()

    run(scenario)
