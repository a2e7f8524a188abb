"""HTTP serving with early exit (FastAPI + uvicorn).

Concurrent requests are gathered into micro-batches: a single worker takes what is queued (waiting
at most ``max_wait_ms`` for more, never more than ``max_batch`` items), runs batched early exit in a
thread, and answers every request with its own items. Every request error is a 4xx JSON body that
says what is wrong; the server does not die from a request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from metabert import engine
from metabert.batching import pad_all, tokenize
from metabert.exits import ExitPolicy
from metabert.modeling import EagerRunner, MultiExitBert
from metabert.policy import resolve

log = logging.getLogger(__name__)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] | None = Field(None, description="single texts to classify")
    pairs: list[tuple[str, str]] | None = Field(None, description="text pairs, for pair tasks")
    threshold: float | None = Field(None, description="override the exit policy's threshold γ for this request")


class ItemResult(BaseModel):
    label: str
    probabilities: dict[str, float]
    exit_layer: int
    latency_ms: float
    truncated: bool
    replaced_characters: int = Field(0, description="lone UTF-16 surrogates replaced by U+FFFD before tokenising")


class PredictResponse(BaseModel):
    results: list[ItemResult]
    policy: str


@dataclass
class ServerConfig:
    max_items: int = 64  # per request
    max_batch: int = 32  # per model call
    max_wait_ms: float = 5.0
    max_seq_length: int = 128
    max_chars: int = 20_000  # per text, checked before tokenising


@dataclass
class _Item:
    text: str
    pair: str | None
    policy: ExitPolicy
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


def threshold_range(policy: ExitPolicy, num_labels: int) -> tuple[float, float]:
    if policy.name in ("entropy", "patience-entropy"):
        return 0.0, math.log(num_labels)
    return 0.0, 1.0  # norm-entropy, max-prob


class Batcher:
    """The single worker that turns queued items into batched early-exit calls."""

    def __init__(self, model: MultiExitBert, config: ServerConfig, metrics: dict, runner=None):
        self.model, self.config, self.metrics = model, config, metrics
        self.runner = runner or EagerRunner(model)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    def start(self):
        self.task = asyncio.create_task(self._loop())

    async def stop(self):
        if self.task:
            self.task.cancel()

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.config.max_wait_ms / 1000
            while len(items) < self.config.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            # only items that can share a model call are batched: same policy, same input kind
            groups: dict[tuple[ExitPolicy, bool], list[_Item]] = {}
            for item in items:
                groups.setdefault((item.policy, item.pair is not None), []).append(item)
            for (policy, _), group in groups.items():
                await self._answer(loop, group, policy)

    async def _answer(self, loop, group: list[_Item], policy: ExitPolicy) -> None:
        """Run a group; if it fails, run its items one by one, so that one item's failure fails only
        the request it belongs to."""
        try:
            results = await loop.run_in_executor(None, self._run, group, policy)
        except Exception as err:
            if len(group) > 1:
                log.warning("a batch of %d failed (%s); retrying item by item", len(group), err)
                for item in group:
                    await self._answer(loop, [item], policy)
                return
            log.exception("an item failed")
            if not group[0].future.done():
                group[0].future.set_exception(err)
            return
        for item, result in zip(group, results):
            if not item.future.done():
                item.future.set_result(result)

    def _run(self, group: list[_Item], policy: ExitPolicy) -> list[dict]:
        model = self.model
        pairs = [i.pair for i in group] if group[0].pair is not None else None
        encoded, truncated, replaced = tokenize(model.tokenizer, [i.text for i in group], pairs,
                                                self.config.max_seq_length, flag_truncated=True)
        out = engine.run(self.runner, pad_all(encoded, model.tokenizer.pad_token_id), policy)
        probs = out.probs
        names = model.config.label_names
        done = time.perf_counter()
        results = []
        for j, item in enumerate(group):
            layer = int(out.exit_layer[j])
            self.metrics["exit_layer"].observe(layer)
            results.append({
                "label": names[int(probs[j].argmax())],
                "probabilities": {n: float(p) for n, p in zip(names, probs[j])},
                "exit_layer": layer,
                "latency_ms": (done - item.queued) * 1000,
                "truncated": truncated[j],
                "replaced_characters": replaced[j],
            })
        return results


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def create_app(model: MultiExitBert, config: ServerConfig | None = None, policy_name: str | None = None,
               threshold: float | None = None, patience: int | None = None, runner=None) -> FastAPI:
    """The app. ``policy_name``/``threshold``/``patience``: the server's command line, which pins
    what it names; the rest comes from the request or the checkpoint (``metabert.policy.resolve``),
    the record calibrated for ``runner`` (an engine runner; default: the eager model)."""
    config = config or ServerConfig()
    runner = runner or EagerRunner(model)
    pinned = {"name": policy_name, "threshold": threshold, "patience": patience, "runner": runner.name}
    policy = resolve(**pinned, stored=model.config.exit_policy).policy  # fails at start, not per request
    model.eval()
    registry = CollectorRegistry()
    metrics = {
        "requests": Counter("metabert_requests", "HTTP requests to /predict", ["status"], registry=registry),
        "items": Counter("metabert_items", "texts or pairs classified", registry=registry),
        "latency": Histogram("metabert_request_latency_seconds", "/predict latency", registry=registry,
                             buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)),
        "exit_layer": Histogram("metabert_exit_layer", "exit layer of each item", registry=registry,
                                buckets=tuple(range(1, model.num_layers + 1))),
    }
    batcher = Batcher(model, config, metrics, runner)
    pair_task = model.config.task.get("text_columns") and len(model.config.task["text_columns"]) == 2

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="metabert", description="Early-exit text classification", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        metrics["requests"].labels(status="400").inc()
        problems = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            problems.append(f"{where}: {e.get('msg')}")
        return error(400, "invalid request: " + "; ".join(problems))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "num_layers": model.num_layers, "labels": list(model.config.label_names),
                "policy": policy.describe(), "queued": batcher.queue.qsize()}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict", response_model=PredictResponse)
    async def predict(body: PredictRequest):
        start = time.perf_counter()
        if (body.texts is None) == (body.pairs is None):
            metrics["requests"].labels(status="400").inc()
            return error(400, "give exactly one of 'texts' and 'pairs'")
        items = body.texts if body.texts is not None else body.pairs
        if not items:
            metrics["requests"].labels(status="400").inc()
            return error(400, "the list of items is empty")
        if len(items) > config.max_items:
            metrics["requests"].labels(status="413").inc()
            return error(413, f"{len(items)} items; at most {config.max_items} per request")
        if pair_task and body.texts is not None:
            metrics["requests"].labels(status="422").inc()
            return error(422, "texts: this model classifies text pairs: send 'pairs'")
        if not pair_task and body.pairs is not None:
            metrics["requests"].labels(status="422").inc()
            return error(422, "pairs: this model classifies single texts: send 'texts'")
        for k, item in enumerate(items):
            parts = [item] if isinstance(item, str) else list(item)
            for part in parts:
                if not part.strip():
                    metrics["requests"].labels(status="400").inc()
                    return error(400, f"item {k}: empty text")
                if len(part) > config.max_chars:
                    metrics["requests"].labels(status="413").inc()
                    return error(413, f"item {k}: {len(part)} characters; at most {config.max_chars}")
        use = policy
        if body.threshold is not None:
            lo, hi = threshold_range(policy, model.config.num_labels)
            if policy.parameter != "threshold" or not lo <= body.threshold <= hi:
                metrics["requests"].labels(status="400").inc()
                what = (f"between {lo:g} and {hi:.4g}" if policy.parameter == "threshold"
                        else "not supported by the patience policy")
                return error(400, f"threshold {body.threshold}: must be {what} for the {policy.name} policy")
            try:
                use = resolve(**pinned, request_threshold=body.threshold, stored=model.config.exit_policy,
                              warn=False).policy
            except ValueError as err:
                metrics["requests"].labels(status="400").inc()
                return error(400, str(err))
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            text, pair = (item, None) if isinstance(item, str) else item
            future = loop.create_future()
            futures.append(future)
            await batcher.queue.put(_Item(text, pair, use, future))
        try:
            results = await asyncio.gather(*futures)
        except Exception as err:  # the model failed on this input: say so, keep serving
            metrics["requests"].labels(status="500").inc()
            return error(500, f"inference failed: {type(err).__name__}: {err}")
        metrics["requests"].labels(status="200").inc()
        metrics["items"].inc(len(items))
        metrics["latency"].observe(time.perf_counter() - start)
        return {"results": results, "policy": use.describe()}

    return app


def serve(checkpoint: str, host: str, port: int, policy_name: str | None = None, threshold: float | None = None,
          patience: int | None = None, config: ServerConfig | None = None, threads: int | None = None,
          runner: str | None = None, onnx: str | None = None) -> None:
    import uvicorn

    from metabert.runners import load_runner

    if threads:
        torch.set_num_threads(threads)
    model = MultiExitBert.from_pretrained(checkpoint)
    app = create_app(model, config, policy_name, threshold, patience, load_runner(runner, model, onnx, checkpoint, threads))
    uvicorn.run(app, host=host, port=port, log_level="warning")
