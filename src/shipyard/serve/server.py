"""What one worker holds and does: the model holder, batcher, recorder and metrics, their
start-up and drain order, and the garbage-collector tuning of a serving process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.errors import UserError
from shipyard.serve.http import SEQUENCES, TEXT_OUTPUT, with_text
from shipyard.serve.inputs import (
    InputLayout,
    RequestError,
)
from shipyard.serve.metrics import Metrics, mark_dead
from shipyard.serve.reload import ModelHolder, NotReady
from shipyard.serve.settings import ServeSettings
from shipyard.serve.text_inputs import encode_texts
from shipyard.tasks.base import OutputKind

if TYPE_CHECKING:
    from shipyard.serve.batcher import Batcher
    from shipyard.serve.monitoring import ServerMonitor
    from shipyard.serve.recorder import Recorder
    from shipyard.serve.runtime import ServedModel


log = logging.getLogger("shipyard.serve")

#: allocations between young-generation collections in a serving process (CPython: 700)
GC_GEN0_THRESHOLD = 50_000
#: text requests with more characters than this are tokenised in a thread (measured: ~15 µs
#: for a sentence, ~2 ms for a 2,000-character article with truncation)
TOKENIZE_INLINE_CHARS = 4000


# -- the server's state ------------------------------------------------------------------------


class Server:
    """Everything one worker holds: settings, metrics, the model, batcher, log, recorder."""

    def __init__(self, settings: ServeSettings, *, tune_gc: bool = False) -> None:
        self.settings = settings
        self.tune_gc = tune_gc
        self.metrics = Metrics()
        self.holder = ModelHolder(
            settings,
            on_swap=self._on_swap,
            on_result=lambda result: self.metrics.reloads.labels(result).inc(),
        )
        self.layout: InputLayout | None = None
        self.batcher: Batcher | None = None
        self.recorder: Recorder | None = None
        self.monitor: ServerMonitor | None = None
        self._periodic: asyncio.Task[None] | None = None
        self._label_children: dict[tuple[str, str], Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        from shipyard.serve.batcher import Batcher

        settings = self.settings
        try:
            await asyncio.to_thread(self.holder.load_initial)
        except UserError as exc:
            if settings.reload_interval_s <= 0:
                raise
            # A registry source with polling on: start unready and keep trying.
            self.holder.last_error = str(exc)
            log.error(
                "no model loaded yet (will retry every %gs): %s", settings.reload_interval_s, exc
            )
        self.batcher = Batcher(
            self.holder.get,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_rows=settings.max_queue_rows,
            on_batch=self._on_batch,
        )
        await self.batcher.start()
        if settings.prediction_log:
            from shipyard.serve.predlog import default_url
            from shipyard.serve.recorder import Recorder, WriterSettings

            self.recorder = Recorder(
                WriterSettings(
                    url=settings.prediction_log_url or default_url(settings.home_path),
                    spool=str(settings.spool_path),
                    queue_size=settings.prediction_log_queue_size,
                    batch_size=settings.prediction_log_batch_size,
                    flush_interval_s=settings.prediction_log_flush_interval_s,
                    retry_interval_s=settings.prediction_log_retry_interval_s,
                )
            )
            await asyncio.to_thread(self.recorder.start)
        self.holder.start_polling()
        self._periodic = asyncio.create_task(self._refresh_gauges(), name="shipyard-gauges")
        if settings.monitor_interval_s > 0:
            from shipyard.serve.monitoring import ServerMonitor

            log_url = self.recorder.settings.url if self.recorder is not None else None
            self.monitor = ServerMonitor(settings, self.metrics, self.holder, log_url)
            self.monitor.start()
        if self.tune_gc:
            tune_gc()
        model = self.holder.current
        what = (
            f"{model.name} v{model.version} ({model.manifest.task}, {model.precision})"
            if model
            else "no model yet"
        )
        log.info(
            "serving %s at http://%s:%s (pid %d, batch <= %d rows, wait <= %g ms)",
            what,
            settings.host,
            settings.port,
            os.getpid(),
            settings.max_batch_size,
            settings.max_wait_ms,
        )

    async def stop(self) -> None:
        """Drain in order: no new model swaps, answer queued requests, write their rows."""
        self.holder.stop_polling()
        if self._periodic is not None:
            self._periodic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._periodic
        if self.batcher is not None:
            await self.batcher.stop()
        if self.monitor is not None:
            await self.monitor.stop()
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.close)
        mark_dead()
        log.info("stopped (pid %d)", os.getpid())

    # -- hooks -------------------------------------------------------------------------------

    def _on_swap(self, model: ServedModel) -> None:
        if self.layout is None:  # the input spec never changes on reload (refused if it would)
            self.layout = InputLayout.from_manifest(model.manifest)
        self.metrics.set_model(model.name, model.version, model.precision)

    def _on_batch(self, rows: int, seconds: float) -> None:
        self.metrics.observe_batch(rows, seconds)
        if self.batcher is not None:
            self.metrics.queue_rows.set(self.batcher.queue_rows)

    async def _refresh_gauges(self) -> None:
        """Keep the prediction-log gauges fresh in every worker (a scrape reaches only one)."""
        while True:
            self.refresh_gauges()
            await asyncio.sleep(2.0)

    def refresh_gauges(self) -> None:
        self.metrics.model_ready.set(1 if self.holder.ready and self.batcher is not None else 0)
        self.metrics.queue_capacity.set(self.settings.max_queue_rows)
        if self.batcher is not None:
            self.metrics.queue_rows.set(self.batcher.queue_rows)
        if self.recorder is not None:
            self.metrics.set_log_stats(self.recorder.stats())

    # -- predicting ----------------------------------------------------------------------------

    def require_layout(self) -> InputLayout:
        if self.layout is None:
            raise RequestError(
                "no model is loaded yet; try again shortly (GET /v2/health/ready)",
                kind="not_ready",
                status=503,
                headers={"Retry-After": "1"},
            )
        return self.layout

    async def tokenize(self, texts: list[str], what: str = "instance") -> np.ndarray:
        """Texts -> token ids by the served model's own tokenizer (loaded with its graph).
        Long texts cost ~2 ms each (truncation tokenises the cut-off tail too), so a large
        request is tokenised in a thread, off the event loop; short ones (~15 µs) inline."""
        model = self.holder.current
        if model is None or model.tokenizer is None:
            raise RequestError(
                "no model is loaded yet", kind="not_ready", status=503, headers={"Retry-After": "1"}
            )
        tokenizer, truncate = model.tokenizer, self.settings.text_truncate
        if sum(len(t) for t in texts) > TOKENIZE_INLINE_CHARS:
            ids = await asyncio.to_thread(encode_texts, tokenizer, texts, truncate, what)
        else:
            ids = encode_texts(tokenizer, texts, truncate, what)
        return ids  # type: ignore[no-any-return]

    async def predict(self, features: np.ndarray) -> tuple[dict[str, np.ndarray], ServedModel]:
        """Through the batcher, with the 503s a client can retry."""
        from shipyard.serve.batcher import QueueFull

        assert self.batcher is not None
        self.metrics.in_flight.inc()
        try:
            outputs, model = await self.batcher.submit(features)
        except QueueFull as exc:
            retry = max(1, math.ceil(exc.retry_after_s))
            raise RequestError(
                f"{exc}; retry after {retry} s",
                kind="queue_full",
                status=503,
                headers={"Retry-After": str(retry)},
            ) from None
        except NotReady as exc:
            raise RequestError(
                str(exc), kind="not_ready", status=503, headers={"Retry-After": "1"}
            ) from None
        finally:
            self.metrics.in_flight.dec()
            self.metrics.queue_rows.set(self.batcher.queue_rows)
        return outputs, model

    def record(
        self,
        ids: list[str],
        model: ServedModel,
        features: np.ndarray,
        raw: list[Any] | None,
        outputs: dict[str, np.ndarray],
        started: float,
    ) -> None:
        """Count the predictions and hand them to the recorder (a queue put)."""
        manifest = model.manifest
        if manifest.output_kind == "classes" and manifest.labels:
            best = np.bincount(
                outputs["probabilities"].argmax(axis=1), minlength=len(manifest.labels)
            )
            for index in np.flatnonzero(best).tolist():
                self._label_counter(model.name, manifest.labels[index]).inc(int(best[index]))
        elif manifest.output_kind == OutputKind.TEXT.value:
            self._label_counter(model.name, TEXT_OUTPUT).inc(len(ids))
            # The log keeps the generated text, not its ids: requests' ``sequences`` differ
            # in width, and the recorder joins a frame's outputs row-wise.
            if TEXT_OUTPUT not in outputs:
                outputs = with_text(model, outputs)
            outputs = {k: v for k, v in outputs.items() if k != SEQUENCES}
        else:
            self._label_counter(model.name, "value").inc(len(ids))
        if self.recorder is not None and self.layout is not None:
            from shipyard.serve.recorder import Answered

            self.recorder.put(
                Answered(
                    ids=ids,
                    model_name=model.name,
                    model_version=model.version,
                    task=manifest.task,
                    labels=manifest.labels,
                    columns=self.layout.columns if self.layout.kind == "table" else None,
                    features=features,
                    raw=raw,
                    outputs=outputs,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    created_at=time.time(),
                )
            )

    def _label_counter(self, model: str, label: str) -> Any:
        key = (model, label)
        child = self._label_children.get(key)
        if child is None:
            child = self._label_children[key] = self.metrics.predictions.labels(model, label)
        return child


def tune_gc() -> None:
    """Keep CPython's cyclic garbage collector off the request path of a serving process.

    orjson turns one 3x32x32 image into ~1,000 lists, so with the default threshold (700
    allocations) every request triggered a young collection and every hundredth a full
    one over the whole heap (FastAPI, pydantic, numpy, ONNX Runtime: hundreds of thousands
    of long-lived objects). py-spy put ``gc_collect_main`` at 40% of the 3x32x32 server's
    samples under load. ``gc.freeze()`` moves everything alive after startup into the
    permanent generation (never scanned again), and a larger young threshold makes
    collections rare; request garbage is acyclic and freed by reference counting anyway.
    Only for the ``shipyard serve`` process (the uvicorn factory), not an embedding app.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
