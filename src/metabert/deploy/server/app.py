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
import ipaddress
import json
import logging
import math
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field

import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from metabert.engine import loop as engine
from metabert.data.batching import pad_all, tokenize
from metabert.engine.policies import ExitPolicy
from metabert.model.multi_exit import EagerRunner, MultiExitBert
from metabert.engine.resolve import resolve
from metabert.deploy.runners import load_runner

log = logging.getLogger(__name__)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] | None = Field(None, description="single texts to classify")
    pairs: list[tuple[str, str]] | None = Field(None, description="text pairs, for pair tasks")
    # strict: JSON true/false or "0.5" are not thresholds (lax float took false as γ=0, found by fuzzing)
    threshold: float | None = Field(None, strict=True,
                                    description="override the exit policy's threshold γ for this request")


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


class Health(BaseModel):
    status: str
    num_layers: int
    labels: list[str]
    policy: str
    queued: int = Field(description="items waiting for the model")
    in_flight: int = Field(description="requests accepted and not yet answered")
    worker: int = Field(description="process id of the worker that answered")


class ErrorBody(BaseModel):
    error: str


ERRORS = {code: {"model": ErrorBody, "description": what} for code, what in (
    (400, "invalid request"), (401, "missing or wrong API key"), (413, "too many items or characters"),
    (422, "the input kind this model does not take"), (500, "the model failed on this input"),
    (503, "overloaded: queue full (see Retry-After)"), (504, "not answered within the request timeout"))}


@dataclass(frozen=True)
class ServerConfig:
    max_items: int = 64  # per request
    max_batch: int = 32  # per model call
    max_wait_ms: float = 5.0
    max_seq_length: int = 128
    max_chars: int = 20_000  # per text, checked before tokenising
    max_queue: int = 256  # items waiting for the model; a request that does not fit gets 503
    request_timeout_s: float = 30.0  # from arrival to answer; later: 504
    max_body_bytes: int = 8 * 1024 * 1024  # larger bodies get 413 before they are parsed
    retry_after_s: int = 1  # the Retry-After of a 503
    protect_probes: bool = False  # /healthz and /metrics need the API key too (when there is one)

    def __post_init__(self):
        for name in ("max_items", "max_batch", "max_seq_length", "max_chars", "max_queue", "max_body_bytes",
                     "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.max_wait_ms <= 60_000:
            raise ValueError(f"ServerConfig.max_wait_ms must be in [0, 60000], got {self.max_wait_ms}")
        if not 0 < self.request_timeout_s <= 3600:
            raise ValueError(f"ServerConfig.request_timeout_s must be in (0, 3600], got {self.request_timeout_s}")
        if self.max_queue < self.max_items:
            raise ValueError(f"ServerConfig.max_queue ({self.max_queue}) must be at least max_items "
                             f"({self.max_items}), or a full-size request could never be queued")


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
    """The single worker that turns queued items into batched early-exit calls. ``runner``: the
    backend of the model calls (``metabert.engine.loop.Runner``; eager PyTorch by default)."""

    def __init__(self, model: MultiExitBert, config: ServerConfig, metrics: dict, runner=None):
        self.model, self.config, self.metrics = model, config, metrics
        self.runner = runner if runner is not None else EagerRunner(model)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()  # bounded by `admits`: a request's items go in together
        self.draining = asyncio.Event()
        self.in_flight = 0  # requests accepted, not yet answered
        self.task: asyncio.Task | None = None

    def admits(self, n: int) -> bool:
        return self.queue.qsize() + n <= self.config.max_queue

    def start(self):
        self.task = asyncio.create_task(self._loop())

    def drain(self):
        """Stop waiting for batches to fill: answer what is queued now (shutdown)."""
        self.draining.set()

    async def stop(self):
        if self.task:
            self.task.cancel()

    async def _next(self, timeout: float) -> _Item | None:
        """The next queued item within ``timeout`` seconds; None when there is none or on drain."""
        if self.draining.is_set():
            return self.queue.get_nowait() if not self.queue.empty() else None
        get = asyncio.ensure_future(self.queue.get())
        drain = asyncio.ensure_future(self.draining.wait())
        await asyncio.wait({get, drain}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        drain.cancel()
        if get.done():
            return get.result()
        get.cancel()  # a cancelled get leaves its item in the queue
        return None

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.config.max_wait_ms / 1000
            while len(items) < self.config.max_batch:
                timeout = deadline - loop.time()
                item = await self._next(timeout) if timeout > 0 or self.draining.is_set() else None
                if item is None:
                    break
                items.append(item)
            items = [i for i in items if not i.future.done()]  # timed out while queued: no model call for them
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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def read_api_key(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        key = f.read().strip()
    if len(key) < 16 or any(c.isspace() for c in key):
        raise ValueError(f"{path}: an API key file holds one key of at least 16 characters without spaces")
    return key


# a character that is not whitespace by Python's str.isspace (the handler's rule), as a JSON-schema
# pattern: ECMA's \S differs from it (U+001C-U+001F, U+0085, U+FEFF)
NOT_BLANK = "[^" + "".join(f"\\u{i:04x}" for i in range(0x3001) if chr(i).isspace()) + "]"


def request_schema(config: ServerConfig, field: str, thresholds: tuple[float, float] | None) -> dict:
    """The JSON schema of a request this server accepts, limits included: only the input kind its
    model takes (``texts`` or ``pairs``), non-blank texts, and ``threshold`` only where a request
    may set it. (Pydantic's model accepts more and the handler refuses it with a message.)"""
    text = {"type": "string", "minLength": 1, "maxLength": config.max_chars, "pattern": NOT_BLANK}
    item = text if field == "texts" else {"type": "array", "prefixItems": [text, text], "minItems": 2, "maxItems": 2}
    properties = {field: {"type": "array", "items": item, "minItems": 1, "maxItems": config.max_items,
                          "description": "single texts to classify" if field == "texts" else "text pairs to classify"}}
    if thresholds is not None:
        properties["threshold"] = {"anyOf": [{"type": "number", "minimum": thresholds[0], "maximum": thresholds[1]},
                                             {"type": "null"}],
                                   "description": "the exit policy's threshold γ for this request (null: the server's)"}
    return {"title": "PredictRequest", "type": "object", "properties": properties, "required": [field],
            "additionalProperties": False}


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


# --- running it -------------------------------------------------------------------------------------

OPTIONS_ENV = "METABERT_SERVE_OPTIONS"  # how `serve(workers=N)` hands its options to each worker


def _build(options: dict) -> FastAPI:
    if options.get("threads"):
        torch.set_num_threads(options["threads"])
    model = MultiExitBert.from_pretrained(options["checkpoint"])
    key = read_api_key(options["api_key_file"]) if options.get("api_key_file") else None
    runner = load_runner(options.get("runner"), model, options.get("onnx"), options["checkpoint"], options.get("threads"))
    return create_app(model, ServerConfig(**options["config"]), options.get("policy_name"),
                      options.get("threshold"), options.get("patience"), api_key=key, runner=runner)


def app_from_env() -> FastAPI:
    """App factory for uvicorn workers (``uvicorn --factory metabert.deploy.server.app:app_from_env``), reading
    the options ``serve`` wrote to ``$METABERT_SERVE_OPTIONS`` (JSON)."""
    return _build(json.loads(os.environ[OPTIONS_ENV]))


def serve(checkpoint: str, host: str, port: int, policy_name: str | None = None, threshold: float | None = None,
          patience: int | None = None, config: ServerConfig | None = None, threads: int | None = None,
          api_key_file: str | None = None, allow_unauthenticated: bool = False, workers: int = 1,
          drain_timeout_s: float = 30.0, runner: str | None = None, onnx: str | None = None) -> None:
    """Run the server until SIGTERM/SIGINT. A host other than loopback needs ``api_key_file`` unless
    ``allow_unauthenticated`` says the network in front of it is trusted."""
    import uvicorn

    if not is_loopback(host) and not api_key_file and not allow_unauthenticated:
        raise ValueError(f"--host {host} is reachable from other machines: give --api-key-file, or "
                         "--allow-unauthenticated if a proxy or firewall in front of it controls access")
    options = {"checkpoint": checkpoint, "policy_name": policy_name, "threshold": threshold, "patience": patience,
               "config": asdict(config or ServerConfig()), "threads": threads, "api_key_file": api_key_file,
               "runner": runner, "onnx": onnx}
    if api_key_file:
        read_api_key(api_key_file)  # a bad key file fails here, not in every worker
    settings = dict(host=host, port=port, log_level="warning", timeout_graceful_shutdown=drain_timeout_s)
    if workers > 1:
        os.environ[OPTIONS_ENV] = json.dumps(options)
        uvicorn.run("metabert.deploy.server.app:app_from_env", factory=True, workers=workers, **settings)
        return
    app = _build(options)
    batcher: Batcher = app.state.batcher

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, whose exit signal also tells the batcher to answer what it holds now."""

        def handle_exit(self, sig, frame):
            if not self.should_exit and batcher.task is not None:
                log.warning("signal %d: draining %d in-flight requests (%d items queued)", sig,
                            batcher.in_flight, batcher.queue.qsize())
                batcher.task.get_loop().call_soon_threadsafe(batcher.drain)
            super().handle_exit(sig, frame)

    DrainingServer(uvicorn.Config(app, **settings)).run()
