"""HTTP serving with early exit (FastAPI + uvicorn).

Concurrent requests are gathered into micro-batches: a single worker takes what is queued (waiting
at most ``max_wait_ms`` for more, never more than ``max_batch`` items), runs batched early exit in a
thread, and answers every request with its own items. Every request error is a 4xx JSON body
``{"error": "..."}`` that says what is wrong; the server does not die from a request.

Overload is refused, not queued without end: at most ``max_queue`` items wait for the model, a request
that does not fit gets 503 with ``Retry-After``, and one that waits longer than ``request_timeout_s``
gets 504. On SIGTERM the server stops accepting connections, answers what it has accepted (the
batcher stops waiting to fill its batch) and exits. The server holds no state between requests, so
replicas behind a load balancer answer alike (docs/SERVING.md).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from metabert.deploy.server.batcher import Batcher, _Item, threshold_range
from metabert.deploy.server.config import ServerConfig
from metabert.deploy.server.schemas import (ERRORS, Health, PredictRequest, PredictResponse, request_schema)
from metabert.engine.resolve import resolve
from metabert.model.multi_exit import EagerRunner, MultiExitBert

log = logging.getLogger(__name__)


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message}, headers=headers)


class _Edge:
    """Pure ASGI middleware: refuses bodies over ``max_body_bytes`` (413) before anything parses
    them, and counts every response by path and status (unknown paths as ``other``)."""

    def __init__(self, app, config: ServerConfig, responses: Counter, paths: set[str]):
        self.app, self.config, self.responses, self.paths = app, config, responses, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in self.paths else "other"
        status = {}

        async def counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = message.get("more_body", False)
                if size > self.config.max_body_bytes:
                    return await error(413, f"request body over {self.config.max_body_bytes} bytes")(
                        scope, receive, counted)
            replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

            async def replayed():
                return replay.pop() if replay else await receive()

            await self.app(scope, replayed, counted)
        except Exception:
            status.setdefault("code", 500)
            raise
        finally:
            if "code" in status:
                self.responses.labels(path=path, status=str(status["code"])).inc()


def create_app(model: MultiExitBert, config: ServerConfig | None = None, policy_name: str | None = None,
               threshold: float | None = None, patience: int | None = None, api_key: str | None = None,
               runner=None) -> FastAPI:
    """The app. ``policy_name``/``threshold``/``patience``: the server's command line, which pins
    what it names; the rest comes from the request or the checkpoint (``metabert.engine.resolve.resolve``),
    the record calibrated for ``runner`` (an engine runner; default: the eager model).
    ``api_key``: requests need ``Authorization: Bearer <api_key>`` (compared in constant time)."""
    config = config or ServerConfig()
    runner = runner or EagerRunner(model)
    pinned = {"name": policy_name, "threshold": threshold, "patience": patience, "runner": runner.name}
    policy = resolve(**pinned, stored=model.config.exit_policy).policy  # fails at start, not per request
    model.eval()
    registry = CollectorRegistry()
    metrics = {
        "responses": Counter("metabert_responses", "HTTP responses by path and status", ["path", "status"],
                             registry=registry),
        "items": Counter("metabert_items", "texts or pairs classified", registry=registry),
        "latency": Histogram("metabert_request_latency_seconds", "/predict latency of answered requests",
                             registry=registry,
                             buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)),
        "exit_layer": Histogram("metabert_exit_layer", "exit layer of each item", registry=registry,
                                buckets=tuple(range(1, model.num_layers + 1))),
    }
    batcher = Batcher(model, config, metrics, runner)
    Gauge("metabert_queue_depth", "items waiting for the model", registry=registry).set_function(
        lambda: batcher.queue.qsize())
    Gauge("metabert_in_flight_requests", "requests accepted, not yet answered", registry=registry).set_function(
        lambda: batcher.in_flight)
    pair_task = model.config.task.get("text_columns") and len(model.config.task["text_columns"]) == 2
    bearer = HTTPBearer(auto_error=False, description="the key of --api-key-file")

    async def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)):
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})

    guard = [Depends(authorized)] if api_key else []
    probe_guard = guard if config.protect_probes else []

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="metabert", description="Early-exit text classification", lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            problems.append(f"{where}: {e.get('msg')}")
        return error(400, "invalid request: " + "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # 401, 404, 405: the same JSON shape
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.get("/healthz", response_model=Health, dependencies=probe_guard, responses={401: ERRORS[401]})
    async def healthz():
        return {"status": "draining" if batcher.draining.is_set() else "ok", "num_layers": model.num_layers,
                "labels": list(model.config.label_names), "policy": policy.describe(),
                "queued": batcher.queue.qsize(), "in_flight": batcher.in_flight, "worker": os.getpid()}

    @app.get("/metrics", dependencies=probe_guard, response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"}, 401: ERRORS[401]})
    async def prometheus():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict", response_model=PredictResponse, dependencies=guard,
              responses={code: ERRORS[code] for code in (400, 401, 413, 422, 500, 503, 504)})
    async def predict(body: PredictRequest):
        start = time.perf_counter()
        if (body.texts is None) == (body.pairs is None):
            return error(400, "give exactly one of 'texts' and 'pairs'")
        items = body.texts if body.texts is not None else body.pairs
        if not items:
            return error(400, "the list of items is empty")
        if len(items) > config.max_items:
            return error(413, f"{len(items)} items; at most {config.max_items} per request")
        if pair_task and body.texts is not None:
            return error(422, "texts: this model classifies text pairs: send 'pairs'")
        if not pair_task and body.pairs is not None:
            return error(422, "pairs: this model classifies single texts: send 'texts'")
        for k, item in enumerate(items):
            parts = [item] if isinstance(item, str) else list(item)
            for part in parts:
                if not part.strip():
                    return error(400, f"item {k}: empty text")
                if len(part) > config.max_chars:
                    return error(413, f"item {k}: {len(part)} characters; at most {config.max_chars}")
        use = policy
        if body.threshold is not None:
            lo, hi = threshold_range(policy, model.config.num_labels)
            if policy.parameter != "threshold" or not lo <= body.threshold <= hi:
                what = (f"between {lo:g} and {hi:.4g}" if policy.parameter == "threshold"
                        else "not supported by the patience policy")
                return error(400, f"threshold {body.threshold}: must be {what} for the {policy.name} policy")
            try:
                use = resolve(**pinned, request_threshold=body.threshold, stored=model.config.exit_policy,
                              warn=False).policy
            except ValueError as err:
                return error(400, str(err))
        if not batcher.admits(len(items)):
            return error(503, f"overloaded: {batcher.queue.qsize()} items queued, at most {config.max_queue}; "
                              f"retry in {config.retry_after_s} s", {"Retry-After": str(config.retry_after_s)})
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            text, pair = (item, None) if isinstance(item, str) else item
            futures.append(loop.create_future())
            batcher.queue.put_nowait(_Item(text, pair, use, futures[-1]))
        batcher.in_flight += 1
        try:
            _, pending = await asyncio.wait(futures, timeout=config.request_timeout_s)
        finally:
            batcher.in_flight -= 1
        if pending:
            for future in futures:
                future.cancel()  # the batcher skips cancelled items
            return error(504, f"not answered within {config.request_timeout_s:g} s (--request-timeout)")
        failed = next((f.exception() for f in futures if f.exception() is not None), None)
        if failed is not None:  # the model failed on this input: say so, keep serving
            return error(500, f"inference failed: {type(failed).__name__}: {failed}")
        results = [f.result() for f in futures]
        metrics["items"].inc(len(items))
        metrics["latency"].observe(time.perf_counter() - start)
        return {"results": results, "policy": use.describe()}

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schema["components"]["schemas"]["PredictRequest"] = request_schema(
                config, "pairs" if pair_task else "texts",
                threshold_range(policy, model.config.num_labels) if policy.parameter == "threshold" and threshold is None
                else None)
        return app.openapi_schema

    app.openapi = openapi
    paths = {route.path for route in app.routes}
    app.add_middleware(_Edge, config=config, responses=metrics["responses"], paths=paths)
    return app
