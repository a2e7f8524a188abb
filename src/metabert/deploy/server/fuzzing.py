"""Property-based fuzzing of the HTTP server from its own OpenAPI schema (schemathesis + hypothesis).

Two sources of requests, run in-process against the real app (``metabert.deploy.server.app.create_app``):

- **schema cases**: schemathesis generates, for every operation of ``/openapi.json``, requests that
  follow the schema (positive) and requests that break it (negative: wrong types, missing or extra
  fields, bad query strings and headers), and checks each response against the schema: no 5xx,
  a documented status code, content type, headers and body; schema-breaking data must be refused.
  and schema-valid data must be accepted (the published schema carries the server's limits: the
  model's input kind, items per request, characters per text, the threshold's range).
- **raw cases**: hypothesis sends what no schema describes: any method, any path, any content type,
  arbitrary bytes as the body; the answer must not be a 5xx, and an error must be a JSON
  ``{"error": ...}``.

Every case runs (a failure is recorded, with a curl line to reproduce it, and fuzzing goes on), so
the report counts cases tried and failures.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
CONTENT_TYPES = ("application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/octet-stream", "", "application/json; charset=latin-1")


@dataclass
class FuzzReport:
    cases: int = 0
    failures: list[str] = field(default_factory=list)  # distinct failures, each with how to reproduce it
    failed_cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    by_source: Counter = field(default_factory=Counter)
    bar: object = None  # a progress bar (tqdm) of cases, or None

    def count(self, source: str) -> None:
        """One more case from ``source``."""
        self.cases += 1
        self.by_source[source] += 1
        if self.bar is not None:
            self.bar.update()

    def to_dict(self) -> dict:
        return {"cases": self.cases, "failed_cases": self.failed_cases, "distinct_failures": len(self.failures),
                "failures": self.failures, "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "cases_by_source": dict(self.by_source)}

    def fail(self, what: str) -> None:
        self.failed_cases += 1
        key = what.splitlines()[0] if what else "?"
        if all(f.splitlines()[0] != key for f in self.failures):
            self.failures.append(what)
            log.warning("fuzzing failure: %s", what)


def _settings(examples: int, seed: int):
    from hypothesis import HealthCheck, Phase, settings

    return settings(max_examples=examples, deadline=None, database=None, derandomize=False, print_blob=False,
                    phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))


def fuzz_schema(app, report: FuzzReport, examples: int, seed: int, headers: dict | None = None) -> None:
    """Schemathesis cases for every operation, positive and negative, ``examples`` each."""
    import schemathesis
    from hypothesis import given
    from hypothesis import seed as hypothesis_seed
    from hypothesis.errors import Unsatisfiable

    # schema-breaking data must be refused; 413 (too many items or characters) is a refusal too
    refused = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
    config = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": refused}}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    for k, operation in enumerate(operations):
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @hypothesis_seed(seed + k)
            @_settings(examples, seed)
            @given(case=operation.as_strategy(generation_mode=mode))
            def one(case):
                report.count(f"schema {mode.value}")
                try:
                    response = case.call_and_validate(headers=headers)
                    report.statuses[response.status_code] += 1
                except (Exception, BaseExceptionGroup) as err:  # a failed check or a crash: record it, go on
                    report.fail(f"{operation.method.upper()} {operation.path} ({mode.value}): "
                                f"{type(err).__name__}: {err}")

            try:
                one()
            except Unsatisfiable:  # nothing to break: an operation without parameters or body
                log.info("%s %s: no %s cases", operation.method.upper(), operation.path, mode.value)


def fuzz_raw(client, report: FuzzReport, examples: int, seed: int, paths: list[str],
             headers: dict | None = None) -> None:
    """Requests outside the schema through ``client`` (a ``starlette.testclient.TestClient``)."""
    from hypothesis import given
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    json_like = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
                             lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                                 st.sampled_from(["texts", "pairs", "threshold"]) | st.text(max_size=8), inner,
                                 max_size=4), max_leaves=12)
    bodies = (st.binary(max_size=256) | json_like.map(lambda v: json.dumps(v).encode())
              | st.text(max_size=64).map(lambda t: json.dumps({"texts": [t]}).encode("utf-8", "surrogatepass")))
    header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)

    @hypothesis_seed(seed)
    @_settings(examples, seed)
    @given(method=st.sampled_from(METHODS),
           path=st.sampled_from(paths) | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30)
           .map(lambda p: "/" + p.lstrip("/")),
           content_type=st.sampled_from(CONTENT_TYPES) | header_values,
           extra=st.dictionaries(st.sampled_from(["accept", "x-request-id", "authorization", "content-encoding",
                                                 "transfer-encoding", "expect", "cookie"]), header_values, max_size=3),
           body=bodies)
    def one(method, path, content_type, extra, body):
        report.count("raw")
        sent = {**extra, **(headers or {}), "content-type": content_type}
        if "?" in path or "#" in path:
            path = path.replace("#", "%23")
        try:
            response = client.request(method, path, content=body, headers=sent)
        except Exception as err:  # the app raised through the transport: a crash
            report.fail(f"{method} {path} content-type={content_type!r} body={body[:80]!r}: {type(err).__name__}: {err}")
            return
        report.statuses[response.status_code] += 1
        problem = None
        if response.status_code >= 500:
            problem = f"status {response.status_code}"
        elif response.status_code >= 400 and method != "HEAD":
            try:
                assert isinstance(response.json()["error"], str)
            except Exception:
                problem = f"status {response.status_code} without a JSON {{'error': ...}} body: {response.text[:120]!r}"
        if problem:
            report.fail(f"{method} {path} content-type={content_type!r} body={body[:80]!r}: {problem}")

    one()


def fuzz_app(make_app, cases: int, seed: int = 0, headers: dict | None = None, progress: bool = False) -> FuzzReport:
    """About ``cases`` requests: half from the schema (positive and negative for each operation; one
    without parameters has few distinct cases and is done early), the rest raw. ``make_app()`` builds the app, once for each half (each runs
    its own lifespan, so its own batcher, in its own event loop). ``headers``: sent with every
    request (an API key); ``progress``: a bar of cases on stderr."""
    from starlette.testclient import TestClient
    from tqdm.auto import tqdm

    report = FuzzReport(bar=tqdm(total=cases, desc="fuzz", unit="case", disable=not progress))
    app = make_app()
    declared = app.openapi()["paths"]
    operations = sum(len(methods) for methods in declared.values())
    log.info("fuzzing %d operations on %d paths", operations, len(declared))
    fuzz_schema(app, report, max(1, cases // 4), seed, headers)
    with TestClient(make_app(), raise_server_exceptions=False) as client:  # runs the lifespan (the batcher)
        fuzz_raw(client, report, max(1, cases - report.cases), seed, [*declared, "/docs", "/openapi.json", "/"],
                 headers)
    report.bar.close()
    return report


def tiny_app(seed: int = 0, api_key: str | None = None, **config):
    """The app around a random 3-layer model with MiniLM's tokenizer (``--model tiny``), calibrated
    at entropy γ=0.3 so that requests may override the threshold: fast enough for thousands of cases."""
    from metabert.model.multi_exit import MultiExitBert
    from metabert.deploy.server.app import create_app
    from metabert.deploy.server.config import ServerConfig

    model = MultiExitBert.from_backbone("tiny", ["neg", "pos"], seed=seed).eval()
    model.with_config(exit_policy={"name": "entropy", "threshold": 0.3, "patience": 2, "chosen_on": "fuzzing"})
    return create_app(model, ServerConfig(**config), api_key=api_key)
