"""Overload, timeouts and body limits, in-process: a gated backend holds the model call until the
test lets it go, so "the queue is full" and "the request waited too long" are states, not races."""

import concurrent.futures
import threading

import pytest
from conftest import make_tiny, wait_until
from fastapi.testclient import TestClient

from metabert.model.multi_exit import EagerRunner
from metabert.deploy.server.app import create_app
from metabert.deploy.server.config import ServerConfig


class GatedRunner(EagerRunner):
    """EagerRunner whose model calls wait for ``release`` (``entered``: one has begun)."""

    def __init__(self, model):
        super().__init__(model)
        self.entered, self.release = threading.Event(), threading.Event()

    def start(self, inputs):
        self.entered.set()
        assert self.release.wait(60), "the test never released the model call"
        return super().start(inputs)


@pytest.fixture
def gated():
    model = make_tiny()
    return model, GatedRunner(model)


def test_a_full_queue_answers_503_with_retry_after_and_the_queued_requests_are_answered(gated):
    model, runner = gated
    config = ServerConfig(max_items=2, max_queue=2, max_batch=1, max_wait_ms=0)
    with TestClient(create_app(model, config, runner=runner)) as client, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/predict", json={"texts": ["held in the model call"]})
        assert runner.entered.wait(60)
        queued = pool.submit(client.post, "/predict", json={"texts": ["two", "three"]})
        wait_until(lambda: client.get("/healthz").json()["queued"] == 2, "two items queued")
        refused = client.post("/predict", json={"texts": ["four"]})
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1" and "overloaded" in refused.json()["error"]
        metrics = client.get("/metrics").text
        assert "metabert_queue_depth 2.0" in metrics and "metabert_in_flight_requests 2.0" in metrics
        assert 'metabert_responses_total{path="/predict",status="503"} 1.0' in metrics
        runner.release.set()
        assert first.result().status_code == 200 and queued.result().status_code == 200
        assert len(queued.result().json()["results"]) == 2
        assert client.post("/predict", json={"texts": ["after the rush"]}).status_code == 200


def test_a_request_not_answered_within_the_timeout_gets_504_and_the_server_goes_on(gated):
    model, runner = gated
    with TestClient(create_app(model, ServerConfig(request_timeout_s=2), runner=runner)) as client:
        late = client.post("/predict", json={"texts": ["the model call is held"]})
        assert late.status_code == 504 and "--request-timeout" in late.json()["error"]
        assert client.get("/healthz").json()["in_flight"] == 0
        runner.release.set()
        assert client.post("/predict", json={"texts": ["next"]}).status_code == 200


def test_a_body_over_the_limit_is_413_before_parsing_and_counted():
    with TestClient(create_app(make_tiny(), ServerConfig(max_body_bytes=1000))) as client:
        r = client.post("/predict", content=b'{"texts": ["' + b"a" * 2000 + b'"]}',
                        headers={"content-type": "application/json"})
        assert r.status_code == 413 and "1000 bytes" in r.json()["error"]
        assert client.post("/predict", json={"texts": ["small"]}).status_code == 200
        assert client.get("/no/such/path").json() == {"error": "Not Found"}
        metrics = client.get("/metrics").text
        assert 'metabert_responses_total{path="/predict",status="413"} 1.0' in metrics
        assert 'metabert_responses_total{path="/predict",status="200"} 1.0' in metrics
        assert 'metabert_responses_total{path="other",status="404"} 1.0' in metrics


@pytest.mark.parametrize("field, value, message", [
    ("max_queue", 4, "at least max_items"), ("max_batch", 0, "max_batch"), ("request_timeout_s", 0, "request_timeout_s"),
])
def test_server_config_refuses_impossible_settings(field, value, message):
    with pytest.raises(ValueError, match=message):
        ServerConfig(**{field: value})


def test_serve_help_names_server_config_defaults():
    """The serve command does not import the server to build its parser: its help spells the
    defaults out, and this keeps them equal to ServerConfig's."""
    from metabert.cli import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    helps = {a.dest: a.help for a in serve._actions}
    d = ServerConfig()
    for dest, value in [("max_items", d.max_items), ("max_batch", d.max_batch), ("max_wait_ms", d.max_wait_ms),
                        ("max_seq_length", d.max_seq_length), ("max_queue", d.max_queue),
                        ("request_timeout", d.request_timeout_s), ("max_body_bytes", d.max_body_bytes)]:
        spelled = f"{value:g}" if isinstance(value, float) else str(value)
        assert f"(default {spelled})" in helps[dest], (dest, helps[dest])
