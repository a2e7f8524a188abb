"""A real server process on loopback, a real HTTP client."""

import concurrent.futures
from types import SimpleNamespace

import httpx
import pytest
from conftest import make_tiny
from metabert.deploy.server.loadtest import start_server
from metabert.model.multi_exit import MultiExitBert


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("srv") / "ckpt"
    model = make_tiny()
    model.with_config(exit_policy={"name": "entropy", "threshold": 0.5, "patience": 2, "chosen_on": "a test"})
    model.save_pretrained(ckpt)  # calibrated: the server takes its γ, requests may override it
    proc, url = start_server(ckpt, "--max-items", "8", "--max-seq-length", "32")
    yield SimpleNamespace(url=url, checkpoint=ckpt)
    proc.terminate()
    proc.wait(10)


def test_predict_texts(server):
    r = httpx.post(server.url + "/predict", json={"texts": ["good film", "bad film"]})
    assert r.status_code == 200
    body = r.json()
    assert len(body["results"]) == 2 and "entropy" in body["policy"]
    for item in body["results"]:
        assert item["label"] in ("neg", "pos") and 1 <= item["exit_layer"] <= 3
        assert abs(sum(item["probabilities"].values()) - 1) < 1e-4
        assert item["latency_ms"] > 0 and item["truncated"] is False


def test_overlong_text_is_truncated_and_flagged(server):
    r = httpx.post(server.url + "/predict", json={"texts": ["word " * 200, "short"]})
    assert r.status_code == 200
    assert [i["truncated"] for i in r.json()["results"]] == [True, False]


@pytest.mark.parametrize("payload, status, message", [
    ('{"texts": ["a"', 400, "invalid request"),
    ({"texts": "not a list"}, 400, "texts"),
    ({"texts": [1, 2]}, 400, "texts"),
    ({"texts": []}, 400, "empty"),
    ({}, 400, "exactly one"),
    ({"texts": ["a"], "pairs": [["a", "b"]]}, 400, "exactly one"),
    ({"texts": ["a"] * 9}, 413, "at most 8"),
    ({"texts": ["  "]}, 400, "item 0: empty text"),
    ({"texts": ["a"], "threshold": 5.0}, 400, "threshold 5.0"),
    ({"texts": ["a"], "threshold": -1}, 400, "threshold -1"),
    ({"texts": ["a"], "colour": "red"}, 400, "colour"),
    ({"texts": ["a"], "threshold": False}, 400, "threshold"),  # found by fuzzing: taken as γ=0 and answered 200
    ({"texts": ["a"], "threshold": "0.5"}, 400, "threshold"),
])
def test_bad_requests_get_json_errors(server, payload, status, message):
    if isinstance(payload, str):
        r = httpx.post(server.url + "/predict", content=payload, headers={"content-type": "application/json"})
    else:
        r = httpx.post(server.url + "/predict", json=payload)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert httpx.get(server.url + "/healthz").status_code == 200  # still alive


@pytest.mark.parametrize("threshold", [0.0, 0.6930, 0.69314])
def test_threshold_override_matches_local_inference(server, threshold):
    texts = ["good film", "a much longer and more complicated review of a film", "bad"]
    got = httpx.post(server.url + "/predict", json={"texts": texts, "threshold": threshold}).json()["results"]
    model = MultiExitBert.from_pretrained(server.checkpoint)
    for text, item in zip(texts, got):
        local = model.early_exit(**model.tokenizer([text], return_tensors="pt"), threshold=threshold)
        assert item["exit_layer"] == local.exit_layer.item()
        assert abs(item["probabilities"]["pos"] - local.probs[0, 1].item()) < 1e-4
    if threshold == 0.0:
        assert all(item["exit_layer"] == 3 for item in got)


def test_concurrent_requests_and_metrics(server):
    def call(i):
        return httpx.post(server.url + "/predict", json={"texts": [f"text number {i}", "another"]}, timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(call, range(32))) == {200}
    text = httpx.get(server.url + "/metrics").text
    assert 'metabert_responses_total{path="/predict",status="200"}' in text
    assert "metabert_exit_layer_bucket" in text and "metabert_request_latency_seconds_count" in text
    schema = httpx.get(server.url + "/openapi.json").json()
    assert "/predict" in schema["paths"]


def test_loadtest_against_the_server(server, tmp_path):
    from metabert.cli import main

    out = tmp_path / "load.json"
    assert main(["loadtest", "--url", server.url, "--clients", "4", "--duration", "2", "--data-dir",
                 str(tmp_path / "none"), "--output", str(out)]) == 0
    import json

    result = json.loads(out.read_text())["results"][0]
    assert result["ok"] > 0 and result["server_errors_5xx"] == 0
    assert result["latency_ms_p99"] >= result["latency_ms_p50"] > 0


def test_loadtest_refuses_other_hosts():
    from metabert.deploy.server.loadtest import run_load

    with pytest.raises(ValueError, match="loopback"):
        run_load("http://10.0.0.1:8000", ["x"], duration=1)


def app_client(model, **pinned):
    from fastapi.testclient import TestClient

    from metabert.deploy.server.app import create_app

    return TestClient(create_app(model, **pinned))


@pytest.fixture(scope="module")
def calibrated():
    model = make_tiny()
    model.with_config(exit_policy={"name": "entropy", "threshold": 0.25, "patience": 2, "chosen_on": "a test"})
    return model


def test_regression_serve_policy_flag_without_threshold_keeps_the_calibrated_threshold(calibrated):
    """Issue 22, failure 4: `serve --policy X` dropped the checkpoint's calibrated γ."""
    with app_client(calibrated, policy_name="entropy") as client:
        assert "γ=0.25" in client.get("/healthz").json()["policy"]


def test_a_pinned_threshold_refuses_request_overrides(calibrated):
    with app_client(calibrated, threshold=0.5) as client:
        assert "γ=0.5" in client.get("/healthz").json()["policy"]
        r = client.post("/predict", json={"texts": ["good"], "threshold": 0.1})
        assert r.status_code == 400 and "fixed at 0.5" in r.json()["error"]


def test_uncalibrated_checkpoint_serves_the_full_model():
    with app_client(make_tiny()) as client:
        results = client.post("/predict", json={"texts": ["good", "a bad film"]}).json()["results"]
        assert [r["exit_layer"] for r in results] == [3, 3]


def test_regression_a_lone_surrogate_is_replaced_and_reported_not_500(calibrated):
    """Issue 22, failure 1: {"texts": ["\\ud800"]} got 500."""
    with app_client(calibrated) as client:
        r = client.post("/predict", content='{"texts": ["bad \\ud800 film", "good"]}',
                        headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert [item["replaced_characters"] for item in r.json()["results"]] == [1, 0]


def test_regression_the_input_kind_the_model_does_not_take_is_422(calibrated):
    """Issue 22, failure 2: a single-text model answered 200 to pairs (and the reverse was untested)."""
    with app_client(calibrated) as client:  # trained on single texts
        r = client.post("/predict", json={"pairs": [["a premise", "a hypothesis"]]})
        assert r.status_code == 422 and "pairs" in r.json()["error"] and "texts" in r.json()["error"]
    pair_model = make_tiny()
    pair_model.with_config(task={"name": "custom", "text_columns": ["a", "b"], "label_column": "y"})
    with app_client(pair_model) as client:
        r = client.post("/predict", json={"texts": ["a"]})
        assert r.status_code == 422 and "pairs" in r.json()["error"]


def test_one_failing_item_fails_only_its_request(calibrated, monkeypatch):
    """Faults injected inside the batch: the innocent requests sharing a micro-batch still get
    their answers (the batch is retried item by item)."""
    from metabert.deploy.server.batcher import Batcher

    real = Batcher._run

    def poisoned(self, group, policy):
        if any("poison" in item.text for item in group):
            raise RuntimeError("injected fault")
        return real(self, group, policy)

    monkeypatch.setattr(Batcher, "_run", poisoned)
    bodies = [{"texts": ["poison"]} if k % 4 == 0 else {"texts": [f"fine text {k}", "good"]} for k in range(16)]
    with app_client(calibrated) as client:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: client.post("/predict", json=b), bodies))
    assert [a.status_code for a in answers] == [500 if "poison" in b["texts"][0] else 200 for b in bodies]
    assert all(len(a.json()["results"]) == 2 for a, b in zip(answers, bodies) if "poison" not in b["texts"][0])


def test_regression_texts_and_pairs_in_one_micro_batch_are_all_answered(calibrated):
    """Issue 22, failure 3: text and pair items in the same micro-batch made every request in it
    fail. Both kinds are queued before the batcher starts, so they are pulled into one micro-batch;
    they must run as two model calls (one per kind) and all be answered as if alone."""
    import asyncio

    from prometheus_client import CollectorRegistry, Histogram

    from metabert.model.multi_exit import EagerRunner
    from metabert.engine.resolve import resolve
    from metabert.deploy.server.batcher import Batcher, _Item
    from metabert.deploy.server.config import ServerConfig

    calls = []

    class Recording(EagerRunner):
        def start(self, inputs):
            calls.append(int(inputs["input_ids"].shape[0]))
            return super().start(inputs)

    metrics = {"exit_layer": Histogram("exit", "", registry=CollectorRegistry(), buckets=(1, 2, 3))}
    policy = resolve(stored=calibrated.config.exit_policy).policy
    inputs = [("good film", None), ("a premise", "a hypothesis"), ("bad", None), ("it rains", "it is wet"),
              ("fine", None), ("cats sleep", "cats are awake")]

    async def scenario():
        batcher = Batcher(calibrated, ServerConfig(max_batch=16, max_wait_ms=20), metrics, Recording(calibrated))
        loop = asyncio.get_running_loop()
        items = [_Item(text, pair, policy, loop.create_future()) for text, pair in inputs]
        for item in items:
            batcher.queue.put_nowait(item)
        batcher.start()
        together = await asyncio.wait_for(asyncio.gather(*(i.future for i in items)), 60)
        alone = []
        for text, pair in inputs:
            item = _Item(text, pair, policy, loop.create_future())
            batcher.queue.put_nowait(item)
            alone.append(await asyncio.wait_for(item.future, 60))
        await batcher.stop()
        return together, alone

    together, alone = asyncio.run(scenario())
    assert sorted(calls[:2]) == [3, 3]  # one call per kind, not one failing mixed call
    for a, b in zip(together, alone):
        assert a["exit_layer"] == b["exit_layer"] and a["label"] == b["label"]
        assert all(abs(a["probabilities"][k] - b["probabilities"][k]) < 1e-5 for k in a["probabilities"])


def test_good_bad_and_both_kinds_sent_concurrently_each_get_their_own_answer(calibrated):
    """Issue 22, isolation: valid texts (two policies: with and without a threshold), pairs on a
    single-text model, blank texts and schema errors, all at once; each answer is what that request
    gets alone."""
    bodies = []
    for k in range(24):
        bodies.append([{"texts": [f"good film {k}", "bad"]}, {"texts": ["a long review " * (k % 5 + 1)], "threshold": 0.2},
                       {"pairs": [["a", "b"]]}, {"texts": ["   "]}, {"texts": [k]}, {"texts": ["ok"], "threshold": 9}][k % 6])
    expected = [200, 200, 422, 400, 400, 400] * 4
    with app_client(calibrated) as client:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: client.post("/predict", json=b), bodies))
        assert [a.status_code for a in answers] == expected
        for body, answer in zip(bodies, answers):
            alone = client.post("/predict", json=body)
            if answer.status_code != 200:
                assert answer.json() == alone.json()
                continue
            for a, b in zip(answer.json()["results"], alone.json()["results"]):
                assert a["exit_layer"] == b["exit_layer"] and a["label"] == b["label"]
                assert all(abs(a["probabilities"][c] - b["probabilities"][c]) < 1e-5 for c in a["probabilities"])
